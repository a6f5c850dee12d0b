"""One-shot check of the paths GPU users run, on the first CUDA machine it meets, within a time budget.

    python benchmarks/gpu_check.py [--out DIR]     # every visible GPU; exits 1 when a check fails or is skipped
    bash benchmarks/device/run.sh                  # on a lent device machine: install the wheelhouse, then this

Rows (one table at the end; ``--out`` also writes it as gpu_check.md and gpu_check.json, with the logs):
* pretraining GPT-2 124M (random init, 12 x 768, context 1024, vocab 50257) in bf16 on one GPU through
  ``gptune pretrain``: tokens/s, MFU against the device's peak dense bf16 FLOP/s (table below; target
  >= 45% on H100/H200-class GPUs; the note also gives it against a bf16 matmul measured here) and peak GPU
  memory, with ``train.compile`` off and on;
* the Hugging Face Trainer on the same model, batch, precision and GPU (fused AdamW, SDPA attention):
  tokens/s and peak memory, and gptune's ratio to it (goal >= 1.3x);
* SST-2 fine-tuning steps, LoRA and full, from the pretraining run's ``final/``;
* ``gptune eval --ppl`` on that model;
* DDP and FSDP over every visible GPU (when there are >= 2), through ``accelerate launch`` with the shipped
  ``ddp`` / ``fsdp`` Accelerate configs: tokens/s and scaling against one GPU.

Time: the checks run (the Trainer first, compile on last of the one-GPU rows: ``CHECKS``) inside
``--budget`` seconds (default 390, 6.5 minutes, so that the device script, install included, ends within
8). Each command may take the budget that is left less 30 s for every check still to come (and at most
``--timeout``); a check with under 20 s left is skipped, and says so.
``--only`` reruns some checks (the fine-tuning and perplexity rows also run the pretraining one they start
from).

Nothing needs the hub or shared data: the model is randomly initialised, the tokenizer is a word-level one
with exactly 50257 entries written here, the corpus is random words, and SST-2 comes from
``$GPTUNE_DATA/glue`` (or ``--glue-dir``) when present, else a synthetic GLUE-format TSV written here.
Throughput does not depend on what the words are. Targets are reported, not enforced: a row fails when its
command fails.

Not yet run on a GPU: this script was written on CPU-only machines. There every row was dry-run with tiny
shapes on CPU processes (``--cpu-smoke``, hidden), also in a virtual environment holding the device image's
versions (benchmarks/device/README.md). Without CUDA (and without ``--cpu-smoke``) it exits 2 with one line
saying so. ``--plan [SPENT]`` prints what would run as JSON (the checks, each command's time once SPENT s
of the budget are gone, the shape) and stops: no GPU needed (tests/test_device_kit.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import Stat, print_table, row, table_text
from pretrain import flops_per_token

from gptune.distributed import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


NO_CUDA = "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU machine"

# Peak dense bf16 tensor-core FLOP/s by device name (vendor data sheets, no sparsity); first match wins.
PEAK_BF16 = (
    ("GH200", 989e12), ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12),
    ("H800", 989e12), ("B200", 2250e12), ("B100", 1750e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12),
    ("RTX 6000 Ada", 364e12), ("A6000", 155e12), ("4090", 165e12), ("3090", 71e12),
)
HOPPER_CLASS = ("H100", "H200", "H800")
MFU_TARGET, TRAINER_GOAL = 45.0, 1.3
# the checks, in the order they run: the Trainer first (the pretraining rows compare with it), the one-GPU
# rows next, compile (the slowest to start) last of them
CHECKS = ("trainer", "pretrain", "lora", "full", "ppl", "compile", "ddp", "fsdp")
NEEDS_PRETRAIN = ("lora", "full", "ppl")  # they start from its final/
BUDGET, RESERVE, MIN_LEFT = 390.0, 30.0, 20.0  # seconds: whole run; kept per check still to come; to start one
# what --out writes (the device tool brings back at most 8 files): the table, its numbers, the logs
OUT_FILES = ("gpu_check.md", "gpu_check.json", "logs.tar.gz")
VERSIONS = ("torch", "transformers", "accelerate", "peft", "tokenizers", "safetensors", "huggingface-hub", "datasets",
            "evaluate", "numpy", "pyarrow", "fsspec", "triton", "gptune")


@dataclass(frozen=True)
class Shape:
    label: str
    n_layer: int
    n_embd: int
    n_head: int
    seq: int
    vocab: int
    micro: int
    steps: int
    log_every: int
    precision: str
    corpus_words: int
    ft_steps: int
    ft_length: int


# 50 steps of 16 x 1024 tokens: 4 measured windows of 10 steps after the first; the corpus (1M words, ~1M
# tokens) covers them in one epoch, so no partial last batch changes a shape under compile.
GPU = Shape("GPT-2 124M bf16", 12, 768, 12, 1024, 50257, 16, 50, 10, "bf16", 1_000_000, 30, 128)
SMOKE = Shape("tiny fp32 (CPU smoke)", 2, 64, 2, 64, 1000, 2, 6, 2, "no", 20_000, 4, 32)


def peak_bf16(name: str) -> float | None:
    for key, flops in PEAK_BF16:
        if key.lower() in name.lower():
            return flops
    return None


def selected(only: str | None) -> list[str]:
    """The checks to run, in run order: all, or ``--only a,b`` plus the pretraining run those start from."""
    if not only:
        return list(CHECKS)
    want = {x.strip() for x in only.split(",") if x.strip()}
    unknown = sorted(want - set(CHECKS))
    if unknown:
        raise ValueError(f"--only: unknown check {', '.join(unknown)} (choose from {', '.join(CHECKS)})")
    if want & set(NEEDS_PRETRAIN):
        want.add("pretrain")
    return [c for c in CHECKS if c in want]


class Budget:
    """Seconds left for the whole run; what one command may take."""

    def __init__(self, seconds: float, per_command: float, clock=time.monotonic):
        self.clock, self.end, self.per_command = clock, clock() + seconds, per_command

    def left(self) -> float:
        return self.end - self.clock()

    def timeout(self, still_to_come: int) -> float | None:
        """What the next command may take, keeping RESERVE s per check after it; None: skip it."""
        t = min(self.per_command, self.left() - RESERVE * still_to_come)
        return t if t >= MIN_LEFT else None


# ----------------------------------------------------------------------------- inputs, written here


def write_tokenizer(folder: Path, vocab: int) -> Path:
    """A word-level tokenizer with exactly ``vocab`` entries: words w0 .. w{vocab-2} and <|endoftext|>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    words = {f"w{i}": i for i in range(vocab - 1)} | {eos: vocab - 1}
    tok = Tokenizer(models.WordLevel(words, unk_token=eos))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos).save_pretrained(folder)
    return folder


