"""What differs between decoder-only GPT families, in one table keyed by ``model_type``.

Most of it the model says itself and is read from it, never guessed from names:

- the body: ``base_model_prefix``; the LM head: ``get_output_embeddings()`` (tied or not:
  ``config.tie_word_embeddings``; which keys are copies: ``_tied_weights_keys``);
- the transformer blocks (one FSDP unit and one checkpointed unit each): the ``nn.ModuleList`` of the
  classes in ``_no_split_modules``;
- LoRA targets: PEFT's ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``, else ``all-linear``;
  ``fan_in_fan_out`` where the targeted layers are ``Conv1D`` (GPT-2, GPT-1);
- the config keys of a random init: transformers' standard names (``hidden_size``, ``num_hidden_layers``,
  ``num_attention_heads``, ``max_position_embeddings``; each config's ``attribute_map`` renames them) and
  every ``*dropout``/``*pdrop`` key of the family's default config.

``FAMILIES`` holds only what the model does not say: the keys that follow from the shape (GPT-Neo's
attention pattern, MLP widths, GPT-J's rotary width), the position scheme (documentation), and whether
the LM logits are exactly ``head(body(x).last_hidden_state)`` -- the condition for the one chunked loss
kernel of ``gptune.losses``, checked for every listed family by tests/test_families.py. A model type not
listed still trains and evaluates: its loss comes from the model's own full logits.

No torch import at module level: ``gptune.config`` reads the names and presets from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gptune.errors import GptuneError, first_line


def _mlp(ratio: float, key: str) -> Callable[[dict], dict]:
    """An MLP width of ``ratio`` x ``n_embd`` (rounded up to a multiple of 8) under the family's key."""
    return lambda s: {key: 8 * math.ceil(ratio * s["n_embd"] / 8)}


