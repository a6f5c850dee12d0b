"""Packing, validation split, caching and every error path of gptune.data.text (tiny files, no network)."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from conftest import make_text

import gptune.data.text as text_mod
from gptune.data.text import build_lm_data, discover_files, ensure_books, split_exact
from gptune.errors import GptuneError


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


def ids(tok, text):
    return tok.backend_tokenizer.encode(text, add_special_tokens=False).ids


def build(path, tok, block_size=16, tmp_path=None, **kw):
    kw.setdefault("val_fraction", 0.0)
    kw.setdefault("progress", False)
    return build_lm_data(str(path), tok, block_size, cache_dir=tmp_path / "cache", **kw)


def flat(ds):
    return np.concatenate([ds[i]["input_ids"].numpy() for i in range(len(ds))]) if len(ds) else np.zeros(0)


def test_split_exact_gives_the_same_tokens_as_the_whole_text(tok):
    # Whitespace runs before a newline, blank lines, indented lines: the cases a naive cut breaks.
    text = "".join(f"Word {i} \n\n  indented line\n\tTab\r\nCRLF line.  \nEnd{i}\n" for i in range(50))
    pieces = split_exact(text, piece_chars=10)
    assert len(pieces) > 20 and "".join(pieces) == text
    assert [t for p in pieces for t in ids(tok, p)] == ids(tok, text)


def test_blocks_are_the_stream_cut_exactly_and_only_the_tail_is_dropped(tok, tmp_path, monkeypatch):
    # Tiny pieces and map batches: many batch boundaries, none of which may lose a token.
    monkeypatch.setattr(text_mod, "_PIECE_CHARS", 50)
    monkeypatch.setattr(text_mod, "_MAP_BATCH_SIZE", 2)
    docs = [make_text(80, seed=1), make_text(3, seed=2), make_text(60, seed=3)]
    (tmp_path / "books" / "sub").mkdir(parents=True)
    for i, d in enumerate(docs):
        (tmp_path / "books" / ("sub" if i == 1 else "") / f"{i}.txt").write_text(d)
    files = discover_files(tmp_path / "books")
    assert [f.name for f in files] == ["0.txt", "2.txt", "1.txt"]  # sorted by relative path: 0, 2, sub/1
    eos = tok.eos_token_id
    stream = []
    for d in (docs[0], docs[2], docs[1]):
        stream += ids(tok, d) + [eos]  # each document followed by exactly one EOS

    data = build(tmp_path / "books", tok, 16, tmp_path)
    n = len(stream) // 16
    assert data.val is None
    assert data.train[0]["input_ids"].dtype == torch.int64
    assert data.train[0]["input_ids"].shape == (16,)
    np.testing.assert_array_equal(flat(data.train), stream[: n * 16])
    s = data.stats
    assert (s.files, s.documents, s.tokens, s.blocks_train, s.blocks_val) == (3, 3, len(stream), n, 0)
    assert s.dropped_tokens == len(stream) - n * 16 and 0 <= s.dropped_tokens < 16


def test_val_split_is_seeded_and_disjoint(tok, tmp_path):
    (tmp_path / "a.txt").write_text(make_text(300))
    full = build(tmp_path / "a.txt", tok, 8, tmp_path, val_fraction=0.0)
    a = build(tmp_path / "a.txt", tok, 8, tmp_path, val_fraction=0.1, seed=3)
    b = build(tmp_path / "a.txt", tok, 8, tmp_path / "other", val_fraction=0.1, seed=3)
    c = build(tmp_path / "a.txt", tok, 8, tmp_path, val_fraction=0.1, seed=4)
    n = len(full.train)
    assert len(a.val) == round(n * 0.1) and len(a.train) + len(a.val) == n
    assert not b.stats.cached
    np.testing.assert_array_equal(a.val.blocks, b.val.blocks)
    assert not np.array_equal(a.val.blocks, c.val.blocks)
    rows = sorted(map(tuple, np.concatenate([a.train.blocks, a.val.blocks]).tolist()))
    assert rows == sorted(map(tuple, full.train.blocks.tolist()))  # a partition of all blocks


def test_val_split_takes_index_sets_that_partition(tok):
    blocks = np.arange(50)[:, None]
    train, val = text_mod._split_val(blocks, 0.01, seed=0)
    assert len(val) == 1  # at least one block when the fraction is > 0
    assert sorted(np.concatenate([train, val]).ravel().tolist()) == list(range(50))


def test_val_path_is_packed_on_its_own(tok, tmp_path):
    (tmp_path / "train.txt").write_text(make_text(100, seed=1))
    (tmp_path / "val.txt").write_text(make_text(20, seed=2))
    data = build(
        tmp_path / "train.txt", tok, 8, tmp_path, val_path=str(tmp_path / "val.txt"), val_fraction=0.5
    )
    v = ids(tok, make_text(20, seed=2)) + [tok.eos_token_id]
    np.testing.assert_array_equal(flat(data.val), v[: len(v) // 8 * 8])
    assert data.stats.blocks_val == len(v) // 8 and data.stats.files == 2


def test_second_call_loads_the_cache_without_tokenizing(tok, tmp_path, monkeypatch):
    calls = []
    real = text_mod._encode
    monkeypatch.setattr(text_mod, "_encode", lambda t, texts: calls.append(len(texts)) or real(t, texts))
    entered = []

    @contextlib.contextmanager
    def first():
        entered.append(True)
        yield

    (tmp_path / "a.txt").write_text(make_text(200))
    one = build(tmp_path / "a.txt", tok, 16, tmp_path, val_fraction=0.05, first=first)
    assert calls and not one.stats.cached and entered == [True]
    calls.clear()
    two = build(tmp_path / "a.txt", tok, 16, tmp_path, val_fraction=0.05, first=first)
    assert calls == [] and two.stats.cached
    np.testing.assert_array_equal(one.train.blocks, two.train.blocks)
    np.testing.assert_array_equal(one.val.blocks, two.val.blocks)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []  # no temp left
    # A damaged entry is rebuilt and replaced, not trusted.
    (entry,) = [p for p in (tmp_path / "cache").iterdir()]
    (entry / "stats.json").write_text("{")
    assert not build(tmp_path / "a.txt", tok, 16, tmp_path, val_fraction=0.05).stats.cached
    assert build(tmp_path / "a.txt", tok, 16, tmp_path, val_fraction=0.05).stats.cached
    # Any input that changes the ids is a new entry: another block size, or an edited file.
    assert not build(tmp_path / "a.txt", tok, 8, tmp_path, val_fraction=0.05).stats.cached
    (tmp_path / "a.txt").write_text(make_text(201))
    assert not build(tmp_path / "a.txt", tok, 16, tmp_path, val_fraction=0.05).stats.cached


def test_max_tokens_keeps_a_prefix_of_the_stream(tok, tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.txt").write_text(make_text(100, seed=i))
    full = build(tmp_path, tok, 10, tmp_path)
    some = build(tmp_path, tok, 10, tmp_path, max_tokens=255)
    assert some.stats.tokens == 255 and some.stats.blocks_train == 25 and some.stats.dropped_tokens == 5
    np.testing.assert_array_equal(some.train.blocks, full.train.blocks[:25])


def test_table_files_use_the_text_column(tok, tmp_path):
    rows = [make_text(4, seed=i) for i in range(6)]
    d = tmp_path / "tables"
    d.mkdir()
    (d / "a.jsonl").write_text(
        "".join(json.dumps({"body": r, "n": i}) + "\n" for i, r in enumerate(rows[:2]))
    )
    (d / "b.json").write_text(json.dumps([{"body": r} for r in rows[2:4]]))
    (d / "c.csv").write_text("n,body\n" + "".join(f'{i},"{r}"\n' for i, r in enumerate(rows[4:])))
    data = build(d, tok, 4, tmp_path, text_column="body")
    stream = [t for r in rows for t in ids(tok, r) + [tok.eos_token_id]]
    assert data.stats.documents == 6
    np.testing.assert_array_equal(flat(data.train), stream[: len(stream) // 4 * 4])


def test_parquet_rows_are_documents(tok, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"text": [make_text(5, seed=1), None, make_text(5, seed=2)]}), tmp_path / "x.parquet"
    )
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
        (
            lambda d: (d / "nope").mkdir() or (d / "nope" / "x.md").write_text("hi"),
            r"no text files in folder .*nope.*\.txt",
        ),
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
    with pytest.raises(
        GptuneError, match=r"a\.txt: not UTF-8 text \(first bad byte 0xe6 at byte offset 12\)"
    ):
        build(tmp_path / "a.txt", tok, 4, tmp_path)
    data = build(tmp_path / "a.txt", tok, 4, tmp_path, fallback_encoding="latin-1")
    assert data.stats.tokens == len(ids(tok, "Caesar and Cæsar " * 20)) + 1


def test_corpus_smaller_than_a_block_says_how_many_tokens(tok, tmp_path):
    (tmp_path / "a.txt").write_text("the cat")
    n = len(ids(tok, "the cat")) + 1
    with pytest.raises(GptuneError, match=rf"has {n} tokens, fewer than one block of data.block_size=64"):
        build(tmp_path / "a.txt", tok, 64, tmp_path)
    with pytest.raises(GptuneError, match="val_fraction"):  # one block: nothing left for training
        build(tmp_path / "a.txt", tok, n, tmp_path, val_fraction=0.5)


def test_hub_dataset_offline_error_names_the_id(tok, tmp_path, offline):
    with pytest.raises(GptuneError, match=r"someone/corpus.*--set data\.path=DIR"):
        build("someone/corpus", tok, 4, tmp_path)


def test_ensure_books_returns_an_existing_folder_and_fails_cleanly_offline(tmp_path, offline):
    (tmp_path / "books").mkdir()
    assert ensure_books(tmp_path / "books") == tmp_path / "books"
    with pytest.raises(
        GptuneError, match=r"missing does not exist and the Hugging Face hub cannot be reached"
    ):
        ensure_books(tmp_path / "data" / "missing")
    assert list((tmp_path / "data").iterdir()) == []  # no partial folder left behind


def test_gutenberg_boilerplate_is_stripped():
    raw = "licence\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nThe book.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nmore licence"
    assert text_mod.strip_gutenberg_boilerplate(raw) == "The book.\n"


def test_two_processes_give_the_same_blocks(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(text_mod, "_PIECE_CHARS", 200)
    (tmp_path / "a.txt").write_text(make_text(300))
    one = build(tmp_path / "a.txt", tok, 16, tmp_path / "1", num_proc=1)
    two = build(tmp_path / "a.txt", tok, 16, tmp_path / "2", num_proc=2)
    np.testing.assert_array_equal(one.train.blocks, two.train.blocks)
