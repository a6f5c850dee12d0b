"""PEFT wiring for GPT task models: a standard ``CAUSAL_LM`` LoRA adapter on the bare language model
(the family's default targets from PEFT's own table, else every linear layer, or ``lora.target_modules``;
plus the new special-token rows through PEFT's ``trainable_token_indices``, in the input embedding and,
where the head is untied, the LM head too). The task head ``clf_head`` sits outside the adapter, beside it
in ``GPT1TaskModel``: it is trained normally and saved as ``clf_head.safetensors``, so the adapter folder
is exactly what ``PeftModel``/``AutoPeftModelForCausalLM`` and lm-evaluation-harness expect
(keys ``base_model.model.<the model's own names>``). Everything else stays frozen.

GPT-2 and GPT-1 implement their projections as ``Conv1D`` (weight stored as (in, out)), hence
``fan_in_fan_out=True`` for them (read off the targeted modules, ``families.targets_conv1d``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gptune.config import LoraConfig as LoraRecipe
from gptune.errors import GptuneError
from gptune.modeling import families


def lora_targets(lm: nn.Module, requested: list[str] | None) -> list[str] | str:
    """``lora.target_modules`` checked against ``lm``'s linear layers, or the family's default when absent."""
    if requested is None:
        return families.default_lora_targets(lm)
    if list(requested) == ["all-linear"]:
        return "all-linear"
    real = families.linear_layer_names(lm)
    missing = [m for m in requested if m not in real]
    if missing:
        raise GptuneError(f"lora.target_modules: {type(families.unwrap(lm)).__name__} has no linear layer named "
                          f"{', '.join(missing)}; its linear layers are {', '.join(real)} (or all-linear)")
    return list(requested)


def token_rows(lm: nn.Module, new_token_ids: list[int]) -> list[int] | dict[str, list[int]] | None:
    """PEFT's ``trainable_token_indices`` for the new tokens: the input embedding's rows (a tied head follows
    them); an untied head without a bias gets the same rows trained in it (PEFT's wrapper would drop a bias,
    so GPT-J's head rows stay at their deterministic init)."""
    if not new_token_ids:
        return None
    inner = families.unwrap(lm)
    head = inner.get_output_embeddings()
    if getattr(inner.config, "tie_word_embeddings", False) or getattr(head, "bias", None) is not None:
        return list(new_token_ids)
    name = {m: n for n, m in inner.named_modules()}
    return {name[inner.get_input_embeddings()]: list(new_token_ids), name[head]: list(new_token_ids)}


def apply_lora(lm: nn.Module, cfg: LoraRecipe, new_token_ids: list[int]):
    """Wrap a causal LM in a ``PeftModelForCausalLM``: LoRA on ``lora.target_modules`` (absent: the family's
    default), the rows of ``new_token_ids`` trainable (``token_rows``)."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(lm, cfg.target_modules)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        fan_in_fan_out=families.targets_conv1d(lm, targets),
        bias="none",
        trainable_token_indices=token_rows(lm, new_token_ids),
    )
    return get_peft_model(lm, config)


def save_adapter(lm, out, *, state_dict: dict | None = None, embeddings: bool = True) -> None:
    """Write ``lm``'s adapter to ``out``. With ``embeddings`` (the default, as PEFT's own
    ``save_embedding_layers="auto"`` does for a resized vocabulary) the new token rows are folded into the
    full input-embedding matrix (and an untied head's matrix), saved under its plain name
    (``base_model.model.transformer.wte.weight``), which PEFT loads straight into the (resized) base model
    with no wrapper on the embedding: the one form that lm-evaluation-harness's ``peft=`` loading survives
    (it re-ties the embeddings, which fails on PEFT's trainable-token wrapper under transformers 5). Without
    it: LoRA weights plus PEFT's trainable-token rows only (small; loads in PEFT, transformers and gptune).
    ``state_dict``: ``lm``'s consolidated state dict when its own tensors are shards (FSDP, ZeRO-3)."""
    base = lm.get_base_model()
    tied = getattr(base.config, "tie_word_embeddings", False)
    holders = [base.get_input_embeddings()] + ([] if tied else [base.get_output_embeddings()])
    wrapped = [m for m in holders if hasattr(m, "token_adapter")]
    if not embeddings or not wrapped:  # no new rows: nothing to fold
        lm.save_pretrained(str(out), state_dict=state_dict, save_embedding_layers=False)  # the base rows come from the base model
        return
    import copy

    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    sd = state_dict if state_dict is not None else lm.state_dict()
    names = {m: n for n, m in lm.named_modules()}
    state = {k: v.detach().contiguous().cpu() for k, v in
             get_peft_model_state_dict(lm, state_dict=sd, save_embedding_layers=False).items()
             if ".token_adapter." not in k}
    for holder in holders:
        name = names[holder]  # base_model.model.transformer.wte
        if holder in wrapped:
            adapter = holder.token_adapter
            rows = torch.tensor(adapter.token_indices["default"], dtype=torch.long)
            matrix = sd[f"{name}.token_adapter.base_layer.weight"].detach().cpu().index_copy(
                0, rows, sd[f"{name}.token_adapter.trainable_tokens_delta.default"].detach().cpu())  # (V, C): trained rows in place
            state[f"{name}.weight"] = matrix.contiguous()
        else:  # an untied head with a bias (GPT-J): its new rows as initialised, so any loader gets them
            for key in ("weight", "bias"):
                if f"{name}.{key}" in sd:
                    state[f"{name}.{key}"] = sd[f"{name}.{key}"].detach().contiguous().cpu()
    config = copy.deepcopy(lm.peft_config["default"])
    config.trainable_token_indices = None
    config.inference_mode = True
    Path(out).mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(state, str(Path(out) / "adapter_model.safetensors"), metadata={"format": "pt"})
