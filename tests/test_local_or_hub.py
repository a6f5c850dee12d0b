"""The one rule for "a local path or a hub id" (gptune.hub.is_hub_id), on its odd cases, and every reader
following it: a local name that does not exist is "no such file or folder", never a hub error."""

from __future__ import annotations

import pytest

from gptune.errors import GptuneError
from gptune.hub import is_hub_id, is_local


@pytest.mark.parametrize(("spec", "hub"), [
    ("gpt2", True),                          # a bare name that does not exist here: the hub's
    ("openai-community/openai-gpt", True),   # owner/name
    ("EleutherAI/pythia-1.4b", True),        # a dot in a repo name is no file extension
    ("books", True),                         # a relative name that does not exist yet: a hub id ...
    ("data/books", True),                    # ... also with a folder part
    ("./books", False),                      # ... unless written as a path
    ("../books", False),
    ("~/books", False),
    ("/no/such/books", False),
    ("a/b/c", False),                        # not the hub's shape
    ("has space", False),
    ("wiki.test.raw", False),                # a file name: a missing file, not a repo
    ("dir/corpus.jsonl", False),
    ("owner/model.safetensors", False),
    ("owner/name:config", False),            # a config only for datasets
    ("", False),
])
def test_the_rule_on_names_that_do_not_exist(tmp_path, monkeypatch, spec, hub):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id(spec) is hub
    assert is_local(spec) is (not hub) or spec == ""


@pytest.mark.parametrize(("spec", "hub"), [
    ("wikitext:wikitext-2-raw-v1:test", True), ("owner/name:config", True), ("owner/name:config:split", True),
    ("a:b:c:d", False), ("data/train.txt", False),
])
def test_datasets_may_name_a_config_and_split(tmp_path, monkeypatch, spec, hub):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id(spec, dataset=True) is hub


def test_what_exists_is_local_and_base_says_relative_to_what(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "books").mkdir(parents=True)
    (tmp_path / "gpt2").write_text("a file named like a hub model")
    assert not is_hub_id("data/books") and not is_hub_id("gpt2")  # existing folder, existing file
    run = tmp_path / "run"
    (run / "base").mkdir(parents=True)
    assert not is_hub_id("base", base=run) and is_hub_id("base")  # exists next to run/, not here


def test_every_reader_says_no_such_file_for_a_missing_local_name(tmp_path, monkeypatch):
    from gptune.data.eval_text import load_eval_text
    from gptune.data.sources import open_source
    from gptune.modeling.gpt import load_pretrained_lm
    from gptune.tokenization import load_tokenizer

    monkeypatch.chdir(tmp_path)
    with pytest.raises(GptuneError, match=r"model\.tokenizer: no such folder: \./tok"):
        load_tokenizer("./tok")
    with pytest.raises(GptuneError, match=r"no such folder: a/b/c"):
        load_tokenizer("a/b/c")
    with pytest.raises(GptuneError, match=r"--data a/b/c: no such file or folder"):
        load_eval_text("a/b/c")
    with pytest.raises(GptuneError, match=r"data\.path: no such file or folder: .*corpus\.jsonl"):
        open_source("new/corpus.jsonl")
    with pytest.raises(GptuneError, match=r"--model: no such folder: \./model"):
        load_pretrained_lm("./model")
