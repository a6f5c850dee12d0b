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
                                  ("rows", True, ["lora.save_embeddings=false", "out_dir=runs/finetune/sst2-rows"])):
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

    for mode in ("lora", "rows"):
        final = project[0] / f"runs/finetune/sst2-{mode}/final"
        config = json.loads((final / "adapter_config.json").read_text())
        assert config["task_type"] == "CAUSAL_LM" and config["peft_type"] == "LORA"
        assert config["base_model_name_or_path"] == "base"  # as given, relative to the working directory
        weights = load_file(str(final / "adapter_model.safetensors"))
        assert all(k.startswith("base_model.model.transformer.") for k in weights), weights.keys()
        assert not any("clf_head" in k or "base_layer" in k for k in weights)  # the head sits beside it
        assert set(load_file(str(final / "clf_head.safetensors"))) == {"weight", "bias"}
        assert json.loads((final / "task.json").read_text())["base_model"] == "../../../../base"
        rows = [320, 321, 322]  # the GPT-1 markers' rows
        if mode == "rows":  # lora.save_embeddings=false: PEFT's trainable tokens, the new rows alone
            assert config["trainable_token_indices"] == rows
            assert weights["base_model.model.transformer.wte.token_adapter.trainable_tokens_delta"].shape == (3, 32)
        else:  # the default: the whole matrix, the trained rows folded in, no wrapper on the embedding
            assert config["trainable_token_indices"] is None
            matrix = weights["base_model.model.transformer.wte.weight"]
            delta = load_file(str(project[0] / "runs/finetune/sst2-rows/final/adapter_model.safetensors"))
            assert matrix.shape == (323, 32)
            # the base rows untouched; the marker rows are the ones the same run saved as trainable tokens
            base = load_file(str(project[0] / "base/model.safetensors"))["transformer.wte.weight"]
            assert torch.equal(matrix[:320], base)
            assert torch.equal(matrix[rows], delta["base_model.model.transformer.wte.token_adapter.trainable_tokens_delta"])


