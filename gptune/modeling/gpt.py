"""The language model: from a config (random init) or ``from_pretrained``; tokenizer fit; body/head access."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch import nn
from transformers.models.openai.modeling_openai import Attention as _OpenAIGPTAttention

from gptune.config import ModelConfig
from gptune.errors import GptuneError, first_line
from gptune.hub import is_local
from gptune.modeling import families
from gptune.modeling.families import block_class_names, body_and_head, decoder_blocks, unwrap


def _offline_hint(flag: str) -> str:
    return f"pass a local folder with {flag}"


def random_config(mcfg: ModelConfig, vocab_size: int, *, bos_id: int | None, eos_id: int | None):
    """A transformers config for a randomly initialised model of ``model.arch`` (or ``model.config_file``)."""
    a = mcfg.config
    shape = {k: getattr(a, k) for k in ("n_layer", "n_head", "n_embd", "n_positions")}
    return families.random_config(mcfg.arch, shape, dropout=a.dropout, extra=a.extra, config_file=mcfg.config_file,
                                  vocab_size=vocab_size, bos_id=bos_id, eos_id=eos_id)


def build_causal_lm(mcfg: ModelConfig, tokenizer) -> nn.Module:
    """A causal LM whose embeddings fit ``tokenizer``: pretrained when ``model.name_or_path`` is set,
    else randomly initialised from ``model.config`` (seed the RNG first)."""
    if mcfg.name_or_path:
        model = load_pretrained_lm(mcfg.name_or_path, trust_remote_code=mcfg.trust_remote_code,
                                   field="model.name_or_path")
        set_dropout(model, mcfg.config.dropout)
    else:
        from transformers import AutoModelForCausalLM

        config = random_config(mcfg, len(tokenizer), bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id)
        model = use_sdpa_attention(AutoModelForCausalLM.from_config(config))
    fit_tokenizer(model, tokenizer, source=mcfg.name_or_path or "the random config")
    if mcfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def enable_gradient_checkpointing(lm: nn.Module) -> None:
    """``model.gradient_checkpointing``: recompute each transformer block in backward instead of keeping its
    activations. transformers' own switch where the model has one (GPT-2); otherwise (OpenAI-GPT) each block's
    forward runs under ``torch.utils.checkpoint``, replaced per instance so the state dict keeps its keys."""
    import types

    if lm.supports_gradient_checkpointing:
        # newer transformers (5.25) name it activation_checkpointing_enable and deprecate the old name, the
        # only one 5.17 (the GPU machines' image) has
        enable = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
        enable({"use_reentrant": False})
        return
    for block in decoder_blocks(lm)[1]:
        block.forward = types.MethodType(_checkpointed_forward, block)


def _checkpointed_forward(block: nn.Module, *args, **kwargs):
    # a MethodType on the instance: deepcopy (LoRA merge) rebinds it to the copy
    forward = type(block).forward
    if block.training and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(forward, block, *args, use_reentrant=False, **kwargs)
    return forward(block, *args, **kwargs)


def load_pretrained_lm(spec: str, *, trust_remote_code: bool = False, field: str = "--model"):
    """``AutoModelForCausalLM.from_pretrained`` with errors a user can act on.

    Weights load from safetensors when present; ``trust_remote_code`` stays off unless asked for, so
    loading a folder never runs code from it.
    """
    from transformers import AutoModelForCausalLM

    local = is_local(spec)
    path = Path(spec).expanduser()
    if local:
        if not path.exists():
            raise GptuneError(f"{field}: no such folder: {spec}")
        if not (path / "config.json").exists():
            raise GptuneError(f"{field}: {spec} is not a model folder (no config.json); "
                              "pass a folder written by save_pretrained, e.g. runs/<name>/final")
    try:
        return use_sdpa_attention(AutoModelForCausalLM.from_pretrained(str(path) if local else spec,
                                                                       trust_remote_code=trust_remote_code))
    except OSError as e:
        if not local:
            raise GptuneError(f"{field}: cannot load '{spec}' from the Hugging Face hub "
                              f"({first_line(e)}); {_offline_hint(field)}") from None
        raise GptuneError(f"{field}: cannot load a model from {spec}: {first_line(e)}") from None
    except ValueError as e:
        raise GptuneError(f"{field}: {spec} is not a causal-LM model: {first_line(e)}") from None


def fit_tokenizer(model, tokenizer, *, source: str = "the model") -> None:
    """Grow the embeddings for tokens the tokenizer adds (special tokens). A tokenizer whose base
    vocabulary is larger than the model's is refused: those ids would index random rows."""
    n_model = model.get_input_embeddings().weight.shape[0]
    base = getattr(tokenizer, "vocab_size", len(tokenizer))
    if base > n_model:
        raise GptuneError(
            f"model.tokenizer: the tokenizer has {base} entries but {source} has {n_model} embeddings; "
            "use the tokenizer saved with the model"
        )
    if len(tokenizer) > n_model:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)


