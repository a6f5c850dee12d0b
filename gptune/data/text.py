"""Pretraining text: find the files, tokenize the documents, pack ONE token stream into blocks.

Flow: ``discover_files`` -> documents (a .txt file is one book; a table row is one document) ->
exact split of each document into pieces (parallel tokenization) -> ``Dataset.map`` -> one numpy
stream, documents separated by one EOS -> ``block_size`` blocks (only the final partial block is
dropped) -> seeded val split -> atomic on-disk cache keyed by everything that decides the ids.

Why pieces are exact for GPT-2 byte-level BPE: BPE merges never cross a pre-token, so cutting the
text where a pre-token boundary is guaranteed gives the same ids as tokenizing it whole. GPT-2's
pre-tokenizer regex (``... |\\s+(?!\\S)|\\s+``) always ends a whitespace run that precedes a
non-space character one character early; when that last character is ``\\n`` it becomes a pre-token
of its own. So we cut *before* a ``\\n`` that is followed by a non-space character: the left piece
ends with the rest of the whitespace run (matched whole by ``\\s+(?!\\S)`` in both cases) and the right
piece starts with the lone ``\\n``. Cutting *after* the newline would not be exact: ``"a \\nb"`` is
``a|' '|\\n|b`` whole but ``a|' \\n'`` + ``b`` in pieces. tests/test_text_data.py pins this. For
whitespace-splitting tokenizers (GPT-1's BERT-style pre-tokenizer) any whitespace cut is exact; for
SentencePiece-style tokenizers that prepend a space marker it is close but not exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptune.errors import GptuneError, first_line

logger = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".txt", ".jsonl", ".json", ".csv", ".parquet")
"""File types read as pretraining text (found recursively in a data folder)."""

_CACHE_VERSION = 1  # bump when the packed format or the packing rule changes
_PIECE_CHARS = 8192  # pieces of about this size: enough rows to spread over processes and batches
_CHARS_PER_TOKEN_GUESS = 6  # generous: English byte-level BPE averages about 4 characters a token
_CUT = re.compile(r"\n(?=\S)")  # see the module docstring: cut before this newline
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?(:[\w.-]+)?$")
_MAP_BATCH_SIZE = 256


@dataclass
class PackStats:
    """What packing produced, for the run summary and the tests."""

    files: int
    """Number of files read (0 for a hub dataset)."""
    documents: int
    """Documents in the token stream (books, table rows); each one is followed by one EOS."""
    tokens: int
    """Tokens in the train stream (EOS included) before cutting into blocks; plus the val stream when `val_path` is set."""
    blocks_train: int
    """Training blocks of `block_size` tokens."""
    blocks_val: int
    """Validation blocks (0 when there is no validation set)."""
    dropped_tokens: int
    """Tokens of the final partial block(s) that did not fill a whole block."""
    cached: bool = False
    """True when the blocks came from the on-disk cache (no tokenization ran)."""


class PackedBlocks(torch.utils.data.Dataset):
    """Map-style dataset over a (num_blocks, block_size) array; yields ``{"input_ids": LongTensor}``."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = blocks  # (N, T), uint16 or int32, possibly memory-mapped

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(np.asarray(self.blocks[i], dtype=np.int64))}


@dataclass
class LMData:
    """Train/val blocks for causal-LM pretraining, and how they were made."""

    train: PackedBlocks
    """Training blocks."""
    val: PackedBlocks | None
    """Validation blocks; None when `val_fraction` is 0 and no `val_path` is given."""
    stats: PackStats
    """Counts of files, documents, tokens, blocks and dropped tokens."""


# ----------------------------------------------------------------------------- files and documents


