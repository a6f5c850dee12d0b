"""``train.compile`` and ``model.gradient_checkpointing``: what they save is what a user reloads, and the
gradients are those of the plain model."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_workdir, run_cli


def tiny_lm(arch: str):
    from transformers import AutoModelForCausalLM, GPT2Config, OpenAIGPTConfig

    torch.manual_seed(0)
    common = dict(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                  attn_pdrop=0.0)
    cfg = GPT2Config(**common) if arch == "gpt2" else OpenAIGPTConfig(**common)
    return AutoModelForCausalLM.from_config(cfg)


@pytest.mark.parametrize("arch", ["gpt2", "openai-gpt"])
def test_gradient_checkpointing_gives_the_same_gradients(arch):
    from gptune.modeling.gpt import body_and_head, enable_gradient_checkpointing

    plain = tiny_lm(arch)
    ckpt = copy.deepcopy(plain)
    enable_gradient_checkpointing(ckpt)
    assert ckpt.state_dict().keys() == plain.state_dict().keys()  # saved folders keep their keys
    runs = {"plain": 0, "ckpt": 0}
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        first = body_and_head(model)[0].h[0]
        first.attn.register_forward_hook(lambda *a, name=name: runs.__setitem__(name, runs[name] + 1))
    ids = torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(1))
    for model in (plain, ckpt):
        model.train()
        model(ids, labels=ids).loss.backward()
    assert runs == {"plain": 1, "ckpt": 2}  # the checkpointed block really ran again in backward
    grads = dict(plain.named_parameters())
    for name, p in ckpt.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=0, atol=1e-6, msg=name)


def test_gradient_checkpointing_uses_the_old_switch_where_transformers_has_only_that():
    from gptune.modeling.gpt import enable_gradient_checkpointing

    calls = []

    class Old(torch.nn.Module):  # transformers 5.17 (the GPU machines' image): no activation_checkpointing_enable
        supports_gradient_checkpointing = True

        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
            calls.append(gradient_checkpointing_kwargs)

    enable_gradient_checkpointing(Old())
    assert calls == [{"use_reentrant": False}]


def test_gradient_checkpointing_is_accepted_for_openai_gpt_in_a_recipe(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from gptune.modeling.gpt import build_causal_lm
    from gptune.recipes import build_recipe

    r = build_recipe({"model": {"arch": "openai-gpt", "gradient_checkpointing": True, "tokenizer": tiny_tokenizer_dir,
                                "config": {"n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 32}},
                      "data": {"path": "books"}, "train": {"max_steps": 1}})
    lm = build_causal_lm(r.model, AutoTokenizer.from_pretrained(tiny_tokenizer_dir))  # raised ValueError before
    assert all(callable(b.__dict__.get("forward")) for b in lm.transformer.h)


RECIPE = (
    "# gptune pretrain r.yaml\nname: tiny\n"
    "model: {tokenizer: train, vocab_size: 300, config: {n_layer: 1, n_head: 2, n_embd: 32, n_positions: 32, dropout: 0.0}}\n"
    "data: {path: books, block_size: 16, val_fraction: 0.05, num_proc: 1}\n"
    "train: {max_steps: 2, micro_batch_size: 4, global_batch_size: 4, lr: 3e-3, warmup: 1, compile: true,\n"
    "        eval_every: 0, save_every: 2, log_every: 1}\n"
)


def test_compiled_pretraining_saves_weights_that_reload(tmp_path, monkeypatch):
    """Defect 4: ``final/`` of a ``train.compile`` run loads with from_pretrained to the trained model's logits
    (a ``torch.compile`` wrapper saved ``_orig_mod.`` keys: every weight loaded as missing, i.e. random)."""
    from transformers import AutoModelForCausalLM

    import gptune.runners.pretrain as pre

    make_workdir(tmp_path, monkeypatch, {"a.txt": 300})
    (tmp_path / "r.yaml").write_text(RECIPE)
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(0))
    seen = {}
    real = pre.save_final

    def keep_logits(accelerator, model, *a, **k):
        lm = accelerator.unwrap_model(model).lm
        seen["compiled"] = model._compiled_call_impl is not None or accelerator.unwrap_model(model)._compiled_call_impl is not None
        with torch.no_grad():
            seen["logits"] = lm.eval()(ids).logits
        return real(accelerator, model, *a, **k)

    monkeypatch.setattr(pre, "save_final", keep_logits)
    assert run_cli("pretrain", "r.yaml") == 0
    assert seen["compiled"]
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "tiny" / "final", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids).logits, seen["logits"], rtol=0, atol=1e-5)
    # the checkpoint has plain keys too, so it resumes into an uncompiled or compiled model alike
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "runs" / "tiny" / "step-000002" / "model.safetensors").keys()
    assert keys and not any("_orig_mod" in k for k in keys)