def test_lora_and_full_load_with_peft_transformers_and_gptune_from_a_moved_copy(moved, glue_dir):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gptune.evaluation.glue import predict
    from gptune.evaluation.task_model import split_loaders

    root, preds = moved
    for mode in ("lora", "full", "rows"):
        final = Path(f"runs/finetune/sst2-{mode}/final")
        acc, model, info, _, loaders = split_loaders(str(final), "sst2", glue_dir, None)
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
    (transformers 5): by default (lora.save_embeddings) the adapter carries the embedding matrix instead."""
    from safetensors.torch import load_file

    root, _ = moved
    final = "runs/finetune/sst2-lora/final"
    config = json.loads(Path(final, "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["trainable_token_indices"] is None
    assert "base_model.model.transformer.wte.weight" in load_file(f"{final}/adapter_model.safetensors")
    data = root / "text.txt"
    data.write_text(make_text(120, 7), encoding="utf-8")
    # the adapter adds token rows: the tokenizer comes from final/ so lm-eval resizes the base before PEFT loads
    loglik = _hflm_rolling(data.read_text(), pretrained="base", peft=final, tokenizer=final)
    report = _gptune_ppl(final, data)
    assert abs(report["nll_sum"] + loglik) / abs(loglik) < 1e-6


# ----------------------------------------------------------------------------- model cards, push, trackers
def _card(final: Path) -> tuple[dict, str]:
    import yaml

    text = (final / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def _card_metrics(meta: dict) -> dict:
    """{metrics.json key: value} as the model-index gives them back."""
    out = {}
    for result in meta["model-index"][0]["results"]:
        for m in result["metrics"]:
            out[(result["dataset"]["split"], m["type"], m["name"])] = m["value"]
    return out


class FakeHub:
    """Stands in for huggingface_hub.HfApi up to the network: records what would be sent."""

    calls: list = []

    def whoami(self, token=None, **_):
        return {"name": "me"}

    def create_repo(self, repo_id, **kw):
        FakeHub.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        folder = Path(folder_path)
        FakeHub.calls.append(("upload_folder", repo_id, folder, (folder / "README.md").read_text(), kw))
        return type("Commit", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1"})()


@pytest.fixture()
def fake_hub(monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants

    FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the suite runs with it set
    return FakeHub.calls


def test_pretrain_card_push_and_tensorboard_on_the_metrics_step_axis(tmp_path, monkeypatch, fake_hub):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import make_workdir
    from gptune.console import read_metrics

    make_workdir(tmp_path, monkeypatch, {"a.txt": 400})
    Path("r.yaml").write_text(
        "name: tiny\nmodel: {tokenizer: train, vocab_size: 400, config: {n_layer: 2, n_head: 2, n_embd: 32, "
        "n_positions: 64, dropout: 0.0}}\ndata: {path: books, block_size: 32, val_fraction: 0.1, num_proc: 1}\n"
        "train: {max_steps: 6, micro_batch_size: 4, global_batch_size: 8, eval_every: 3, save_every: 0, log_every: 2,"
        " tracker: [tensorboard]}\n")
    assert run_cli("pretrain", "r.yaml", "--push-to-hub", "me/tiny-gpt") == 0
    run, final = Path("runs/tiny"), Path("runs/tiny/final")
    # the card: front matter parses, measured metrics are metrics.json's
    meta, body = _card(final)
    measured = json.loads((final / "metrics.json").read_text())
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert "gptune" in meta["tags"] and "base_model" not in meta and "datasets" not in meta  # local data, random init
    assert _card_metrics(meta) == {
        ("validation", "loss", "validation loss (nats/token)"): measured["val_loss"],
        ("validation", "perplexity", "validation perplexity"): measured["val_ppl"],
        ("validation", "perplexity", "sliding-window validation perplexity"): measured["val_ppl_sliding"],
        ("validation", "bits_per_byte", "validation bits per byte"): measured["val_bits_per_byte"]}
    assert "AutoModelForCausalLM.from_pretrained" in body and "from scratch (gpt2: 2 layers, width 32" in body
    assert "6 optimizer steps" in body and (final / "recipe.yaml").read_text().strip() in body
    # what would have been uploaded: final/ with that card, merged/ left out
    assert [c[0] for c in fake_hub] == ["create_repo", "upload_folder"]
    _, repo, folder, card, kw = fake_hub[1]
    assert (repo, folder.resolve(), card) == ("me/tiny-gpt", final.resolve(), (final / "README.md").read_text())
    assert kw["ignore_patterns"] == ["merged/**"]
    # TensorBoard: every metrics.jsonl number at its step
    events = read_metrics(run / "metrics.jsonl")
    acc = EventAccumulator(str(next((run / "logs").rglob("events.out.tfevents.*")).parent))
    acc.Reload()
    for kind, key in (("train", "loss"), ("train", "lr"), ("train", "grad_norm"), ("eval", "val_loss"),
                      ("eval", "val_ppl"), ("eval", "val_bits_per_byte")):
        logged = [(e["step"], e[key]) for e in events if e["event"] == kind and key in e]
        assert logged, (kind, key)
        assert [(s.step, pytest.approx(s.value, rel=1e-6)) for s in acc.Scalars(f"{kind}/{key}")] == logged
    assert [e["step"] for e in events if e["event"] == "train"] == [2, 4, 6]
    assert (run / "curves.png").is_file()


def test_finetune_cards(project, tmp_path):
    from gptune.hub import card_metadata

    root, _ = project
    for mode in ("lora", "full"):
        final = root / f"runs/finetune/sst2-{mode}/final"
        meta, body = _card(final)
        measured = json.loads((final / "metrics.json").read_text())
        assert meta["library_name"] == ("peft" if mode == "lora" else "transformers")
        assert meta["datasets"] == ["nyu-mll/glue"] and {"gptune", "sst2"} <= set(meta["tags"])
        assert "base_model" not in meta  # a local base: not a hub id
        result = meta["model-index"][0]["results"][0]
        assert result["dataset"] == {"name": "GLUE SST2", "type": "nyu-mll/glue", "split": "validation",
                                     "config": "sst2"}
        assert result["metrics"] == [{"type": "accuracy", "value": measured["accuracy"], "name": "accuracy"}]
        assert ("PeftModel.from_pretrained" in body) == (mode == "lora")
        assert "Fine-tuned from `../../../../base` on sst2" in body
    (root / "runs/finetune/sst2-full").joinpath("curves.png").is_file()
    # a hub base is named in the front matter
    copy = tmp_path / "final"
    shutil.copytree(root / "runs/finetune/sst2-lora/final", copy)
    info = json.loads((copy / "task.json").read_text())
    (copy / "task.json").write_text(json.dumps({**info, "base_model": "openai-community/openai-gpt"}))
    assert card_metadata(copy)["base_model"] == "openai-community/openai-gpt"


def test_mnli_card_has_matched_and_mismatched(tmp_path):
    from gptune.hub import card_metadata
    from gptune.tasks import get_task

    (tmp_path / "task.json").write_text(json.dumps({"task": get_task("mnli").to_dict(), "base_model": "gpt2",
                                                    "lora": False}))
    (tmp_path / "metrics.json").write_text(json.dumps({"step": 3, "validation_matched/accuracy": 0.75,
                                                       "validation_mismatched/accuracy": 0.5}))
    results = card_metadata(tmp_path)["model-index"][0]["results"]
    assert [(r["dataset"]["split"], r["metrics"][0]["value"]) for r in results] == [
        ("validation_matched", 0.75), ("validation_mismatched", 0.5)]


def test_gptune_push_of_a_finished_run(project, fake_hub, capsys):
    root, _ = project
    run = root / "runs/finetune/sst2-lora"
    assert run_cli("push", str(run), "me/sst2-lora", "--private") == 0
    assert fake_hub[0] == ("create_repo", "me/sst2-lora", {"exist_ok": True, "private": True})
    assert fake_hub[1][2] == run / "final" and fake_hub[1][3].startswith("---\nlibrary_name: peft\n")
    assert "pushed" in capsys.readouterr().out


@pytest.mark.parametrize(("env", "message"), [
    ("offline", "HF_HUB_OFFLINE is set, nothing can be uploaded; unset it, or train now and push later"),
    ("bad_id", "--push-to-hub not-a-repo: a hub repo id is 'owner/name'"),
])
def test_push_fails_before_training_in_one_line(tmp_path, monkeypatch, capsys, env, message):
    import huggingface_hub.constants

    from conftest import make_workdir

    make_workdir(tmp_path, monkeypatch, {"a.txt": 50})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    Path("r.yaml").write_text("name: t\nmodel: {tokenizer: train}\ndata: {path: books}\ntrain: {max_steps: 1}\n")
    repo = "not-a-repo" if env == "bad_id" else "me/x"
    assert run_cli("pretrain", "r.yaml", "--push-to-hub", repo) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not Path("runs").exists()  # nothing was trained


def test_trackers_several_at_once_and_a_missing_package_named(tmp_path, monkeypatch, capsys):
    import importlib.util

    from conftest import make_workdir
    from gptune.config import TRACKERS
    from gptune.recipes import build_recipe

    r = build_recipe({"train": {"max_steps": 1, "tracker": "tensorboard,wandb"}, "model": {"tokenizer": "train"}})
    assert r.train.trackers == ["tensorboard", "wandb"]
    assert build_recipe({"train": {"max_steps": 1, "tracker": "none"}, "model": {"tokenizer": "train"}}).train.trackers == []
    missing = next((t for t, module in TRACKERS.items() if importlib.util.find_spec(module) is None), None)
    if missing is None:
        pytest.skip("every tracker package is installed")
    make_workdir(tmp_path, monkeypatch, {"a.txt": 50})
    Path("r.yaml").write_text("name: t\nmodel: {tokenizer: train}\ndata: {path: books}\ntrain: {max_steps: 1}\n")
    assert run_cli("pretrain", "r.yaml", "--set", f"train.tracker=tensorboard,{missing}") == 2
    err = capsys.readouterr().err
    assert f"train.tracker: {missing} needs its package; pip install {TRACKERS[missing].replace('_', '-')}" in err
    assert run_cli("pretrain", "r.yaml", "--set", "train.tracker=neptune") == 2
    assert "train.tracker: unknown tracker neptune; choose from none, tensorboard, wandb" in capsys.readouterr().err
