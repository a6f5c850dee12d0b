"""One-shot check of the paths GPU users run, on the first CUDA machine it meets; about 8 minutes.

    python benchmarks/gpu_check.py            # every visible GPU; exits 1 when any check fails

Rows (one table at the end):
* pretraining GPT-2 124M (random init, 12 x 768, context 1024, vocab 50257) in bf16 on one GPU through
  ``gptune pretrain``: tokens/s and MFU against the device's peak dense bf16 FLOP/s (table below; target
  >= 45% on H100/H200-class GPUs), with ``train.compile`` off and on;
* the Hugging Face Trainer on the same model, batch, precision and GPU (fused AdamW, SDPA attention):
  tokens/s, and gptune's ratio to it (goal >= 1.3x);
* DDP and FSDP over every visible GPU (when there are >= 2), through ``accelerate launch`` with the shipped
  the shipped ``ddp`` / ``fsdp`` Accelerate configs: tokens/s and scaling against one GPU;
* SST-2 fine-tuning steps, LoRA and full, from the pretraining run's ``final/``;
* ``gptune eval --ppl`` on that model.

Nothing needs the hub: the model is randomly initialised, the tokenizer is a word-level one with exactly
50257 entries written here, the corpus is random words, and SST-2 comes from ``$GPTUNE_DATA/glue`` (or
``--glue-dir``) when present, else a synthetic GLUE-format TSV written here. Throughput does not depend on
what the words are. Targets are reported, not enforced: a row fails when its command fails.

Not yet run on a GPU: this script was written on a CPU-only machine. There every row was dry-run with tiny
shapes on CPU processes (``--cpu-smoke``, hidden); the MFU, Trainer-ratio and multi-GPU numbers come only
from a real GPU run. Without CUDA (and without ``--cpu-smoke``) it exits 2 with one line saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from common import Stat, print_table, row  # noqa: E402
from pretrain import flops_per_token  # noqa: E402

from gptune.distributed import free_port  # noqa: E402

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


GPU = Shape("GPT-2 124M bf16", 12, 768, 12, 1024, 50257, 16, 30, 10, "bf16", 400_000, 30, 128)
SMOKE = Shape("tiny fp32 (CPU smoke)", 2, 64, 2, 64, 1000, 2, 6, 2, "no", 20_000, 4, 32)


def peak_bf16(name: str) -> float | None:
    for key, flops in PEAK_BF16:
        if key.lower() in name.lower():
            return flops
    return None


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
    try:
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"no result within {timeout:.0f} s: {' '.join(cmd[:8])} ...") from None
    log = cwd / "logs" / f"{int(time.time() * 1000)}.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text(" ".join(cmd) + "\n\n" + out.stdout + "\n" + out.stderr)
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        said = [ln for ln in lines if ln.lower().startswith(("error", "[rank0]: error", "runtimeerror"))]
        last = (said or lines or ["(no output)"])[-1]
        raise CheckFailed(f"exit {out.returncode}: {last[:200]} (log {log})")
    return out.stdout


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


def window_rates(run_dir: Path) -> Stat:
    """tokens/s of the logged windows after the first (which holds start-up and compilation)."""
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    rates = [e["tokens_per_s"] for e in events[1:]]
    if not rates:
        raise CheckFailed(f"{run_dir}: fewer than two logged windows")
    return Stat(rates)


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
    timeout: float
    final: Path | None = None
    one_gpu: float | None = None


def gptune(ctx: Ctx, *args: str) -> str:
    return run([sys.executable, "-m", "gptune", *args], cwd=ctx.work, env=ctx.env, timeout=ctx.timeout)


# ----------------------------------------------------------------------------- the checks (each returns rows)


def check_pretrain(ctx: Ctx, compile: bool, trainer: Stat | None) -> list[dict]:
    out = ctx.work / "runs" / f"pretrain-compile-{'on' if compile else 'off'}"
    gptune(ctx, "pretrain", str(ctx.recipe), "--out-dir", str(out), "--set", f"train.compile={str(compile).lower()}")
    rate = window_rates(out)
    if not compile:
        ctx.final, ctx.one_gpu = out / "final", rate.median
    name = f"pretrain {ctx.shape.label}, compile {'on' if compile else 'off'}"
    rows = [row(name, "tokens/s, 1 GPU", rate, trainer, "HF Trainer" if trainer else "-",
                target=f">= {TRAINER_GOAL}x Trainer" if trainer else "", note=ctx.device)]
    peak = peak_bf16(ctx.device)
    if peak:
        fpt = flops_per_token(ctx.shape.n_layer, ctx.shape.n_embd, ctx.shape.vocab, ctx.shape.seq)
        hopper = any(k in ctx.device for k in HOPPER_CLASS)
        rows.append(row(name, "MFU % of peak bf16", Stat([100 * r * fpt / peak for r in rate.values]), None, "-",
                        digits=1, target=f">= {MFU_TARGET:.0f}%" if hopper else "",
                        note=f"peak {peak / 1e12:.0f} TFLOP/s ({ctx.device}), {fpt / 1e9:.2f} GFLOP/token"))
    return rows


def check_trainer(ctx: Ctx) -> Stat:
    spec = json.dumps({"shape": ctx.shape.__dict__, "tokenizer": str(ctx.work / "tokenizer"),
                       "out": str(ctx.work / "runs" / "trainer")})
    out = run([sys.executable, str(Path(__file__).resolve()), "--trainer-worker", spec], cwd=ctx.work, env=ctx.env,
              timeout=ctx.timeout)
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
    return Stat(json.loads(line[len("RESULT "):])["tokens_per_s"])


def check_launch(ctx: Ctx, config: str) -> list[dict]:
    from gptune.recipes import shipped

    n = ctx.gpus
    out = ctx.work / "runs" / f"pretrain-{config}"
    run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(shipped("accelerate")[config]), "--num_processes", str(n), "--main_process_port", str(free_port()),
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
    return [row(f"finetune SST-2 {'LoRA' if lora else 'full'}", "tokens/s (non-pad)", window_rates(out), None, "-",
                note=f"dev accuracy {acc:.3f} after {s.ft_steps} steps (speed check, not a result)")]


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


# ----------------------------------------------------------------------------- the HF Trainer side


def trainer_worker(spec: dict) -> None:
    """The same model, batch and precision through transformers' Trainer; prints RESULT {tokens_per_s}."""
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
    tokens = s.micro * s.seq
    # windows of log_every steps after the first, as on the gptune side
    w = s.log_every
    rates = [tokens * w / (times[i + w] - times[i]) for i in range(w - 1, len(times) - w, w)]
    print("RESULT " + json.dumps({"tokens_per_s": rates}))


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--glue-dir", help="GLUE data in the glue_data layout (default: $GPTUNE_DATA/glue, else synthetic)")
    p.add_argument("--keep", action="store_true", help="Keep the work folder (runs, logs).")
    p.add_argument("--timeout", type=float, default=300, help="Seconds allowed per command.")
    p.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--trainer-worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.trainer_worker:
        trainer_worker(json.loads(a.trainer_worker))
        return 0
    import torch

    if not torch.cuda.is_available() and not a.cpu_smoke:
        print(NO_CUDA, file=sys.stderr)
        return 2
    shape = SMOKE if a.cpu_smoke else GPU
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gptune-gpu-check-"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               GPTUNE_NO_PROGRESS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               GPTUNE_CACHE=str(work / "cache"))
    if a.cpu_smoke:
        gpus, device = 2, "CPU (smoke run, tiny shapes)"  # 2 CPU processes stand in for the multi-GPU rows
        env.setdefault("OMP_NUM_THREADS", "1")  # tiny ops on shared cores: thread hand-offs dominate otherwise
    else:
        gpus, device = torch.cuda.device_count(), torch.cuda.get_device_name(0)
    write_tokenizer(work / "tokenizer", shape.vocab)
    corpus = write_corpus(work / "corpus", shape)
    glue, glue_note = glue_dir(a.glue_dir, work, shape)
    ctx = Ctx(shape, work, env, write_recipe(work / "recipe.yaml", shape, corpus, work / "tokenizer"), corpus, glue,
              gpus, device, a.timeout)
    rows: list[dict] = []
    failed: list[str] = []

    def attempt(name: str, fn, *args):
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - every failure becomes a row; the exit code says it
            failed.append(name)
            rows.append(row(name, "FAILED", float("nan"), None, "-", note=f"{type(e).__name__}: {e}"))
            return None

    trainer = attempt("HF Trainer, same model", check_trainer, ctx)
    for compile in (False, True):
        rows += attempt(f"pretrain compile={compile}", check_pretrain, ctx, compile, trainer) or []
    if gpus >= 2:
        for config in ("ddp", "fsdp"):
            rows += attempt(f"{config} x {gpus}", check_launch, ctx, config) or []
    for lora in (True, False):
        rows += attempt(f"finetune {'lora' if lora else 'full'}", check_finetune, ctx, lora) or []
    rows += attempt("eval --ppl", check_ppl, ctx) or []
    minutes = (time.perf_counter() - t0) / 60
    print_table(rows, f"gptune GPU check: {device}, {gpus} GPU(s), {glue_note}, {minutes:.1f} min")
    if a.keep or failed:
        print(f"work folder (runs and logs): {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