def _gpt_neo(s: dict) -> dict:
    # GPT-Neo alternates global and local attention; the pattern must cover exactly n_layer blocks
    pattern = [[["global", "local"], s["n_layer"] // 2]] + ([[["global"], 1]] if s["n_layer"] % 2 else [])
    return {"attention_types": [p for p in pattern if p[1]]}


def _llama(s: dict) -> dict:
    # SwiGLU with 2/3 x 4h (Llama's rule) has the parameters of GPT-2's 4h MLP; full multi-head attention
    return {**_mlp(8 / 3, "intermediate_size")(s), "num_key_value_heads": s["n_head"]}


@dataclass(frozen=True)
class Family:
    """One decoder-only family: what gptune needs that the model's own metadata does not say."""

    model_type: str
    label: str
    positions: str
    """How positions enter: learned table, rotary (RoPE), or ALiBi biases."""
    derive: Callable[[dict], dict] = lambda s: {}
    """Family config keys that follow from the shape (n_layer, n_head, n_embd) of a random init."""
    chunked: bool = True
    """The logits are ``head(body(x).last_hidden_state)`` (plus the head's bias): the LM loss goes through
    the chunked kernel without building full logits. False: through the model's own forward."""
    note: str = ""
    """What the chunked loss meets in this family (docs/models.md)."""


FAMILIES: dict[str, Family] = {f.model_type: f for f in [
    Family("gpt2", "GPT-2", "learned", note="Conv1D projections; tied head"),
    Family("openai-gpt", "GPT-1 (OpenAI-GPT)", "learned",
           note="Conv1D projections, post-LayerNorm; tied head; attention swapped for SDPA"),
    Family("gpt_neo", "GPT-Neo", "learned", _gpt_neo, note="alternating global/local attention; tied head"),
    Family("gptj", "GPT-J", "rotary", lambda s: {"rotary_dim": min(64, s["n_embd"] // s["n_head"])},
           note="untied head with a bias (added inside the kernel)"),
    Family("gpt_neox", "GPT-NeoX / Pythia", "rotary", _mlp(4, "intermediate_size"),
           note="untied head (embed_out before transformers 5); parallel residual"),
    Family("opt", "OPT", "learned", _mlp(4, "ffn_dim"),
           note="project_in/project_out (word_embed_proj_dim != hidden_size) run inside the decoder"),
    Family("bloom", "BLOOM", "alibi", note="ALiBi biases inside attention; tied head"),
    Family("llama", "Llama", "rotary", _llama, note="RMSNorm, SwiGLU, grouped-query attention; untied head"),
    Family("qwen2", "Qwen2", "rotary", _llama, note="Llama-style with q/k/v biases"),
]}


@dataclass(frozen=True)
class Preset:
    """A named size: the shape of a published model, for a random init (``model.arch``)."""

    model_type: str
    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int
    extra: dict[str, Any] = field(default_factory=dict)
    about: str = ""


PRESETS: dict[str, Preset] = {
    "gpt2-small": Preset("gpt2", 12, 12, 768, 1024, about="GPT-2 124M"),
    "gpt2-medium": Preset("gpt2", 24, 16, 1024, 1024, about="GPT-2 355M"),
    "gpt2-large": Preset("gpt2", 36, 20, 1280, 1024, about="GPT-2 774M"),
    "gpt2-xl": Preset("gpt2", 48, 25, 1600, 1024, about="GPT-2 1.5B"),
    "gpt1": Preset("openai-gpt", 12, 12, 768, 512, about="GPT-1 117M (Radford et al. 2018)"),
    "gpt-neo-125m": Preset("gpt_neo", 12, 12, 768, 2048, {"window_size": 256}, about="GPT-Neo 125M"),
    "gpt-j-6b": Preset("gptj", 28, 16, 4096, 2048, about="GPT-J 6B"),
    "pythia-70m": Preset("gpt_neox", 6, 8, 512, 2048, about="Pythia 70M"),
    "pythia-160m": Preset("gpt_neox", 12, 12, 768, 2048, about="Pythia 160M"),
    "pythia-410m": Preset("gpt_neox", 24, 16, 1024, 2048, about="Pythia 410M"),
    "opt-125m": Preset("opt", 12, 12, 768, 2048, about="OPT 125M"),
    "opt-350m": Preset("opt", 24, 16, 1024, 2048, {"word_embed_proj_dim": 512, "do_layer_norm_before": False},
                       about="OPT 350M (project_in/project_out, post-LayerNorm)"),
    "bloom-560m": Preset("bloom", 24, 16, 1024, 2048, about="BLOOM 560M (ALiBi: n_positions only bounds the data)"),
    "tinyllama-1.1b": Preset("llama", 22, 32, 2048, 2048, {"num_key_value_heads": 4, "intermediate_size": 5632},
                             about="TinyLlama 1.1B"),
    "llama2-7b": Preset("llama", 32, 32, 4096, 4096, {"intermediate_size": 11008}, about="Llama 2 7B"),
    "qwen2-0.5b": Preset("qwen2", 24, 14, 896, 32768, {"num_key_value_heads": 2, "intermediate_size": 4864,
                                                       "tie_word_embeddings": True}, about="Qwen2 0.5B"),
}

ARCHS = (*FAMILIES, *PRESETS)
"""What ``model.arch`` accepts: a family's ``model_type`` (gptune's default shape) or a preset name."""


def arch_family(arch: str) -> str:
    """The ``model_type`` behind a ``model.arch`` value."""
    return PRESETS[arch].model_type if arch in PRESETS else arch


# --------------------------------------------------------------------------------------------- random init


def random_config(arch: str, shape: dict, *, dropout: float, extra: dict, config_file: str | None,
                  vocab_size: int, bos_id: int | None, eos_id: int | None):
    """A transformers config for a random init: ``config_file`` (a config.json) when given, else the
    family's defaults; then the shape keys of ``shape`` that are set, the keys the family derives from
    the shape (unless the file or ``extra`` gives them), every dropout rate, and ``extra`` last.
    Errors name ``model.arch``, ``model.config_file`` or ``model.config.extra``."""
    from transformers import AutoConfig

    base: dict = {}
    if config_file:
        try:
            base = AutoConfig.from_pretrained(config_file).to_dict()
        except (OSError, ValueError) as e:
            raise GptuneError(f"model.config_file: cannot read a transformers config from {config_file}: "
                              f"{first_line(e)}") from None
        model_type = base.pop("model_type")
        for key in ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype"):
            base.pop(key, None)
    else:
        model_type = arch_family(arch)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        where = "model.config_file" if config_file else "model.arch"
        raise GptuneError(f"{where}: {model_type} has no causal-LM model in transformers")
    defaults = AutoConfig.for_model(model_type).to_dict()
    given = {k: v for k, v in shape.items() if v is not None}
    names = {"n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_embd": "hidden_size",
             "n_positions": "max_position_embeddings"}
    kwargs = {**base, **{names[k]: v for k, v in given.items()}}
    family = FAMILIES.get(model_type)
    if family is not None and len(given) == len(names):
        kwargs.update({k: v for k, v in family.derive(given).items() if k not in base and k not in extra})
    kwargs.update({k: dropout for k in defaults if k.endswith(("dropout", "pdrop"))})
    # no pad id: packed text has EOS between documents, which transformers would take for padding
    # (OPT would even freeze that embedding row); padded batches always carry an attention mask
    kwargs.update(vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=None)
    kwargs.update(extra)
    try:
        config = AutoConfig.for_model(model_type, **kwargs)
    except Exception as e:  # transformers' validators raise several types (strict dataclass errors among them)
        where = "model.config_file" if config_file else "model.config.extra"
        raise GptuneError(f"{where}: {model_type} rejects this config: {first_line(e)}") from None
    return config


# --------------------------------------------------------------------------------------------- read off a model


def family_of(lm) -> Family | None:
    """The table entry of ``lm``'s ``model_type`` (None: a family gptune does not list)."""
    return FAMILIES.get(getattr(unwrap(lm).config, "model_type", None))


def unwrap(model):
    """The transformers model inside DDP / torch.compile / PEFT wrappers."""
    from torch import nn

    inner = model
    for attr in ("module", "_orig_mod"):  # DDP / torch.compile wrappers
        while hasattr(inner, attr) and isinstance(getattr(inner, attr), nn.Module):
            inner = getattr(inner, attr)
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    return inner


def body_and_head(model):
    """(transformer body returning the final hidden states, LM head) of a causal LM, through any wrapper."""
    inner = unwrap(model)
    return getattr(inner, inner.base_model_prefix), inner.get_output_embeddings()


def decoder_blocks(lm):
    """(dotted path, the ``nn.ModuleList`` of transformer blocks): the list whose items are of the classes
    in ``_no_split_modules``; for a model without them (OpenAI-GPT) the body's longest ``ModuleList``."""
    from torch import nn

    inner = unwrap(lm)
    wanted = set(getattr(inner, "_no_split_modules", None) or [])
    lists = [(n, m) for n, m in inner.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    match = [(n, m) for n, m in lists if wanted and all(type(b).__name__ in wanted for b in m)]
    if not match:
        prefix = inner.base_model_prefix + "."
        match = sorted((x for x in lists if x[0].startswith(prefix)), key=lambda x: -len(x[1]))[:1]
    if not match:
        raise GptuneError(f"{type(inner).__name__}: no list of transformer blocks found")
    return match[0]


def block_class_names(lm) -> list[str]:
    """Class names of the transformer blocks, one FSDP unit each: ``_no_split_modules`` when the model has
    them, else the class of its blocks (OpenAI-GPT)."""
    inner = unwrap(lm)
    names = sorted(getattr(inner, "_no_split_modules", None) or [])
    return names or sorted({type(b).__name__ for b in decoder_blocks(inner)[1]})


def tied_keys(lm) -> set[str]:
    """State-dict keys that are copies of another weight (``lm_head.weight`` under tied embeddings)."""
    inner = unwrap(lm)
    if not getattr(inner.config, "tie_word_embeddings", False):
        return set()
    return set(getattr(inner, "_tied_weights_keys", None) or [])


def plain_head(head):
    """The ``nn.Linear`` under PEFT's trainable-token wrapper (whose ``.weight`` is the matrix with the
    trained rows in place, what ``gpt.head_weight`` reads), else ``head`` itself."""
    adapter = getattr(head, "token_adapter", None)
    return adapter.get_base_layer() if adapter is not None else head


def chunked_head(lm) -> bool:
    """Whether ``lm``'s LM loss may go through the chunked kernel from hidden states: a listed family
    whose head is a plain ``nn.Linear``, or one under PEFT's trainable tokens (the GPT-1 markers' rows);
    a head with LoRA on it (``lora.target_modules: [lm_head]``) must be called."""
    from torch import nn

    family = family_of(lm)
    _, head = body_and_head(lm)
    return family is not None and family.chunked and type(plain_head(head)) is nn.Linear


# --------------------------------------------------------------------------------------------- LoRA


def linear_layer_names(lm) -> list[str]:
    """Last name parts of the linear (``nn.Linear`` / ``Conv1D``) layers of the body: what
    ``lora.target_modules`` may name."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    body, _ = body_and_head(lm)
    return sorted({n.rsplit(".", 1)[-1] for n, m in body.named_modules() if isinstance(m, nn.Linear | Conv1D)})


def default_lora_targets(lm) -> list[str] | str:
    """PEFT's own default targets for ``lm``'s ``model_type``, else ``all-linear``."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    targets = DEFAULTS.get(getattr(unwrap(lm).config, "model_type", None))
    return list(targets) if targets else "all-linear"


def targets_conv1d(lm, targets: list[str] | str) -> bool:
    """Whether the layers ``targets`` names are ``Conv1D`` (weight stored (in, out): LoRA's fan_in_fan_out)."""
    from transformers.pytorch_utils import Conv1D

    body, _ = body_and_head(lm)
    for name, module in body.named_modules():
        if (targets == "all-linear" or name.rsplit(".", 1)[-1] in targets) and isinstance(module, Conv1D):
            return True
    return False
