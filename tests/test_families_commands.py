"""Every command on every GPT family, through the real entry point, on tiny random models: pretrain from a
random init of the family (resumed == uninterrupted), eval --ppl (= the model's own loss, computed with
transformers), generate (seeded), finetune --lora --merge and --full with the auxiliary LM loss (one task
kind each, rotating over the families so every kind meets several), eval --task of final/ and final/merged,
and the adapter loaded by ``AutoPeftModelForCausalLM`` from a moved copy of the project."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import (
    FAMILIES,
    FAMILY_EXTRA,
    glue_sentence,
    guide_loop,
    make_text,
    make_workdir,
    run_cli,
    train_events,
)

KINDS = ["classification", "entailment", "similarity", "multiple_choice"]
FIELDS = {"classification": ["q"], "entailment": ["p", "h"], "similarity": ["a", "b"],
          "multiple_choice": ["ctx", "c0", "c1"]}
# two families run in every suite's quick pass; the others are marked slow (CI runs them all)
QUICK = {"llama", "gpt_neox"}


def write_task(root, kind: str, n: int = 24) -> str:
    """A learnable custom task of ``kind`` ('good' in the first text -> label yes) and its recipe."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        y = i % 2
        texts = [glue_sentence(rng, "good" if y else "bad")] + [glue_sentence(rng, "cat") for _ in FIELDS[kind][1:]]
        rows.append({**dict(zip(FIELDS[kind], texts, strict=True)), "y": str(y)})
    (root / f"{kind}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = root / f"{kind}.yaml"
    recipe.write_text(
        f"# gptune finetune --recipe {kind}.yaml\n"
        f"task: {{name: my-{kind}, kind: {kind}, train_file: {kind}.jsonl, eval_file: {kind}.jsonl, "
        f"text_fields: [{', '.join(FIELDS[kind])}], label_field: y, labels: ['0', '1'], max_length: 32, "
        "clf_dropout: 0.0, lm_coef: 0.5}\n"
        "model: {config: {dropout: 0.0}}\n"
        "train: {max_steps: 2, micro_batch_size: 4, global_batch_size: 8, lr: 1.0e-3, save_every: 0, log_every: 1}\n"
        "lora: {lr: 1.0e-2, dropout: 0.0}\n")
    return recipe.name


def params(family):
    return pytest.param(family, marks=() if family in QUICK else pytest.mark.slow)


@pytest.mark.parametrize("family", [params(f) for f in FAMILIES])
def test_every_command_on_a_family(family, family_model_dir, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gptune.runners.finetune import run_task_eval

    (tmp_path / "project").mkdir()
    root = make_workdir(tmp_path / "project", monkeypatch, {"a.txt": 400})
    shutil.copytree(family_model_dir(family), root / "tok")  # the family's tokenizer (Llama: SentencePiece-style)
    (root / "held.txt").write_text(make_text(40, 7))
    extra = json.dumps(FAMILY_EXTRA.get(family, {}))
    (root / "r.yaml").write_text(
        "# gptune pretrain r.yaml\nname: tiny\n"
        f"model: {{arch: {family}, tokenizer: tok, config: {{n_layer: 2, n_head: 4, n_embd: 32, n_positions: 64, "
        f"dropout: 0.0, extra: {extra}}}}}\n"
        "data: {path: books, block_size: 32, val_fraction: 0.05, num_proc: 1}\n"
        "train: {max_steps: 4, micro_batch_size: 4, global_batch_size: 8, lr: 3e-3, warmup: 1,\n"
        "        eval_every: 0, save_every: 2, keep_last: 3, log_every: 1}\n")

    # pretrain from a random init of the family; resumed from step 2 == uninterrupted
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/straight") == 0
    straight, half = root / "runs/straight", root / "runs/half"
    shutil.copytree(straight, half)
    shutil.rmtree(half / "final")
    shutil.rmtree(half / "step-000004")
    (half / "latest").write_text("step-000002\n")
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/half", "--resume", "auto") == 0
    a, b = load_file(straight / "final/model.safetensors"), load_file(half / "final/model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert [e["loss"] for e in train_events(straight)] == pytest.approx([e["loss"] for e in train_events(half)],
                                                                       abs=1e-6)
    final = straight / "final"
    lm = AutoModelForCausalLM.from_pretrained(final).eval()
    assert lm.config.model_type == family

    # eval --ppl: the model's own loss over the guide's windows
    assert run_cli("eval", "--ppl", "--model", str(final), "--data", "held.txt", "--max-length", "32",
                   "--stride", "16", "--json", "ppl.json") == 0
    report = json.loads((root / "ppl.json").read_text())
    tok = AutoTokenizer.from_pretrained(final)
    nll, tokens = guide_loop(lm, torch.tensor(tok((root / "held.txt").read_text())["input_ids"]), 32, 16)
    assert report["tokens"] == tokens
    assert report["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)

    # generate: seeded, continues the prompt
    capsys.readouterr()
    outs = []
    for _ in range(2):
        assert run_cli("generate", "--model", str(final), "--prompt", "The king", "--max-new-tokens", "6",
                       "--seed", "3") == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith("The king")

    # finetune --lora --merge and --full (aux LM loss on), then eval --task of final/ and final/merged
    i = FAMILIES.index(family)
    lora_kind, full_kind = KINDS[i % 4], KINDS[(i + 1) % 4]
    for kind, mode in ((lora_kind, "lora"), (full_kind, "full")):
        recipe = write_task(root, kind)
        args = ["finetune", "--recipe", recipe, f"--{mode}", "--model", "runs/straight/final"]
        assert run_cli(*args, *(["--merge"] if mode == "lora" else [])) == 0
        run = root / f"runs/finetune/my-{kind}-{mode}"
        ev = train_events(run)
        assert {"task_loss", "lm_loss", "loss"} <= set(ev[0]) and ev[0]["lm_loss"] > 0
        metrics = json.loads((run / "final/metrics.json").read_text())
        folders = [run / "final"] + ([run / "final/merged"] if mode == "lora" else [])
        for folder in folders:
            scored = run_task_eval(str(folder))
            assert next(iter(scored.values()))["accuracy"] == metrics["accuracy"], folder

    # the LoRA adapter as other tools load it, from a copy of the project moved elsewhere
    from peft import AutoPeftModelForCausalLM

    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved, ignore=shutil.ignore_patterns("cache"))
    root.rename(tmp_path / "hidden")
    monkeypatch.chdir(moved)
    adapter = f"runs/finetune/my-{lora_kind}-lora/final"
    merged = AutoModelForCausalLM.from_pretrained(f"{adapter}/merged").eval()
    auto = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    tok = AutoTokenizer.from_pretrained(adapter)
    ids = torch.tensor([tok("the cat <|start|> sat <|delim|> on the mat <|extract|>")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(auto(input_ids=ids).logits, merged(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
