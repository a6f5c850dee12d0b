"""AdamW with GPT-1's weight decay (matrices only) and the warmup + decay schedules."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch

from gptune.config import TrainConfig


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay every matrix (weights and embeddings), not biases or LayerNorm gains: GPT-1's
    "modified L2 regularization on all non bias or gain weights"."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    try:
        # The fused kernel does the whole update in one pass over the parameters (CPU and CUDA).
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), foreach=True, **kwargs)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """``train.warmup`` >= 1 is a step count; in [0, 1) a fraction of the run."""
    return int(cfg.warmup) if cfg.warmup >= 1 else int(round(cfg.warmup * total_steps))


def lr_factor(step: int, *, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr after ``step`` optimizer steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class LrPlan:
    """The schedule of a run, kept in its checkpoints so that an extended run can continue it.

    First plan: warmup over ``warmup`` steps, then decay from the peak to the floor at ``total``.
    Resumed with another ``total`` (``train.max_steps`` raised or lowered) at step s: the warmup stays
    the same number of steps and, once past it, the decay is re-planned from the lr the run had at s
    (``anchor``, ``anchor_factor``) to the floor at the new total, so the lr is continuous at s.
    """

    total: int
    warmup: int
    anchor: int = 0
    """Step the decay starts from (0: the end of warmup, at the peak)."""
    anchor_factor: float = 1.0
    """Multiplier of the peak lr at ``anchor``."""

    def factor(self, step: int, cfg: TrainConfig) -> float:
        """Multiplier of the peak lr after ``step`` optimizer steps."""
        if not self.anchor:
            return lr_factor(step, total=self.total, warmup=self.warmup, schedule=cfg.schedule,
                             min_ratio=cfg.min_lr_ratio)
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.anchor)
        shape = functools.partial(lr_factor, total=span, warmup=0, schedule=cfg.schedule, min_ratio=cfg.min_lr_ratio)
        floor = shape(span)
        if floor >= 1:  # constant
            return self.anchor_factor
        # the schedule's own decay curve, rescaled to run from anchor_factor down to the floor
        return floor + (self.anchor_factor - floor) * (shape(max(0, step - self.anchor)) - floor) / (1 - floor)


def plan_lr(cfg: TrainConfig, total: int, previous: LrPlan | None = None, step: int = 0) -> LrPlan:
    """The first plan of a run, or (``previous``: the plan saved in the checkpoint, ``step``: its step)
    the plan of a resumed run: the same plan when the total is unchanged, else the re-planned decay."""
    if previous is None:
        return LrPlan(total=total, warmup=warmup_steps(cfg, total))
    if previous.total == total:
        return previous
    if step < previous.warmup:  # still warming up: the decay starts after the same warmup, to the new total
        return dataclasses.replace(previous, total=total)
    return LrPlan(total=total, warmup=previous.warmup, anchor=step, anchor_factor=previous.factor(step, cfg))


def build_scheduler(optimizer, cfg: TrainConfig, plan: LrPlan):
    # a plain lambda, not a callable object: LambdaLR would save an object's fields in the checkpoint
    # and a resumed run would get the old plan back from load_state
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: plan.factor(s, cfg))