def set_dropout(model, p: float) -> None:
    """Every dropout rate of a loaded model: ``nn.Dropout`` modules, and the float ``*dropout``/``*pdrop``
    attributes of its modules and config (Llama, OPT and BLOOM read rates from plain attributes)."""
    def rates(obj):
        return [k for k, v in vars(obj).items() if k.endswith(("dropout", "pdrop"))
                and isinstance(v, int | float) and not isinstance(v, bool)]

    for key in rates(model.config):
        setattr(model.config, key, p)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        for key in rates(module):  # e.g. LlamaAttention.attention_dropout
            setattr(module, key, p)


def reinit_blocks_above(lm, k: int) -> int:
    """Keep the embeddings and the first ``k`` transformer blocks of ``lm``; re-initialise every block
    above with the model's own init (GPT-2: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer);
    seed the RNG first). The final LayerNorm and the tied LM head stay as loaded. Returns how many
    blocks were re-initialised (GPT-1's Fig. 2 left: transfer k layers)."""
    blocks = decoder_blocks(lm)[1]
    if not 0 <= k <= len(blocks):
        raise GptuneError(f"model.transfer_layers: must be in [0, {len(blocks)}] (the model has {len(blocks)} "
                          f"blocks), got {k}")
    with torch.no_grad():
        for block in list(blocks)[k:]:
            # children before parents, as from_config does: GPT-2's block-level scaled c_proj init wins
            for module in reversed(list(block.modules())):
                for p in module.parameters(recurse=False):
                    p._is_hf_initialized = False  # loaded weights carry the flag, which makes init a no-op
                module._is_hf_initialized = False
                lm._init_weights(module)
    return len(blocks) - k


def context_length(config) -> int | None:
    """Longest input the model accepts (GPT-2 and GPT-1 call it ``n_positions``); None when the config
    does not say."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def set_threads() -> None:
    """Under several CPU processes, one thread each unless OMP_NUM_THREADS says otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and "OMP_NUM_THREADS" not in os.environ and not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))


def use_fused_gelu(model: nn.Module) -> int:
    """Swap GPT-2's ``gelu_new`` modules (``NewGELUActivation``: seven elementwise ops in Python, each
    keeping its output for backward) for ``GELUTanh`` (``F.gelu(approximate="tanh")``: one fused kernel).
    Same formula, rounding differs by ~2e-7 (timings: benchmarks/NOTES.md, attempt 6). Only modules
    change: the saved config still says ``gelu_new``. Returns how many modules were swapped."""
    from transformers.activations import GELUTanh, NewGELUActivation

    swapped = 0
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
                swapped += 1
    return swapped


class SdpaOpenAIGPTAttention(_OpenAIGPTAttention):
    """OpenAI-GPT attention through ``F.scaled_dot_product_attention``. The eager code adds -1e4 above the
    diagonal and the model's (B, 1, 1, T) additive padding mask (0, or the dtype's minimum where a key is
    padding); both become one boolean mask here (or SDPA's own causal mask when nothing is padded)."""

    def forward(self, x, attention_mask=None, output_attentions=False):
        if output_attentions:  # the attention weights themselves were asked for: only the eager path has them
            return super().forward(x, attention_mask, output_attentions)
        q, k, v = (self.split_heads(t) for t in self.c_attn(x).split(self.split_size, dim=2))  # (B, H, T, D)
        t = q.size(-2)
        mask = None
        if attention_mask is not None:
            mask = (attention_mask == 0) & self.bias[:, :, :t, :t].bool()  # (B, 1, T, T): key readable
        a = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None,
            dropout_p=self.attn_dropout.p if self.training else 0.0, scale=None if self.scale else 1.0)
        return [self.resid_dropout(self.c_proj(self.merge_heads(a)))]  # (B, T, C)


