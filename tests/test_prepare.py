"""Preparing pretraining data: exact token shards, the validation rules, resume, the cache, every error path
(tiny files, no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import gptune.data.encode as encode_mod
import gptune.data.prepare as prepare_mod
from conftest import make_text
from gptune.config import DataConfig
from gptune.data.books import ensure_books, strip_gutenberg_boilerplate
from gptune.data.encode import split_exact, tail_cut
from gptune.data.prepare import prepare_lm_data
from gptune.data.prepared import validation_text
from gptune.data.shards import StreamWriter, TokenStream
from gptune.data.sources import discover_files, open_source
from gptune.errors import GptuneError
from gptune.faults import HOLD_ENV


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    from gptune.tokenization import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture
def offline(monkeypatch):
    """Make every hub call fail at once, as on a machine without network."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture
def small_batches(monkeypatch):
    """Tiny pieces and worker batches: many batch boundaries, none of which may lose a token."""
    monkeypatch.setattr(encode_mod, "PIECE_CHARS", 50)
    monkeypatch.setattr(encode_mod, "BATCH_CHARS", 300)


def ids(tok, text):
    return tok.backend_tokenizer.encode(text, add_special_tokens=False).ids


def build(path, tok, block_size=16, tmp_path=None, *, seed=0, shard_tokens=None, main=True, **kw):
    kw.setdefault("val_fraction", 0.0)
    kw.setdefault("num_proc", 1)
    data = DataConfig(path=str(path), block_size=block_size, cache_dir=str(tmp_path / "cache"), **kw)
    return prepare_lm_data(data, tok, seed=seed, progress=False, shard_tokens=shard_tokens, main=main)


def flat(ds):
    return np.concatenate([ds[i]["input_ids"].numpy() for i in range(len(ds))]) if len(ds) else np.zeros(0)


def whole(stream: TokenStream) -> np.ndarray:
    return stream.read(0, len(stream))


# ----------------------------------------------------------------------------- exact cuts


def test_split_exact_gives_the_same_tokens_as_the_whole_text(tok):
    # Whitespace runs before a newline, blank lines, indented lines: the cases a naive cut breaks.
    text = "".join(f"Word {i} \n\n  indented line\n\tTab\r\nCRLF line.  \nEnd{i}\n" for i in range(50))
    pieces = split_exact(text, piece_chars=10)
    assert len(pieces) > 20 and "".join(pieces) == text
    assert [t for p in pieces for t in ids(tok, p)] == ids(tok, text)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("text", [
    make_text(40, seed=5),
    "".join(f"Word {i} \n\n  indented line\n\tTab  \nEnd{i}\n" for i in range(20)),
    "one long line without any newline at all, only   spaces between words " * 5,
])
def test_tail_cut_is_exact_and_near_the_fraction(tok, text, fraction):
    cut = tail_cut(text, fraction)
    assert 0 < cut < len(text)
    assert ids(tok, text[:cut]) + ids(tok, text[cut:]) == ids(tok, text)
    assert abs((len(text) - cut) / len(text) - fraction) < 0.2


def test_tail_cut_without_a_cut_point_keeps_the_text_whole():
    assert tail_cut("nospaceatall", 0.5) == len("nospaceatall")


# ----------------------------------------------------------------------------- shard files


