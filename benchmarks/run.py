"""Every benchmark, gptune against the tool a user would pick instead, side by side on this machine.

    python benchmarks/run.py --quick          # a few minutes: short windows, smaller corpus
    python benchmarks/run.py --full           # the numbers quoted in benchmarks/NOTES.md
    python benchmarks/run.py --full --only pretrain,glue

Data from ``--data DIR`` or ``$GPTUNE_DATA`` (one of them is required): books/gutenberg, glue/SST-2,
glue/RTE, wikitext-2, tokenizers/gpt2-hf. Each contender runs its real code (gptune's runners; the
Hugging Face Trainer as run_clm.py / run_glue.py drive it; the HF perplexity-guide loop), alternating
window by window; tables show medians, min-max and ratios; JSON goes to benchmarks/results/.
Nothing here is a test: no speed is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Stat, data_root, print_table, row, write_json

HERE = Path(__file__).resolve().parent

ALL = ("help", "prepare", "ppl", "pretrain", "glue", "gpu")


def bench_help(quick: bool) -> list[dict]:
    """Wall time of ``gptune --help`` in a fresh interpreter (imports included)."""
    times = []
    env = dict(os.environ)
    for _ in range(3 if quick else 7):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gptune", "--help"], check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t)
    return [row("CLI", "`gptune --help` wall time (s)", Stat(times), None, "-", target="<= 1.5 s",
                higher_is_better=False, digits=2)]


def bench_ppl(quick: bool, data: str | None) -> list[dict]:
    """benchmarks/ppl.py (from the ppl branch): sliding windows, max length 256, stride 128, vs the guide."""
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    text = data_root(data) / "wikitext-2" / "wiki.test.raw"
    cmd = [sys.executable, str(HERE / "ppl.py"), "--data", str(text), "--max-length", "256", "--stride", "128",
           "--max-tokens", "4096" if quick else "16384", "--repeats", "2" if quick else "3", "--json", str(out),
           "--tokenizer", str(data_root(data) / "tokenizers" / "gpt2-hf")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    print(proc.stdout[-2000:])
    if proc.returncode and not out.stat().st_size:
        print(proc.stderr[-2000:])
        return []
    res = json.loads(out.read_text())
    guide, ours = res["rows"]
    tok = ours["tokens"]
    return [row("perplexity", "tokens/s (max len 256, stride 128)", Stat([tok / ours["median_s"]]),
                Stat([guide["tokens"] / guide["median_s"]]), "HF perplexity guide (batch 1)", target=">= 1.5x",
                note=f"perplexity relative difference {res['perplexity_rel_diff']:.1e} (must be <= 1e-6); "
                     f"paired-ratio median {res['paired_speedup_median']:.2f}x, CPU-time ratio "
                     f"{res['cpu_speedup']:.2f}x; min-max s: gptune {ours['min_s']:.1f}-{ours['max_s']:.1f}, "
                     f"guide {guide['min_s']:.1f}-{guide['max_s']:.1f}")]


def bench_gpu(quick: bool) -> list[dict]:
    """MFU of GPT-2 124M pretraining steps in bf16 on CUDA through LMWithLoss (skipped without CUDA).

    Kept deliberately simple: model + chunked loss + fused AdamW, no Trainer peer. Never run on the
    machine these notes were written on (no GPU there)."""
    import torch

    if not torch.cuda.is_available():
        print("GPU section: skipped (no CUDA device)")
        return []
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptune.modeling.gpt import LMWithLoss

    dev = torch.device("cuda")
    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    model = LMWithLoss(GPT2LMHeadModel(cfg)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch, seq = 8, 1024
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=dev)
    n = 12 * 12 * 768 * 768 + cfg.vocab_size * 768
    fpt = 6 * n + 12 * 12 * seq * 768
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    peak = 10 * 2 * 8192**3 / (time.perf_counter() - t)
    rates = []
    for i in range(3 + (5 if quick else 20)):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = model(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= 3:
            rates.append(batch * seq / (time.perf_counter() - t))
    mfu = Stat([100 * r * fpt / peak for r in rates])
    return [row("GPU pretrain (GPT-2 124M, bf16)", "MFU % of measured bf16 matmul peak", mfu, None, "-", digits=1,
                note=f"{torch.cuda.get_device_name()}, peak {peak / 1e12:.0f} TFLOP/s, "
                     f"{statistics.median(rates):,.0f} tokens/s")]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short windows (default)")
    mode.add_argument("--full", action="store_true", help="longer windows, more rounds, the 20 MB corpus")
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    p.add_argument("--data", default=None, help="data root (default $GPTUNE_DATA)")
    a = p.parse_args(argv)
    quick = not a.full
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    only = [s for s in a.only.split(",") if s]
    unknown = set(only) - set(ALL)
    if unknown:
        p.error(f"--only: unknown {', '.join(sorted(unknown))} (choose from {', '.join(ALL)})")
    rows: list[dict] = []
    started = time.time()
    for name in [n for n in ALL if n in only]:
        t = time.perf_counter()
        print(f"\n=== {name} ({'quick' if quick else 'full'}) ===", flush=True)
        try:
            if name == "help":
                got = bench_help(quick)
            elif name == "ppl":
                got = bench_ppl(quick, a.data)
            elif name == "gpu":
                got = bench_gpu(quick)
            else:
                import importlib

                got = importlib.import_module(name).run(quick=quick, data=a.data)
        except Exception as e:  # noqa: BLE001 - one failing benchmark must not hide the others
            print(f"{name}: FAILED: {type(e).__name__}: {e}")
            got = []
        print_table(got, f"{name}: {time.perf_counter() - t:.0f} s")
        rows += got
        write_json("partial", {"rows": rows, "mode": "quick" if quick else "full"})
    print_table(rows, f"all benchmarks ({'quick' if quick else 'full'}, {time.time() - started:.0f} s)")
    print("json:", write_json("run", {"rows": rows, "mode": "quick" if quick else "full",
                                      "command": " ".join(sys.argv)}))


if __name__ == "__main__":
    main()