def use_sdpa_attention(model: nn.Module) -> nn.Module:
    """Swap OpenAI-GPT's attention modules for ``SdpaOpenAIGPTAttention`` in place (other models are
    returned unchanged). transformers 5.24 gives OpenAI-GPT only its eager attention -- explicit (T x T)
    scores, mask arithmetic, softmax -- with no ``attn_implementation`` choice; same weights, same outputs
    to float rounding (tests/test_openai_gpt.py); a GPT-1-size attention layer at 512 tokens takes ~0.8x
    the eager time, forward + backward (benchmarks/openai_gpt.py, NOTES.md)."""
    for module in model.modules():
        if type(module) is _OpenAIGPTAttention:
            module.__class__ = SdpaOpenAIGPTAttention
    return model


def body_kwargs(body: nn.Module) -> dict:
    """Extra arguments for a body call that only needs hidden states: no KV cache where it would build one."""
    return {"use_cache": False} if _takes_use_cache(type(body)) else {}


@functools.cache
def _takes_use_cache(cls: type) -> bool:
    """Whether ``cls.forward`` has a ``use_cache`` argument (read once per class, not per scoring batch)."""
    import inspect

    return "use_cache" in inspect.signature(cls.forward).parameters


def register_head_for_zero3(model: nn.Module) -> None:
    """Under ZeRO-3 a parameter is gathered only inside its own module's forward. The chunked loss reads
    the tied head matrix in the forward of ``model`` (an LMWithLoss or GPT1TaskModel, maybe under PEFT or
    torch.compile), outside the embedding's forward, so DeepSpeed is told to gather it there too."""
    from deepspeed.runtime.zero.partition_parameters import register_external_parameter

    owner = getattr(model, "_orig_mod", model)
    owner = owner.get_base_model() if hasattr(owner, "get_base_model") else owner  # PEFT
    inner = owner.lm.get_base_model() if hasattr(owner.lm, "get_base_model") else owner.lm
    for module in (inner.get_input_embeddings(), inner.get_output_embeddings()):
        for p in module.parameters():
            register_external_parameter(owner, p)


class LMWithLoss(nn.Module):
    """A causal LM whose forward returns the LM loss, computed from hidden states with the chunked head
    (the full logits are never built; families that need more than ``head(hidden)`` -- see
    ``families.chunked_head`` -- go through the model's own logits). Accelerate/DDP/FSDP/DeepSpeed wrap this
    module, so the forward that reads the head matrix is the one the engine gathers parameters for:
    validation and perplexity call it too (``per_token=True``) rather than reading a possibly sharded weight
    outside it."""

    def __init__(self, lm: nn.Module, *, fused_gelu: bool = True):
        super().__init__()
        self.lm = lm
        if fused_gelu:
            use_fused_gelu(lm)
        self._no_split_modules = block_class_names(lm)  # FSDP's wrap policy reads it off the wrapped model
        self.chunked = families.chunked_head(lm)

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, per_token: bool = False):
        """input_ids (B, T). ``targets`` (B, T): what each position predicts (IGNORE_INDEX: nothing), by
        default the next token (padding masked). Returns (token-mean loss, scored tokens), or with
        ``per_token`` the NLL (B, T) of every position (0 where not scored), without gradients."""
        from gptune.losses import shift_targets

        hidden, logits = run_lm(self.lm, input_ids, attention_mask, chunked=self.chunked, scoring=not self.training)
        if targets is None:
            targets = shift_targets(input_ids, attention_mask)  # (B, T)
        return lm_loss(self.lm, hidden, logits, targets, per_token=per_token)


