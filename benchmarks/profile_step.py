"""Where a gptune training step goes, per operation, as shares of the step: one pretraining step and one
fine-tuning step (GPT-1 task head + auxiliary LM loss, lm_coef 0.5), each at fp32 and at bf16 autocast
(as Accelerate applies it), for the pretraining benchmark's model (GPT-2 shape, 6 x 384, 6 heads, vocab
50257). ``torch.profiler`` records the step; every op's self time goes to one group:

* matmuls: the blocks' linear layers (forward and backward), not the LM head's
* attention: scaled-dot-product attention and its backward
* LM head + cross-entropy: the chunked head matmuls and softmax, forward and gradient (``linear_cross_entropy``)
* norms/activations: LayerNorm, GELU, dropout, residual adds, casts, copies, embeddings (the elementwise rest)
* optimizer: gradient clipping, fused AdamW, zero_grad
* data: the DataLoader's next batch (pre-tokenized blocks, as gptune's packed cache hands them)

The step's wall time is printed beside the shares, with the machine (CPU, flags, measured peaks).

    python benchmarks/profile_step.py                                    # fp32 and bf16, 8 x 256 tokens
    python benchmarks/profile_step.py --precision fp32 --batch 2 --seq 128
"""

from __future__ import annotations

import argparse
import contextlib
import time

from common import machine_line, measured_machine  # the script's own folder is on sys.path

GROUPS = ("matmuls", "attention", "LM head + cross-entropy", "norms/activations", "optimizer", "data")
ARCH = dict(vocab_size=50257, n_embd=384, n_layer=6, n_head=6, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
REGIONS = {"bench::head_ce": "LM head + cross-entropy", "_LinearCrossEntropyBackward": "LM head + cross-entropy",
           "bench::optimizer": "optimizer", "bench::data": "data"}
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")
ATTENTION = ("scaled_dot_product", "softmax")


def group_of(event) -> str:
    """The group of one profiled op: its enclosing region first (head, optimizer, data), then its name."""
    parent = event
    while parent is not None:
        for key, group in REGIONS.items():
            if key in parent.name:
                return group
        parent = parent.cpu_parent
    if event.name in MATMUL_OPS:
        return "matmuls"
    parent = event
    while parent is not None:
        if any(a in parent.name.lower() for a in ATTENTION):
            return "attention"
        parent = parent.cpu_parent
    return "norms/activations"


def shares(prof) -> dict[str, float]:
    """Self CPU time (s) per group over every op the profiler saw."""
    out = dict.fromkeys(GROUPS, 0.0)
    for e in prof.events():
        if e.name.startswith(("bench::", "ProfilerStep")):
            continue
        out[group_of(e)] += e.self_cpu_time_total / 1e6
    return out


def build(kind: str, seq: int):
    """(model, a function batch -> loss, a batch maker) for ``pretrain`` or ``finetune`` (aux LM loss)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptune.modeling.gpt import LMWithLoss

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(n_positions=max(seq, 256), **ARCH))
    if kind == "pretrain":
        model = LMWithLoss(lm).train()
        return model, lambda b: model(b["input_ids"])[0], lambda n: {"input_ids": torch.randint(0, 50257, (n, seq))}
    from gptune.modeling.heads import GPT1TaskModel
    from gptune.tasks import get_task

    model = GPT1TaskModel(lm, get_task("sst2"), lm_coef=0.5).train()

    def batch(n):
        ids = torch.randint(0, 50257, (n, 1, seq))
        mask = torch.ones_like(ids)
        mask[: n // 2, :, seq * 3 // 4:] = 0  # half the rows padded, as sentence lengths vary
        pos = mask.sum(-1) - 1
        return {"input_ids": ids, "attention_mask": mask, "extract_pos": pos, "labels": torch.randint(0, 2, (n,))}

    return model, lambda b: model(**b)["loss"], batch


def profile(kind: str, precision: str, batch: int, seq: int, warmup: int) -> tuple[float, dict[str, float]]:
    """(wall time in s of one unprofiled step, seconds per group of the next, profiled, step), after
    ``warmup`` steps."""
    import torch
    import torch.profiler as tp

    import gptune.losses as losses
    from gptune.config import TrainConfig
    from gptune.training.optim import build_optimizer

    model, loss_of, make = build(kind, seq)
    opt = build_optimizer(model, TrainConfig())
    data = torch.utils.data.DataLoader([make(1) for _ in range(batch * (warmup + 2))], batch_size=batch,
                                       collate_fn=lambda rows: {k: torch.cat([r[k] for r in rows]) for k in rows[0]})
    it = iter(data)
    lce = losses.linear_cross_entropy

    def head_ce(*a, **k):
        with tp.record_function("bench::head_ce"):
            return lce(*a, **k)

    losses.linear_cross_entropy = head_ce
    cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

    def step():
        with tp.record_function("bench::data"):
            b = next(it)
        with cast():
            loss = loss_of(b)
        loss.backward()
        with tp.record_function("bench::optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    try:
        for _ in range(warmup):
            step()
        t = time.perf_counter()
        step()
        wall = time.perf_counter() - t
        with tp.profile(activities=[tp.ProfilerActivity.CPU]) as prof:
            step()
    finally:
        losses.linear_cross_entropy = lce
    return wall, shares(prof)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", choices=("fp32", "bf16"), nargs="+", default=["fp32", "bf16"])
    p.add_argument("--kind", choices=("pretrain", "finetune"), nargs="+", default=["pretrain", "finetune"])
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    p.add_argument("--warmup", type=int, default=1, help="steps before the profiled one")
    a = p.parse_args(argv)
    measured_machine()
    rows = []
    for kind in a.kind:
        for precision in a.precision:
            wall, secs = profile(kind, precision, a.batch, a.seq, a.warmup)
            rows.append((kind, precision, wall, secs))
            print(f"{kind} {precision}: {wall:.2f} s", flush=True)
    import torch

    print(f"\nmachine: {machine_line()}\ntorch {torch.__version__}; one step of {a.batch} x {a.seq} tokens "
          f"after {a.warmup} warm-up step(s): wall of an unprofiled step, then shares of the next step's "
          "profiled ops' self time")
    print("| step | precision | wall (s) | tokens/s | " + " | ".join(GROUPS) + " |")
    print("|---|---|---|---|" + "---|" * len(GROUPS))
    for kind, precision, wall, secs in rows:
        total = sum(secs.values())
        print(f"| {kind} | {precision} | {wall:.2f} | {a.batch * a.seq / wall:,.0f} | "
              + " | ".join(f"{100 * secs[g] / total:.1f}%" for g in GROUPS) + " |")


if __name__ == "__main__":
    main()
