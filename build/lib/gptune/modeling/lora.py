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

from pathlib import Path

import torch
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


def save_adapter(lm, out, *, state_dict: dict | None = None, embeddings: bool = True) -> None:
    """Write ``lm``'s adapter to ``out``. With ``embeddings`` (the default, as PEFT's own
    ``save_embedding_layers="auto"`` does for a resized vocabulary) the new token rows are folded into the
    full input-embedding matrix, saved under its plain name (``base_model.model.transformer.wte.weight``),
    which PEFT loads straight into the (resized) base model with no wrapper on the embedding: the one form
    that lm-evaluation-harness's ``peft=`` loading survives (it re-ties the embeddings, which fails on PEFT's
    trainable-token wrapper under transformers 5). Without it: LoRA weights plus PEFT's trainable-token
    rows only (small; loads in PEFT, transformers and gptune). ``state_dict``: ``lm``'s consolidated state
    dict when its own tensors are shards (FSDP, ZeRO-3)."""
    adapter = getattr(lm.get_base_model().get_input_embeddings(), "token_adapter", None)
    if not embeddings or adapter is None:  # no new rows: nothing to fold
        lm.save_pretrained(str(out), state_dict=state_dict, save_embedding_layers=False)  # the base rows come from the base model
        return
    import copy

    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    sd = state_dict if state_dict is not None else lm.state_dict()
    name = next(n for n, m in lm.named_modules() if m is adapter)  # base_model.model.transformer.wte.token_adapter
    rows = torch.tensor(adapter.token_indices["default"], dtype=torch.long)
    matrix = sd[f"{name}.base_layer.weight"].detach().cpu().index_copy(
        0, rows, sd[f"{name}.trainable_tokens_delta.default"].detach().cpu())  # (V, C): the trained rows in place
    config = copy.deepcopy(lm.peft_config["default"])
    config.trainable_token_indices = None
    config.inference_mode = True
    state = {k: v.detach().contiguous().cpu() for k, v in
             get_peft_model_state_dict(lm, state_dict=sd, save_embedding_layers=False).items()
             if ".token_adapter." not in k}
    state[f"{name.removesuffix('.token_adapter')}.weight"] = matrix.contiguous()
    Path(out).mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(state, str(Path(out) / "adapter_model.safetensors"), metadata={"format": "pt"})
