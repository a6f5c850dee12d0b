"""DeepSpeed ZeRO-2 and ZeRO-3 for real on 2 CPU processes (DeepSpeed's CPU accelerator, gloo), through
``accelerate launch``: the shipped ZeRO-2 config as is, and a CPU twin of the shipped ZeRO-3 config that
differs only in ``stage3_param_persistence_threshold: 0`` (by default ZeRO-3 keeps every parameter below
1e5 elements whole, i.e. all of a tiny model). Losses equal the 1-process run, each process holds half of
the parameters (ZeRO-3) or of the optimizer state (ZeRO-2), and final/ is consolidated and loadable."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import accelerate_launch, finetune_args, make_workdir, run_cli, train_events

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow  # each test launches DeepSpeed on 2 processes (imports alone take ~20 s)

SHIPPED = Path(str(importlib.resources.files("gptune.recipes") / "accelerate"))
RECIPE = (
    "# gptune pretrain r.yaml\nname: tiny\n"
    "model: {tokenizer: train, vocab_size: 400, config: {n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64, dropout: 0.0}}\n"
    "data: {path: books, block_size: 32, val_fraction: 0.05, num_proc: 1}\n"
    "train: {max_steps: 4, micro_batch_size: 4, global_batch_size: 8, lr: 3e-3, warmup: 2,\n"
    "        eval_every: 0, save_every: 4, log_every: 1}\n"
)


def zero3_cpu_twin(folder: Path) -> Path:
    """recipes/accelerate/deepspeed_zero3.yaml with its DeepSpeed fields in a JSON file plus the one value a
    tiny model needs; everything else (the "auto" values gptune fills in, zero3_init_flag) stays."""
    shipped = yaml.safe_load((SHIPPED / "deepspeed_zero3.yaml").read_text())
    ds = shipped.pop("deepspeed_config")
    assert ds["zero_stage"] == 3 and ds["gradient_accumulation_steps"] == ds["gradient_clipping"] == "auto"
    (folder / "ds3.json").write_text(json.dumps({
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                              "stage3_gather_16bit_weights_on_model_save": ds["zero3_save_16bit_model"]},
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto"}))
    shipped["deepspeed_config"] = {"deepspeed_config_file": "ds3.json", "zero3_init_flag": ds["zero3_init_flag"]}
    (folder / "ds3.yaml").write_text(yaml.safe_dump(shipped))
    return folder / "ds3.yaml"


def fp32_partitions(ckpt: Path) -> list[int]:
    """Elements of the fp32 master parameters each process holds in a DeepSpeed checkpoint."""
    sizes = []
    for rank in (0, 1):
        f = ckpt / "pytorch_model" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        state = torch.load(f, map_location="cpu", weights_only=False)  # our own checkpoint, just written
        groups = state["optimizer_state_dict"]
        flat = groups.get("fp32_flat_groups") or groups.get("single_partition_of_fp32_groups")
        sizes.append(sum(t.numel() for t in flat))
    return sizes


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_pretraining_matches_one_process_partitions_and_saves_a_whole_final(stage, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    make_workdir(tmp_path, monkeypatch, {"a.txt": 1500})
    (tmp_path / "r.yaml").write_text(RECIPE)
    config = SHIPPED / "deepspeed_zero2.yaml" if stage == 2 else zero3_cpu_twin(tmp_path)
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/one") == 0
    accelerate_launch(tmp_path, config, "pretrain", "r.yaml", "--out-dir", "runs/ds")
    one, ds = tmp_path / "runs" / "one", tmp_path / "runs" / "ds"
    assert [e["loss"] for e in train_events(ds)] == pytest.approx([e["loss"] for e in train_events(one)], abs=1e-5)
    ea, eb = train_events(one, "eval")[-1], train_events(ds, "eval")[-1]
    assert eb["val_tokens"] == ea["val_tokens"]  # every rank counted once: Accelerate sees 2 processes
    for key in ("val_loss", "val_ppl_sliding"):
        assert eb[key] == pytest.approx(ea[key], rel=1e-6), key

    n_params = sum(t.numel() for t in load_file(one / "final" / "model.safetensors").values())
    parts = fp32_partitions(ds / "step-000004")
    assert parts[0] == parts[1] and n_params / 2 <= parts[0] < n_params / 2 + 64  # half each (plus padding)

    wa, wb = load_file(one / "final" / "model.safetensors"), load_file(ds / "final" / "model.safetensors")
    assert sorted(wa) == sorted(wb)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    AutoModelForCausalLM.from_pretrained(ds / "final")


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_zero3_finetuning_matches_one_process_and_saves_a_whole_final(mode, tiny_model_dir, sst2_dir,
                                                                      tmp_path, monkeypatch):
    from gptune.modeling.task_io import load_task_model

    make_workdir(tmp_path, monkeypatch, {})
    assert run_cli(*finetune_args(tiny_model_dir, sst2_dir, "runs/one", mode)) == 0
    accelerate_launch(tmp_path, zero3_cpu_twin(tmp_path), *finetune_args(tiny_model_dir, sst2_dir, "runs/ds", mode))
    one, ds = tmp_path / "runs" / "one", tmp_path / "runs" / "ds"
    for key in ("loss", "task_loss", "lm_loss"):
        assert [e[key] for e in train_events(ds)] == pytest.approx([e[key] for e in train_events(one)], abs=1e-5), key
    weights = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
    wa, wb = load_file(one / "final" / weights), load_file(ds / "final" / weights)
    assert sorted(wa) == sorted(wb) and all(wb[k].numel() for k in wb)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    load_task_model(ds / "final")
