"""Nothing lost: interruptions, crashes inside a checkpoint write, non-finite losses, a full disk,
tampered checkpoints. Real subprocesses where a signal is involved."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import make_workdir, run_cli

RECIPE = (
    "# gptune pretrain r.yaml\nname: tiny\n"
    "model: {tokenizer: train, vocab_size: 400, config: {n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64, dropout: 0.1}}\n"
    "data: {path: books, block_size: 32, val_fraction: 0.05, num_proc: 1}\n"
    "train: {max_steps: %d, micro_batch_size: 4, global_batch_size: 8, lr: 3e-3, warmup: 2,\n"
    "        eval_every: 0, save_every: %d, keep_last: 3, log_every: 2}\n"
)


@pytest.fixture()
def project(tmp_path, monkeypatch):
    return make_workdir(tmp_path, monkeypatch, {"a.txt": 1500})


def write_recipe(root: Path, max_steps: int, save_every: int) -> None:
    (root / "r.yaml").write_text(RECIPE % (max_steps, save_every))


def weights(run: Path) -> dict:
    return load_file(run / "final" / "model.safetensors")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((a[k] - b[k]).abs().max().item() <= 1e-6 for k in a)


def spawn(root: Path, *args, env=None) -> subprocess.Popen:
    # one thread, like the in-process runs (conftest): the same float summation order, bit-equal weights
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "gptune", "pretrain", "r.yaml", *args], cwd=root, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(pred, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def logged_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(x).get("step", 0) for x in path.read_text().splitlines() if x.strip()]
    return max(steps, default=0)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(project, sig, code):
    write_recipe(project, max_steps=160, save_every=1000)
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/straight") == 0
    proc = spawn(project, "--out-dir", "runs/cut")
    run = project / "runs" / "cut"
    assert wait_for(lambda: logged_step(run) >= 4), proc.communicate()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "resume" in err and "--resume auto" in err
    ckpts = sorted(run.glob("step-*"))
    assert len(ckpts) == 1 and 4 <= int(ckpts[0].name[5:]) < 160  # stopped mid-run, state saved
    assert not (run / "final").exists()
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/cut", "--resume", "auto") == 0
    assert same(weights(project / "runs" / "straight"), weights(run))


def test_kill_9_inside_a_checkpoint_write_keeps_the_previous_checkpoint(project):
    write_recipe(project, max_steps=24, save_every=8)
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/straight") == 0
    marker = project / "paused"
    proc = spawn(project, "--out-dir", "runs/crash",
                 env={"GPTUNE_TEST_PAUSE": "after_state@16:60", "GPTUNE_TEST_PAUSE_MARKER": str(marker)})
    assert wait_for(marker.exists), proc.communicate()
    proc.kill()  # SIGKILL while step-000016 is half written
    proc.communicate()
    run = project / "runs" / "crash"
    assert (run / "latest").read_text().strip() == "step-000008"
    assert (run / ".tmp-step-000016").exists() and not (run / "step-000016").exists()
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/crash", "--resume", "auto") == 0
    assert same(weights(project / "runs" / "straight"), weights(run))
    assert not list(run.glob(".tmp-*"))


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(project, monkeypatch, capsys):
    import torch

    import gptune.runners.pretrain as pre

    write_recipe(project, max_steps=20, save_every=4)
    real = pre.lm_step
    calls = {"n": 0}

    def poisoned(model, batch):
        out = real(model, batch)
        calls["n"] += 1
        if calls["n"] == 13:  # micro-batch 13 = the first of step 7
            out.loss = out.loss * torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(pre, "lm_step", poisoned)
    assert run_cli("pretrain", "r.yaml") == 2
    err = capsys.readouterr().err
    assert "loss became nan at step 7" in err and "train.skip_nonfinite" in err
    run = project / "runs" / "tiny"
    assert (run / "latest").read_text().strip() == "step-000004"
    assert not (run / "final").exists()
    # with a budget of bad batches the run skips it and finishes
    calls["n"] = 0
    assert run_cli("pretrain", "r.yaml", "--overwrite", "--set", "train.skip_nonfinite=1") == 0
    assert (run / "final" / "model.safetensors").exists()


def test_disk_full_while_saving_removes_the_partial_checkpoint(project, monkeypatch, capsys):
    from accelerate import Accelerator

    write_recipe(project, max_steps=12, save_every=4)
    real = Accelerator.save_state
    calls = {"n": 0}

    def full_disk(self, output_dir=None, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    assert run_cli("pretrain", "r.yaml") == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "step-000004 is intact" in err
    run = project / "runs" / "tiny"
    assert not list(run.glob(".tmp-*")) and [p.name for p in run.glob("step-*")] == ["step-000004"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_tampered_checkpoint_is_refused_not_executed(project, capsys):
    write_recipe(project, max_steps=8, save_every=4)
    assert run_cli("pretrain", "r.yaml") == 0
    run = project / "runs" / "tiny"
    ckpt = run / "step-000004"
    (ckpt / "optimizer.bin").write_bytes(pickle.dumps(_Evil()))
    capsys.readouterr()
    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=12", "--resume", str(ckpt)) == 2
    err = capsys.readouterr().err
    assert "refused to unpickle" in err or "cannot load this checkpoint safely" in err, err
    assert not (project / "pwned").exists()
