"""Loading, training and fingerprinting tokenizers (tiny, in process, no network)."""

from __future__ import annotations

import json
import logging

import pytest

import gptune.tokenization as tokenization
from conftest import make_text
from gptune.data.sources import open_source
from gptune.errors import GptuneError
from gptune.tokenization import EOS, load_tokenizer, tokenizer_fingerprint


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_local_folder_gets_pad_equal_to_eos(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    assert tok.eos_token == EOS and tok.pad_token == EOS and tok.pad_token_id == tok.eos_token_id


def test_tokenizer_without_eos_gets_one_added_and_says_so(tmp_path, caplog):
    # Like GPT-1's openai-gpt tokenizer: a vocabulary with an unk token and no EOS.
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "the": 1, "cat": 2, "sat": 3}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>").save_pretrained(
        str(tmp_path / "gpt1ish")
    )
    with caplog.at_level(logging.WARNING, logger="gptune.tokenization"):
        tok = load_tokenizer(str(tmp_path / "gpt1ish"))
    assert tok.eos_token == EOS and tok.eos_token_id == 4 and len(tok) == 5
    assert tok.pad_token_id == tok.eos_token_id
    assert "no EOS token" in caplog.text and "resized to 5" in caplog.text


def test_train_then_reuse_without_retraining(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text(make_text(500, seed=1))
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": make_text(50, seed=2)}) + "\n")
    source = open_source(str(tmp_path))  # a .txt book and a table of rows
    run = tmp_path / "run"
    tok = load_tokenizer("train", run_dir=run, train_texts=lambda: source.sample(10**9), vocab_size=300)
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    assert [p.name for p in run.iterdir()] == ["tokenizer"]  # the temporary folder was renamed away
    assert 256 < len(tok) <= 300 and tok.eos_token == EOS and tok.pad_token == EOS
    assert tok.convert_ids_to_tokens(0) == EOS
    sample = "The old king saw the moon.\n  Ünïcode too"
    assert tok.decode(tok(sample)["input_ids"]) == sample  # byte-level: lossless

    def no_training(*a, **k):
        raise AssertionError("retrained")

    monkeypatch.setattr(tokenization, "train_tokenizer", no_training)
    again = load_tokenizer("train", run_dir=run, train_texts=lambda: source.sample(10**9), vocab_size=300)
    assert again(sample)["input_ids"] == tok(sample)["input_ids"]
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)


def test_train_needs_text_and_a_run_folder(tmp_path):
    with pytest.raises(GptuneError, match="run folder"):
        load_tokenizer("train", train_texts=lambda: [["some text"]])
    with pytest.raises(GptuneError, match="no training text"):
        load_tokenizer("train", run_dir=tmp_path)


def test_one_load_tokenizer_for_task_models_names_the_flag(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    raw.pad_token = None
    raw.save_pretrained(tmp_path / "final")
    tok = load_tokenizer(str(tmp_path / "final"), field="--model")
    assert tok.pad_token_id == tok.eos_token_id  # the EOS/pad guarantee holds on every path
    (tmp_path / "bad").mkdir()
    with pytest.raises(GptuneError, match=r"^--model: .*bad is not a tokenizer folder"):
        load_tokenizer(str(tmp_path / "bad"), field="--model")


def test_folder_that_is_not_a_tokenizer_is_named(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "config.json").write_text("{}")
    with pytest.raises(GptuneError, match=r"weights is not a tokenizer folder"):
        load_tokenizer(str(tmp_path / "weights"))
    with pytest.raises(GptuneError, match=r"no such folder: \./no/such/dir"):
        load_tokenizer("./no/such/dir")


def test_hub_id_offline_says_what_to_pass(offline):
    with pytest.raises(GptuneError, match=r"'someone/tok'.*local tokenizer folder.*model\.tokenizer=train"):
        load_tokenizer("someone/tok")


def test_fingerprint_is_stable_and_tracks_the_vocabulary(tiny_tokenizer_dir, tmp_path):
    from conftest import build_tiny_tokenizer

    a = load_tokenizer(tiny_tokenizer_dir)
    b = load_tokenizer(tiny_tokenizer_dir)
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    a("some text", padding="max_length", max_length=20, truncation=True)
    a.backend_tokenizer.enable_padding(length=30)  # call-time settings do not change the ids
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    other = load_tokenizer(build_tiny_tokenizer(tmp_path / "other", vocab_size=300))
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(b)
    b.add_special_tokens({"additional_special_tokens": ["<s>"]})
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)
