"""AdamW with GPT-1's weight decay (matrices only) and the warmup + decay schedules."""

from __future__ import annotations

import math

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


def build_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    w = warmup_steps(cfg, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, total=total_steps, warmup=w, schedule=cfg.schedule, min_ratio=cfg.min_lr_ratio),
    )
