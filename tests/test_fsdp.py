"""FSDP2 for real on 2 CPU processes (gloo), through Accelerate's own FSDP2 path and the shipped
recipes/accelerate/fsdp.yaml: every transformer block and the root are ``fully_shard`` units with
reshard-after-forward, so a block's weights are DTensor shards. Pretraining (validation loss and the
sliding-window ``eval --ppl`` measure included), full fine-tuning with the auxiliary LM loss and LoRA give
the 1-process numbers; final/ is consolidated and loads; a resumed run ends where an uninterrupted one does.
(Accelerate enables FSDP only on accelerators; ``training.loop.build_accelerator`` lets it run on CPU.)"""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import accelerate_launch, finetune_args, make_workdir, run_cli, train_events

FSDP_YAML = Path(str(importlib.resources.files("gptune.recipes") / "accelerate" / "fsdp.yaml"))
RECIPE = (
    "# gptune pretrain r.yaml\nname: tiny\n"
    "model: {tokenizer: train, vocab_size: 400, config: {n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64, dropout: 0.0}}\n"
    "data: {path: books, block_size: 32, val_fraction: 0.05, num_proc: 1}\n"
    "train: {max_steps: 6, micro_batch_size: 4, global_batch_size: 8, lr: 3e-3, warmup: 2,\n"
    "        eval_every: 0, save_every: 3, keep_last: 3, log_every: 1}\n"
)


def launcher_env(config: Path) -> dict:
    """The environment ``accelerate launch --config_file CONFIG`` gives its processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(["--config_file", str(config), "x.py"]))
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("arch", ["gpt2", "openai-gpt"])
def test_the_shipped_fsdp_config_wraps_every_block_of_both_architectures(arch, monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import GPT2Config, GPT2LMHeadModel, OpenAIGPTConfig, OpenAIGPTLMHeadModel

    from gptune.modeling.gpt import LMWithLoss

    for key, value in launcher_env(FSDP_YAML).items():
        monkeypatch.setenv(key, value)
    kw = dict(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    lm = GPT2LMHeadModel(GPT2Config(**kw)) if arch == "gpt2" else OpenAIGPTLMHeadModel(OpenAIGPTConfig(**kw))
    model = LMWithLoss(lm)
    plugin = FullyShardedDataParallelPlugin()  # as Accelerate builds it in each launched process
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    plugin.set_auto_wrap_policy(model)  # raised "Could not find the transformer layer class Block" before
    units = [m for m in model.modules() if plugin.auto_wrap_policy(module=m, recurse=False, nonwrapped_numel=0)]
    assert units == list(lm.transformer.h)
    assert plugin.transformer_cls_names_to_wrap == ["GPT2Block" if arch == "gpt2" else "Block"]


@pytest.mark.slow  # two launches of 2 processes
def test_fsdp2_pretraining_matches_one_process_is_sharded_and_resumes_exactly(tmp_path, monkeypatch):
    from torch.distributed.checkpoint import FileSystemReader
    from transformers import AutoModelForCausalLM

    make_workdir(tmp_path, monkeypatch, {"a.txt": 1500})
    (tmp_path / "r.yaml").write_text(RECIPE)
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/one") == 0
    accelerate_launch(tmp_path, FSDP_YAML, "pretrain", "r.yaml", "--out-dir", "runs/fsdp")
    one, fsdp = tmp_path / "runs" / "one", tmp_path / "runs" / "fsdp"

    la, lb = train_events(one), train_events(fsdp)
    assert [e["step"] for e in lb] == list(range(1, 7))
    assert [e["loss"] for e in lb] == pytest.approx([e["loss"] for e in la], abs=1e-5)
    # validation loss and the sliding-window perplexity run through the wrapped (sharded) model
    ea, eb = train_events(one, "eval")[-1], train_events(fsdp, "eval")[-1]
    assert eb["val_tokens"] == ea["val_tokens"]
    for key in ("val_loss", "val_ppl_sliding", "val_bits_per_byte"):
        assert eb[key] == pytest.approx(ea[key], rel=1e-6), key

    # the checkpoint holds one shard per process: a block's weight really was split
    meta = FileSystemReader(str(fsdp / "step-000006" / "pytorch_model_fsdp_0")).read_metadata()
    block = meta.state_dict_metadata["model.lm.transformer.h.0.attn.c_attn.weight"]
    assert tuple(block.size) == (32, 96)
    assert sorted(tuple(c.sizes) for c in block.chunks) == [(16, 96), (16, 96)]

    # final/ is one consolidated model, the 1-process weights, loadable by transformers
    wa, wb = load_file(one / "final" / "model.safetensors"), load_file(fsdp / "final" / "model.safetensors")
    assert sorted(wa) == sorted(wb)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    lm = AutoModelForCausalLM.from_pretrained(fsdp / "final")
    assert torch.equal(lm.transformer.h[0].attn.c_attn.weight, wb["transformer.h.0.attn.c_attn.weight"])

    cut = tmp_path / "runs" / "cut"  # the run folder as it was after step 3
    shutil.copytree(fsdp, cut)
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "step-000006")
    (cut / "latest").write_text("step-000003\n")
    accelerate_launch(tmp_path, FSDP_YAML, "pretrain", "r.yaml", "--out-dir", "runs/cut", "--resume", "auto")
    wc = load_file(cut / "final" / "model.safetensors")
    assert max((wb[k] - wc[k]).abs().max().item() for k in wb) <= 1e-6
    assert [e["loss"] for e in train_events(cut)] == [e["loss"] for e in lb]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fsdp2_finetuning_matches_one_process_and_saves_a_consolidated_final(mode, tiny_model_dir, sst2_dir,
                                                                              tmp_path, monkeypatch):
    from gptune.modeling.task_io import load_task_model

    make_workdir(tmp_path, monkeypatch, {})
    assert run_cli(*finetune_args(tiny_model_dir, sst2_dir, "runs/one", mode)) == 0
    accelerate_launch(tmp_path, FSDP_YAML, *finetune_args(tiny_model_dir, sst2_dir, "runs/fsdp", mode), "--merge")
    one, fsdp = tmp_path / "runs" / "one", tmp_path / "runs" / "fsdp"
    la, lb = train_events(one), train_events(fsdp)
    for key in ("loss", "task_loss", "lm_loss"):  # the auxiliary LM loss reads the tied head inside forward
        assert [e[key] for e in lb] == pytest.approx([e[key] for e in la], abs=1e-5), key
    assert train_events(fsdp, "eval")[-1]["accuracy"] == train_events(one, "eval")[-1]["accuracy"]

    weights = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
    wa, wb = load_file(one / "final" / weights), load_file(fsdp / "final" / weights)
    assert sorted(wa) == sorted(wb) and all(wb[k].numel() for k in wb)  # full tensors, not empty shards
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    model, _, info = load_task_model(fsdp / "final")  # from_pretrained / PEFT, from the folder alone
    assert info.lora == (mode == "lora")
    if mode == "lora":  # --merge: rebuilt from the saved adapter, not copied from the sharded model
        merged, _, merged_info = load_task_model(fsdp / "final" / "merged")
        assert not merged_info.lora
        ref = model.lm.merge_and_unload().state_dict()  # the adapter folded into the base LM
        for name, p in merged.lm.state_dict().items():
            torch.testing.assert_close(p, ref[name])
        torch.testing.assert_close(merged.clf_head.weight, model.clf_head.weight)
