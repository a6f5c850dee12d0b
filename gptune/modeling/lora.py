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


def save_adapter(lm, out, *, state_dict: dict | None = None, embeddings: bool = False) -> None:
    """Write ``lm``'s adapter to ``out``: LoRA weights plus the new token rows (PEFT's trainable tokens), or
    with ``embeddings`` the full input-embedding matrix, those rows folded in, under its plain name
    (``base_model.model.transformer.wte.weight``), which PEFT loads straight into the (resized) base model.
    ``state_dict``: ``lm``'s consolidated state dict when its own tensors are shards (FSDP, ZeRO-3); the
    ``embeddings`` variant reads the live model and so needs an unsharded one."""
    if not embeddings:
        lm.save_pretrained(str(out), state_dict=state_dict, save_embedding_layers=False)  # the base rows come from the base model
        return
    import copy

    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = copy.deepcopy(lm.peft_config["default"])
    config.trainable_token_indices = None
    config.inference_mode = True
    state = {k: v.detach().contiguous().cpu() for k, v in
             get_peft_model_state_dict(lm, save_embedding_layers=False).items() if ".token_adapter." not in k}
    base = lm.get_base_model()
    emb = base.get_input_embeddings()
    name = next(n for n, m in base.named_modules() if m is emb)
    state[f"base_model.model.{name}.weight"] = emb.weight.detach().clone().contiguous().cpu()  # rows merged in
    Path(out).mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(state, str(Path(out) / "adapter_model.safetensors"), metadata={"format": "pt"})
