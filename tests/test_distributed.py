"""Two real CPU processes (torchrun + gloo through accelerate launch) give the results of one."""

from __future__ import annotations

import importlib.resources
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import make_workdir, run_cli

RECIPE = (
    "# gptune pretrain r.yaml --num-processes 2\nname: tiny\n"
    "model: {tokenizer: train, vocab_size: 400, config: {n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64, dropout: 0.0}}\n"
    "data: {path: books, block_size: 32, val_fraction: 0.05, num_proc: 1}\n"
    "train: {max_steps: 12, micro_batch_size: 4, global_batch_size: 8, lr: 3e-3, warmup: 2,\n"
    "        eval_every: 0, save_every: 6, keep_last: 3, log_every: 2}\n"
)


@pytest.fixture()
def project(tmp_path, monkeypatch):
    make_workdir(tmp_path, monkeypatch, {"a.txt": 1500})
    (tmp_path / "r.yaml").write_text(RECIPE)
    return tmp_path


def two_procs(root, *args) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "gptune", *args, "--num-processes", "2"], cwd=root,
                         env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def events(run, kind):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if f'"{kind}"' in x]


def test_two_processes_match_one_with_the_same_global_batch(project):
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/one") == 0
    two_procs(project, "pretrain", "r.yaml", "--out-dir", "runs/two")
    one, two = project / "runs" / "one", project / "runs" / "two"
    la, lb = events(one, "train"), events(two, "train")
    assert [e["step"] for e in la] == [e["step"] for e in lb]
    assert [e["loss"] for e in la] == pytest.approx([e["loss"] for e in lb], abs=1e-5)
    assert [e["tokens"] for e in la] == [e["tokens"] for e in lb]  # tokens counted over both processes
    # 23 validation blocks do not split evenly over 2 processes x 4: gather_for_metrics drops the padding
    ea, eb = events(one, "eval")[-1], events(two, "eval")[-1]
    assert ea["val_tokens"] == eb["val_tokens"]
    assert ea["val_loss"] == pytest.approx(eb["val_loss"], abs=1e-5)
    wa, wb = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    # only the main process wrote: one metrics line per event, one tokenizer, one checkpoint per save
    assert len(lb) == 6 and sorted(p.name for p in two.glob("step-*")) == ["step-000006", "step-000012"]


def test_a_two_process_run_resumes_exactly(project, capsys):
    import shutil

    two_procs(project, "pretrain", "r.yaml", "--out-dir", "runs/straight")
    straight, cut = project / "runs" / "straight", project / "runs" / "cut"
    assert (straight / "step-000006" / "random_states_1.pkl").exists()  # every process saved its RNG state
    shutil.copytree(straight, cut)  # the run folder as it was after step 6
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "step-000012")
    (cut / "latest").write_text("step-000006\n")
    # one process cannot take over two processes' data position and random states: refused in one line
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/cut", "--resume", "auto") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written by 2 process(es) and this run has 1" in err[0]
    two_procs(project, "pretrain", "r.yaml", "--out-dir", "runs/cut", "--resume", "auto")
    wa, wb = load_file(straight / "final" / "model.safetensors"), load_file(cut / "final" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6


def test_bad_process_count_is_one_line(project, capsys):
    assert run_cli("pretrain", "r.yaml", "--num-processes", "0") == 2
    assert "--num-processes must be >= 1, got 0" in capsys.readouterr().err


def test_shipped_accelerate_configs_parse():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(str(importlib.resources.files("gptune.recipes") / "accelerate"))
    kinds = {p.name: str(load_config_from_file(str(p)).distributed_type) for p in folder.glob("*.yaml")}
    assert kinds == {
        "cpu2.yaml": "DistributedType.MULTI_GPU", "ddp.yaml": "DistributedType.MULTI_GPU",
        "fsdp.yaml": "DistributedType.FSDP", "deepspeed_zero2.yaml": "DistributedType.DEEPSPEED",
        "deepspeed_zero3.yaml": "DistributedType.DEEPSPEED",
    }
    for p in folder.glob("*.yaml"):
        assert p.read_text().startswith("#")  # says how to use it