def run_lm(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
           chunked: bool, scoring: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(final hidden states (B, T, C), logits (B, T, V) or None). ``chunked``: the body alone, the loss to
    come from the hidden states; else the model's own forward, logits and all. ``scoring``: no KV cache.
    In training the model's default: with use_cache=False and no mask, transformers probes the position
    ids for packed sequences with a host sync every micro-batch."""
    if chunked:
        body, _ = body_and_head(lm)
        extra = body_kwargs(body) if scoring else {}
        return body(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state, None
    extra = {"use_cache": False} if scoring else {}
    out = lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **extra)
    return out.hidden_states[-1], out.logits


def lm_loss(lm: nn.Module, hidden: torch.Tensor, logits: torch.Tensor | None, targets: torch.Tensor, *,
            per_token: bool = False, row_denom: torch.Tensor | None = None):
    """The LM loss of ``run_lm``'s output: from ``logits`` when the model gave them, else from ``hidden`` by
    the chunked kernel with ``lm``'s head (read here: call it inside the wrapped model's forward)."""
    from gptune.losses import lm_loss_from_hidden, lm_loss_from_logits

    if logits is not None:
        return lm_loss_from_logits(logits, targets, per_token=per_token, row_denom=row_denom)
    weight, bias = head_weight(lm), head_bias(lm)
    rows = None if per_token else head_grad_rows(lm, weight)
    return lm_loss_from_hidden(hidden, weight, targets, per_token=per_token, grad_rows=rows, row_denom=row_denom,
                               bias=bias)


def _head_owner(lm: nn.Module) -> nn.Module:
    """The module holding the LM head matrix: the input embedding under tied embeddings, else the head."""
    inner = unwrap(lm)
    tied = getattr(inner.config, "tie_word_embeddings", False)
    return inner.get_input_embeddings() if tied else inner.get_output_embeddings()


def head_weight(lm: nn.Module) -> torch.Tensor:
    """The LM head matrix (V, C) as the model uses it, from ``_head_owner``: under PEFT's trainable tokens it
    includes the trained rows of the new tokens.

    Call it only inside the wrapped model's forward. Under FSDP2 the module holding the matrix may be
    an FSDP unit of its own (Accelerate makes the input embedding one) that resharded after its own
    forward: it is gathered again here, and its gradient still reaches the one reduce-scatter of that
    unit in backward. Under ZeRO-3, ``register_head_for_zero3`` makes DeepSpeed gather it."""
    owner = _head_owner(lm)
    _unshard(owner)
    return owner.weight


def head_bias(lm: nn.Module) -> torch.Tensor | None:
    """The LM head's bias (V,) (GPT-J), or None."""
    _, head = body_and_head(lm)
    return getattr(families.plain_head(head), "bias", None)


def head_grad_rows(lm: nn.Module, weight: torch.Tensor) -> torch.Tensor | None:
    """The rows of the LM head matrix that can receive a gradient, when only some can: under PEFT's
    trainable tokens with a frozen base matrix, the head is ``index_copy(frozen, new_ids, deltas)``, so
    only the new tokens' rows lead to a parameter. None: every row (full fine-tuning) or none (frozen)."""
    adapter = getattr(_head_owner(lm), "token_adapter", None)
    if adapter is None or not weight.requires_grad or adapter.get_base_layer().weight.requires_grad:
        return None
    rows = sorted({i for name in adapter.active_adapters for i in adapter.token_indices.get(name, [])})
    return torch.tensor(rows, dtype=torch.long, device=weight.device) if rows else None


def without_tied_copies(lm: nn.Module, state_dict: dict) -> dict:
    """A consolidated state dict without the keys of weights tied to another (``lm_head.weight``): sharding
    engines gather them as separate tensors, and a stale copy must not be saved beside the real one."""
    tied = families.tied_keys(lm)
    return {k: v for k, v in state_dict.items() if k not in tied}


def _unshard(module: nn.Module) -> None:
    """All-gather the parameters of an FSDP2 unit (no-op for anything else)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(module, FSDPModule):
        module.unshard()
