"""Sliding-window perplexity: exact, batched, and explicit about which tokens it scored with which context.

Windowing is the Hugging Face guide "Perplexity of fixed-length models": windows begin at 0, stride,
2*stride, ...; window ``[begin, end = min(begin + max_length, n))`` scores its last ``end - prev_end``
tokens (the rest is context) and the loop stops at the first window reaching the end of the text.
A token at window position 0 has nothing to condition on, so it is never scored: the first token of
the text, and with ``stride == max_length`` the first token of every chunk.

The result is exact: the sum of per-token NLLs divided by the number of tokens scored. (The guide's
code weights each window's mean loss by ``valid labels - 1``, which is right for the first window only.)

``prefix_token`` switches to lm-evaluation-harness's ``loglikelihood_rolling`` windows instead: the
token is prepended so the first token of the text is scored too, and each window predicts
``max_length`` tokens (the last one: the rest of the text) from ``max_length`` fed tokens.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gptune.errors import GptuneError

if TYPE_CHECKING:  # torch stays out of import time, so `gptune --help` stays fast
    import torch

# Models whose logits are exactly their head applied to the body's hidden states (the families of
# gptune.modeling.families, `chunked_head`) go through the chunked cross-entropy from hidden states
# (losses.py), which skips the context positions. Anything else gets full logits from `forward`,
# _ROWWISE_CHUNK rows of them at a time.
_ROWWISE_CHUNK = 128


@dataclass(frozen=True)
class Window:
    """One forward pass over tokens ``[begin, end)``: tokens ``[score_begin, end)`` are scored. The last
    token is only a target, so ``[begin, end - 1)`` is what the model is fed."""

    begin: int
    end: int
    score_begin: int
    """First scored token (absolute index); earlier tokens in the window are context only."""

    @property
    def length(self) -> int:
        return self.end - self.begin

    @property
    def scored(self) -> int:
        return self.end - self.score_begin


@dataclass
class NllResult:
    """Summed negative log-likelihood of a text and how it was computed."""

    nll_sum: float
    """Sum of per-token NLL in nats, accumulated in float64."""
    tokens: int
    """Number of tokens scored (each at most once)."""
    windows: int
    """Number of forward windows."""
    seconds: float
    """Wall time of the scoring loop, including the final device sync."""
    max_length: int
    stride: int
    prefix_token: int | None = None
    """Token prepended to the text (lm-eval's rolling windows), or None (the guide's windows)."""
    text_tokens: int = 0
    """Tokens in the text (without the prefix); ``text_tokens - tokens`` were never scored."""

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


# --------------------------------------------------------------------------------------------- windowing


def resolve_windowing(
    model_config: Any, max_length: int | None = None, stride: int | None = None
) -> tuple[int, int]:
    """Defaults (max_length = model context, stride = max_length // 2) and checks, all problems at once."""
    from gptune.modeling.gpt import context_length

    context = context_length(model_config)
    if max_length is None:
        if context is None:
            raise GptuneError("max_length is required: the model config has no n_positions")
        max_length = context
    if stride is None:
        stride = max(1, max_length // 2)
    problems = []
    if max_length < 2:
        problems.append(f"max_length must be >= 2 (one context token and one scored token), got {max_length}")
    if context is not None and max_length > context:
        problems.append(f"max_length {max_length} exceeds the model context (n_positions={context})")
    if stride <= 0:
        problems.append(f"stride must be > 0, got {stride}")
    elif stride > max_length:
        problems.append(f"stride {stride} must be <= max_length {max_length} (otherwise tokens are skipped)")
    if problems:
        raise GptuneError(*problems)
    return max_length, stride


def plan_windows(n_tokens: int, max_length: int, stride: int) -> list[Window]:
    """The guide's windows over ``n_tokens`` tokens; every token after the first is scored once at most."""
    windows = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        # position 0 of a window predicts nothing, so a target there (first window, or no overlap) is dropped
        windows.append(Window(begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def plan_rolling_windows(n_tokens: int, max_length: int) -> list[Window]:
    """lm-eval's ``get_rolling_token_windows(context_len=1)`` + ``make_disjoint_window`` over a sequence
    whose token 0 is the prefix: every other token is scored once; the first window predicts
    ``max_length`` tokens from the prefix on, each later one ``max_length`` tokens after one token of
    context, and the last (the remainder) from a full ``max_length``-token input."""
    windows = [Window(0, min(max_length + 1, n_tokens), 1)]
    while windows[-1].end < n_tokens:
        start = windows[-1].end
        end = min(start + max_length, n_tokens)
        windows.append(Window(end - max_length - 1, end, start))
    return windows


# --------------------------------------------------------------------------------------------- scoring


def sliding_window_nll(
    model: Any,
    input_ids: torch.LongTensor,
    *,
    max_length: int,
    stride: int,
    batch_size: int = 8,
    accelerator: Any = None,
    progress: Callable[[int], None] | None = None,
    prefix_token: int | None = None,
) -> NllResult:
    """Sum the NLL of every token of ``input_ids`` (1-D, the whole text) under the guide's sliding windows.

    Full-length windows go ``batch_size`` at a time (same length, so no padding and no mask); the one
    shorter last window runs alone. With an ``accelerator`` of several processes, each process scores a
    contiguous share of the windows and the sums are reduced, so every window is scored once overall;
    every process runs the same number of forward passes (a sharded model gathers its weights in each).
    ``model``: a causal LM, a PEFT model, or a ``modeling.gpt.LMWithLoss`` as prepared by Accelerate
    (wrapped: its forward is called, so FSDP2/ZeRO-3 shards are gathered as in training).
    ``progress(k)`` is called after each batch with the number of windows it finished (this process).
    ``prefix_token``: prepend it and use lm-eval's rolling windows (``stride`` is then ``max_length``).
    """
    _check_inputs(input_ids, batch_size)
    inner = accelerator.unwrap_model(model) if accelerator is not None else model
    text_tokens = input_ids.numel()
    input_ids, windows, max_length, stride = _plan(inner.config, input_ids, max_length, stride, prefix_token)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    mine = _shard(windows, rank, world)
    ids = input_ids.to(next(model.parameters()).device)
    was_training = model.training
    model.eval()  # dropout would make the numbers depend on the RNG
    start = time.perf_counter()
    try:
        totals = _score_share(_Scorer(model, inner), ids, mine, windows[0], batch_size, world, progress)
        if world > 1:
            totals = accelerator.reduce(totals, reduction="sum")
        nll_sum, tokens, n_windows = totals.tolist()
    finally:
        model.train(was_training)
    return NllResult(nll_sum=nll_sum, tokens=int(tokens), windows=int(n_windows), seconds=time.perf_counter() - start,
                     max_length=max_length, stride=stride, prefix_token=prefix_token, text_tokens=text_tokens)


def _score_share(scorer: _Scorer, ids, mine: list[Window], first: Window, batch_size: int, world: int,
                 progress: Callable[[int], None] | None):
    """(NLL sum, scored tokens, windows) of this process's share, one (3,) float64 tensor (one reduce, one
    sync). Every process runs as many forward passes as the busiest one: the extra ones score `first`, discarded."""
    import torch

    with torch.no_grad():  # not inference_mode: FSDP2 writes its gathered weights into kept buffers
        nll = torch.zeros((), dtype=torch.float64, device=ids.device)
        batches = _batches(mine, batch_size)
        extra = _missing_passes(len(batches), world, ids.device)
        for batch in batches:
            nll += scorer.batch_nll(ids, batch)
            if progress is not None:
                progress(len(batch))
        for _ in range(extra):  # results discarded
            scorer.batch_nll(ids, (batches or [[first]])[0])
        counts = torch.tensor([sum(w.scored for w in mine), len(mine)], dtype=torch.float64, device=ids.device)
        return torch.cat([nll.reshape(1), counts])


def _check_inputs(input_ids, batch_size: int) -> None:
    if input_ids.dim() != 1:
        raise GptuneError(
            f"input_ids must be 1-D (the whole tokenized text), got shape {tuple(input_ids.shape)}"
        )
    if input_ids.numel() < 2:
        raise GptuneError(f"the text has {input_ids.numel()} token(s): perplexity needs at least 2 tokens")
    if batch_size < 1:
        raise GptuneError(f"batch_size must be >= 1, got {batch_size}")


def _plan(config, input_ids, max_length: int | None, stride: int | None, prefix_token: int | None):
    """(ids to score, windows, max_length, stride): the guide's sliding windows, or with ``prefix_token``
    prepended lm-eval's rolling ones (stride = max_length)."""
    import torch

    if prefix_token is None:
        max_length, stride = resolve_windowing(config, max_length, stride)
        return input_ids, plan_windows(input_ids.numel(), max_length, stride), max_length, stride
    max_length = resolve_windowing(config, max_length)[0]
    input_ids = torch.cat([input_ids.new_tensor([prefix_token]), input_ids])
    return input_ids, plan_rolling_windows(input_ids.numel(), max_length), max_length, max_length


def _missing_passes(mine: int, world: int, device) -> int:
    """Forward passes this process must add so that all run as many as the busiest one."""
    import torch
    import torch.distributed as dist

    if world < 2 or not dist.is_initialized():
        return 0
    most = torch.tensor(mine, device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most) - mine


def _shard(windows: list[Window], rank: int, world: int) -> list[Window]:
    """Contiguous share of the windows for one process (keeps full windows together for batching)."""
    per, extra = divmod(len(windows), world)
    lo = rank * per + min(rank, extra)
    return windows[lo : lo + per + (rank < extra)]


def _batches(windows: Sequence[Window], batch_size: int) -> list[list[Window]]:
    """Groups of equal-length windows: at most ``batch_size`` each, the shorter last window on its own."""
    groups: list[list[Window]] = []
    for w in windows:
        if groups and len(groups[-1]) < batch_size and groups[-1][0].length == w.length:
            groups[-1].append(w)
        else:
            groups.append([w])
    return groups


class _Scorer:
    """Turns a batch of windows into the summed NLL of their scored tokens (a float64 0-d tensor).

    Split architectures go through ``LMWithLoss`` (the prepared one when given): the body's hidden states
    and the chunked cross-entropy of ``losses``, only at scored positions. Anything else gets full logits."""

    def __init__(self, model: Any, inner: Any = None):
        """``inner``: ``model`` without its distributed wrapper (default: ``model`` itself)."""
        from gptune.modeling.gpt import LMWithLoss

        self.model = model
        inner = model if inner is None else inner
        if isinstance(inner, LMWithLoss):
            self.split, self.lm_loss = True, model
            return
        from gptune.modeling.families import chunked_head

        base = _unwrap_peft(inner)
        # a LoRA-wrapped head is more than its weight matrix: it must be called
        self.split = base is not None and chunked_head(base)
        if self.split:
            self.lm_loss = LMWithLoss(base, fused_gelu=False)

    def batch_nll(self, ids: torch.Tensor, batch: list[Window]) -> torch.Tensor:
        import torch

        from gptune.losses import IGNORE_INDEX

        length = max(batch[0].length - 1, 1)  # the last token of a window is only a target
        starts = torch.tensor([w.begin for w in batch], device=ids.device)
        inputs = ids[starts[:, None] + torch.arange(length, device=ids.device)]  # (B, T)
        # flat row of the position that predicts each scored token: window b, position t - begin - 1
        rows = torch.cat(
            [torch.arange(w.score_begin - w.begin - 1, w.length - 1) + b * length for b, w in enumerate(batch)]
        ).to(ids.device)  # (N,)
        targets = torch.cat([ids[w.score_begin : w.end] for w in batch])  # (N,)
        if self.split:
            # context positions predict nothing: the LM head never sees them
            grid = torch.full((inputs.numel(),), IGNORE_INDEX, dtype=torch.long, device=ids.device)
            grid[rows] = targets
            return self.lm_loss(inputs, targets=grid.view(inputs.shape), per_token=True).double().sum()
        # unknown architecture: full logits from forward (prompt-learning PEFT prepends virtual tokens)
        logits = self.model(input_ids=inputs).logits[:, -length:]  # (B, T, V)
        logits = logits.reshape(-1, logits.size(-1))[rows]  # (N, V)
        return _rowwise_nll(lambda lo, hi: logits[lo:hi].float(), targets)


def _rowwise_nll(logits_of: Callable[[int, int], torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Same sum for heads we can only call: ``logits_of(lo, hi)`` gives rows lo..hi as fresh (n, V) float32."""
    import torch

    total = torch.zeros((), dtype=torch.float64, device=targets.device)
    for lo in range(0, targets.numel(), _ROWWISE_CHUNK):
        logits = logits_of(lo, lo + _ROWWISE_CHUNK)  # (n, V), ours to overwrite
        y = targets[lo : lo + _ROWWISE_CHUNK]
        picked = logits.gather(1, y[:, None]).squeeze(1)  # (n,) read before the in-place ops below
        top = logits.amax(dim=1, keepdim=True)  # (n, 1) keeps exp() finite
        # in place, unlike torch.logsumexp, which allocates two (n, V) temporaries
        lse = logits.sub_(top).exp_().sum(dim=1).log_() + top.squeeze(1)  # (n,)
        total += (lse.double() - picked.double()).sum()
    return total


def _unwrap_peft(model: Any) -> Any:
    """The transformers model inside a PEFT LoRA-style wrapper (adapters are injected in place), or None
    for prompt-learning adapters, whose virtual tokens only the wrapper's forward adds."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config is None or not hasattr(model, "get_base_model"):
        return model
    active = getattr(model, "active_adapter", None)
    config = peft_config.get(active) if isinstance(peft_config, dict) else peft_config
    if config is not None and getattr(config, "is_prompt_learning", False):
        return None
    return model.get_base_model()


# --------------------------------------------------------------------------------------------- report


def perplexity_report(result: NllResult, text: str, tokenizer: Any = None) -> dict[str, Any]:
    r"""Every number needed to compare with other tools, and the windowing that produced them.

    ``bits_per_byte = nll_sum / (ln 2 * utf-8 bytes)`` and ``word_perplexity = exp(nll_sum / words)``
    (words = ``len(re.split(r"\s+", text))``, lm-eval's count, edge empties included) are per text unit,
    so they compare across tokenizers; ``perplexity`` does not. Bytes and words are those of the whole
    text, while the guide's windows leave ``unscored_tokens`` out of ``nll_sum`` (the first token; with
    ``stride == max_length`` the first of every window): both measures are then slightly low. With a
    prefix token (lm-eval's convention) every token is scored and the division is exact.
    """
    n_bytes = len(text.encode("utf-8"))
    n_words = len(re.split(r"\s+", text)) if text.strip() else 0
    if n_bytes == 0 or n_words == 0:
        raise GptuneError("the evaluation text is empty: no bytes or words to normalise by")
    report = {
        "perplexity": result.perplexity,
        "nll": result.mean_nll,
        "nll_sum": result.nll_sum,
        "bits_per_byte": result.nll_sum / (math.log(2) * n_bytes),
        "word_perplexity": math.exp(result.nll_sum / n_words),
        "tokens": result.tokens,
        "unscored_tokens": max(0, result.text_tokens - result.tokens),
        "bytes": n_bytes,
        "words": n_words,
        "max_length": result.max_length,
        "stride": result.stride,
        "windows": result.windows,
        "windowing": "guide" if result.prefix_token is None else "lm-eval rolling (prefix token)",
        "seconds": result.seconds,
        "tokens_per_second": result.tokens_per_second,
    }
    if tokenizer is not None:
        report["tokenizer"] = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    return report
