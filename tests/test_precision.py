"""Mixed precision: ``auto`` (the default) takes the launcher's bf16/fp16, else bf16 where the device has
native bf16, else fp32; a recipe's explicit value overrides the launcher; the run says its choice and
records the resolved value; bf16 where it is emulated warns; bf16 autocast trains a tiny model to the fp32
losses within bf16's rounding. The device's capability is faked through GPTUNE_NATIVE_BF16 (conftest pins 0)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import make_workdir, run_cli_captured
from gptune.config import TrainConfig


@pytest.fixture()
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; each case here builds its own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("launcher, recipe, native, expected", [
    (None, "auto", "0", "no"),      # nobody says, no bf16 units: fp32
    (None, "auto", "1", "bf16"),    # nobody says, native bf16: bf16
    ("no", "auto", "1", "bf16"),    # a launcher's "no" is its default, not a choice
    ("bf16", "auto", "0", "bf16"),  # accelerate launch --mixed_precision bf16 / a config file's mixed_precision
    ("bf16", "no", "1", "no"),      # the recipe, when set, overrides the launcher
    (None, "bf16", "0", "bf16"),
])
def test_auto_follows_the_launcher_then_the_device_and_the_recipe_overrides_both(
        launcher, recipe, native, expected, monkeypatch, fresh_accelerate_state):
    from gptune.training.loop import build_accelerator

    monkeypatch.setenv("GPTUNE_NATIVE_BF16", native)
    if launcher is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    cfg = TrainConfig(micro_batch_size=4, global_batch_size=8, mixed_precision=recipe)
    assert TrainConfig().mixed_precision == "auto"
    acc = build_accelerator(cfg, None, seed=0)
    assert acc.mixed_precision == expected
    assert acc.gradient_accumulation_steps == 2


TINY = ("# gptune pretrain r.yaml\nname: tiny\n"
        "model: {tokenizer: train, vocab_size: 300, config: {n_layer: 2, n_head: 2, n_embd: 32, n_positions: 32, dropout: 0.0}}\n"
        "data: {path: books, block_size: 16, val_fraction: 0.0, num_proc: 1}\n"
        "train: {max_steps: 4, micro_batch_size: 4, global_batch_size: 4, lr: 3e-3, warmup: 1,\n"
        "        eval_every: 0, save_every: 4, log_every: 1}\n")


@pytest.mark.parametrize("flags, native", [
    ({"avx2", "avx512f"}, False),                              # Zen3/Zen4-less, Skylake: emulated
    ({"avx2", "avx512f", "avx512_bf16"}, True),                # Cooper Lake, Zen4
    ({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, True),  # Sapphire Rapids
    ({"fp", "asimd", "bf16"}, True),                           # Arm with FEAT_BF16
])
def test_native_bf16_is_read_from_the_cpu_flags(flags, native, monkeypatch):
    from gptune import hardware

    monkeypatch.delenv("GPTUNE_NATIVE_BF16")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.cpu_native_bf16() is native
    assert hardware.cpu_native_bf16(flags) is native
    assert (hardware.precision_warning("bf16") is None) is native


@pytest.mark.parametrize("native, said, recorded", [("0", "precision: fp32 (auto: the CPU", "'no'"),
                                                   ("1", "precision: bf16 (auto: the CPU", "bf16")])
def test_auto_says_its_choice_first_and_records_the_resolved_value(native, said, recorded, tmp_path, monkeypatch,
                                                                  capsys, fresh_accelerate_state):
    import yaml

    make_workdir(tmp_path, monkeypatch, {"a.txt": 300})
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setenv("GPTUNE_NATIVE_BF16", native)
    (tmp_path / "r.yaml").write_text(TINY)
    code, out, err = run_cli_captured(capsys, "pretrain", "r.yaml", "--set", "train.max_steps=1")
    assert code == 0, err
    lines = out.splitlines()
    assert said in lines[1], lines[:3]  # right after the "pretrain: model ... | out ..." line
    assert "no native bf16" not in err  # auto never warns
    saved = (tmp_path / "runs" / "tiny" / "recipe.yaml").read_text()
    assert f"mixed_precision: {recorded}\n" in saved
    assert yaml.safe_load(saved)["train"]["mixed_precision"] in ("no", False, "bf16")


def test_bf16_autocast_losses_stay_within_two_per_mille_of_fp32(tmp_path, monkeypatch, capsys,
                                                                fresh_accelerate_state):
    # bf16 on a CPU without bf16 units is ~150x slower: 4 steps of a 2-layer, 32-wide model
    make_workdir(tmp_path, monkeypatch, {"a.txt": 300})
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    (tmp_path / "r.yaml").write_text(TINY)
    losses = {}
    for mp in ("no", "bf16"):
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
        code, out, err = run_cli_captured(capsys, "pretrain", "r.yaml", "--out-dir", f"runs/{mp}", "--set",
                                          f"train.mixed_precision='{mp}'")
        assert code == 0, err
        warned = [x for x in err.splitlines() if "no native bf16" in x]
        if mp == "bf16":  # GPTUNE_NATIVE_BF16=0 (conftest): one line, with the expected slowdown
            assert len(warned) == 1 and re.search(r"measured \d+x slower than fp32 here", warned[0]), err
            assert "train.mixed_precision=bf16" in warned[0]
        else:
            assert not warned
        lines = (tmp_path / "runs" / mp / "metrics.jsonl").read_text().splitlines()
        losses[mp] = [json.loads(x)["loss"] for x in lines if '"train"' in x]
    assert len(losses["bf16"]) == len(losses["no"]) == 4
    diffs = [abs(a - b) for a, b in zip(losses["no"], losses["bf16"], strict=True)]
    print(f"fp32 {losses['no']}\nbf16 {losses['bf16']}\nmax |diff| {max(diffs):.4g}")
    assert losses["no"] != losses["bf16"]  # autocast really ran in bf16
    assert max(d / a for d, a in zip(diffs, losses["no"], strict=True)) < 2e-3  # measured: 6e-5


def test_the_machine_line_names_the_cpu_its_bf16_flags_and_both_measured_peaks(monkeypatch):
    from gptune import hardware

    monkeypatch.setattr(hardware, "cpu_model", lambda: "Fake Xeon 8480")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"sse2", "avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    m = hardware.Machine.measure(budget_s=0.02)  # 128^3 products: milliseconds
    assert m.flags == ("avx2", "avx512f", "avx512_bf16", "amx_bf16") and m.native_bf16
    assert m.peak_fp32_gflops > 0 and m.peak_bf16_gflops > 0
    assert m.peak("bf16") == m.peak_bf16_gflops and m.peak("no") == m.peak_fp32_gflops
    line = m.line()
    assert line.startswith("Fake Xeon 8480 | flags avx2 avx512f avx512_bf16 amx_bf16 |") and "(native bf16)" in line
