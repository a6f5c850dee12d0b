"""Pure loss functions: they return numbers and never call ``backward()`` or step an optimizer.

The LM loss is computed from hidden states and the LM head weight in row chunks, by one kernel
(``_scored_chunks``) that serves the training loss, the validation loss, the auxiliary LM loss of
fine-tuning and perplexity, so the
(tokens x vocabulary) float logits are never materialised whole: with a 50k vocabulary they are
the largest tensor of a small GPT's step. The gradient of each chunk is computed in the same pass
(the loss is a scalar, so d loss / d logits is known there), so nothing is recomputed in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _chunk_rows(vocab: int) -> int:
    # About 32M logits (128 MB in fp32, one reused buffer) per chunk: every chunk re-reads the whole
    # head matrix, so bigger chunks are faster, up to about this size (benchmarks/NOTES.md, attempt 3).
    return max(64, (1 << 25) // max(vocab, 1))


def _scored_chunks(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                   bias: torch.Tensor | None = None):
    """The one cross-entropy-from-hidden-states kernel: yields, chunk by chunk of the scored rows,
    ``(start, h, t, e, sums, nll)`` with ``e`` (n, V) holding exp(logit - row max) (in place, one reused
    buffer), ``sums`` (n,) its row sums and ``nll`` (n,) the per-row cross-entropy.

    hidden (N, C), weight (V, C), targets (N,) with IGNORE_INDEX on rows that are not scored, bias (V,)
    or None (the head's bias: GPT-J); ``start`` counts scored rows. Accumulates in float32 (float64 for
    float64 inputs); half-precision logits are upcast.
    """
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    # One (chunk, V) logits buffer reused by every chunk, and in-place softmax: fresh 50k-wide
    # tensors per chunk cost a page-faulting allocation and an extra memory pass each.
    plain = hidden.dtype == weight.dtype == acc and not torch.is_autocast_enabled(hidden.device.type)
    buf = torch.empty(min(chunk, hidden.shape[0]), weight.shape[0], dtype=acc, device=hidden.device) \
        if plain and hidden.shape[0] else None
    for s in range(0, hidden.shape[0], chunk):
        h, t = hidden[s : s + chunk], targets[s : s + chunk]
        n = h.shape[0]
        if plain:
            logits = torch.mm(h, weight.t(), out=buf[:n])  # (n, V)
        else:
            logits = (h @ weight.t()).to(acc)  # (n, V)
        if bias is not None:
            logits.add_(bias.to(acc))
        picked = logits.gather(1, t[:, None]).squeeze(1)  # (n,) read before the in-place ops
        top = logits.amax(dim=1)  # (n,) keeps exp() finite
        sums = logits.sub_(top[:, None]).exp_().sum(dim=1)  # (n,) logits now hold exp(logit - top)
        yield s, h, t, logits, sums, sums.log() + top - picked


def _scored_rows(targets: torch.Tensor) -> torch.Tensor:
    # the head only sees scored rows: padding, context and last positions cost no (row x vocabulary) work
    return (targets != IGNORE_INDEX).nonzero().squeeze(1)  # (n,)


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over valid rows of CE(hidden @ weight.T, target) / denom, gradients computed chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, denom, chunk, grad_rows=None, bias=None):
        # grad_rows (k,): when set, the only rows of weight whose gradient anyone needs
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[6]
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        rows = _scored_rows(targets)
        h_all, hidden, targets = hidden, hidden.index_select(0, rows), targets.index_select(0, rows)
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None  # (n, C)
        w_rows = weight.shape[0] if grad_rows is None else grad_rows.numel()
        grad_w = torch.zeros(w_rows, weight.shape[1], dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        plain = hidden.dtype == weight.dtype == acc and not torch.is_autocast_enabled(hidden.device.type)
        inv_denom = 1.0 / denom
        per_row = inv_denom.dim() == 1  # a divisor per row (sequence mean) instead of one for all
        if per_row:
            inv_denom = inv_denom.index_select(0, rows)  # (n,)
        for s, h, t, e, sums, nll in _scored_chunks(hidden, weight, targets, chunk, bias):
            n = h.shape[0]
            inv = inv_denom[s : s + n] if per_row else inv_denom
            total += (nll * inv).sum() if per_row else nll.sum()
            if need_h or need_w or need_b:
                # d CE / d logits = softmax - onehot(target), scaled by 1 / denom
                g = e.mul_((inv / sums)[:, None])
                g.scatter_add_(1, t[:, None], (-inv).to(acc).expand(n).reshape(n, 1).contiguous())
                if need_b:
                    grad_b += g.sum(0)
                if plain:
                    if need_h:
                        torch.mm(g, weight, out=grad_h[s : s + n])
                    if need_w and grad_rows is not None:
                        grad_w.addmm_(g.index_select(1, grad_rows).t(), h)  # (k, C) only
                    elif need_w:
                        grad_w.addmm_(g.t(), h)  # accumulate inside the GEMM: no (V, C) temporary
                else:
                    g = g.to(h.dtype)
                    if need_h:
                        grad_h[s : s + n] = g @ weight
                    if need_w:
                        g_w = g if grad_rows is None else g.index_select(1, grad_rows)
                        grad_w += (g_w.t() @ h).to(acc)
        if need_h:
            grad_h = torch.zeros_like(h_all).index_copy_(0, rows, grad_h)  # (N, C): 0 on ignored rows
        ctx.save_for_backward(*(x for x in (grad_h, grad_w, grad_b) if x is not None))
        ctx.need = (need_h, need_w, need_b)
        ctx.w_dtype, ctx.w_shape, ctx.grad_rows = weight.dtype, weight.shape, grad_rows
        ctx.b_dtype = None if bias is None else bias.dtype
        return total if per_row else total / denom

    @staticmethod
    def backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        need_h, need_w, need_b = ctx.need
        gh = saved.pop(0) * grad_out if need_h else None
        gw = (saved.pop(0) * grad_out).to(ctx.w_dtype) if need_w else None
        gb = (saved.pop(0) * grad_out).to(ctx.b_dtype) if need_b else None
        if gw is not None and ctx.grad_rows is not None:  # (k, C) -> (V, C), zero where nobody needs it
            gw = gw.new_zeros(ctx.w_shape).index_copy_(0, ctx.grad_rows, gw)
        return gh, gw, None, None, None, None, gb


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         *, chunk: int | None = None, grad_rows: torch.Tensor | None = None,
                         row_denom: torch.Tensor | None = None,
                         bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean cross-entropy of ``hidden @ weight.T`` against ``targets`` (IGNORE_INDEX skipped).

    hidden (N, C), weight (V, C), targets (N,). Returns (mean loss, number of scored tokens).
    With no scored token the loss is 0 (not NaN), so an all-padding batch cannot poison a run.
    ``grad_rows`` (k,): only these rows of ``weight`` get a gradient (the others get zeros); for a head
    built from a frozen matrix plus a few trainable rows (LoRA's new-token rows) this replaces the
    (V x C) weight-gradient GEMM by a (k x C) one. ``row_denom`` (N,): divide each row's loss by its own
    number instead of the count of scored rows (``causal_lm_loss``'s sequence mean). ``bias`` (V,): the
    head's bias, added to every row of logits.
    """
    n = (targets != IGNORE_INDEX).sum()
    denom = n.clamp(min=1) if row_denom is None else row_denom
    denom = denom.to(torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    loss = _LinearCrossEntropy.apply(hidden, weight, targets, denom, chunk or _chunk_rows(weight.shape[0]), grad_rows,
                                     bias)
    return loss, n


@torch.no_grad()
def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
              *, chunk: int | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row negative log-likelihood (0 on IGNORE_INDEX rows) by the same kernel, without gradients.

    hidden (N, C), weight (V, C), targets (N,) -> (N,) float32 (float64 for float64 inputs).
    """
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    rows = _scored_rows(targets)
    out = torch.zeros(hidden.shape[0], dtype=acc, device=hidden.device)
    scored = torch.empty(rows.numel(), dtype=acc, device=hidden.device)
    chunks = _scored_chunks(hidden.index_select(0, rows), weight, targets.index_select(0, rows),
                            chunk or _chunk_rows(weight.shape[0]), bias)
    for s, _, _, _, _, nll in chunks:
        scored[s : s + nll.shape[0]] = nll
    return out.index_copy_(0, rows, scored)


def shift_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """Targets for next-token prediction: position n predicts token n+1; the last position and
    padding predict nothing (IGNORE_INDEX)."""
    src = input_ids if labels is None else labels
    targets = torch.full_like(src, IGNORE_INDEX)
    targets[:, :-1] = src[:, 1:]
    if attention_mask is not None:
        targets[:, :-1] = targets[:, :-1].masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)
    return targets


def lm_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               labels: torch.Tensor | None = None, mean: str = "token") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(targets (B, T), per-row divisor (B*T,) or None) of the causal-LM loss: see ``causal_lm_loss``."""
    targets = shift_targets(input_ids, attention_mask, labels)  # (B, T)
    row_denom = None
    if mean == "sequence":
        per_seq = (targets != IGNORE_INDEX).sum(1, keepdim=True)  # (B, 1) scored tokens per sequence
        n_seq = (per_seq > 0).sum().clamp(min=1)
        row_denom = (per_seq.clamp(min=1) * n_seq).expand_as(targets).reshape(-1)  # (B*T,)
    return targets, row_denom


def causal_lm_loss(hidden: torch.Tensor, head_weight: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None,
                   labels: torch.Tensor | None = None,
                   grad_rows: torch.Tensor | None = None,
                   mean: str = "token", bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal-LM loss from hidden states (B, T, C); padding masked. Returns (loss, tokens).

    ``mean="token"``: one mean over every scored token. ``mean="sequence"`` (GPT-1's fine-tuning code):
    each sequence's token mean, then the mean over the sequences that score any token.
    """
    targets, row_denom = lm_targets(input_ids, attention_mask, labels, mean)
    return lm_loss_from_hidden(hidden, head_weight, targets, grad_rows=grad_rows, row_denom=row_denom, bias=bias)


def lm_loss_from_hidden(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor, *,
                        per_token: bool = False, grad_rows: torch.Tensor | None = None,
                        row_denom: torch.Tensor | None = None, bias: torch.Tensor | None = None):
    """hidden (B, T, C), targets (B, T) (IGNORE_INDEX: not scored). ``per_token``: the NLL of every position
    (B, T), 0 where not scored, without gradients (validation, perplexity); else (token-mean loss, tokens)."""
    flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if per_token:
        return token_nll(flat_h, head_weight, flat_t, bias=bias).view(targets.shape)
    return linear_cross_entropy(flat_h, head_weight, flat_t, grad_rows=grad_rows, row_denom=row_denom, bias=bias)


def lm_loss_from_logits(logits: torch.Tensor, targets: torch.Tensor, *, per_token: bool = False,
                        row_denom: torch.Tensor | None = None):
    """The same loss from full logits (B, T, V), for models whose logits are more than ``head(hidden)``
    (a family ``gptune.modeling.families`` does not list). Same returns as ``lm_loss_from_hidden``."""
    flat_t = targets.reshape(-1)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat_t, ignore_index=IGNORE_INDEX,
                          reduction="none")  # (B*T,) 0 where not scored
    if per_token:
        return nll.detach().view(targets.shape)
    n = (flat_t != IGNORE_INDEX).sum()
    if row_denom is not None:
        return (nll / row_denom.to(nll.dtype)).sum(), n
    return nll.sum() / n.clamp(min=1), n


def task_loss(logits: torch.Tensor, labels: torch.Tensor, *, regression: bool) -> torch.Tensor:
    """Classification: cross-entropy over classes (or candidates); regression: mean squared error."""
    if regression:
        return F.mse_loss(logits.view(-1).float(), labels.view(-1).float())
    return F.cross_entropy(logits.float(), labels.view(-1))


def combined_loss(l_task: torch.Tensor, l_lm: torch.Tensor | None, lm_coef: float) -> torch.Tensor:
    """GPT-1's fine-tuning objective L = L_task + lm_coef * L_lm (lm_coef 0: exactly the task loss)."""
    if l_lm is None or lm_coef == 0:
        return l_task
    return l_task + lm_coef * l_lm
