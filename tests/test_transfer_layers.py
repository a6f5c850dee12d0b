"""model.transfer_layers (GPT-1 Fig. 2 left): blocks <= k keep the pretrained weights, blocks > k are
re-initialised, the embeddings always transfer; a k beyond the model is an error naming the key."""

from __future__ import annotations

import pytest
import torch

from gptune.errors import GptuneError
from gptune.recipes import build_recipe


@pytest.fixture(scope="module")
def shifted_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny GPT-2 with every parameter moved by +1: nothing of it looks like a fresh init."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("shifted")
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(1.0)
    lm.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


def _build(model_dir, k):
    from transformers import AutoTokenizer

    from gptune.modeling.heads import add_task_tokens
    from gptune.modeling.task_io import build_task_model
    from gptune.tasks import get_task

    recipe = build_recipe({}, {"model.name_or_path": model_dir, "task.name": "sst2", "train.max_steps": 1},
                          [] if k is None else [f"model.transfer_layers={k}"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = add_task_tokens(tok)
    torch.manual_seed(0)
    return build_task_model(recipe.model, recipe.task, recipe.lora, get_task("sst2"), tok, ids).lm


@pytest.mark.parametrize("k", [0, 1, 2])
def test_blocks_up_to_k_transfer_and_blocks_above_are_reinitialised(shifted_model_dir, k):
    from transformers import AutoModelForCausalLM

    ref = dict(AutoModelForCausalLM.from_pretrained(shifted_model_dir).named_parameters())
    lm = _build(shifted_model_dir, k)
    n_vocab = ref["transformer.wte.weight"].shape[0]
    got = dict(lm.named_parameters())
    # embeddings (the old rows; new rows are the GPT-1 markers) and the final LayerNorm always transfer
    assert torch.equal(got["transformer.wte.weight"][:n_vocab], ref["transformer.wte.weight"])
    assert torch.equal(got["transformer.wpe.weight"], ref["transformer.wpe.weight"])
    assert torch.equal(got["transformer.ln_f.weight"], ref["transformer.ln_f.weight"])
    for name, p in got.items():
        if not name.startswith("transformer.h."):
            continue
        layer = int(name.split(".")[2])
        if layer < k:
            assert torch.equal(p, ref[name]), name
            continue
        # a fresh GPT-2 init: LayerNorm gains 1, biases 0, matrices N(0, 0.02) (c_proj 0.02/sqrt(2 n_layer))
        if ".ln_" in name and name.endswith("weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            std = 0.02 / 2 if "c_proj" in name else 0.02  # n_layer 2: sqrt(2 * 2) = 2
            assert abs(p.mean().item()) < 0.005, name
            assert p.std().item() == pytest.approx(std, rel=0.15), name


def test_absent_key_transfers_every_block(shifted_model_dir):
    from transformers import AutoModelForCausalLM

    ref = dict(AutoModelForCausalLM.from_pretrained(shifted_model_dir).named_parameters())
    got = dict(_build(shifted_model_dir, None).named_parameters())
    for name, p in got.items():
        if name.startswith("transformer.h."):
            assert torch.equal(p, ref[name]), name


def test_k_beyond_the_model_names_the_key(shifted_model_dir):
    with pytest.raises(GptuneError, match=r"model.transfer_layers: must be in \[0, 2\].*got 3"):
        _build(shifted_model_dir, 3)
    with pytest.raises(GptuneError, match="model.transfer_layers: must be >= 0"):
        build_recipe({}, {}, ["model.transfer_layers=-1", "model.tokenizer=x", "train.max_steps=1"])