def discover_files(path: str | Path) -> list[Path]:
    """The text files under `path` (a file, or a folder searched recursively), sorted."""
    p = Path(path).expanduser()
    if not p.exists():
        raise GptuneError(f"data.path: no such file or folder: {path}")
    accepted = ", ".join(TEXT_EXTENSIONS)
    if p.is_file():
        if p.suffix.lower() not in TEXT_EXTENSIONS:
            raise GptuneError(f"data.path: {path} is not a text file (accepted: {accepted})")
        files = [p]
    else:
        files = sorted(
            (f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_EXTENSIONS),
            key=lambda f: f.relative_to(p).as_posix(),
        )
        if not files:
            raise GptuneError(f"data.path: no text files in folder {path} (accepted: {accepted})")
    if all(f.stat().st_size == 0 for f in files):
        raise GptuneError(f"data.path: {path}: corpus is empty ({len(files)} empty file(s))")
    return files


def read_txt(path: Path, fallback_encoding: str | None = None) -> str:
    """A whole .txt file as one document.

    Bytes that are not UTF-8 are an error naming the offset, unless `fallback_encoding` is set:
    then such a file (only such a file: a folder may mix encodings) is decoded with it.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if fallback_encoding is None:
            raise GptuneError(
                f"{path}: not UTF-8 text (first bad byte 0x{data[e.start]:02x} at byte offset {e.start}); "
                "convert it (e.g. iconv -f latin1 -t utf-8) or set data.fallback_encoding=latin-1"
            ) from e
        logger.warning(
            "%s is not UTF-8 (byte offset %d): decoding it as %s", path, e.start, fallback_encoding
        )
        text = data.decode(fallback_encoding)
    return text.removeprefix("\ufeff")  # a BOM is an encoding marker, not text


def read_table_texts(path: Path, text_column: str) -> list[str]:
    """The `text_column` of a .jsonl/.json/.csv/.parquet file, one string per row (nulls skipped)."""
    import pyarrow as pa

    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif suffix == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
        elif suffix == ".jsonl":
            import pyarrow.json as pjson

            table = pjson.read_json(path)
        else:  # .json: a list of objects, or JSON lines under a .json name
            with path.open(encoding="utf-8") as fh:
                try:
                    rows = json.load(fh)
                except json.JSONDecodeError:
                    fh.seek(0)
                    rows = [json.loads(line) for line in fh if line.strip()]
            if isinstance(rows, dict):
                rows = [rows]
            if not all(isinstance(r, dict) for r in rows):
                raise GptuneError(f"{path}: expected a JSON list of objects (one document per object)")
            table = pa.Table.from_pylist(rows)
    except GptuneError:
        raise
    except Exception as e:  # pyarrow/json parse errors: say which file
        raise GptuneError(f"{path}: cannot read as {suffix[1:]}: {first_line(e)}") from e
    if text_column not in table.column_names:
        raise GptuneError(
            f"{path}: no column {text_column!r} (columns: {', '.join(table.column_names) or 'none'}); "
            "set data.text_column"
        )
    return [t for t in table.column(text_column).to_pylist() if t]


def _file_documents(files: list[Path], text_column: str, fallback_encoding: str | None) -> Iterator[str]:
    for f in files:
        if f.suffix.lower() == ".txt":
            text = read_txt(f, fallback_encoding)
            if text:
                yield text
        else:
            yield from (str(t) for t in read_table_texts(f, text_column))


def _hub_documents(spec: str, text_column: str, fallback_encoding: str | None = None) -> Iterator[str]:
    """Stream documents of hub dataset ``name`` or ``name:config`` (split train)."""
    import datasets

    name, _, config = spec.partition(":")
    try:
        rows = iter(datasets.load_dataset(name, config or None, split="train", streaming=True))
        first_row = next(rows)
    except Exception as e:
        raise GptuneError(
            f"data.path: {spec} is not a local file or folder, and loading it from the Hugging Face hub "
            f"failed ({first_line(e)}); pass a local folder with --set data.path=DIR"
        ) from e
    if text_column not in first_row:
        raise GptuneError(
            f"data.path: hub dataset {spec} has no column {text_column!r} "
            f"(columns: {', '.join(first_row)}); set data.text_column"
        )
    for r in itertools.chain([first_row], rows):
        if r[text_column]:
            yield str(r[text_column])


def split_exact(text: str, piece_chars: int | None = None) -> list[str]:
    """Cut `text` into pieces of about `piece_chars` whose tokens, joined, equal the whole's tokens.

    Cuts fall just before a ``\\n`` followed by a non-space character (see the module docstring).
    A piece with no such newline after `piece_chars` runs to the end of the text.
    """
    piece_chars = piece_chars or _PIECE_CHARS
    pieces = []
    start = 0
    while len(text) - start > piece_chars:
        m = _CUT.search(text, start + piece_chars)
        if m is None:
            break
        pieces.append(text[start : m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


# ----------------------------------------------------------------------------- tokenize and pack


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens. The one place tokenization runs (tests count it)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer directly: no max-length warnings, batch-parallel
        # encode_batch_fast skips character offsets (unused here): about 15% faster, same ids.
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _tokenize_batch(batch: dict[str, list], tokenizer: Any, dtype: Any) -> dict[str, list]:
    ids = _encode(tokenizer, batch["text"])
    return {"input_ids": [np.asarray(x, dtype=dtype) for x in ids]}


def _token_stream(
    documents: Iterable[str],
    tokenizer: Any,
    *,
    max_tokens: int | None,
    num_proc: int,
    dtype: Any,
    key: str,
) -> tuple[np.ndarray, int]:
    """One stream of ids: each document's tokens followed by one EOS. Returns (stream, documents).

    Documents are taken in rounds sized from `max_tokens` (all at once when it is None), so a
    small `max_tokens` on a big corpus or a hub stream does not tokenize everything.
    """
    import datasets
    import pyarrow.compute as pc

    eos = tokenizer.eos_token_id
    docs = iter(documents)
    parts: list[np.ndarray] = []
    n_tokens = n_docs = 0
    round_no = 0
    while max_tokens is None or n_tokens < max_tokens:
        budget = None if max_tokens is None else (max_tokens - n_tokens) * _CHARS_PER_TOKEN_GUESS
        texts: list[str] = []
        last: list[bool] = []  # piece is the last of its document: an EOS follows it
        chars = 0
        for doc in docs:
            pieces = split_exact(doc)
            texts += pieces
            last += [False] * (len(pieces) - 1) + [True]
            chars += len(doc)
            if budget is not None and chars >= budget:
                break
        if not texts:
            break
        pieces_ds = datasets.Dataset.from_dict({"text": texts})
        del texts
        tokenized = pieces_ds.map(
            partial(_tokenize_batch, tokenizer=tokenizer, dtype=dtype),
            batched=True,
            batch_size=_MAP_BATCH_SIZE,
            num_proc=num_proc if num_proc > 1 and len(pieces_ds) > 1 else None,
            remove_columns=["text"],
            # Our own cache decides reuse; a fixed fingerprint also skips hashing the tokenizer.
            new_fingerprint=f"{key}-{round_no}",
            desc="tokenizing",
        )
        col = tokenized.data.column("input_ids")
        values = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        ends = np.cumsum(pc.list_value_length(col).to_numpy(zero_copy_only=False))
        doc_ends = ends[np.asarray(last, dtype=bool)]
        # np.insert puts one EOS before each listed original index, i.e. right after each document.
        parts.append(np.insert(values, doc_ends, np.asarray(eos, dtype=dtype)))
        n_tokens += parts[-1].size
        n_docs += int(doc_ends.size)
        round_no += 1
        if budget is None:
            break
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    if max_tokens is not None:
        stream = stream[:max_tokens]
    return stream, n_docs


def _blocks(stream: np.ndarray, block_size: int, what: str) -> tuple[np.ndarray, int]:
    """(num_blocks, block_size) view of the stream and the dropped tail length."""
    n = stream.size // block_size
    if n == 0:
        raise GptuneError(
            f"{what}: the corpus has {stream.size} tokens, fewer than one block of "
            f"data.block_size={block_size}; add text or lower data.block_size"
        )
    return stream[: n * block_size].reshape(n, block_size), stream.size - n * block_size


def _split_val(blocks: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = blocks.shape[0]
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise GptuneError(
            f"data.val_fraction={val_fraction}: the corpus has only {n} block(s), not enough for "
            "a training and a validation block; add text, lower data.block_size or set data.val_fraction=0"
        )
    perm = np.random.default_rng(seed).permutation(n)
    # Sorted: blocks keep corpus order (the train loader shuffles); identical for a given seed.
    return blocks[np.sort(perm[n_val:])], blocks[np.sort(perm[:n_val])]


# ----------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$GPTUNE_CACHE`` or ``~/.cache/gptune/packed``."""
    env = os.environ.get("GPTUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gptune" / "packed"


def _files_signature(files: list[Path]) -> list[list]:
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def _save_cache(folder: Path, train: np.ndarray, val: np.ndarray | None, stats: PackStats) -> None:
    """Write to a temporary sibling, then rename: a reader sees a whole cache entry or none."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        np.save(tmp / "train.npy", train)
        if val is not None:
            np.save(tmp / "val.npy", val)
        (tmp / "stats.json").write_text(json.dumps(asdict(stats)))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same entry first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_cache(folder: Path) -> tuple[np.ndarray, np.ndarray | None, PackStats] | None:
    try:
        stats = PackStats(**json.loads((folder / "stats.json").read_text()))
        train = np.load(folder / "train.npy", mmap_mode="r")
        val = np.load(folder / "val.npy", mmap_mode="r") if (folder / "val.npy").exists() else None
    except (OSError, ValueError, TypeError):
        return None
    stats.cached = True
    return train, val, stats


# ----------------------------------------------------------------------------- entry point


def build_lm_data(
    path: str,
    tokenizer: Any,
    block_size: int,
    *,
    text_column: str = "text",
    val_path: str | None = None,
    val_fraction: float = 0.01,
    num_proc: int = 1,
    max_tokens: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    fallback_encoding: str | None = None,
    first: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    progress: bool = True,
) -> LMData:
    """Tokenize and pack the corpus at `path` (files, folder or hub id) into train/val blocks.

    `first` is ``accelerator.main_process_first``: under several processes only the main process
    tokenizes and writes the cache; the others then load it. `fallback_encoding` (e.g. ``"latin-1"``)
    decodes .txt files that are not UTF-8 instead of refusing them. `max_tokens` truncates the
    train stream (hub datasets are streamed only that far).
    """
    from gptune.tokenization import tokenizer_fingerprint

    if block_size < 1:
        raise GptuneError(f"data.block_size must be >= 1, got {block_size}")
    if not 0 <= val_fraction < 1:
        raise GptuneError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    if tokenizer.eos_token_id is None:
        raise GptuneError("the tokenizer has no EOS token (load it with gptune.tokenization.load_tokenizer)")

    train_src = _source(path, "data.path")
    val_src = _source(val_path, "data.val_path") if val_path else None
    key_parts = {
        "version": _CACHE_VERSION,
        "train": train_src[1],
        "val": val_src[1] if val_src else None,
        "val_fraction": None if val_src else val_fraction,
        "text_column": text_column,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "block_size": block_size,
        "seed": seed,
        "max_tokens": max_tokens,
        "fallback_encoding": fallback_encoding,
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / key

    with first():
        loaded = _load_cache(folder)
        if loaded is None:
            train, val, stats = _pack(
                train_src,
                val_src,
                tokenizer,
                block_size,
                text_column=text_column,
                fallback_encoding=fallback_encoding,
                val_fraction=val_fraction,
                num_proc=num_proc,
                max_tokens=max_tokens,
                seed=seed,
                key=key,
                progress=progress,
            )
            if folder.exists():  # an unreadable entry (edited by hand, older numpy): replace it
                shutil.rmtree(folder, ignore_errors=True)
            try:
                _save_cache(folder, train, val, stats)
            except OSError as e:  # a read-only or full disk costs the cache, not the run
                logger.warning("could not write the packed-data cache %s: %s", folder, e)
            logger.info(
                "packed %d train / %d val blocks -> cache %s", stats.blocks_train, stats.blocks_val, folder
            )
        else:
            train, val, stats = loaded
    return LMData(train=PackedBlocks(train), val=PackedBlocks(val) if val is not None else None, stats=stats)


def _source(spec: str, field: str) -> tuple[Callable[..., Iterator[str]], Any, int]:
    """(documents(text_column, fallback_encoding), cache signature, number of files) for a path or hub id."""
    p = Path(spec).expanduser()
    if p.exists() or not _HUB_ID.match(spec) or p.suffix.lower() in TEXT_EXTENSIONS:
        try:
            files = discover_files(spec)
        except GptuneError as e:
            raise GptuneError(*(m.replace("data.path:", f"{field}:", 1) for m in e.problems)) from None
        return partial(_file_documents, files), _files_signature(files), len(files)
    return partial(_hub_documents, spec), ["hub", spec], 0


def _pack(
    train_src: tuple,
    val_src: tuple | None,
    tokenizer: Any,
    block_size: int,
    *,
    text_column: str,
    fallback_encoding: str | None,
    val_fraction: float,
    num_proc: int,
    max_tokens: int | None,
    seed: int,
    key: str,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray | None, PackStats]:
    import datasets

    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.int32
    bars_were_on = not datasets.are_progress_bars_disabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        stream_kw = dict(tokenizer=tokenizer, num_proc=num_proc, dtype=dtype)
        stream, docs = _token_stream(
            train_src[0](text_column, fallback_encoding), max_tokens=max_tokens, key=key, **stream_kw
        )
        train, dropped = _blocks(stream, block_size, "data.path")
        tokens = stream.size
        if val_src is not None:
            vstream, _ = _token_stream(
                val_src[0](text_column, fallback_encoding), max_tokens=None, key=key + "-val", **stream_kw
            )
            val, vdropped = _blocks(vstream, block_size, "data.val_path")
            dropped += vdropped
            tokens += vstream.size
        elif val_fraction > 0:
            train, val = _split_val(train, val_fraction, seed)
        else:
            val = None
    finally:
        if bars_were_on and not progress:
            datasets.enable_progress_bars()
    stats = PackStats(
        files=train_src[2] + (val_src[2] if val_src else 0),
        documents=docs,
        tokens=int(tokens),
        blocks_train=int(train.shape[0]),
        blocks_val=0 if val is None else int(val.shape[0]),
        dropped_tokens=int(dropped),
    )
    return np.ascontiguousarray(train), None if val is None else np.ascontiguousarray(val), stats


# ----------------------------------------------------------------------------- books recipe

GUTENBERG_HUB_ID = "manu/project_gutenberg"
"""Public-domain Project Gutenberg books on the hub (columns id, text; one split per language)."""

_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG.*$", re.M | re.I)


def strip_gutenberg_boilerplate(text: str) -> str:
    """The book between the ``*** START/END OF THE PROJECT GUTENBERG ...`` lines (licence text is not the book)."""
    start = _GUTENBERG_START.search(text)
    end = _GUTENBERG_END.search(text, start.end() if start else 0)
    return text[start.end() if start else 0 : end.start() if end else len(text)].strip() + "\n"


def ensure_books(path: Path, max_bytes: int = 50_000_000) -> Path:
    """Return `path` if it exists; else download English Gutenberg books (.txt) into it, up to `max_bytes`.

    The folder appears atomically (temporary sibling + rename); without the hub, nothing is left
    behind and the error says how to point at local books.
    """
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        import datasets

        written = 0
        for i, row in enumerate(datasets.load_dataset(GUTENBERG_HUB_ID, split="en", streaming=True)):
            text = strip_gutenberg_boilerplate(row["text"])
            book_id = re.sub(r"[^\w.-]", "_", str(row.get("id", i)))
            data = text.encode("utf-8")
            (tmp / f"{i:05d}-{book_id}.txt").write_bytes(data)
            written += len(data)
            if written >= max_bytes:
                break
        if written == 0:
            raise RuntimeError(f"{GUTENBERG_HUB_ID} gave no books")
        os.rename(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise GptuneError(
            f"data.path: {path} does not exist and the Hugging Face hub cannot be reached; "
            "pass --set data.path=DIR (a folder of .txt books)"
        ) from e
    logger.info("downloaded %.1f MB of Gutenberg books -> %s", written / 1e6, path)
    return path
