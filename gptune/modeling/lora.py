"""PEFT wiring for GPT task models: LoRA on the attention/MLP Conv1D layers, the new special-token
rows trainable (PEFT's ``trainable_token_indices``), and the task head trained and saved with the
adapter (``modules_to_save``). Everything else stays frozen.

GPT-2 and GPT-1 implement their projections as ``Conv1D`` (weight stored as (in, out)), hence
``fan_in_fan_out=True``. The head is called ``clf_head`` because PEFT matches ``modules_to_save``
by name suffix: ``head`` would also unfreeze ``lm_head``.
"""

from __future__ import annotations

from torch import nn

from gptune.config import LoraConfig as LoraRecipe
from gptune.errors import GptuneError

HEAD_NAME = "clf_head"


def _embedding_name(model: nn.Module) -> str:
    emb = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is emb:
            return name
    raise GptuneError("lora: the model has no input embedding module to train the new token rows of")


def apply_lora(model: nn.Module, cfg: LoraRecipe, new_token_ids: list[int]):
    """Wrap a ``GPT1TaskModel`` in a ``PeftModel``: LoRA on ``lora.target_modules``, the rows of
    ``new_token_ids`` and ``clf_head`` trainable."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in names]
    if missing:
        raise GptuneError(f"lora.target_modules: the model has no module named {', '.join(missing)}; "
                          "GPT-2/GPT-1 names are c_attn, c_proj, c_fc")
    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        fan_in_fan_out=True,
        bias="none",
        modules_to_save=[HEAD_NAME],
        trainable_token_indices={_embedding_name(model): list(new_token_ids)} if new_token_ids else None,
    )
    return get_peft_model(model, config)
