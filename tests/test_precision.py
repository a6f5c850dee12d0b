"""Mixed precision: the launcher decides unless the recipe says otherwise, and bf16 autocast trains a tiny
model to the fp32 losses within bf16's rounding."""

from __future__ import annotations

import json

import pytest

from conftest import make_workdir, run_cli
from gptune.config import TrainConfig


@pytest.fixture()
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; each case here builds its own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("launcher, recipe, expected", [
    (None, None, "no"),      # nobody says: fp32
    ("bf16", None, "bf16"),  # accelerate launch --mixed_precision bf16 / a config file's mixed_precision
    ("bf16", "no", "no"),    # the recipe, when set, overrides the launcher
    (None, "bf16", "bf16"),
])
def test_the_recipe_overrides_the_launcher_only_when_set(launcher, recipe, expected, monkeypatch,
                                                         fresh_accelerate_state):
    from gptune.training.loop import build_accelerator

    if launcher is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    cfg = TrainConfig(micro_batch_size=4, global_batch_size=8, mixed_precision=recipe)
    acc = build_accelerator(cfg, None, seed=0)
    assert acc.mixed_precision == expected
    assert acc.gradient_accumulation_steps == 2


def test_bf16_autocast_losses_stay_within_two_per_mille_of_fp32(tmp_path, monkeypatch, fresh_accelerate_state):
    # bf16 on a CPU without bf16 units is ~150x slower: 4 steps of a 2-layer, 32-wide model
    make_workdir(tmp_path, monkeypatch, {"a.txt": 300})
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    (tmp_path / "r.yaml").write_text(
        "# gptune pretrain r.yaml\nname: tiny\n"
        "model: {tokenizer: train, vocab_size: 300, config: {n_layer: 2, n_head: 2, n_embd: 32, n_positions: 32, dropout: 0.0}}\n"
        "data: {path: books, block_size: 16, val_fraction: 0.0, num_proc: 1}\n"
        "train: {max_steps: 4, micro_batch_size: 4, global_batch_size: 4, lr: 3e-3, warmup: 1,\n"
        "        eval_every: 0, save_every: 4, log_every: 1}\n")
    losses = {}
    for mp in ("no", "bf16"):
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
        assert run_cli("pretrain", "r.yaml", "--out-dir", f"runs/{mp}", "--set", f"train.mixed_precision='{mp}'") == 0
        lines = (tmp_path / "runs" / mp / "metrics.jsonl").read_text().splitlines()
        losses[mp] = [json.loads(x)["loss"] for x in lines if '"train"' in x]
    assert len(losses["bf16"]) == len(losses["no"]) == 4
    diffs = [abs(a - b) for a, b in zip(losses["no"], losses["bf16"], strict=True)]
    print(f"fp32 {losses['no']}\nbf16 {losses['bf16']}\nmax |diff| {max(diffs):.4g}")
    assert losses["no"] != losses["bf16"]  # autocast really ran in bf16
    assert max(d / a for d, a in zip(diffs, losses["no"], strict=True)) < 2e-3  # measured: 6e-5
