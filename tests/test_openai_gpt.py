"""GPT-1's own architecture (``model.arch: openai-gpt``) end to end on a tiny config: its attention through
SDPA equals transformers' eager code; recipes/gpt1.yaml is the paper's configuration and runs shrunk;
pretraining (resume == uninterrupted), eval --ppl, generate; full and LoRA fine-tuning with the auxiliary
LM loss on every task kind, final/ (and --merge's final/merged) giving the logits of the end of training."""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from conftest import make_workdir, run_cli
from gptune.recipes import build_recipe, load_recipe, read_recipe_file, shipped

ROOT = Path(__file__).resolve().parents[1]


def _tiny_config(vocab: int, **kw):
    from transformers import OpenAIGPTConfig

    return OpenAIGPTConfig(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2, **kw)


@pytest.fixture(scope="session")
def tiny_gpt1_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A random 2-layer OpenAI-GPT (n_embd 32) saved with save_pretrained, tokenizer beside it."""
    from transformers import AutoTokenizer, OpenAIGPTLMHeadModel

    out = tmp_path_factory.mktemp("tiny-openai-gpt")
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    OpenAIGPTLMHeadModel(_tiny_config(len(tok))).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


# ----------------------------------------------------------------------------- SDPA attention
def test_sdpa_attention_equals_transformers_eager_forward_and_backward(tiny_gpt1_dir):
    from transformers import OpenAIGPTLMHeadModel

    from gptune.modeling.gpt import SdpaOpenAIGPTAttention, load_pretrained_lm, use_sdpa_attention

    torch.manual_seed(0)
    eager = OpenAIGPTLMHeadModel(_tiny_config(300, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).train()
    sdpa = use_sdpa_attention(copy.deepcopy(eager))
    assert {type(b.attn) for b in sdpa.transformer.h} == {SdpaOpenAIGPTAttention}
    ids = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # right padding, as task batches have
    mask[2, 5:] = 0
    for m in (mask, None):  # a padding mask, and SDPA's own causal mask when there is none
        outs = []
        for model in (eager, sdpa):
            model.zero_grad()
            logits = model(input_ids=ids, attention_mask=m).logits
            (logits * torch.linspace(-1, 1, 300)).sum().backward()
            outs.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
        for name, g in outs[0][1].items():
            torch.testing.assert_close(outs[1][1][name], g, rtol=1e-4, atol=1e-5, msg=name)
    # the attention weights themselves, when asked for, still come from the eager code
    with torch.no_grad():
        att = sdpa(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    assert len(att) == 2 and att[0].shape == (3, 2, 20, 20)
    # every way gptune loads a model gets it
    assert type(load_pretrained_lm(tiny_gpt1_dir).transformer.h[0].attn) is SdpaOpenAIGPTAttention


# ----------------------------------------------------------------------------- recipes/gpt1.yaml
def test_gpt1_recipe_is_the_papers_configuration_and_runs_shrunk(tmp_path, monkeypatch, tiny_tokenizer_dir):
    from gptune.modeling.gpt import build_causal_lm
    from gptune.tokenization import load_tokenizer

    path = shipped()["gpt1"]
    r = load_recipe(path)
    paper = {"model.arch": "openai-gpt", "model.tokenizer": "openai-community/openai-gpt",
             "model.config.n_layer": 12, "model.config.n_head": 12, "model.config.n_embd": 768,
             "model.config.n_positions": 512, "model.config.dropout": 0.1, "data.block_size": 512,
             "train.global_batch_size": 64, "train.lr": 2.5e-4, "train.schedule": "cosine", "train.warmup": 2000,
             "train.min_lr_ratio": 0.0, "train.weight_decay": 0.01, "train.beta1": 0.9, "train.beta2": 0.999,
             "train.epochs": 100}
    for key, want in paper.items():
        section, *rest = key.split(".")
        value = getattr(r, section)
        for part in rest:
            value = getattr(value, part)
        assert value == want, key
    assert "--set model.tokenizer=$GPTUNE_DATA/tokenizers/openai-gpt-hf" in path.read_text()

    shrink = ["model.config.n_layer=1", "model.config.n_embd=32", "model.config.n_head=2", "model.config.n_positions=64",
              f"model.tokenizer={tiny_tokenizer_dir}", "data.path=books", "data.block_size=32", "data.num_proc=1",
              "data.val_fraction=0.05", "train.max_steps=4", "train.warmup=2", "train.micro_batch_size=4",
              "train.global_batch_size=8", "train.eval_every=0", "train.save_every=0", "train.log_every=1"]
    # the random init the recipe asks for: openai-gpt, GELU, N(0, 0.02), dropout 0.1 everywhere
    small = load_recipe(path, None, shrink[:5])
    torch.manual_seed(0)
    lm = build_causal_lm(small.model, load_tokenizer(tiny_tokenizer_dir))
    assert lm.config.model_type == "openai-gpt" and lm.config.afn == "gelu"
    assert (lm.config.resid_pdrop, lm.config.embd_pdrop, lm.config.attn_pdrop) == (0.1, 0.1, 0.1)
    for name, p in lm.named_parameters():
        if p.ndim == 2:
            assert 0.018 < p.std().item() < 0.022, name

    make_workdir(tmp_path, monkeypatch, {"a.txt": 400})
    args = ["pretrain", str(path), "--out-dir", "runs/gpt1"]
    for s in shrink:
        args += ["--set", s]
    assert run_cli(*args) == 0
    run = tmp_path / "runs" / "gpt1"
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["model_type"] == "openai-gpt" and config["n_layer"] == 1 and config["n_positions"] == 64
    lrs = [json.loads(x)["lr"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    # 2 warmup steps to 2.5e-4, then cosine down to exactly 0 after the 4th and last step
    assert lrs == pytest.approx([2.5e-4, 2.5e-4, 2.5e-4 * 0.5, 0.0], abs=1e-12)


# ----------------------------------------------------------------------------- pretraining, ppl, generate
def test_openai_gpt_pretrain_resume_ppl_and_generate(tmp_path, monkeypatch, capsys):
    make_workdir(tmp_path, monkeypatch, {"a.txt": 500, "b.txt": 500})
    (tmp_path / "r.yaml").write_text(
        "# gptune pretrain r.yaml\nname: g1\n"
        "model: {arch: openai-gpt, tokenizer: train, vocab_size: 400,\n"
        "        config: {n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64, dropout: 0.1}}\n"
        "data: {path: books, block_size: 32, val_fraction: 0.05, num_proc: 1}\n"
        "train: {max_steps: 8, micro_batch_size: 4, global_batch_size: 8, lr: 3e-3, warmup: 2,\n"
        "        eval_every: 0, save_every: 4, keep_last: 3, log_every: 2}\n")
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/straight") == 0
    straight = tmp_path / "runs" / "straight"
    half = tmp_path / "runs" / "half"  # "interrupted" after step 4: the run folder as it was then
    shutil.copytree(straight, half)
    shutil.rmtree(half / "final")
    shutil.rmtree(half / "step-000008")
    (half / "latest").write_text("step-000004\n")
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/half", "--resume", "auto") == 0
    from safetensors.torch import load_file

    a, b = load_file(straight / "final" / "model.safetensors"), load_file(half / "final" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6  # dropout 0.1 included
    assert json.loads((straight / "final" / "config.json").read_text())["model_type"] == "openai-gpt"

    # eval --ppl on the run's own validation split = the run's own sliding-window figure
    final_metrics = json.loads((straight / "final" / "metrics.json").read_text())
    assert run_cli("eval", "--ppl", "--model", "runs/straight/final", "--max-length", "32", "--stride", "16",
                   "--json", "ppl.json") == 0
    ppl = json.loads((tmp_path / "ppl.json").read_text())
    assert ppl["perplexity"] == pytest.approx(final_metrics["val_ppl_sliding"], rel=1e-5)

    capsys.readouterr()
    gen = ["generate", "--model", "runs/straight/final", "--prompt", "The king", "--max-new-tokens", "6", "--seed", "3"]
    assert run_cli(*gen) == 0
    first = capsys.readouterr().out
    assert run_cli(*gen) == 0
    assert capsys.readouterr().out == first and first.startswith("The king")


# ----------------------------------------------------------------------------- fine-tuning, every kind
WORDS = "the a cat dog sat on mat ran to house big small red blue saw old man woman king tree".split()
KINDS = {  # kind: (text fields, labels)
    "classification": (["q"], ["no", "yes"]),
    "entailment": (["p", "h"], ["e", "n"]),
    "similarity": (["a", "b"], None),  # regression: float logits compared, not just argmaxes
    "multiple_choice": (["ctx", "c0", "c1"], ["0", "1"]),
}


def _write_task(folder: Path, kind: str) -> dict:
    fields, labels = KINDS[kind]
    rng = random.Random(0)
    for name, n in (("train", 16), ("dev", 8)):
        rows = []
        for _ in range(n):
            row = {f: " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) for f in fields}
            row["y"] = rng.choice(labels) if labels else round(rng.uniform(0, 5), 2)
            rows.append(row)
        (folder / f"{kind}-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"task.name": kind.replace("_", ""), "task.kind": kind, "task.train_file": str(folder / f"{kind}-train.jsonl"),
            "task.eval_file": str(folder / f"{kind}-dev.jsonl"), "task.text_fields": fields, "task.label_field": "y",
            "task.labels": labels}


@torch.no_grad()
def _logits(model, loader) -> torch.Tensor:
    model.eval()
    out, rows = [], []
    for batch in loader:
        batch = {k: v for k, v in batch.items() if k not in ("labels", "row")} | {"row": batch["row"]}
        rows.append(batch.pop("row"))
        out.append(model(**batch)["logits"].float())
    return torch.cat(out)[torch.cat(rows).argsort()]


@pytest.mark.parametrize("kind", list(KINDS))
def test_openai_gpt_full_and_lora_finetune_with_aux_lm_loss(kind, tmp_path, monkeypatch, tiny_gpt1_dir):
    import gptune.evaluation.glue as ev
    from gptune.evaluation.task_model import split_loaders
    from gptune.runners.finetune import DEFAULT_RECIPE, run_finetune

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTUNE_CACHE", str(tmp_path / "cache"))
    task = _write_task(tmp_path, kind)
    seen, real = {}, ev.predict

    def spy(acc, model, loader, task_spec):  # the logits of the final evaluation, in row order
        seen["logits"] = _logits(model, loader)
        return real(acc, model, loader, task_spec)

    monkeypatch.setattr(ev, "predict", spy)
    sets = ["train.max_steps=3", "train.micro_batch_size=4", "train.global_batch_size=4", "task.max_length=24",
            "train.log_every=1", "train.save_every=0", "task.eval_every_epoch=false", "train.lr=1e-3",
            "lora.lr=1e-2", "task.lm_coef=0.5", "model.config.dropout=0.1",
            # both inits of the new marker rows: a LoRA folder rebuilds its base model and must still be exact
            f"task.new_token_init={'normal' if kind in ('similarity', 'multiple_choice') else 'mean'}"]
    for lora in (False, True):
        recipe = build_recipe(read_recipe_file(DEFAULT_RECIPE),
                              {**task, "model.name_or_path": tiny_gpt1_dir, "lora.enabled": lora}, sets)
        summary = run_finetune(recipe, merge=lora)
        events = [json.loads(x) for x in (summary.run_dir / "metrics.jsonl").read_text().splitlines()
                  if '"train"' in x]
        assert len(events) == 3
        for e in events:  # L = L_task + 0.5 L_lm, with a real LM part
            assert e["lm_loss"] > 0.5 and e["loss"] == pytest.approx(e["task_loss"] + 0.5 * e["lm_loss"], rel=1e-5)
        at_end = seen.pop("logits")
        monkeypatch.setattr(ev, "predict", real)
        folders = [summary.final_dir] + ([summary.final_dir / "merged"] if lora else [])
        for folder in folders:  # rebuilt from the folder alone: the very logits of the end of training
            _, model, info, _, loaders = split_loaders(str(folder), None, None, None)
            assert info.task.kind == kind and info.lora == (lora and folder == summary.final_dir)
            torch.testing.assert_close(_logits(model, loaders["validation"]), at_end, rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(ev, "predict", spy)