def random_words(rng: random.Random, n: int, vocab: int) -> str:
    return " ".join(f"w{rng.randrange(vocab - 1)}" for _ in range(n))


def write_corpus(folder: Path, shape: Shape) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lines = [random_words(rng, 100, shape.vocab) for _ in range(shape.corpus_words // 100)]
    (folder / "a.txt").write_text("\n".join(lines) + "\n")
    return folder


def glue_dir(arg: str | None, work: Path, shape: Shape) -> tuple[Path, str]:
    """$GPTUNE_DATA/glue (or --glue-dir) when it holds SST-2, else a synthetic SST-2 in the GLUE layout."""
    for cand in (arg, os.path.join(os.environ["GPTUNE_DATA"], "glue") if os.environ.get("GPTUNE_DATA") else None):
        # a real glue_data folder, as `gptune finetune --data-dir` reads it
        if cand and (Path(cand) / "SST-2" / "train.tsv").is_file():
            return Path(cand), "SST-2 from " + cand
    sst = work / "glue" / "SST-2"
    sst.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    for split, n in (("train", 2000), ("dev", 200)):
        rows = [f"{random_words(rng, rng.randint(5, 30), shape.vocab)}\t{rng.randint(0, 1)}\n" for _ in range(n)]
        (sst / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(rows))
    return work / "glue", "synthetic SST-2 (no $GPTUNE_DATA/glue)"


# ----------------------------------------------------------------------------- running gptune


class CheckFailed(Exception):
    pass


def run(cmd: list[str], *, cwd: Path, env: dict, timeout: float) -> str:
    log = cwd / "logs" / f"{int(time.time() * 1000)}.log"
    log.parent.mkdir(exist_ok=True)
    try:
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        log.write_text(" ".join(cmd) + f"\n\n(stopped after {timeout:.0f} s)\n" + _text(e.stdout) + "\n" + _text(e.stderr))
        raise CheckFailed(f"no result within {timeout:.0f} s: {' '.join(cmd[:8])} ... (log {log.name})") from None
    log.write_text(" ".join(cmd) + "\n\n" + out.stdout + "\n" + out.stderr)
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        said = [ln for ln in lines if ln.lower().startswith(("error", "[rank0]: error", "runtimeerror"))]
        last = (said or lines or ["(no output)"])[-1]
        raise CheckFailed(f"exit {out.returncode}: {last[:200]} (log {log.name})")
    return out.stdout


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def write_recipe(path: Path, shape: Shape, corpus: Path, tokenizer: Path) -> Path:
    path.write_text(
        f"# python benchmarks/gpu_check.py\nname: gpu-check\n"
        f"model: {{arch: gpt2, tokenizer: {tokenizer}, config: {{n_layer: {shape.n_layer}, n_head: {shape.n_head}, "
        f"n_embd: {shape.n_embd}, n_positions: {shape.seq}, dropout: 0.0}}}}\n"
        f"data: {{path: {corpus}, block_size: {shape.seq}, val_fraction: 0.0}}\n"
        f"train: {{max_steps: {shape.steps}, micro_batch_size: {shape.micro}, global_batch_size: {shape.micro}, "
        f"warmup: 2, eval_every: 0, save_every: 0, log_every: {shape.log_every}, "
        f"mixed_precision: '{shape.precision}'}}\n")
    return path


def train_events(run_dir: Path) -> list[dict]:
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [e for e in events if e.get("event") == "train"]


def window_rates(run_dir: Path) -> Stat:
    """tokens/s of the logged windows after the first (which holds start-up and compilation)."""
    rates = [e["tokens_per_s"] for e in train_events(run_dir)[1:]]
    if not rates:
        raise CheckFailed(f"{run_dir}: fewer than two logged windows")
    return Stat(rates)


def peak_gib(run_dir: Path) -> float | None:
    """The run's peak GPU memory (the loop logs the allocator's high-water mark on CUDA)."""
    peaks = [e["cuda_peak_gib"] for e in train_events(run_dir) if "cuda_peak_gib" in e]
    return max(peaks) if peaks else None


@dataclass
class Ctx:
    shape: Shape
    work: Path
    env: dict
    recipe: Path
    corpus: Path
    glue: Path
    gpus: int
    device: str
    budget: Budget
    matmul_peak: float | None = None  # bf16 FLOP/s of a large matmul measured here (CUDA only)
    timeout: float = 0.0  # what the command of the check now running may take
    final: Path | None = None
    one_gpu: float | None = None
    trainer: dict | None = None  # {"rate": Stat, "peak_gib": float | None}


def gptune(ctx: Ctx, *args: str) -> str:
    return run([sys.executable, "-m", "gptune", *args], cwd=ctx.work, env=ctx.env, timeout=ctx.timeout)


# ----------------------------------------------------------------------------- the checks (each returns rows)


def check_pretrain(ctx: Ctx, compile: bool) -> list[dict]:
    out = ctx.work / "runs" / f"pretrain-compile-{'on' if compile else 'off'}"
    gptune(ctx, "pretrain", str(ctx.recipe), "--out-dir", str(out), "--set", f"train.compile={str(compile).lower()}")
    rate = window_rates(out)
    if not compile:
        ctx.final, ctx.one_gpu = out / "final", rate.median
    name = f"pretrain {ctx.shape.label}, compile {'on' if compile else 'off'}"
    trainer = ctx.trainer
    rows = [row(name, "tokens/s, 1 GPU", rate, trainer["rate"] if trainer else None, "HF Trainer" if trainer else "-",
                target=f">= {TRAINER_GOAL}x Trainer" if trainer else "", note=ctx.device)]
    peak = peak_bf16(ctx.device)
    if peak:
        fpt = flops_per_token(ctx.shape.n_layer, ctx.shape.n_embd, ctx.shape.vocab, ctx.shape.seq)
        hopper = any(k in ctx.device for k in HOPPER_CLASS)
        measured = (f"; {100 * rate.median * fpt / ctx.matmul_peak:.1f}% of the {ctx.matmul_peak / 1e12:.0f} TFLOP/s "
                    "an 8192^3 bf16 matmul ran here") if ctx.matmul_peak else ""
        rows.append(row(name, "MFU % of peak bf16", Stat([100 * r * fpt / peak for r in rate.values]), None, "-",
                        digits=1, target=f">= {MFU_TARGET:.0f}%" if hopper else "",
                        note=f"peak {peak / 1e12:.0f} TFLOP/s ({ctx.device}), {fpt / 1e9:.2f} GFLOP/token{measured}"))
    mem = peak_gib(out)
    if mem is not None:
        theirs = trainer["peak_gib"] if trainer else None
        rows.append(row(name, "peak GPU memory (GiB)", mem, theirs, "HF Trainer" if theirs else "-", digits=2,
                        higher_is_better=False, note="torch.cuda.max_memory_allocated"))
    return rows


def check_trainer(ctx: Ctx) -> list[dict]:
    spec = json.dumps({"shape": ctx.shape.__dict__, "out": str(ctx.work / "runs" / "trainer")})
    out = run([sys.executable, str(Path(__file__).resolve()), "--trainer-worker", spec], cwd=ctx.work, env=ctx.env,
              timeout=ctx.timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise CheckFailed("the Trainer worker printed no RESULT line")
    got = json.loads(lines[-1][len("RESULT "):])
    if not got["tokens_per_s"]:
        raise CheckFailed("the Trainer worker measured no window")
    ctx.trainer = {"rate": Stat(got["tokens_per_s"]), "peak_gib": got.get("peak_gib")}
    return []  # its numbers are the peer column of the pretraining rows


def check_launch(ctx: Ctx, config: str) -> list[dict]:
    from gptune.recipes import shipped

    n = ctx.gpus
    out = ctx.work / "runs" / f"pretrain-{config}"
    run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(shipped("accelerate")[config]),
         "--num_processes", str(n), "--main_process_port", str(free_port()),
         "-m", "gptune", "pretrain", str(ctx.recipe), "--out-dir", str(out),
         "--set", f"train.global_batch_size={ctx.shape.micro * n}"], cwd=ctx.work, env=ctx.env, timeout=ctx.timeout)
    rate = window_rates(out)
    scaling = f"{rate.median / (n * ctx.one_gpu):.0%} of {n} x 1 GPU" if ctx.one_gpu else ""
    return [row(f"pretrain {ctx.shape.label}, {config.upper()} x {n}", "tokens/s, all processes", rate, None, "-", note=scaling)]


def check_finetune(ctx: Ctx, lora: bool) -> list[dict]:
    if ctx.final is None:
        raise CheckFailed("no pretrained final/ (the pretraining row failed)")
    out = ctx.work / "runs" / f"sst2-{'lora' if lora else 'full'}"
    s = ctx.shape
    gptune(ctx, "finetune", "--task", "sst2", "--lora" if lora else "--full", "--model", str(ctx.final),
           "--data-dir", str(ctx.glue), "--out-dir", str(out), "--set", f"train.max_steps={s.ft_steps}",
           "--set", "train.eval_every=0", "--set", "train.save_every=0", "--set", f"train.log_every={s.log_every}",
           "--set", f"task.max_length={s.ft_length}", "--set", f"train.mixed_precision='{s.precision}'",
           "--set", f"train.micro_batch_size={s.micro * 2}", "--set", f"train.global_batch_size={s.micro * 2}")
    acc = json.loads((out / "final" / "metrics.json").read_text()).get("accuracy")
    mem = peak_gib(out)
    return [row(f"finetune SST-2 {'LoRA' if lora else 'full'}", "tokens/s (non-pad)", window_rates(out), None, "-",
                note=f"dev accuracy {acc:.3f} after {s.ft_steps} steps (speed check, not a result)"
                     + (f"; peak GPU memory {mem:.2f} GiB" if mem is not None else ""))]


def check_ppl(ctx: Ctx) -> list[dict]:
    if ctx.final is None:
        raise CheckFailed("no pretrained final/ (the pretraining row failed)")
    report = ctx.work / "ppl.json"
    gptune(ctx, "eval", "--ppl", "--model", str(ctx.final), "--data", str(ctx.corpus / "a.txt"),
           "--max-length", str(ctx.shape.seq), "--stride", str(ctx.shape.seq // 2), "--json", str(report))
    r = json.loads(report.read_text())
    if not r["perplexity"] == r["perplexity"] or r["perplexity"] <= 1:
        raise CheckFailed(f"perplexity {r['perplexity']} is not a finite number > 1")
    return [row("eval --ppl (stride seq/2)", "tokens/s", r["tokens_per_second"], None, "-",
                note=f"perplexity {r['perplexity']:.1f} over {r['tokens']:,} tokens")]


CHECK_FNS = {
    "pretrain": lambda ctx: check_pretrain(ctx, False), "trainer": check_trainer,
    "lora": lambda ctx: check_finetune(ctx, True), "full": lambda ctx: check_finetune(ctx, False),
    "ppl": check_ppl, "compile": lambda ctx: check_pretrain(ctx, True),
    "ddp": lambda ctx: check_launch(ctx, "ddp"), "fsdp": lambda ctx: check_launch(ctx, "fsdp"),
}
TITLES = {"pretrain": "pretrain compile=False", "trainer": "HF Trainer, same model", "lora": "finetune lora",
          "full": "finetune full", "ppl": "eval --ppl", "compile": "pretrain compile=True", "ddp": "ddp",
          "fsdp": "fsdp"}


# ----------------------------------------------------------------------------- the HF Trainer side


def trainer_worker(spec: dict) -> None:
    """The same model, batch and precision through transformers' Trainer; prints RESULT {tokens_per_s, peak_gib}."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    s = Shape(**spec["shape"])
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=s.vocab, n_positions=s.seq, n_embd=s.n_embd, n_layer=s.n_layer, n_head=s.n_head,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return s.micro * (s.steps + 1)

        def __getitem__(self, i):
            ids = torch.randint(0, s.vocab - 1, (s.seq,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "labels": ids}

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    args = TrainingArguments(output_dir=spec["out"], per_device_train_batch_size=s.micro, max_steps=s.steps,
                             bf16=s.precision == "bf16", use_cpu=not cuda, report_to="none", save_strategy="no",
                             logging_steps=s.log_every, optim="adamw_torch_fused" if cuda else "adamw_torch",
                             dataloader_pin_memory=cuda, learning_rate=6e-4, warmup_steps=2, seed=0)
    Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[Clock()]).train()
    print("RESULT " + json.dumps({"tokens_per_s": trainer_windows(times, s.micro * s.seq, s.log_every),
                                  "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}))


def measured_windows(steps: int, w: int) -> list[tuple[int, int]]:
    """(i, j): the windows of ``w`` steps measured, as 0-based indices of the end-of-step times they run
    between; the first window is left out (as on the gptune side, whose first logged window holds start-up)."""
    return [(i, i + w) for i in range(w - 1, steps - w, w)]


def trainer_windows(times: list[float], tokens_per_step: int, w: int) -> list[float]:
    """tokens/s of the measured windows (``measured_windows``) from the end-of-step times."""
    return [tokens_per_step * w / (times[j] - times[i]) for i, j in measured_windows(len(times), w)]


# ----------------------------------------------------------------------------- driver


def matmul_peak() -> float:
    """bf16 FLOP/s of 8192^3 products on random data (median of 10 after 3 warm-ups), on GPU 0."""
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        ts.append(start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * 8192**3 / sorted(ts)[len(ts) // 2]


def versions(env: dict, cwd: Path) -> dict:
    """The versions the runs see (read in a child with their environment), and where gptune comes from."""
    code = ("import importlib.metadata as m, json, sys, torch, gptune\n"
            f"names = {list(VERSIONS)!r}\n"
            "v = {}\n"
            "for n in names:\n"
            "    try: v[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: v[n] = None\n"
            "v.update(python=sys.version.split()[0], torch_cuda=torch.version.cuda, gptune_from=gptune.__file__)\n"
            "print(json.dumps(v))")
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()[-300:]}


def write_out(out: Path, rows: list[dict], title: str, info: dict, work: Path) -> None:
    """gpu_check.md (the table), gpu_check.json (every number), logs.tar.gz (command logs, metrics.jsonl)."""
    out.mkdir(parents=True, exist_ok=True)
    v = info.get("versions", {})
    lines = [f"# {title}", "", f"command: `{info['command']}`", "",
             "versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if k != "gptune_from"), "",
             table_text(rows)]
    (out / OUT_FILES[0]).write_text("\n".join(lines))
    (out / OUT_FILES[1]).write_text(json.dumps({**info, "title": title, "rows": rows}, indent=2, default=str) + "\n")
    with tarfile.open(out / OUT_FILES[2], "w:gz") as tar:
        if (work / "logs").is_dir():
            tar.add(work / "logs", arcname="logs")
        for m in sorted((work / "runs").glob("*/metrics.jsonl")):
            tar.add(m, arcname=f"runs/{m.parent.name}/metrics.jsonl")


def plan_record(checks: list[str], a, shape: Shape) -> dict:
    """``--plan SPENT``: what a run would do, as JSON: the checks in run order and the seconds each command may
    take once SPENT seconds of the budget are gone (None: skipped), the shape, the trainer's measured windows
    and the files ``--out`` writes."""
    now = [0.0]
    budget = Budget(a.budget, a.timeout, clock=lambda: now[0])
    now[0] = a.plan
    return {"checks": checks, "budget": a.budget, "reserve": RESERVE, "min_left": MIN_LEFT,
            "timeouts": {c: budget.timeout(still_to_come=len(checks) - i - 1) for i, c in enumerate(checks)},
            "shape": shape.__dict__, "measured_windows": measured_windows(shape.steps, shape.log_every),
            "out_files": list(OUT_FILES)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--glue-dir", help="GLUE data in the glue_data layout (default: $GPTUNE_DATA/glue, else synthetic)")
    p.add_argument("--out", type=Path, help="Write the table (gpu_check.md), its numbers (gpu_check.json) and the "
                                           "logs (logs.tar.gz) here.")
    p.add_argument("--budget", type=float, default=BUDGET, help=f"Seconds for the whole check (default {BUDGET:.0f}).")
    p.add_argument("--timeout", type=float, default=300, help="Seconds allowed per command, at most.")
    p.add_argument("--only", help=f"Comma-separated checks to run (of {', '.join(CHECKS)}).")
    p.add_argument("--installed", action="store_true",
                   help="Run the installed gptune (a wheel), not the checkout's sources.")
    p.add_argument("--keep", action="store_true", help="Keep the work folder (runs, logs).")
    p.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--trainer-worker", help=argparse.SUPPRESS)
    p.add_argument("--plan", type=float, nargs="?", const=0.0, metavar="SPENT",
                   help="Print what would run as JSON (checks, each command's time once SPENT s are gone, the "
                        "shape) and stop: nothing runs, no GPU needed.")
    a = p.parse_args(argv)
    if a.trainer_worker:
        trainer_worker(json.loads(a.trainer_worker))
        return 0
    try:
        checks = selected(a.only)
    except ValueError as e:
        p.error(str(e))
    if a.plan is not None:
        print(json.dumps(plan_record(checks, a, SMOKE if a.cpu_smoke else GPU), indent=2))
        return 0
    import torch

    if not torch.cuda.is_available() and not a.cpu_smoke:
        print(NO_CUDA, file=sys.stderr)
        return 2
    budget = Budget(a.budget, a.timeout)
    shape = SMOKE if a.cpu_smoke else GPU
    work = Path(tempfile.mkdtemp(prefix="gptune-gpu-check-"))
    env = dict(os.environ, GPTUNE_NO_PROGRESS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", GPTUNE_CACHE=str(work / "cache"))
    if not a.installed:  # the checkout's gptune, in every command this starts
        env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x)
    peak = None
    if a.cpu_smoke:
        gpus, device = 2, "CPU (smoke run, tiny shapes)"  # 2 CPU processes stand in for the multi-GPU rows
        env.setdefault("OMP_NUM_THREADS", "1")  # tiny ops on shared cores: thread hand-offs dominate otherwise
    else:
        gpus, device = torch.cuda.device_count(), torch.cuda.get_device_name(0)
        peak = matmul_peak()
    if gpus < 2:
        checks = [c for c in checks if c not in ("ddp", "fsdp")]
    info = {"command": " ".join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
            "versions": versions(env, work), "device": device, "gpus": gpus, "shape": shape.__dict__,
            "budget_s": a.budget, "matmul_peak_flops": peak}
    print("versions: " + json.dumps(info["versions"]), flush=True)
    write_tokenizer(work / "tokenizer", shape.vocab)
    corpus = write_corpus(work / "corpus", shape)
    glue, glue_note = glue_dir(a.glue_dir, work, shape)
    ctx = Ctx(shape, work, env, write_recipe(work / "recipe.yaml", shape, corpus, work / "tokenizer"), corpus, glue,
              gpus, device, budget, peak)
    rows: list[dict] = []
    failed: list[str] = []
    skipped: list[str] = []
    for i, name in enumerate(checks):
        timeout = budget.timeout(still_to_come=len(checks) - i - 1)
        if timeout is None:
            skipped.append(name)
            rows.append(row(TITLES[name], "SKIPPED", float("nan"), None, "-",
                            note=f"budget spent ({budget.left():.0f} s of {a.budget:.0f} left); rerun with --only {name}"))
            continue
        ctx.timeout = timeout
        t = time.monotonic()
        try:
            rows += CHECK_FNS[name](ctx)
        except Exception as e:  # noqa: BLE001 - every failure becomes a row; the exit code says it
            failed.append(name)
            rows.append(row(TITLES[name], "FAILED", float("nan"), None, "-", note=f"{type(e).__name__}: {e}"))
        print(f"gpu_check: {name} done in {time.monotonic() - t:.0f} s ({budget.left():.0f} s left)", flush=True)
    minutes = (a.budget - budget.left()) / 60
    title = f"gptune GPU check: {device}, {gpus} GPU(s), {glue_note}, {minutes:.1f} min"
    print_table(rows, title)
    info |= {"minutes": minutes, "checks": checks, "failed": failed, "skipped": skipped}
    if a.out:
        write_out(a.out, rows, title, info, work)
        print(f"written: {', '.join(str(a.out / f) for f in OUT_FILES)}")
    if a.keep or failed:
        print(f"work folder (runs and logs): {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if failed or skipped:
        print(f"FAILED: {', '.join(failed) or '-'}; SKIPPED: {', '.join(skipped) or '-'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
