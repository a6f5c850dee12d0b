"""Outputs other tools load: LoRA final/ as a standard PEFT adapter (PEFT, transformers, gptune, from a
moved copy of the run tree), and lm-evaluation-harness's rolling log-likelihood equal to
``gptune eval --ppl --prepend-eos``. Tiny models, fixture data, no network."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import finetune_recipe, make_text, run_cli


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir, glue_dir):
    """A project folder with its base model inside (``base/``), a LoRA and a full SST-2 fine-tune of it, and
    the dev predictions each run made in memory at its end."""
    import gptune.evaluation.glue as ev
    from gptune.runners.finetune import run_finetune

    root = tmp_path_factory.mktemp("project")
    shutil.copytree(tiny_model_dir, root / "base")
    preds = {}
    real = ev.predict
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("GPTUNE_CACHE", str(root / "cache"))
        mp.setenv("GPTUNE_NO_PROGRESS", "1")
        mp.delenv("GPTUNE_GLUE_DIR", raising=False)
        for mode, lora, extra in (("lora", True, []), ("full", False, []),
                                  ("emb", True, ["lora.save_embeddings=true", "out_dir=runs/finetune/sst2-emb"])):
            mp.setattr(ev, "predict", lambda *a, _m=mode: preds.__setitem__(_m, real(*a)) or preds[_m])
            run_finetune(finetune_recipe("base", glue_dir, lora=lora,
                                         sets=["train.max_steps=3", "train.lr=1e-2", *extra]))
    return root, {k: v[0] for k, v in preds.items()}


@pytest.fixture()
def moved(project, tmp_path, monkeypatch):
    """A copy of the project somewhere else, the original hidden: nothing may point back to it."""
    root, preds = project
    copy = tmp_path / "elsewhere"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("cache"))
    hidden = root.with_name(root.name + "-hidden")
    root.rename(hidden)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("GPTUNE_CACHE", str(tmp_path / "cache"))
    yield copy, preds
    hidden.rename(root)


def _sample_ids(tokenizer):
    ids = tokenizer("the cat <|start|> sat <|delim|> on the mat <|extract|>")["input_ids"]
    return torch.tensor([ids])


def test_lora_final_is_a_standard_causal_lm_adapter(project):
    from safetensors.torch import load_file

    final = project[0] / "runs/finetune/sst2-lora/final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["peft_type"] == "LORA"
    assert config["base_model_name_or_path"] == "base"  # as given, relative to the working directory
    assert config["trainable_token_indices"] == [320, 321, 322]  # the GPT-1 markers' rows
    keys = set(load_file(str(final / "adapter_model.safetensors")))
    assert all(k.startswith("base_model.model.transformer.") or k.startswith("base_model.model.lm_head.")
               for k in keys), keys
    assert "base_model.model.transformer.wte.token_adapter.trainable_tokens_delta" in keys
    assert not any("clf_head" in k or "base_layer" in k for k in keys)  # head beside it; no full embedding copy
    assert set(load_file(str(final / "clf_head.safetensors"))) == {"weight", "bias"}
    assert json.loads((final / "task.json").read_text())["base_model"] == "../../../../base"


def test_lora_and_full_load_with_peft_transformers_and_gptune_from_a_moved_copy(moved, glue_dir):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gptune.evaluation.glue import predict
    from gptune.runners.evaluate import _split_loaders

    root, preds = moved
    for mode in ("lora", "full", "emb"):
        final = Path(f"runs/finetune/sst2-{mode}/final")
        acc, model, info, _, loaders = _split_loaders(str(final), "sst2", glue_dir, None)
        assert predict(acc, model, loaders["validation"], info.task)[0] == preds[mode], mode  # same as in memory
        tokenizer = AutoTokenizer.from_pretrained(final)
        ids = _sample_ids(tokenizer)
        lm = model.lm if mode == "full" else model.lm.merge_and_unload()
        expected = lm(input_ids=ids).logits
        if mode != "full":
            auto = AutoPeftModelForCausalLM.from_pretrained(final).eval()
            base = AutoModelForCausalLM.from_pretrained("base")
            base.resize_token_embeddings(len(tokenizer))  # the markers' rows come from the adapter
            loaded = [auto, PeftModel.from_pretrained(base, final).eval()]
        else:
            loaded = [AutoModelForCausalLM.from_pretrained(final).eval()]
        with torch.no_grad():
            for m in loaded:
                torch.testing.assert_close(m(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_missing_base_is_one_line_and_base_model_overrides(moved, glue_dir, capsys):
    root, preds = moved
    (root / "base").rename(root / "base-elsewhere")
    final = "runs/finetune/sst2-lora/final"
    assert run_cli("eval", "--task", "sst2", "--model", final, "--data-dir", glue_dir) == 2
    err = capsys.readouterr().err
    assert "base model ../../../../base not found" in err and "--base-model DIR" in err
    assert len(err.strip().splitlines()) == 1
    assert run_cli("predict", "--model", final, "--data-dir", glue_dir, "--split", "validation",
                   "--base-model", "base-elsewhere", "--out", "p.tsv") == 0
    labels = [line.split("\t")[1] for line in Path("p.tsv").read_text().splitlines()[1:]]
    assert labels == [str(p) for p in preds["lora"]]


# ----------------------------------------------------------------------------- lm-evaluation-harness
def test_rolling_windows_are_lm_evals():
    from gptune.evaluation.perplexity import plan_rolling_windows

    utils = pytest.importorskip("lm_eval.utils", reason="lm-eval is not installed (pip install -e '.[dev]')")
    for n in range(1, 40):
        for length in (1, 2, 5, 8):
            tokens = list(range(1, n + 1))
            theirs = [utils.make_disjoint_window(w) for w in
                      utils.get_rolling_token_windows(tokens, prefix_token=0, max_seq_len=length, context_len=1)]
            seq = [0, *tokens]
            ours = plan_rolling_windows(len(seq), length)
            # lm-eval feeds (context + continuation)[-(max_length + 1):][:-1] and scores the continuation
            assert [((c + p)[-(length + 1):][:-1], p) for c, p in theirs] == \
                   [(seq[w.begin:w.end - 1], seq[w.score_begin:w.end]) for w in ours], (n, length)


def _hflm_rolling(text: str, **model_args) -> float:
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[dev]')")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(batch_size=4, device="cpu", **model_args)
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    return lm.loglikelihood_rolling([request], disable_tqdm=True)[0]


def _gptune_ppl(model: str, data: Path, *extra: str) -> dict:
    out = data.with_suffix(".json")
    assert run_cli("eval", "--ppl", "--prepend-eos", "--model", model, "--data", str(data), "--json", str(out),
                   *extra) == 0
    return json.loads(out.read_text())


def test_prepend_eos_equals_lm_eval_loglikelihood_rolling(tiny_model_dir, tmp_path):
    text = "  " + make_text(300, 5) + "\n"  # edge whitespace: lm-eval's word count keeps the empties
    data = tmp_path / "text.txt"
    data.write_text(text, encoding="utf-8")
    loglik = _hflm_rolling(text, pretrained=tiny_model_dir)
    report = _gptune_ppl(tiny_model_dir, data)
    assert report["unscored_tokens"] == 0 and report["windowing"].startswith("lm-eval")
    assert abs(report["nll_sum"] + loglik) / abs(loglik) < 1e-6
    # lm-eval's wikitext metrics from the same log-likelihood (weights: words and bytes of the document)
    words = len(re.split(r"\s+", text))
    assert report["words"] == words == len(text.split()) + 2
    assert report["word_perplexity"] == pytest.approx(math.exp(-loglik / words), rel=1e-6)
    assert report["bits_per_byte"] == pytest.approx(-loglik / len(text.encode()) / math.log(2), rel=1e-6)


def test_lm_eval_loads_a_lora_final_with_peft(moved):
    """lm-eval re-ties the embeddings after PEFT loads, which fails on PEFT's trainable-token wrapper
    (transformers 5): with lora.save_embeddings the adapter carries the embedding matrix instead."""
    from safetensors.torch import load_file

    root, _ = moved
    final = "runs/finetune/sst2-emb/final"
    config = json.loads(Path(final, "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["trainable_token_indices"] is None
    assert "base_model.model.transformer.wte.weight" in load_file(f"{final}/adapter_model.safetensors")
    data = root / "text.txt"
    data.write_text(make_text(120, 7), encoding="utf-8")
    # the adapter adds token rows: the tokenizer comes from final/ so lm-eval resizes the base before PEFT loads
    loglik = _hflm_rolling(data.read_text(), pretrained="base", peft=final, tokenizer=final)
    report = _gptune_ppl(final, data)
    assert abs(report["nll_sum"] + loglik) / abs(loglik) < 1e-6
