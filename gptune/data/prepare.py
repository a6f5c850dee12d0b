"""Pretraining data: a corpus -> token shards on disk, prepared once; every run memory-maps them.

Flow: ``open_source`` (files, a ``datasets`` folder or a hub stream) -> documents in corpus order ->
the validation rule (``data.val_split``) sends each document, or its tail, to the ``train`` or ``val``
stream -> ``encode_texts`` (bounded batches, ``data.num_proc`` workers) -> ``StreamWriter`` appends each
document's ids and one EOS to fixed-size shard files -> ``meta.json`` -> the folder is renamed into
place. Training reads ``TokenBlocks`` of ``data.block_size`` tokens: the stream cut exactly, only the
final partial block dropped.

The prepared folder ``CACHE/lm/<key>`` is keyed by the tokenizer, the block rule, the validation rule and
the input (file paths, sizes and mtimes; or hub id + revision + ``data.max_tokens``). It is built under
``CACHE/lm/.<key>.partial`` with a ``state.json`` rewritten after each completed document batch, so an
interrupted preparation resumes there (documents already done are read again but not re-tokenized).
Under several processes only the main process prepares; the others poll for the published folder
(no collective, so no collective timeout however long tokenization takes), then all memory-map it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gptune.config import DataConfig, ModelConfig
from gptune.console import make_byte_progress, say
from gptune.data.books import corpus_path
from gptune.data.cache import entry_dir, entry_key, rename_into_place, write_atomic
from gptune.data.clean import CLEAN_REPORT, CleanReport, Verdict, clean_stream, require_libraries
from gptune.data.dedup import DedupIndex
from gptune.data.encode import encode_texts, tail_cut
from gptune.data.prepared import LMData, PackStats, load_prepared
from gptune.data.shards import StreamWriter, token_dtype
from gptune.data.sources import Source, open_source
from gptune.errors import GptuneError
from gptune.faults import Faults

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the shard format or the packing rule changes
SHARD_TOKENS = 1 << 24  # tokens per shard file (32 MB as uint16), rounded down to whole blocks
_CHECKPOINT_SECONDS = 2.0  # state.json at most this often (and whenever a shard fills)
_POLL_SECONDS = 0.5
DEDUP_FILE = "dedup.sig"
STATE_FILE = "state.json"  # in the .partial folder: where an interrupted preparation resumes


# ----------------------------------------------------------------------------- entry points


def load_pretrain_tokenizer(m: ModelConfig, d: DataConfig, run_dir: Path, *, seed: int):
    """The run's tokenizer; ``model.tokenizer=train`` trains one on a capped, corpus-wide sample of
    ``data.path`` (saved in ``run_dir/tokenizer``, reused when it exists)."""
    from gptune.tokenization import load_tokenizer

    spec = m.tokenizer or m.name_or_path
    texts = None
    if spec == "train":
        source = open_source(corpus_path(d.path, d.cache_dir), text_column=d.text_column, fallback_encoding=d.fallback_encoding,
                             revision=d.revision)

        def texts():
            return source.sample(m.tokenizer_train_bytes, seed=seed)

    return load_tokenizer(spec, run_dir=run_dir, train_texts=texts, vocab_size=m.vocab_size,
                          trust_remote_code=m.trust_remote_code)


def prepare_lm_data(data: DataConfig, tokenizer: Any, *, seed: int, main: bool = True, progress: bool = True,
                    shard_tokens: int | None = None, faults: Faults | None = None) -> LMData:
    """The prepared token shards of `data` for `tokenizer`, preparing them first when missing.

    `main`: this process prepares; others (``main=False``) wait for the main process to publish. `faults`
    (tests; default: ``GPTUNE_TEST_*``): a hold before preparing.
    """
    if tokenizer.eos_token_id is None:
        raise GptuneError("the tokenizer has no EOS token (load it with gptune.tokenization.load_tokenizer)")
    if data.clean.enabled:
        require_libraries(data.clean)
    train_src = open_source(corpus_path(data.path, data.cache_dir), "data.path", text_column=data.text_column,
                            fallback_encoding=data.fallback_encoding, revision=data.revision)
    val_src = None
    if data.val_path:
        val_src = open_source(corpus_path(data.val_path, data.cache_dir), "data.val_path", text_column=data.text_column,
                              fallback_encoding=data.fallback_encoding, revision=data.revision)
    split = "path" if val_src else (data.val_split if data.val_fraction > 0 else "none")
    shard_tokens = max(1, (shard_tokens or SHARD_TOKENS) // data.block_size) * data.block_size
    folder = entry_dir("lm", _key(data, tokenizer, seed, split, shard_tokens, train_src, val_src), data.cache_dir)
    if (folder / "meta.json").is_file():
        return load_prepared(folder)
    if not main:
        _wait_ready(folder)
        return load_prepared(folder)
    with _lock(folder):
        if (folder / "meta.json").is_file():  # another job published it while we waited for the lock
            return load_prepared(folder)
        (faults or Faults.from_env()).preparing(lambda: len(list(folder.parent.glob(f".{folder.name}.waiting-*"))))
        t0 = time.perf_counter()
        partial = folder.with_name(f".{folder.name}.partial")
        meta = _build(partial, train_src, val_src, tokenizer, data, seed=seed, split=split,
                      shard_tokens=shard_tokens, progress=progress)
        meta["stats"]["seconds"] = time.perf_counter() - t0
        (partial / STATE_FILE).unlink(missing_ok=True)  # only an unfinished preparation needs it
        (partial / "meta.json").write_text(json.dumps(meta, indent=1))
        rename_into_place(partial, folder)
    out = load_prepared(folder)
    out.stats.cached, out.stats.seconds = False, meta["stats"]["seconds"]
    return out


# ----------------------------------------------------------------------------- key, lock, waiting


def _key(data: DataConfig, tokenizer: Any, seed: int, split: str, shard_tokens: int, train_src: Source,
         val_src: Source | None) -> str:
    from gptune.tokenization import tokenizer_fingerprint

    return entry_key({
        "version": FORMAT_VERSION,
        "train": train_src.signature,
        "val": val_src.signature if val_src else None,
        "val_split": split,
        "val_fraction": data.val_fraction if split in ("tail", "documents", "blocks") else None,
        "seed": seed if split in ("documents", "blocks") else None,
        "text_column": data.text_column,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "block_size": data.block_size,
        "max_tokens": data.max_tokens,
        "fallback_encoding": data.fallback_encoding,
        "shard_tokens": shard_tokens,
        **({"clean": asdict(data.clean)} if data.clean.enabled else {}),  # absent when off: keys stay as before
    })


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """One preparer per key on this machine (two jobs started together do not both tokenize)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        fh = open(folder.with_name(f".{folder.name}.lock"), "w")  # noqa: SIM115 - closed below
    except OSError as e:
        raise GptuneError(f"data.cache_dir: cannot write prepared data under {folder.parent} ({e})") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fh.close()


