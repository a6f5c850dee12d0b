"""How high can pretraining MFU go on this CPU? Every matmul of one pretraining step of the benchmark
config (GPT-2 shape 6 x 384, 6 heads, vocab 50257, 8 x 256 tokens; ``benchmarks/pretrain.py``), timed
alone with ``torch.mm`` at its own shape, fp32, plus attention (scaled-dot-product forward + backward):
the step's time if nothing else ran (no LayerNorm, GELU, softmax of the head, optimizer, data) gives the
**ceiling MFU** that no loop built on these kernels can pass. MFU = model FLOPs / time / the measured
peak (``gptune.hardware.matmul_gflops``: the fp32 peak of every benchmark's ``machine:`` line).

The LM head is timed as ``gptune.losses`` runs it: row chunks of ``_chunk_rows(V)`` scored rows, three
GEMMs each (logits ``h @ W.T``, ``grad_h = g @ W``, ``grad_W += g.T @ h``).

    python benchmarks/gemm_ceiling.py [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import machine_line, measured_machine

N_LAYER, D, HEADS, VOCAB, SEQ, MICRO = 6, 384, 6, 50257, 256, 8


def step_matmuls() -> list[tuple[str, int, int, int, int]]:
    """(name, M, K, N, how many per step) of every (M, K) @ (K, N) product of one step."""
    m = SEQ * MICRO
    out = []
    for name, k, n in (("attn.c_attn", D, 3 * D), ("attn.c_proj", D, D), ("mlp.c_fc", D, 4 * D),
                       ("mlp.c_proj", 4 * D, D)):
        out += [(f"{name} forward", m, k, n, N_LAYER), (f"{name} grad input", m, n, k, N_LAYER),
                (f"{name} grad weight", k, m, n, N_LAYER)]
    from gptune.losses import _chunk_rows

    rows = MICRO * (SEQ - 1)  # scored rows: the last position of each sequence has no target
    chunk = _chunk_rows(VOCAB)
    sizes = [min(chunk, rows - s) for s in range(0, rows, chunk)]
    for c in sorted(set(sizes)):
        k = sizes.count(c)
        out += [(f"head logits ({c} rows)", c, D, VOCAB, k), (f"head grad h ({c} rows)", c, VOCAB, D, k),
                (f"head grad W ({c} rows)", VOCAB, c, D, k)]
    return out


def mm_job(m: int, k: int, n: int):
    """One (m, k) @ (k, n) product into a reused output."""
    import torch

    x, y, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    return lambda: torch.mm(x, y, out=out)


def attention_job():
    """SDPA forward + backward over the step's 6 layers (causal, 8 x 6 heads x 256 x 64)."""
    import torch
    import torch.nn.functional as F

    q, k, v = (torch.randn(MICRO, HEADS, SEQ, D // HEADS, requires_grad=True) for _ in range(3))

    def run():
        for _ in range(N_LAYER):
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    return run


def interleaved_times(jobs: list, reps: int) -> tuple[list[float], list[float]]:
    """Median seconds of each job, and the fp32 peak (GFLOP/s, ``gptune.hardware.matmul_gflops``) of each
    round: a round runs every job once, then measures the peak, so a busy patch of a shared machine hits
    jobs and peak alike. Round 0 warms up and is not counted."""
    from gptune.hardware import matmul_gflops

    times: list[list[float]] = [[] for _ in jobs]
    peaks = []
    for _ in range(reps + 1):
        for job, ts in zip(jobs, times, strict=True):
            t = time.perf_counter()
            job()
            ts.append(time.perf_counter() - t)
        peaks.append(matmul_gflops("float32", budget_s=0.3))
    return [statistics.median(ts[1:]) for ts in times], peaks[1:]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7, help="rounds: timings per product (median)")
    a = p.parse_args(argv)
    measured_machine()
    from pretrain import flops_per_token

    products = step_matmuls()
    times, peaks = interleaved_times([mm_job(m, k, n) for _, m, k, n, _ in products] + [attention_job()], a.reps)
    t_att = times.pop()
    peak = statistics.median(peaks)
    total_t = 0.0
    lines = []
    for (name, m, k, n, count), t in zip(products, times, strict=True):
        t *= count
        flops = 2 * m * k * n * count
        total_t += t
        lines.append((name, f"({m} x {k}) @ ({k} x {n}) x{count}", flops / 1e9, flops / t / 1e9, t))
    att_flops = 12 * N_LAYER * SEQ * D * SEQ * MICRO  # the MFU formula's attention term, per step
    total_t += t_att
    lines.append(("attention (SDPA fwd + bwd)", f"{MICRO} x {HEADS} heads x {SEQ} x {D // HEADS}, x{N_LAYER}",
                  att_flops / 1e9, att_flops / t_att / 1e9, t_att))
    step_flops = flops_per_token() * SEQ * MICRO
    print(machine_line())
    print("| product | shape | GFLOP | GFLOP/s | % of peak | share of the matmul time |")
    print("|---|---|---|---|---|---|")
    for name, shape, gf, rate, t in lines:
        print(f"| {name} | {shape} | {gf:.1f} | {rate:.0f} | {100 * rate / peak:.0f}% | {100 * t / total_t:.1f}% |")
    ceiling = step_flops / total_t / 1e9
    print(f"\nmatmuls + attention alone: {total_t:.2f} s per step of {SEQ * MICRO} tokens "
          f"({SEQ * MICRO / total_t:.0f} tokens/s); model FLOPs {step_flops / 1e9:.1f} GFLOP per step "
          f"({flops_per_token() / 1e6:.1f} MFLOP/token)")
    print(f"ceiling MFU (nothing but these kernels): {100 * ceiling / peak:.1f}% of the measured fp32 peak "
          f"{peak:.0f} GFLOP/s (median of {len(peaks)} measured between rounds: {min(peaks):.0f}-{max(peaks):.0f})")


if __name__ == "__main__":
    main()
