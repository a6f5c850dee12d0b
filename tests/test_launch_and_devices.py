"""What gptune starts and where it puts things: the accelerate launch command for one or several machines,
the device generation runs on, and the DataLoader options on CUDA (checked here without a GPU)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from conftest import run_cli


@pytest.fixture()
def launched(monkeypatch, tmp_path):
    """Capture the command gptune would start instead of starting it."""
    import gptune.distributed as d

    calls = []
    monkeypatch.delenv("ACCELERATE_LAUNCHED_GPTUNE", raising=False)
    monkeypatch.delenv("GPTUNE_MAIN_PORT", raising=False)
    monkeypatch.setattr(d.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    monkeypatch.chdir(tmp_path)
    return calls


def after(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_multi_node_flags_pass_through_to_accelerate_launch(launched):
    argv = ["pretrain", "r.yaml", "--num-processes", "16", "--num-machines", "2", "--machine-rank", "1",
            "--main-process-ip", "10.1.2.3", "--set", "train.max_steps=3", "--main-process-port=29601"]
    assert run_cli(*argv) == 0
    [(cmd, env)] = launched
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert {f: after(cmd, f) for f in ("--num_processes", "--num_machines", "--machine_rank", "--main_process_ip",
                                       "--main_process_port")} == {
        "--num_processes": "16", "--num_machines": "2", "--machine_rank": "1", "--main_process_ip": "10.1.2.3",
        "--main_process_port": "29601"}
    # the relaunched command is the same command without the launch flags
    assert cmd[cmd.index("gptune") - 1:] == ["-m", "gptune", "pretrain", "r.yaml", "--set", "train.max_steps=3"]
    assert env["ACCELERATE_LAUNCHED_GPTUNE"] == "1"


def test_several_machines_default_to_one_agreed_port_and_one_machine_to_a_free_one(launched):
    from gptune.distributed import Machines, launch

    launch(4, ["finetune", "--task", "sst2"], Machines(2, 0, "node0"))
    launch(2, ["eval", "--ppl"])
    (multi, _), (single, _) = launched
    assert after(multi, "--main_process_port") == "29500" and after(multi, "--machine_rank") == "0"
    assert after(single, "--num_machines") == "1" and "--machine_rank" not in single
    assert int(after(single, "--main_process_port")) > 0


@pytest.mark.parametrize("flags,message", [
    (["--num-processes", "4", "--num-machines", "2"], "--main-process-ip: required with --num-machines > 1"),
    (["--num-processes", "4", "--num-machines", "2", "--machine-rank", "2", "--main-process-ip", "h"],
     "--machine-rank must be in [0, 1], got 2"),
    (["--num-processes", "3", "--num-machines", "2", "--main-process-ip", "h"],
     "--num-processes 3 (all machines together) is not a multiple of --num-machines 2"),
    (["--num-machines", "2", "--main-process-ip", "h"], "also pass --num-processes"),
])
def test_bad_launch_flags_are_one_line_each(launched, capsys, flags, message):
    argv = ["eval", "--ppl", *flags]
    assert run_cli(*argv) == 2
    assert message in capsys.readouterr().err
    assert not launched


def test_generation_runs_on_the_gpu_when_there_is_one(monkeypatch, tiny_model_dir):
    import gptune.runners.generate as g

    assert g.generation_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert g.generation_device() == torch.device("cuda")
    monkeypatch.undo()
    # the model and the prompt go to that device (here a CPU stand-in, recorded)
    moved = []
    real_to = torch.nn.Module.to
    monkeypatch.setattr(g, "generation_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or real_to(self, *a, **k))
    texts = g.run_generate(tiny_model_dir, "the cat", max_new_tokens=3, temperature=0)
    assert moved and moved[0] == (torch.device("cpu"),) and len(texts) == 1


def test_data_loaders_use_workers_and_pinned_memory_on_cuda(monkeypatch):
    from gptune.config import TrainConfig
    from gptune.data.collate import loader_kwargs
    from gptune.runners.pretrain import build_loaders

    cfg = TrainConfig(max_steps=1)
    assert loader_kwargs(cfg.num_workers) == {"num_workers": 0, "pin_memory": False, "persistent_workers": False}
    assert loader_kwargs(TrainConfig(max_steps=1, num_workers=3).num_workers)["num_workers"] == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert loader_kwargs(cfg.num_workers) == {"num_workers": 2, "pin_memory": True, "persistent_workers": True}
    blocks = [{"input_ids": torch.arange(8)} for _ in range(16)]
    recipe = types.SimpleNamespace(train=TrainConfig(max_steps=1, micro_batch_size=4), seed=0,
                                   data=types.SimpleNamespace(block_size=8))
    train, val = build_loaders(recipe, types.SimpleNamespace(train=blocks, val=blocks))
    assert (train.num_workers, train.pin_memory, val.num_workers, val.pin_memory) == (2, True, 2, True)


def test_gpu_check_refuses_in_one_line_without_cuda():
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    # a CPU test: the GPUs of a GPU machine are hidden, so the script refuses there too instead of running
    # the GPU benchmark under this timeout
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU machine"]
