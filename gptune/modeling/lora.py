"""PEFT wiring for GPT task models: a standard ``CAUSAL_LM`` LoRA adapter on the bare language model
(the attention/MLP Conv1D layers, plus the new special-token rows through PEFT's
``trainable_token_indices``). The task head ``clf_head`` sits outside the adapter, beside it in
``GPT1TaskModel``: it is trained normally and saved as ``clf_head.safetensors``, so the adapter folder
is exactly what ``PeftModel``/``AutoPeftModelForCausalLM`` and lm-evaluation-harness expect
(keys ``base_model.model.transformer.*``). Everything else stays frozen.

GPT-2 and GPT-1 implement their projections as ``Conv1D`` (weight stored as (in, out)), hence
``fan_in_fan_out=True``.
"""

from __future__ import annotations

from torch import nn

from gptune.config import LoraConfig as LoraRecipe
from gptune.errors import GptuneError


def apply_lora(lm: nn.Module, cfg: LoraRecipe, new_token_ids: list[int]):
    """Wrap a causal LM in a ``PeftModelForCausalLM``: LoRA on ``lora.target_modules``, the input-embedding
    rows of ``new_token_ids`` trainable (with tied embeddings, the LM head's rows follow them)."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
    missing = [m for m in cfg.target_modules if m not in names]
    if missing:
        raise GptuneError(f"lora.target_modules: the model has no module named {', '.join(missing)}; "
                          "GPT-2/GPT-1 names are c_attn, c_proj, c_fc")
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        fan_in_fan_out=True,
        bias="none",
        trainable_token_indices=list(new_token_ids) or None,
    )
    return get_peft_model(lm, config)


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}