def _wait_ready(folder: Path) -> None:
    """Poll until the main process publishes `folder`: no collective, so no timeout."""
    rank = os.environ.get("RANK", "?")
    marker = folder.with_name(f".{folder.name}.waiting-{rank}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    try:
        while not (folder / "meta.json").is_file():
            time.sleep(_POLL_SECONDS)
    finally:
        marker.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- building


def _held_out(i: int, seed: int, fraction: float) -> bool:
    """Document `i` goes to validation (``val_split=documents``): a seeded, order-free coin."""
    h = hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < fraction


class _Part(NamedTuple):
    """The tag of a piece of text on its way to the shards."""

    doc: int
    """Document index in corpus order (train source, then val_path)."""
    stream: str
    """``train`` or ``val``."""
    last: bool
    """The document's last part (its tail-split train part comes first)."""
    chars: int
    """Characters of the document as read (on the last part; 0 on others)."""
    verdict: Verdict | None = None
    """What cleaning made of the document (``data.clean`` on): kept, or the rule that dropped it."""


def _documents(train_src: Source, val_src: Source | None, skip: int) -> Iterator[tuple[tuple[int, bool], str]]:
    """``((document index, from data.val_path), text)`` for every document from `skip` on."""
    sources = [(train_src, False)] + ([(val_src, True)] if val_src else [])
    i = 0
    for src, is_val in sources:
        for text in src.documents():
            if i >= skip:
                yield (i, is_val), text
            i += 1


def _cleaned(docs: Iterator[tuple[tuple[int, bool], str]], data: DataConfig, index: DedupIndex | None
             ) -> Iterator[tuple[tuple[int, bool, int, Verdict | None], str]]:
    """Each document with its character count and, when ``data.clean`` is on, its cleaned text and verdict."""
    if not data.clean.enabled:
        for (i, is_val), text in docs:
            yield (i, is_val, len(text), None), text
        return
    counted = (((i, is_val, len(text)), text) for (i, is_val), text in docs)
    for (i, is_val, chars), text, verdict in clean_stream(counted, data.clean, num_proc=data.num_proc, index=index,
                                                         doc_of=lambda tag: tag[0]):
        yield (i, is_val, chars, verdict), text


def _items(docs: Iterator[tuple[tuple[int, bool, int, Verdict | None], str]], split: str, fraction: float,
           seed: int) -> Iterator[tuple[_Part, str]]:
    """The validation rule: each document (or its tail) tagged for the ``train`` or ``val`` stream."""
    for (i, is_val, chars, verdict), text in docs:
        if verdict is not None and verdict.rule is not None:
            yield _Part(i, "train", True, chars, verdict), ""  # dropped: nothing is written, the report counts it
        elif is_val:
            yield _Part(i, "val", True, chars, verdict), text
        elif split == "tail":
            cut = tail_cut(text, fraction)
            if cut < len(text):
                yield _Part(i, "train", False, 0), text[:cut]
                yield _Part(i, "val", True, chars, verdict), text[cut:]
            else:
                yield _Part(i, "train", True, chars, verdict), text
        elif split == "documents":
            yield _Part(i, "val" if _held_out(i, seed, fraction) else "train", True, chars, verdict), text
        else:
            yield _Part(i, "train", True, chars, verdict), text


def _resume_state(partial: Path, state_file: Path) -> dict:
    """The state an interrupted preparation in `partial` recorded; else a fresh one (and an empty folder)."""
    fresh = {"documents": 0, "chars": 0, "streams": {}, "clean": CleanReport().to_dict(), "dedup_kept": 0}
    state = fresh
    if state_file.is_file():
        with contextlib.suppress(OSError, ValueError):
            state = {**fresh, **json.loads(state_file.read_text())}
        say(f"prepare: resuming an interrupted preparation after {state['documents']:,} documents")
    elif partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    return state


def _build(partial: Path, train_src: Source, val_src: Source | None, tokenizer: Any, data: DataConfig, *,
           seed: int, split: str, shard_tokens: int, progress: bool) -> dict:
    """Fill `partial` with the token shards (resuming what an interrupted preparation left there); the
    content of meta.json."""
    dtype = token_dtype(len(tokenizer))
    state_file = partial / STATE_FILE
    state = _resume_state(partial, state_file)
    names = ["train"] + (["val"] if split in ("tail", "documents", "path") else [])
    writers = {n: StreamWriter(partial, n, dtype, shard_tokens, **state["streams"].get(n, {})) for n in names}
    c = data.clean
    index = None
    if c.dedup != "none":  # records past the resumed state are cut off
        index = DedupIndex(partial / DEDUP_FILE, c.dedup, num_perm=c.num_perm, threshold=c.near_threshold,
                           kept=state["dedup_kept"])
    report = CleanReport.from_dict(state["clean"])
    docs = _cleaned(_documents(train_src, val_src, state["documents"]), data, index)
    encoded = encode_texts(_items(docs, split, data.val_fraction, seed), tokenizer, num_proc=data.num_proc)
    try:
        snapshot = _write_streams(encoded, writers, report, state, state_file, data, progress=progress,
                                  eos=np.asarray([tokenizer.eos_token_id], dtype=dtype),
                                  total=train_src.bytes if data.max_tokens is None else None)
    finally:
        if index is not None:
            index.close()
    _save_state(state_file, writers, snapshot)
    for w in writers.values():
        w.close()
    if c.enabled:
        (partial / CLEAN_REPORT).write_text(json.dumps(report.to_dict(), indent=1))
    (partial / DEDUP_FILE).unlink(missing_ok=True)  # only an unfinished preparation needs it
    return _finish(partial, writers, data, seed=seed, split=split, shard_tokens=shard_tokens, dtype=dtype,
                   documents=snapshot["documents"], chars=snapshot["chars"],
                   kept=report.kept if c.enabled else None,
                   files=len(train_src.files) + (len(val_src.files) if val_src else 0))


def _write_streams(encoded, writers: dict[str, StreamWriter], report: CleanReport, state: dict, state_file: Path,
                   data: DataConfig, *, eos: np.ndarray, total: int | None, progress: bool) -> dict:
    """Append each encoded document (and one EOS) to its stream, until the corpus or ``data.max_tokens`` ends;
    state.json when a shard fills, else every ``_CHECKPOINT_SECONDS``. The state after the last document."""
    snapshot, last_save = dict(state), time.monotonic()
    chars, dedup_kept = state["chars"], state["dedup_kept"]
    with make_byte_progress() as bar, contextlib.closing(encoded):  # closing: stop the workers on a break
        task = bar.add_task("cleaning + tokenizing" if data.clean.enabled else "tokenizing", total=total,
                            completed=chars, info="", visible=progress)
        t0, tokens0, docs0 = time.perf_counter(), sum(w.tokens for w in writers.values()), state["documents"]
        for part, ids in encoded:
            w = writers[part.stream]
            shards = w.shards
            if part.verdict is None or part.verdict.rule is None:
                w.append(ids)
                w.append(eos)
                w.end_document()
            if not part.last:
                continue
            chars += part.chars
            if part.verdict is not None:
                report.add(part.doc, part.verdict)
                dedup_kept = part.verdict.kept_after
            snapshot = {"documents": part.doc + 1, "chars": chars,
                        "streams": {n: {"tokens": x.tokens, "documents": x.documents} for n, x in writers.items()},
                        "clean": report.to_dict(), "dedup_kept": dedup_kept}
            seconds = max(time.perf_counter() - t0, 1e-9)
            tokens = sum(x.tokens for x in writers.values())
            bar.update(task, completed=chars, info=f"{(part.doc + 1 - docs0) / seconds:,.0f} docs/s "
                                                   f"{(tokens - tokens0) / seconds / 1e6:.2f}M tok/s")
            if w.shards != shards or time.monotonic() - last_save > _CHECKPOINT_SECONDS:
                _save_state(state_file, writers, snapshot)
                last_save = time.monotonic()
            if data.max_tokens is not None and writers["train"].tokens >= data.max_tokens:
                break
    return snapshot


def _save_state(state_file: Path, writers: dict[str, StreamWriter], snapshot: dict) -> None:
    """The shards flushed, then the state that resumes after them."""
    for w in writers.values():
        w.flush()
    write_atomic(state_file, json.dumps(snapshot))


def _finish(partial: Path, writers: dict[str, StreamWriter], data: DataConfig, *, seed: int, split: str,
            shard_tokens: int, dtype: np.dtype, documents: int, chars: int, kept: int | None, files: int) -> dict:
    """meta.json content: stream lengths (train capped at data.max_tokens), blocks, the blocks-mode split."""
    block = data.block_size
    n_train = writers["train"].tokens
    if data.max_tokens is not None:
        n_train = min(n_train, data.max_tokens)
    streams = {"train": {"tokens": n_train, "shard_tokens": shard_tokens, "dtype": dtype.name}}
    blocks_train = n_train // block
    if blocks_train == 0:
        raise GptuneError(f"data.path: the corpus has {n_train} tokens, fewer than one block of "
                          f"data.block_size={block}; add text or lower data.block_size")
    dropped = n_train - blocks_train * block
    blocks_val = 0
    if "val" in writers:
        n_val = writers["val"].tokens
        streams["val"] = {"tokens": n_val, "shard_tokens": shard_tokens, "dtype": dtype.name}
        blocks_val = n_val // block
        if blocks_val == 0:
            if split == "path":
                raise GptuneError(f"data.val_path: the corpus has {n_val} tokens, fewer than one block of "
                                  f"data.block_size={block}; add text or lower data.block_size")
            raise GptuneError(f"data.val_fraction={data.val_fraction}: the held-out validation text "
                              f"(data.val_split={split}) has {n_val} tokens, fewer than one block of "
                              f"data.block_size={block}; raise data.val_fraction or add text")
        dropped += n_val - blocks_val * block
    elif split == "blocks":
        n_val = max(1, round(blocks_train * data.val_fraction))
        if n_val >= blocks_train:
            raise GptuneError(
                f"data.val_fraction={data.val_fraction}: the corpus has only {blocks_train} block(s), not enough "
                "for a training and a validation block; add text, lower data.block_size or set data.val_fraction=0")
        perm = np.random.default_rng(seed).permutation(blocks_train)
        # sorted: blocks keep corpus order (the train loader shuffles); identical for a given seed
        np.save(partial / "train_blocks.npy", np.sort(perm[n_val:]))
        np.save(partial / "val_blocks.npy", np.sort(perm[:n_val]))
        blocks_train, blocks_val = blocks_train - n_val, n_val
    disk = sum(p.stat().st_size for p in partial.glob("*.bin"))
    stats = PackStats(files=files, documents=documents, tokens=n_train + streams.get("val", {}).get("tokens", 0),
                      blocks_train=blocks_train, blocks_val=blocks_val, dropped_tokens=dropped,
                      shards=len(list(partial.glob("*.bin"))), disk_bytes=disk, text_bytes=chars,
                      kept_documents=kept)
    return {"version": FORMAT_VERSION, "block_size": block, "val_split": split, "streams": streams,
            "stats": asdict(stats)}
