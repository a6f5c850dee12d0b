"""Pure loss functions: they return numbers and never call ``backward()`` or step an optimizer.

The LM loss is computed from hidden states and the LM head weight in row chunks, so the
(tokens x vocabulary) float logits are never materialised whole: with a 50k vocabulary they are
the largest tensor of a small GPT's step. The gradient of each chunk is computed in the same pass
(the loss is a scalar, so d loss / d logits is known there), so nothing is recomputed in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _chunk_rows(vocab: int) -> int:
    # About 16M logits (64 MB in fp32) per chunk: large enough for efficient matmuls.
    return max(64, (1 << 24) // max(vocab, 1))


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over valid rows of CE(hidden @ weight.T, target) / denom, gradients computed chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, denom, chunk):
        # hidden (N, C), weight (V, C), targets (N,) with IGNORE_INDEX for rows that are not scored
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        for s in range(0, hidden.shape[0], chunk):
            h, t = hidden[s : s + chunk], targets[s : s + chunk]
            valid = t != IGNORE_INDEX
            safe_t = t.clamp(min=0)
            logits = (h @ weight.t()).to(acc)  # (n, V); half-precision logits are upcast
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            picked = logits.gather(1, safe_t[:, None]).squeeze(1)  # (n,)
            total += ((lse - picked) * valid).sum()
            if need_h or need_w:
                # d CE / d logits = softmax - onehot(target), zero on ignored rows
                g = logits.sub_(lse[:, None]).exp_()
                g.scatter_add_(1, safe_t[:, None], -torch.ones_like(picked)[:, None])
                g.mul_((valid.float() / denom)[:, None])
                g = g.to(h.dtype)
                if need_h:
                    grad_h[s : s + chunk] = g @ weight
                if need_w:
                    grad_w += (g.t() @ h).to(acc)
        ctx.save_for_backward(*(x for x in (grad_h, grad_w) if x is not None))
        ctx.need = (need_h, need_w)
        ctx.w_dtype = weight.dtype
        return total / denom

    @staticmethod
    def backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        need_h, need_w = ctx.need
        gh = saved.pop(0) * grad_out if need_h else None
        gw = (saved.pop(0) * grad_out).to(ctx.w_dtype) if need_w else None
        return gh, gw, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         *, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean cross-entropy of ``hidden @ weight.T`` against ``targets`` (IGNORE_INDEX skipped).

    hidden (N, C), weight (V, C), targets (N,). Returns (mean loss, number of scored tokens).
    With no scored token the loss is 0 (not NaN), so an all-padding batch cannot poison a run.
    """
    n = (targets != IGNORE_INDEX).sum()
    denom = n.clamp(min=1).to(torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    loss = _LinearCrossEntropy.apply(hidden, weight, targets, denom, chunk or _chunk_rows(weight.shape[0]))
    return loss, n


@torch.no_grad()
def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
              *, chunk: int | None = None) -> torch.Tensor:
    """Per-row negative log-likelihood (0 on IGNORE_INDEX rows), in row chunks, without gradients.

    hidden (N, C), weight (V, C), targets (N,) -> (N,) float32 (float64 for float64 inputs).
    """
    chunk = chunk or _chunk_rows(weight.shape[0])
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    out = torch.zeros(hidden.shape[0], dtype=acc, device=hidden.device)
    for s in range(0, hidden.shape[0], chunk):
        h, t = hidden[s : s + chunk], targets[s : s + chunk]
        valid = t != IGNORE_INDEX
        logits = (h @ weight.t()).to(acc)  # (n, V)
        picked = logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
        out[s : s + chunk] = (torch.logsumexp(logits, dim=-1) - picked) * valid
    return out


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


def causal_lm_loss(hidden: torch.Tensor, head_weight: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None,
                   labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean causal-LM loss from hidden states (B, T, C); padding masked. Returns (loss, tokens)."""
    targets = shift_targets(input_ids, attention_mask, labels)  # (B, T)
    return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head_weight, targets.reshape(-1))


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