@pytest.mark.parametrize("chunks", [[5], [4, 1], [1] * 12, [0, 7, 0, 3], [15], [2, 13, 1]])
def test_stream_across_shard_boundaries_reads_back_every_slice(tmp_path, chunks):
    ref = np.arange(sum(chunks), dtype=np.uint16) + 7
    w = StreamWriter(tmp_path, "s", np.uint16, shard_tokens=5)
    pos = 0
    for n in chunks:
        w.append(ref[pos : pos + n])
        w.end_document()
        pos += n
    w.close()
    files = sorted(p.name for p in tmp_path.glob("s-*.bin"))
    assert len(files) == -(-ref.size // 5)  # a shard that would stay empty (exactly full before) is not left
    assert all((tmp_path / f).stat().st_size == 10 for f in files[:-1])
    s = TokenStream(tmp_path, "s", "uint16", 5, ref.size)
    for start in range(ref.size):
        for n in range(ref.size - start + 1):
            np.testing.assert_array_equal(s.read(start, n), ref[start : start + n])
    np.testing.assert_array_equal(s.document_ends(), np.cumsum(chunks))
    with pytest.raises(IndexError):
        s.read(ref.size - 1, 2)


def test_writer_continues_a_stream_and_cuts_what_came_after_its_state(tmp_path):
    w = StreamWriter(tmp_path, "s", np.uint32, shard_tokens=4)
    w.append(np.arange(6))
    w.end_document()
    w.append(np.arange(6, 11))  # written but never recorded: an interrupted run
    w.flush()
    w2 = StreamWriter(tmp_path, "s", np.uint32, shard_tokens=4, tokens=6, documents=1)
    w2.append(np.arange(100, 103))
    w2.end_document()
    w2.close()
    s = TokenStream(tmp_path, "s", "uint32", 4, 9)
    np.testing.assert_array_equal(whole(s), [0, 1, 2, 3, 4, 5, 100, 101, 102])
    np.testing.assert_array_equal(s.document_ends(), [6, 9])
    assert sorted(p.name for p in tmp_path.glob("s-*.bin")) == ["s-00000.bin", "s-00001.bin", "s-00002.bin"]


# ----------------------------------------------------------------------------- exact packing


def test_blocks_are_the_stream_cut_exactly_and_only_the_tail_is_dropped(tok, tmp_path, small_batches):
    docs = [make_text(80, seed=1), make_text(3, seed=2), make_text(60, seed=3)]
    (tmp_path / "books" / "sub").mkdir(parents=True)
    for i, d in enumerate(docs):
        (tmp_path / "books" / ("sub" if i == 1 else "") / f"{i}.txt").write_text(d)
    files = discover_files(tmp_path / "books")
    assert [f.name for f in files] == ["0.txt", "2.txt", "1.txt"]  # sorted by relative path: 0, 2, sub/1
    eos = tok.eos_token_id
    stream, ends = [], []
    for d in (docs[0], docs[2], docs[1]):
        stream += ids(tok, d) + [eos]  # each document followed by exactly one EOS
        ends.append(len(stream))

    # shards of 48 tokens (3 blocks): blocks and documents cross shard files
    data = build(tmp_path / "books", tok, 16, tmp_path, shard_tokens=48)
    n = len(stream) // 16
    assert data.val is None and data.train.stream.dtype == np.uint16
    assert data.train[0]["input_ids"].dtype == torch.int64 and data.train[0]["input_ids"].shape == (16,)
    np.testing.assert_array_equal(flat(data.train), stream[: n * 16])
    np.testing.assert_array_equal(whole(data.train.stream), stream)  # the dropped tail is on disk too
    np.testing.assert_array_equal(data.train.stream.document_ends(), ends)
    s = data.stats
    assert (s.files, s.documents, s.tokens, s.blocks_train, s.blocks_val) == (3, 3, len(stream), n, 0)
    assert s.dropped_tokens == len(stream) - n * 16 and 0 <= s.dropped_tokens < 16
    assert s.shards == -(-len(stream) // 48) and s.disk_bytes == 2 * len(stream)
    assert len(list(data.folder.glob("train-*.bin"))) == s.shards


def test_two_worker_processes_give_the_same_shards(tok, tmp_path, small_batches):
    (tmp_path / "books").mkdir()
    for i in range(4):
        (tmp_path / "books" / f"{i}.txt").write_text(make_text(150, seed=i))
    one = build(tmp_path / "books", tok, 16, tmp_path / "1", num_proc=1)
    two = build(tmp_path / "books", tok, 16, tmp_path / "2", num_proc=2)
    np.testing.assert_array_equal(whole(one.train.stream), whole(two.train.stream))


def test_large_vocabularies_are_stored_as_uint32(tmp_path):
    from gptune.data.shards import token_dtype

    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


# ----------------------------------------------------------------------------- validation rules


def test_tail_split_holds_out_the_end_of_each_document(tok, tmp_path, small_batches):
    docs = [make_text(200, seed=i) for i in range(3)]
    (tmp_path / "books").mkdir()
    for i, d in enumerate(docs):
        (tmp_path / "books" / f"{i}.txt").write_text(d)
    data = build(tmp_path / "books", tok, 8, tmp_path, val_fraction=0.1, val_split="tail", shard_tokens=40)
    eos = tok.eos_token_id
    train, val, tails = [], [], []
    for d in docs:
        cut = tail_cut(d, 0.1)
        assert ids(tok, d[:cut]) + ids(tok, d[cut:]) == ids(tok, d)  # no token lost or changed by the cut
        train += ids(tok, d[:cut]) + [eos]
        val += ids(tok, d[cut:]) + [eos]
        tails.append(d[cut:])
    np.testing.assert_array_equal(whole(data.train.stream), train)
    np.testing.assert_array_equal(whole(data.val.stream), val)
    assert data.val_split == "tail" and len(data.val) == len(val) // 8
    assert data.stats.documents == 3 and data.stats.tokens == len(train) + len(val)
    # the validation text is the held-out tails, contiguous, up to the last whole block
    text = validation_text(data, tok)
    whole_tails = "\n\n".join(tails)
    assert text == whole_tails[: len(text)] and len(text) > 0.9 * len(whole_tails) - 40
    assert validation_text(data, tok).split("\n\n")[0] not in "".join(d[: tail_cut(d, 0.1)] for d in docs)


def test_documents_split_is_seeded_and_a_partition_of_the_documents(tok, tmp_path):
    rows = [make_text(3, seed=i) for i in range(60)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    a = build(tmp_path / "rows.jsonl", tok, 4, tmp_path, val_fraction=0.2, val_split="documents", seed=1)
    b = build(tmp_path / "rows.jsonl", tok, 4, tmp_path / "b", val_fraction=0.2, val_split="documents", seed=1)
    c = build(tmp_path / "rows.jsonl", tok, 4, tmp_path, val_fraction=0.2, val_split="documents", seed=2)
    eos = tok.eos_token_id
    held = [i for i in range(60) if prepare_mod._held_out(i, 1, 0.2)]
    assert 3 <= len(held) <= 25
    np.testing.assert_array_equal(whole(a.val.stream), [t for i in held for t in ids(tok, rows[i]) + [eos]])
    np.testing.assert_array_equal(whole(a.train.stream),
                                  [t for i in range(60) if i not in held for t in ids(tok, rows[i]) + [eos]])
    np.testing.assert_array_equal(whole(a.val.stream), whole(b.val.stream))
    assert not np.array_equal(whole(a.val.stream), whole(c.val.stream))


def test_blocks_split_is_seeded_and_disjoint(tok, tmp_path):
    (tmp_path / "a.txt").write_text(make_text(300))
    full = build(tmp_path / "a.txt", tok, 8, tmp_path)
    a = build(tmp_path / "a.txt", tok, 8, tmp_path, val_fraction=0.1, val_split="blocks", seed=3)
    b = build(tmp_path / "a.txt", tok, 8, tmp_path / "other", val_fraction=0.1, val_split="blocks", seed=3)
    c = build(tmp_path / "a.txt", tok, 8, tmp_path, val_fraction=0.1, val_split="blocks", seed=4)
    n = len(full.train)
    assert len(a.val) == round(n * 0.1) and len(a.train) + len(a.val) == n
    assert not b.stats.cached
    np.testing.assert_array_equal(a.val.blocks, b.val.blocks)
    assert not np.array_equal(a.val.blocks, c.val.blocks)
    rows = sorted(map(tuple, np.concatenate([flat(a.train), flat(a.val)]).reshape(-1, 8).tolist()))
    assert rows == sorted(map(tuple, flat(full.train).reshape(-1, 8).tolist()))  # a partition of all blocks
    # today's rule: the same numpy permutation of the block indices
    perm = np.random.default_rng(3).permutation(n)
    np.testing.assert_array_equal(a.val.blocks, np.sort(perm[: len(a.val)]))
    text = validation_text(a, tok)
    assert text.split("\n\n")[0] == tok.decode(flat(a.val)[:8].tolist())


def test_val_path_is_packed_on_its_own(tok, tmp_path):
    (tmp_path / "train.txt").write_text(make_text(100, seed=1))
    (tmp_path / "val.txt").write_text(make_text(20, seed=2))
    data = build(tmp_path / "train.txt", tok, 8, tmp_path, val_path=str(tmp_path / "val.txt"), val_fraction=0.5)
    v = ids(tok, make_text(20, seed=2)) + [tok.eos_token_id]
    np.testing.assert_array_equal(flat(data.val), v[: len(v) // 8 * 8])
    assert data.stats.blocks_val == len(v) // 8 and data.stats.files == 2 and data.val_split == "path"


# ----------------------------------------------------------------------------- cache, resume, processes


def test_second_call_memory_maps_without_tokenizing(tok, tmp_path, monkeypatch):
    calls = []
    real = encode_mod.encode_ids
    monkeypatch.setattr(encode_mod, "encode_ids", lambda t, texts: calls.append(len(texts)) or real(t, texts))
    (tmp_path / "a.txt").write_text(make_text(200))
    one = build(tmp_path / "a.txt", tok, 16, tmp_path, val_fraction=0.05)
    assert calls and not one.stats.cached
    calls.clear()
    two = build(tmp_path / "a.txt", tok, 16, tmp_path, val_fraction=0.05)
    assert calls == [] and two.stats.cached and two.folder == one.folder
    assert isinstance(two.train.stream._shard(0), np.memmap)
    np.testing.assert_array_equal(flat(one.train), flat(two.train))
    lm = tmp_path / "cache" / "lm"
    assert sorted(p.name for p in lm.iterdir() if not p.name.endswith(".lock")) == [one.folder.name]
    # Any input that changes the ids is a new entry: another block size, or an edited file.
    assert not build(tmp_path / "a.txt", tok, 8, tmp_path, val_fraction=0.05).stats.cached
    (tmp_path / "a.txt").write_text(make_text(201))
    assert not build(tmp_path / "a.txt", tok, 16, tmp_path, val_fraction=0.05).stats.cached


def test_an_interrupted_prepare_resumes_and_equals_an_uninterrupted_one(tok, tmp_path, monkeypatch, small_batches):
    for i in range(6):
        (tmp_path / "books").mkdir(exist_ok=True)
        (tmp_path / "books" / f"{i}.txt").write_text(make_text(120, seed=i))
    kw = dict(val_fraction=0.1, val_split="tail", shard_tokens=64)
    straight = build(tmp_path / "books", tok, 16, tmp_path / "straight", **kw)

    real = prepare_mod.encode_texts
    seen = []

    def interrupted(items, *a, **k):
        for n, out in enumerate(real(items, *a, **k)):
            if n == 7:  # mid-corpus, after some shards filled and some tokens written past the last state
                raise KeyboardInterrupt
            seen.append(out[0])
            yield out

    monkeypatch.setattr(prepare_mod, "_CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(prepare_mod, "encode_texts", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "books", tok, 16, tmp_path, **kw)
    (partial,) = (tmp_path / "cache" / "lm").glob(".*.partial")
    state = json.loads((partial / "state.json").read_text())
    assert 0 < state["documents"] < 6
    assert not [p for p in (tmp_path / "cache" / "lm").iterdir() if not p.name.startswith(".")]  # not ready

    resumed_docs = []

    def counting(items, *a, **k):
        for out in real(items, *a, **k):
            resumed_docs.append(out[0][0])
            yield out

    monkeypatch.setattr(prepare_mod, "encode_texts", counting)
    again = build(tmp_path / "books", tok, 16, tmp_path, **kw)
    assert min(resumed_docs) == state["documents"]  # documents already in the shards were not tokenized again
    for name in ("train", "val"):
        a, b = getattr(straight, name).stream, getattr(again, name).stream
        np.testing.assert_array_equal(whole(a), whole(b))
        np.testing.assert_array_equal(a.document_ends(), b.document_ends())
    assert again.stats.documents == straight.stats.documents == 6
    assert not partial.exists() and not (again.folder / "state.json").exists()


def test_other_processes_wait_for_the_main_process_to_publish(tok, tmp_path, monkeypatch):
    """Rank 1 polls before rank 0 starts (the hold hook makes rank 0 wait for it): no barrier, no timeout."""
    import threading

    (tmp_path / "a.txt").write_text(make_text(200))
    monkeypatch.setenv(HOLD_ENV, "1")
    got = {}
    waiter = threading.Thread(target=lambda: got.update(w=build(tmp_path / "a.txt", tok, 16, tmp_path, main=False)))
    waiter.start()
    main = build(tmp_path / "a.txt", tok, 16, tmp_path)
    waiter.join(timeout=60)
    assert not main.stats.cached and got["w"].stats.cached and got["w"].folder == main.folder
    np.testing.assert_array_equal(flat(main.train), flat(got["w"].train))
    assert not list((tmp_path / "cache" / "lm").glob(".*.waiting-*"))


def test_prepare_command_then_pretrain_reuses_the_shards(tmp_path, monkeypatch, capsys, tiny_tokenizer_dir):
    from conftest import make_workdir, run_cli

    make_workdir(tmp_path, monkeypatch, {"a.txt": 400, "b.txt": 300})
    (tmp_path / "r.yaml").write_text(
        f"name: tiny\nmodel: {{tokenizer: {tiny_tokenizer_dir}, config: {{n_layer: 2, n_head: 2, n_embd: 32, "
        "n_positions: 32, dropout: 0.0}}\ndata: {path: books, block_size: 32, val_fraction: 0.1, num_proc: 1}\n"
        "train: {max_steps: 2, micro_batch_size: 4, global_batch_size: 4, eval_every: 0, save_every: 0}\n")
    assert run_cli("prepare", "r.yaml") == 0
    out = capsys.readouterr().out
    assert out.startswith("prepared: ") and "2 documents" in out and "-> " in out
    assert run_cli("prepare", "r.yaml") == 0
    assert capsys.readouterr().out.startswith("already prepared: ")
    assert run_cli("pretrain", "r.yaml") == 0
    assert "(cached)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "runs" / "tiny" / "final" / "metrics.json").read_text())
    assert metrics["val_ppl_sliding"] > 1 and metrics["val_ppl"] > 1


TWO_PROC_RECIPE = (
    "# gptune pretrain r.yaml --num-processes 2\nname: tiny\n"
    "model: {tokenizer: train, vocab_size: 400, config: {n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64, dropout: 0.0}}\n"
    "data: {path: books, block_size: 32, val_fraction: 0.05, num_proc: 1}\n"
    "train: {max_steps: 6, micro_batch_size: 4, global_batch_size: 8, lr: 3e-3, warmup: 2,\n"
    "        eval_every: 0, save_every: 6, keep_last: 1, log_every: 2}\n"
)


@pytest.mark.slow  # starts processes
def test_two_process_pretrain_where_rank_one_polls_before_rank_zero_prepares(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from conftest import make_workdir, run_cli

    make_workdir(tmp_path, monkeypatch, {"a.txt": 1500})
    (tmp_path / "r.yaml").write_text(TWO_PROC_RECIPE)
    env = {**os.environ, HOLD_ENV: "1"}  # rank 0 starts preparing only once rank 1 is polling
    out = subprocess.run([sys.executable, "-m", "gptune", "pretrain", "r.yaml", "--out-dir", "runs/two",
                          "--num-processes", "2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "prepared:" in out.stdout  # this run prepared (nothing was cached before it)
    lm = tmp_path / "cache" / "lm"
    assert len([p for p in lm.iterdir() if not p.name.startswith(".")]) == 1
    assert not list(lm.glob(".*.partial")) and not list(lm.glob(".*.waiting-*"))
    # both ranks read the same shards as a single process does: the same losses step by step
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/one") == 0

    def losses(run):
        rows = [json.loads(x) for x in (tmp_path / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if r["event"] == "train"]

    assert losses("two") == pytest.approx(losses("one"), abs=1e-5) and len(losses("one")) == 3


# ----------------------------------------------------------------------------- sources


def test_max_tokens_keeps_a_prefix_of_the_stream(tok, tmp_path):
    (tmp_path / "books").mkdir()
    for i in range(5):
        (tmp_path / "books" / f"{i}.txt").write_text(make_text(100, seed=i))
    full = build(tmp_path / "books", tok, 10, tmp_path)
    some = build(tmp_path / "books", tok, 10, tmp_path, max_tokens=255)
    assert some.stats.tokens == 255 and some.stats.blocks_train == 25 and some.stats.dropped_tokens == 5
    np.testing.assert_array_equal(flat(some.train), flat(full.train)[:250])


def test_one_cache_root_holds_both_layouts(tmp_path, monkeypatch):
    from gptune.data.cache import cache_root, entry_dir

    monkeypatch.setenv("GPTUNE_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" and cache_root(str(tmp_path / "d")) == tmp_path / "d"
    assert entry_dir("lm", "k") == tmp_path / "c" / "lm" / "k"
    assert entry_dir("tasks", "k", str(tmp_path / "d")) == tmp_path / "d" / "tasks" / "k"


def test_a_saved_datasets_folder_is_read_like_a_hub_corpus(tok, tmp_path):
    import datasets

    rows = [make_text(5, seed=i) for i in range(30)]
    datasets.Dataset.from_dict({"body": rows, "n": list(range(30))}).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": rows[:10]})}).save_to_disk(
        str(tmp_path / "dd"))
    data = build(tmp_path / "ds", tok, 4, tmp_path, text_column="body")
    stream = [t for r in rows for t in ids(tok, r) + [tok.eos_token_id]]
    np.testing.assert_array_equal(whole(data.train.stream), stream)
    assert data.stats.documents == 30
    dd = build(tmp_path / "dd", tok, 4, tmp_path, text_column="body")
    assert dd.stats.documents == 10
    with pytest.raises(GptuneError, match=r"data\.path: dataset .*ds has no column 'text'"):
        build(tmp_path / "ds", tok, 4, tmp_path)
    # a capped sample for tokenizer training comes from across the dataset, not its first rows
    sample = [t for b in open_source(str(tmp_path / "ds"), text_column="body").sample(300, seed=0) for t in b]
    assert 300 <= sum(map(len, sample)) < 700 and sample[:2] != rows[:2]


def test_a_capped_sample_of_files_spreads_over_each_file(tmp_path):
    (tmp_path / "a.txt").write_text("".join(f"head line {i}\n" for i in range(5000))
                                    + "".join(f"tail line {i}\n" for i in range(5000)))
    src = open_source(str(tmp_path / "a.txt"))
    sample = "".join(t for b in src.sample(20_000) for t in b)
    assert 15_000 < len(sample) < 25_000 and "head line" in sample and "tail line" in sample


def test_tokenizer_training_reads_a_capped_sample(tmp_path):
    from gptune.data.prepare import load_pretrain_tokenizer
    from gptune.recipes import build_recipe

    (tmp_path / "a.txt").write_text(make_text(3000))
    r = build_recipe({"model": {"tokenizer": "train", "vocab_size": 300, "tokenizer_train_bytes": 5000},
                      "data": {"path": str(tmp_path / "a.txt")}, "train": {"max_steps": 1}})
    read = []
    real = open_source(str(tmp_path / "a.txt")).sample

    import gptune.data.sources as sources_mod

    def spy(self, max_bytes, seed=0):
        for b in real(max_bytes, seed):
            read.extend(b)
            yield b

    pytest.MonkeyPatch.context  # noqa: B018 - (document: patched below for this test only)
    mp = pytest.MonkeyPatch()
    mp.setattr(sources_mod.Source, "sample", spy)
    try:
        tok = load_pretrain_tokenizer(r.model, r.data, tmp_path / "run", seed=r.seed)
    finally:
        mp.undo()
    assert len(tok) == 300 and (tmp_path / "run" / "tokenizer").is_dir()
    assert 4000 < sum(map(len, read)) < 7000


def test_table_files_use_the_text_column(tok, tmp_path):
    rows = [make_text(4, seed=i) for i in range(6)]
    d = tmp_path / "tables"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps({"body": r, "n": i}) + "\n" for i, r in enumerate(rows[:2])))
    (d / "b.json").write_text(json.dumps([{"body": r} for r in rows[2:4]]))
    (d / "c.csv").write_text("n,body\n" + "".join(f'{i},"{r}"\n' for i, r in enumerate(rows[4:])))
    data = build(d, tok, 4, tmp_path, text_column="body")
    stream = [t for r in rows for t in ids(tok, r) + [tok.eos_token_id]]
    assert data.stats.documents == 6
    np.testing.assert_array_equal(flat(data.train), stream[: len(stream) // 4 * 4])


def test_parquet_rows_are_documents(tok, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [make_text(5, seed=1), None, make_text(5, seed=2)]}), tmp_path / "x.parquet")
    data = build(tmp_path / "x.parquet", tok, 4, tmp_path)
    assert data.stats.documents == 2  # the null row is skipped, not an empty document


def test_missing_text_column_names_file_column_and_columns(tok, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "hi", "id": 1}\n')
    with pytest.raises(GptuneError, match=r"a\.jsonl: no column 'text' \(columns: body, id\)"):
        build(tmp_path / "a.jsonl", tok, 4, tmp_path)


@pytest.mark.parametrize(
    ("setup", "pattern"),
    [
        (lambda d: None, r"data\.path: no such file or folder: .*nope"),
        (lambda d: (d / "nope").mkdir() or (d / "nope" / "x.md").write_text("hi"),
         r"no text files in folder .*nope.*\.txt"),
        (lambda d: (d / "nope").mkdir() or (d / "nope" / "x.txt").write_text(""), r"nope: corpus is empty"),
        (lambda d: (d / "nope").write_bytes(b"ok"), r"nope is not a text file"),
    ],
)
def test_bad_data_path_errors_name_the_path(tok, tmp_path, setup, pattern):
    setup(tmp_path)
    with pytest.raises(GptuneError, match=pattern):
        build(tmp_path / "nope", tok, 4, tmp_path)


def test_non_utf8_names_file_and_offset_unless_a_fallback_is_set(tok, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"Caesar and C\xe6sar " * 20)
    with pytest.raises(GptuneError, match=r"a\.txt: not UTF-8 text \(first bad byte 0xe6 at byte offset 12\)"):
        build(tmp_path / "a.txt", tok, 4, tmp_path)
    data = build(tmp_path / "a.txt", tok, 4, tmp_path, fallback_encoding="latin-1")
    assert data.stats.tokens == len(ids(tok, "Caesar and Cæsar " * 20)) + 1


def test_corpus_smaller_than_a_block_says_how_many_tokens(tok, tmp_path):
    (tmp_path / "a.txt").write_text("the cat")
    n = len(ids(tok, "the cat")) + 1
    with pytest.raises(GptuneError, match=rf"has {n} tokens, fewer than one block of data.block_size=64"):
        build(tmp_path / "a.txt", tok, 64, tmp_path)
    with pytest.raises(GptuneError, match="val_fraction"):  # one block: nothing left for training
        build(tmp_path / "a.txt", tok, n, tmp_path, val_fraction=0.5, val_split="blocks")
    (tmp_path / "b.txt").write_text(make_text(50))
    with pytest.raises(GptuneError, match=r"data\.val_fraction=0\.01: the held-out validation text "
                                          r"\(data\.val_split=tail\) has \d+ tokens"):
        build(tmp_path / "b.txt", tok, 64, tmp_path, val_fraction=0.01)


def test_hub_dataset_offline_error_names_the_id(tok, tmp_path, offline):
    with pytest.raises(GptuneError, match=r"someone/corpus.*--set data\.path=DIR"):
        build("someone/corpus", tok, 4, tmp_path)


def test_ensure_books_returns_an_existing_folder_and_fails_cleanly_offline(tmp_path, offline):
    (tmp_path / "books").mkdir()
    assert ensure_books(tmp_path / "books") == tmp_path / "books"
    with pytest.raises(GptuneError, match=r"missing does not exist and the Hugging Face hub cannot be reached"):
        ensure_books(tmp_path / "data" / "missing")
    assert list((tmp_path / "data").iterdir()) == []  # no partial folder left behind


def test_gutenberg_boilerplate_is_stripped():
    raw = ("licence\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nThe book.\n"
           "*** END OF THE PROJECT GUTENBERG EBOOK X ***\nmore licence")
    assert strip_gutenberg_boilerplate(raw) == "The book.\n"


def _table_files(tmp_path, rows):
    """The same rows (some null or empty, one a number) as .jsonl, .csv, .parquet and .json."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"id": i, "body": r}) + "\n" for i, r in enumerate(rows)))
    (tmp_path / "t.json").write_text(json.dumps([{"id": i, "body": r} for i, r in enumerate(rows)]))
    pq.write_table(pa.table({"id": list(range(len(rows))), "body": rows}), tmp_path / "t.parquet",
                   row_group_size=7)
    pcsv.write_csv(pa.table({"id": list(range(len(rows))), "body": [None if r is None else str(r) for r in rows]}),
                     tmp_path / "t.csv")
    return [tmp_path / f"t.{s}" for s in ("jsonl", "json", "parquet", "csv")]


def test_table_texts_stream_in_batches_equal_to_the_whole_file(tmp_path):
    from gptune.data.sources import iter_table_texts

    rows = [make_text(3, seed=i) if i % 5 else ("" if i % 10 else None) for i in range(40)]
    rows[3] = "a document\nof two lines, \"quoted\""  # a csv cell over two lines
    want = [r for r in rows if r]
    for path in _table_files(tmp_path, rows):
        batches = list(iter_table_texts(path, "body", batch_rows=4))
        assert [t for b in batches for t in b] == want, path.name
        assert max(map(len, batches)) <= 4 and len(batches) >= len(want) // 4, path.name
    (tmp_path / "n.jsonl").write_text('{"body": 12}\n{"body": 1.5}\n')  # non-string values as their text
    assert list(iter_table_texts(tmp_path / "n.jsonl", "body")) == [["12", "1.5"]]


def test_a_jsonl_corpus_is_read_in_bounded_memory(tmp_path):
    """Documents of a 48 MB .jsonl come one batch (<= 8M characters) at a time: the reader never holds the file."""
    import tracemalloc

    doc = "word " * 4000  # 20 KB
    path = tmp_path / "big.jsonl"
    with path.open("w") as fh:
        for i in range(2400):
            fh.write(json.dumps({"text": f"{i} {doc}"}) + "\n")
    src = open_source(str(path))
    tracemalloc.start()
    count = sum(1 for _ in src.documents())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 2400
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.1f} MB while reading a 48 MB file"


@pytest.mark.parametrize("suffix", ["jsonl", "json", "parquet", "csv"])
def test_a_table_without_the_text_column_names_file_and_columns(tmp_path, suffix):
    from gptune.data.sources import iter_table_texts

    path = {p.suffix[1:]: p for p in _table_files(tmp_path, ["a", "b"])}[suffix]
    with pytest.raises(GptuneError, match=rf"t\.{suffix}: no column 'text' \(columns: id, body\); set data.text_column"):
        list(iter_table_texts(path, "text"))


def test_a_bad_jsonl_line_names_the_file_and_line(tmp_path):
    from gptune.data.sources import iter_table_texts

    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n\n{"text": "cut\n')
    with pytest.raises(GptuneError, match=r"b\.jsonl line 3: not a JSON object"):
        list(iter_table_texts(tmp_path / "b.jsonl", "text"))
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n["a list"]\n')
    with pytest.raises(GptuneError, match=r"c\.jsonl line 2: not a JSON object"):
        list(iter_table_texts(tmp_path / "c.jsonl", "text"))
