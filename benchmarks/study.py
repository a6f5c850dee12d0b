"""The GPT-1 study at small scale, second edition: Table 5 with intervals, Fig. 2 left and right, aux LM
vs data size. Drives the gptune CLI; every finished run is one line of OUT/results.jsonl, and a second
invocation skips what that file holds (resume across sittings; --deadline stops starting new runs).

Phases (--phases, in this order; each needs the ones before it):

    pretrain   gptune pretrain recipes/books.yaml on DATA/books/gutenberg, one run per --pretrain-seeds
               (and --variants: base = the recipe; large = 8 layers, 1,200 steps), every --ckpt-every
               steps a checkpoint, all kept (keep_last 1000): the zero-shot phase scores them.
               Random inits (setting c): the same config, HF init, one per --init-seeds.
    select-lr  for every (variant, setting, task) a later phase needs: fine-tune on train minus a held-out slice (seeded,
               --holdout of the rows, at most --holdout-max) at each lr of --lr-grid, score the slice;
               the lr with the best mean held-out score is used for that setting and task. Dev is
               never looked at. The same procedure for every setting, random init included.
    table5     settings x tasks x pretraining (or init) seeds x fine-tuning --seeds: Table 5.
               Budget: --epochs (3) over the full training set; SST-2 capped at --sst2-max-steps.
    transfer   Fig. 2 left: model.transfer_layers=k for k = 0..n_layer-1 on --transfer-tasks (setting
               aux, its selected lr); k = n_layer is the table5 aux run.
    zeroshot   Fig. 2 right: every checkpoint of every pretraining run (step 0: the random init of the
               same seed, setting (c)'s model) scored zero-shot (gptune/evaluation/zeroshot.py) on
               SST-2, CoLA and RTE dev.
    aux-size   SST-2 train subsampled to --aux-sizes rows (seeded), 3 epochs each capped at
               --aux-max-steps, lm_coef in --aux-coefs (lr: the one selected for aux / noaux on SST-2).
    report     OUT/report.md + OUT/plots/*.png (benchmarks/study_report.py).

    python benchmarks/study.py --data $GPTUNE_DATA --out runs/study --jobs 2              # everything
    python benchmarks/study.py --data $GPTUNE_DATA --out runs/study --estimate            # runs + CPU time
    python benchmarks/study.py --out runs/study --phases report                           # tables, plots
    python benchmarks/study.py --data ../shared/data --quick                              # tiny, all phases

Every fine-tune also labels the dev split (gptune predict) so the report can count runs that collapsed
to one class; its final step checkpoint is then deleted (final/ stays), so 500 runs do not fill the disk.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# task -> (glue folder, header row in train.tsv, main metric key, column label)
TASKS = {
    "cola": ("CoLA", False, "matthews_correlation", "CoLA (mcc)"),
    "sst2": ("SST-2", True, "accuracy", "SST-2 (acc)"),
    "mrpc": ("MRPC", True, "f1", "MRPC (F1)"),
    "stsb": ("STS-B", True, "pearson", "STS-B (pc)"),
    "rte": ("RTE", True, "accuracy", "RTE (acc)"),
    "wnli": ("WNLI", True, "accuracy", "WNLI (acc)"),
}
TASK_ORDER = ["cola", "sst2", "mrpc", "stsb", "rte", "wnli"]

SETTINGS = {
    "aux": dict(label="(a) pretrained + aux LM", model="pretrained", sets=["task.lm_coef=0.5"]),
    "noaux": dict(label="(b) pretrained, no aux LM", model="pretrained", sets=["task.lm_coef=0"]),
    "scratch": dict(label="(c) no pretraining (random init)", model="random", sets=["task.lm_coef=0.5"]),
    "plain": dict(label="(d) pretrained, plain input (run_glue style)", model="pretrained",
                  sets=["task.lm_coef=0.5", "task.input_style=plain"]),
}
VARIANTS = {"base": [], "large": ["model.config.n_layer=8", "train.max_steps=1200"]}
PHASES = ["pretrain", "select-lr", "table5", "transfer", "zeroshot", "aux-size", "report"]
ZS_TASKS = ("sst2", "cola", "rte")


def csv_list(text, kind=str) -> list:
    return [kind(x.strip()) for x in str(text).split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("GPTUNE_DATA"),
                   help="data root holding glue/<Task>/ and books/gutenberg/ (default $GPTUNE_DATA)")
    p.add_argument("--out", default="runs/study", help="study folder: results.jsonl, pretrain/, runs/, data/, report.md")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {','.join(PHASES)}")
    p.add_argument("--tasks", default=",".join(TASK_ORDER), help="table5 / select-lr tasks")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {','.join(SETTINGS)}")
    p.add_argument("--variants", default="base", help=f"pretraining variants: {', '.join(VARIANTS)}")
    p.add_argument("--pretrain-recipe", default="books")  # the shipped recipe, by name
    p.add_argument("--pretrain-seeds", default="1,2", help="one pretraining run per seed (recipe seed key)")
    p.add_argument("--init-seeds", default=None, help="random inits for setting (c) (default: --pretrain-seeds; "
                   "init seed s is paired with pretraining seed s)")
    p.add_argument("--seeds", default="1,2,3,4,5", help="fine-tuning seeds")
    p.add_argument("--ckpt-every", type=int, default=100, help="pretraining checkpoint interval (all kept)")
    p.add_argument("--pretrain-set", action="append", default=[], help="extra --set k=v for pretraining")
    p.add_argument("--lr-grid", default="6.25e-5,1.25e-4,2.5e-4,5e-4", help="select-lr: candidate peak lrs")
    p.add_argument("--select-seeds", default="1", help="select-lr: fine-tuning seeds per candidate")
    p.add_argument("--holdout", type=float, default=0.1, help="select-lr: fraction of train rows held out ...")
    p.add_argument("--holdout-max", type=int, default=1000, help="... at most this many")
    p.add_argument("--lr", type=float, default=None,
                   help="skip the selection: one lr for every run (the report says so)")
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the training set (GPT-1: 3)")
    p.add_argument("--sst2-max-steps", type=int, default=1000, help="SST-2's cap (1000 x 32 = 0.48 epochs)")
    p.add_argument("--max-steps", type=int, default=None, help="a cap for every fine-tune (--quick)")
    p.add_argument("--max-length", type=int, default=128, help="task.max_length")
    p.add_argument("--batch", type=int, default=32, help="train.global_batch_size")
    p.add_argument("--micro", type=int, default=16, help="train.micro_batch_size")
    p.add_argument("--transfer-tasks", default="sst2,rte")
    p.add_argument("--aux-sizes", default="1000,4000,16000,all", help="SST-2 training rows (all: 67,349)")
    p.add_argument("--aux-coefs", default="0,0.5", help="task.lm_coef values")
    p.add_argument("--aux-max-steps", type=int, default=3000, help="cap of the aux-size runs (3 epochs otherwise)")
    p.add_argument("--zs-rows", type=int, default=None, help="zeroshot: dev rows per task (default all)")
    p.add_argument("--zs-calibration", type=int, default=1000, help="zeroshot: CoLA train rows for the threshold")
    p.add_argument("--set", dest="extra_sets", action="append", default=[], help="extra --set k=v for every fine-tune")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each when > 1")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per run")
    p.add_argument("--deadline", default=None, help="UTC HH:MM after which no new run starts")
    p.add_argument("--estimate", action="store_true", help="print the planned runs and CPU time; run nothing")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs, run nothing")
    p.add_argument("--in-process", action="store_true", help="run gptune in this process (tests; one job)")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes through every phase into OUT/quick (64-row task slices, a 2-layer model)")
    a = p.parse_args(argv)
    if a.quick:
        a.out = str(Path(a.out) / "quick")
        a.tasks, a.transfer_tasks, a.variants = "rte", "rte", "base"
        a.pretrain_seeds, a.seeds, a.select_seeds, a.lr_grid = "1", "1,2", "1", "1e-3,3e-3"
        a.max_steps, a.max_length, a.batch, a.micro, a.ckpt_every = 2, 32, 8, 4, 2
        a.aux_sizes, a.aux_max_steps, a.zs_rows, a.zs_calibration = "24,all", 2, 16, 16
        a.holdout, a.holdout_max = 0.25, 16
        a.pretrain_set = ["model.vocab_size=400", "model.config.n_layer=2", "model.config.n_head=2",
                          "model.config.n_embd=32", "model.config.n_positions=64", "data.block_size=32",
                          "data.num_proc=1", "train.max_steps=4", "train.micro_batch_size=4",
                          "train.global_batch_size=4", "train.eval_every=0", "train.log_every=2", *a.pretrain_set]
    a.phases = csv_list(a.phases)
    a.tasks, a.settings, a.variants = csv_list(a.tasks), csv_list(a.settings), csv_list(a.variants)
    a.transfer_tasks = csv_list(a.transfer_tasks)
    a.pretrain_seeds, a.seeds = csv_list(a.pretrain_seeds, int), csv_list(a.seeds, int)
    a.init_seeds = csv_list(a.init_seeds, int) if a.init_seeds else list(a.pretrain_seeds)
    a.select_seeds, a.lr_grid = csv_list(a.select_seeds, int), csv_list(a.lr_grid, float)
    a.aux_coefs = csv_list(a.aux_coefs, float)
    bad = ([f"--tasks {t}" for t in a.tasks + a.transfer_tasks if t not in TASKS]
           + [f"--settings {s}" for s in a.settings if s not in SETTINGS]
           + [f"--variants {v}" for v in a.variants if v not in VARIANTS]
           + [f"--phases {x}" for x in a.phases if x not in PHASES])
    if bad:
        p.error("unknown " + ", ".join(bad))
    return a


class StudyError(Exception):
    """A one-line user error (exit code 2)."""


def glue_dir(a) -> Path:
    if not a.data:
        raise StudyError("no data: set --data DIR or $GPTUNE_DATA (a folder holding glue/ and books/gutenberg/)")
    g = Path(a.data).expanduser() / "glue"
    if not g.is_dir():
        raise StudyError(f"--data {a.data}: no glue/ folder in it")
    return g


# ----------------------------------------------------------------------------- derived data
def read_lines(path: Path, header: bool) -> tuple[str | None, list[str]]:
    with open(path, encoding="utf-8-sig") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    return (lines[0], lines[1:]) if header else (None, lines)


def write_task(folder: Path, head: str | None, train: list[str], dev: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("dev", dev)):
        tmp = folder / f".{name}.tsv.tmp"
        tmp.write_text("".join(f"{x}\n" for x in ([head] if head else []) + rows), encoding="utf-8")
        os.replace(tmp, folder / f"{name}.tsv")


def shuffled(items: list, seed: int = 0) -> list:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def derived_glue(a, name: str, tasks, make) -> Path:
    """OUT/data/<name>/<Folder>/{train,dev}.tsv for each task, from make(task, head, train, dev) ->
    (train, dev); written once (a re-run reuses it)."""
    root = Path(a.out) / "data" / name
    src = glue_dir(a)
    for t in tasks:
        folder, header, _, _ = TASKS[t]
        if (root / folder / "dev.tsv").is_file():
            continue
        head, train = read_lines(src / folder / "train.tsv", header)
        _, dev = read_lines(src / folder / "dev.tsv", header)
        new_train, new_dev = make(t, head, train, dev)
        write_task(root / folder, head, new_train, new_dev)
    return root


def task_data(a, tasks) -> Path:
    """The GLUE data the fine-tunes read: the real folders, or (--quick) 64/32-row slices of them."""
    if not a.quick:
        return glue_dir(a)
    return derived_glue(a, "quick", tasks, lambda t, h, tr, dv: (shuffled(tr)[:64], shuffled(dv)[:32]))


def holdout_data(a, tasks) -> Path:
    """Train minus a seeded held-out slice (named dev.tsv, so gptune scores it): lr selection never sees dev."""
    def make(t, head, train, dev):
        rows = shuffled(train, seed=0)
        n = min(a.holdout_max, max(1, round(a.holdout * len(rows))))
        return rows[n:], rows[:n]
    base_name = "holdout" if not a.quick else "quick-holdout"
    if a.quick:  # slice the quick data, not the full files
        q = task_data(a, tasks)
        root = Path(a.out) / "data" / base_name
        for t in tasks:
            folder, header, _, _ = TASKS[t]
            if not (root / folder / "dev.tsv").is_file():
                head, train = read_lines(q / folder / "train.tsv", header)
                tr, dv = make(t, head, train, [])
                write_task(root / folder, head, tr, dv)
        return root
    return derived_glue(a, base_name, tasks, make)


def subsample_data(a, rows: int) -> Path:
    """SST-2 with a seeded subsample of ``rows`` training rows, dev unchanged."""
    src = task_data(a, ["sst2"])
    root = Path(a.out) / "data" / f"sst2-n{rows}"
    if not (root / "SST-2" / "dev.tsv").is_file():
        head, train = read_lines(src / "SST-2" / "train.tsv", True)
        _, dev = read_lines(src / "SST-2" / "dev.tsv", True)
        write_task(root / "SST-2", head, shuffled(train, seed=0)[:rows], dev)
    return root


def train_rows(glue: Path, task: str) -> int:
    folder, header, _, _ = TASKS[task]
    return len(read_lines(glue / folder / "train.tsv", header)[1])


def budget(a, rows: int, cap: int | None) -> tuple[int, int]:
    """(steps to run, steps of the full --epochs budget): what train.epochs gives (drop_last micro-batches,
    accumulation to the global batch), and the same under ``cap`` / --max-steps."""
    full = max(1, math.ceil(a.epochs * math.ceil((rows // a.micro) / max(1, a.batch // a.micro))))
    return min([full, *[c for c in (cap, a.max_steps) if c]]), full


# ----------------------------------------------------------------------------- records
class Records:
    """OUT/results.jsonl: one JSON line per finished run; ``done`` = keys with status ok."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.all = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []

    def ok(self, phase: str | None = None) -> list[dict]:
        latest = {}
        for r in self.all:
            if r.get("status") == "ok" and (phase is None or r["phase"] == phase):
                latest[r["key"]] = r
        return list(latest.values())

    def done(self, key: str) -> bool:
        return any(r["key"] == key and r.get("status") == "ok" for r in self.all)

    def add(self, rec: dict) -> None:
        with self.lock:
            self.all.append(rec)
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


@dataclass
class Job:
    key: str
    run: object  # () -> dict (the record without key/phase/status bookkeeping)
    describe: str
    steps: int = 0
    cost_key: tuple = ()


def gptune_cmd(args: list[str]) -> str:
    return shlex.join(["gptune", *args])


def execute(a, args: list[str], log: Path) -> tuple[int, float]:
    """Run ``gptune ARGS`` (a subprocess, or in this process with --in-process); (exit code, seconds)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if a.in_process:
        from gptune.cli import main as gptune_main

        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            try:
                gptune_main(list(args))
                rc = 0
            except SystemExit as e:
                rc = int(e.code or 0)
        return rc, time.time() - t0
    env = dict(os.environ)
    threads = a.threads or (1 if a.jobs > 1 else None)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    with open(log, "w") as f:
        rc = subprocess.call([sys.executable, "-m", "gptune", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    return rc, time.time() - t0


# ----------------------------------------------------------------------------- models
def pretrain_dir(a, variant: str, seed: int) -> Path:
    return Path(a.out) / "pretrain" / f"{variant}-p{seed}"


def books_dir(a) -> Path:
    """DATA/books/gutenberg, or (--quick) the first 100 kB of its first book."""
    if not a.data:
        raise StudyError("no data: set --data DIR or $GPTUNE_DATA (pretraining reads DIR/books/gutenberg)")
    books = Path(a.data).expanduser() / "books" / "gutenberg"
    if not a.quick:
        return books
    out = Path(a.out) / "data" / "quick-books"
    if not (out / "book.txt").is_file():
        first = sorted(p for p in books.iterdir() if p.is_file())[0]
        out.mkdir(parents=True, exist_ok=True)
        (out / "book.txt").write_bytes(first.read_bytes()[:100_000])
    return out


def pretrain_job(a, variant: str, seed: int) -> Job:
    run = pretrain_dir(a, variant, seed)
    sets = [f"seed={seed}", f"data.path={books_dir(a)}", "data.download_books=false", f"train.save_every={a.ckpt_every}",
            "train.keep_last=1000", *VARIANTS[variant], *a.pretrain_set]
    def run_it() -> dict:
        resume = ["--resume", "auto"] if any(run.glob("step-*")) else ["--overwrite"]
        args = ["pretrain", a.pretrain_recipe, "--out-dir", str(run), *resume]
        for kv in sets:
            args += ["--set", kv]
        rc, wall = execute(a, args, Path(a.out) / "logs" / f"pretrain-{variant}-p{seed}.log")
        metrics = run / "final" / "metrics.json"
        rec = {"variant": variant, "seed": seed, "run_dir": str(run), "wall_s": round(wall, 1), "rc": rc,
               "command": gptune_cmd(args)}
        if rc == 0 and metrics.is_file():
            rec.update(status="ok", metrics=json.loads(metrics.read_text()))
        return rec
    return Job(f"pretrain/{variant}-p{seed}", run_it, f"pretrain {variant} seed {seed}", cost_key=("pretrain", variant))


_INIT_LOCK = threading.Lock()


def random_init_model(a, variant: str, seed: int) -> Path:
    """Setting (c): the pretrained model's config (from the pretraining run of the same seed) and tokenizer,
    weights from ``from_config`` after ``torch.manual_seed(seed)`` (HF init). Built once (concurrent
    runs wait for the first)."""
    with _INIT_LOCK:
        return _random_init_model(a, variant, seed)


def _random_init_model(a, variant: str, seed: int) -> Path:
    folder = Path(a.out) / "random-init" / f"{variant}-r{seed}"
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = pretrain_dir(a, variant, seed if seed in a.pretrain_seeds else a.pretrain_seeds[0]) / "final"
    if not (src / "config.json").is_file():
        raise StudyError(f"{src}: no pretrained model yet; run the pretrain phase first")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src))
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    (tmp / "random-init.json").write_text(json.dumps({"config_from": str(src), "seed": seed}, indent=2))
    os.replace(tmp, folder)
    return folder


def model_for(a, setting: str, variant: str, seed: int) -> tuple[str, Path]:
    """(pre id, model folder) of a setting: pretraining seed s, or random init s."""
    if SETTINGS[setting]["model"] == "random":
        return f"{variant}-r{seed}", random_init_model(a, variant, seed)
    final = pretrain_dir(a, variant, seed) / "final"
    if not (final / "config.json").is_file():
        raise StudyError(f"{final}: no pretrained model yet; run the pretrain phase first")
    return f"{variant}-p{seed}", final


# ----------------------------------------------------------------------------- fine-tuning
def finetune_job(a, *, phase: str, key: str, task: str, setting: str, variant: str,
                 pre_seed: int, seed: int, data: Path, steps: int, full_steps: int, lr: float, lr_source: str,
                 extra_sets=(), fields=None, tag: str = "") -> Job:
    def run_it() -> dict:
        pre, model = model_for(a, setting, variant, pre_seed)
        run_dir = Path(a.out) / "runs" / phase / f"{setting}-{task}-{pre}-s{seed}{tag}"
        sets = [f"task.max_length={a.max_length}", f"train.epochs={a.epochs:g}",
                f"train.global_batch_size={a.batch}", f"train.micro_batch_size={a.micro}",
                "task.eval_every_epoch=false", "task.keep_best=false", "train.eval_every=0", "train.save_every=0",
                "train.log_every=10", f"train.lr={lr:g}",
                *SETTINGS[setting]["sets"], *extra_sets, *a.extra_sets]
        if steps < full_steps:  # a cap: say it in the record
            sets.append(f"train.max_steps={steps}")
        args = ["finetune", "--task", task, "--full", "--model", str(model), "--data-dir", str(data),
                "--seed", str(seed), "--out-dir", str(run_dir), "--overwrite"]
        for kv in sets:
            args += ["--set", kv]
        log = Path(a.out) / "logs" / phase / f"{run_dir.name}.log"
        rc, wall = execute(a, args, log)
        rec = {"setting": setting, "task": task, "variant": variant, "pre": pre, "pre_seed": pre_seed, "seed": seed,
               "unit": f"{pre_seed}-{seed}", "lr": lr, "lr_source": lr_source, "steps_planned": steps,
               "full_budget_steps": full_steps, "wall_s": round(wall, 1), "rc": rc, "command": gptune_cmd(args),
               "run_dir": str(run_dir), **(fields or {})}
        metrics = run_dir / "final" / "metrics.json"
        if rc != 0 or not metrics.is_file():
            return rec
        m = json.loads(metrics.read_text())
        rec.update(status="ok", metric=TASKS[task][2], value=m.get(TASKS[task][2]), steps=m.get("step"), metrics=m)
        for ckpt in run_dir.glob("step-*"):  # every run ends with a resumable checkpoint: final/ is what the study keeps
            shutil.rmtree(ckpt, ignore_errors=True)
        preds = run_dir / "dev-predictions.tsv"
        pargs = ["predict", "--model", str(run_dir / "final"), "--data-dir", str(data), "--split", "validation",
                 "--out", str(preds)]
        prc, pwall = execute(a, pargs, log.with_suffix(".predict.log"))
        if prc == 0 and preds.is_file():
            with open(preds, encoding="utf-8") as f:
                labels = [r[1] for r in list(csv.reader(f, delimiter="\t"))[1:] if len(r) > 1]
            if task == "stsb":
                rec["collapsed"] = None  # regression: no classes to collapse to
            else:
                counts = {k: labels.count(k) for k in sorted(set(labels))}
                rec.update(pred_counts=counts, collapsed=len(counts) == 1)
            rec["predict_wall_s"] = round(pwall, 1)
        return rec
    return Job(key, run_it, f"{phase} {setting} {task} {variant} pre {pre_seed} seed {seed}{tag} lr {lr:g}",
               steps=steps, cost_key=(setting, task, variant))


def selected_lr(a, records: Records, variant: str, setting: str, task: str) -> tuple[float, str]:
    """(lr, where it came from): --lr, else the grid value with the best mean held-out score."""
    if a.lr is not None:
        return a.lr, "fixed (--lr)"
    runs = [r for r in records.ok("select-lr") if (r["variant"], r["setting"], r["task"]) == (variant, setting, task)]
    by_lr: dict[float, list[float]] = {}
    for r in runs:
        if r["lr"] in a.lr_grid and r["seed"] in a.select_seeds:
            by_lr.setdefault(r["lr"], []).append(r["value"])
    full = [lr for lr in a.lr_grid if len(by_lr.get(lr, [])) == len(a.select_seeds)]
    if len(full) < len(a.lr_grid):
        raise StudyError(f"no lr selected yet for {variant}/{setting}/{task}: run the select-lr phase first (or pass --lr)")
    best = max(full, key=lambda lr: (sum(by_lr[lr]) / len(by_lr[lr]), -lr))  # ties: the smaller lr
    return best, "held-out train slice"


def lr_needs(a) -> list[tuple[str, str]]:
    """(setting, task) pairs whose lr the requested phases look up."""
    needs = []
    if "table5" in a.phases:
        needs += [(s, t) for s in a.settings for t in a.tasks]
    if "transfer" in a.phases:
        needs += [("aux", t) for t in a.transfer_tasks]
    if "aux-size" in a.phases:
        needs += [("aux" if c > 0 else "noaux", "sst2") for c in a.aux_coefs]
    return list(dict.fromkeys(needs))


def select_jobs(a, records: Records) -> list[Job]:
    if a.lr is not None:
        return []
    jobs = []
    needs = lr_needs(a)
    data = holdout_data(a, sorted({t for _, t in needs}))
    for variant in a.variants:
        for setting, task in needs:
            pre_seed = (a.init_seeds if SETTINGS[setting]["model"] == "random" else a.pretrain_seeds)[0]
            steps, full = budget(a, train_rows(data, task), a.sst2_max_steps if task == "sst2" else None)
            for lr in a.lr_grid:
                for seed in a.select_seeds:
                    key = f"select-lr/{variant}/{setting}/{task}/lr{lr:g}/s{seed}"
                    jobs.append(finetune_job(a, phase="select-lr", key=key, task=task, setting=setting,
                                             variant=variant, pre_seed=pre_seed, seed=seed, data=data, steps=steps,
                                             full_steps=full, lr=lr, lr_source="grid", tag=f"-lr{lr:g}"))
    return jobs


def table5_jobs(a, records: Records) -> list[Job]:
    jobs = []
    data = task_data(a, a.tasks)
    for variant in a.variants:
        for seed in a.seeds:
            for task in a.tasks:
                steps, full = budget(a, train_rows(data, task), a.sst2_max_steps if task == "sst2" else None)
                for setting in a.settings:
                    pre_seeds = a.init_seeds if SETTINGS[setting]["model"] == "random" else a.pretrain_seeds
                    for ps in pre_seeds:
                        key = f"table5/{variant}/{setting}/{task}/{ps}/s{seed}"
                        jobs.append(_lazy_lr_job(a, records, phase="table5", key=key, task=task, setting=setting,
                                                 variant=variant, pre_seed=ps, seed=seed, data=data, steps=steps,
                                                 full_steps=full))
    return jobs


def _lazy_lr_job(a, records, *, setting, task, variant, **kw) -> Job:
    """A fine-tune whose lr is looked up when it starts (after select-lr has run in the same invocation)."""
    job = finetune_job(a, setting=setting, task=task, variant=variant, lr=float("nan"), lr_source="",
                       **kw)
    def run_it() -> dict:
        lr, source = selected_lr(a, records, variant, setting, task)
        return finetune_job(a, setting=setting, task=task, variant=variant, lr=lr, lr_source=source,
                            **kw).run()
    job.run = run_it
    job.describe = job.describe.replace(" lr nan", "")
    return job


def n_layer(a, variant: str) -> int:
    final = pretrain_dir(a, variant, a.pretrain_seeds[0]) / "final" / "config.json"
    if final.is_file():
        return int(json.loads(final.read_text())["n_layer"])
    from gptune.recipes import load_recipe

    r = load_recipe(a.pretrain_recipe, {}, [*VARIANTS[variant], *a.pretrain_set])
    return r.model.config.n_layer


def transfer_jobs(a, records: Records) -> list[Job]:
    jobs = []
    data = task_data(a, a.transfer_tasks)
    for variant in a.variants:
        for k in range(n_layer(a, variant)):  # k = n_layer is the table5 aux run
            for seed in a.seeds:
                for task in a.transfer_tasks:
                    steps, full = budget(a, train_rows(data, task), a.sst2_max_steps if task == "sst2" else None)
                    for ps in a.pretrain_seeds:
                        key = f"transfer/{variant}/k{k}/{task}/{ps}/s{seed}"
                        jobs.append(_lazy_lr_job(a, records, phase="transfer", key=key, task=task, setting="aux",
                                                 variant=variant, pre_seed=ps, seed=seed, data=data, steps=steps,
                                                 full_steps=full, extra_sets=[f"model.transfer_layers={k}"],
                                                 fields={"k": k}, tag=f"-k{k}"))
    return jobs


def aux_size_jobs(a, records: Records) -> list[Job]:
    jobs = []
    full_data = task_data(a, ["sst2"])
    total = train_rows(full_data, "sst2")
    sizes = sorted({total if s == "all" else min(int(s), total) for s in csv_list(a.aux_sizes)})
    for variant in a.variants:
        for rows in sizes:
            data = full_data if rows == total else subsample_data(a, rows)
            steps, full = budget(a, rows, a.aux_max_steps)
            for coef in a.aux_coefs:
                setting = "aux" if coef > 0 else "noaux"
                for seed in a.seeds:
                    for ps in a.pretrain_seeds:
                        key = f"aux-size/{variant}/n{rows}/lm{coef:g}/{ps}/s{seed}"
                        jobs.append(_lazy_lr_job(a, records, phase="aux-size", key=key, task="sst2", setting=setting,
                                                 variant=variant, pre_seed=ps, seed=seed, data=data, steps=steps,
                                                 full_steps=full, extra_sets=[f"task.lm_coef={coef:g}"],
                                                 fields={"rows": rows, "lm_coef": coef}, tag=f"-n{rows}-lm{coef:g}"))
    return jobs


# ----------------------------------------------------------------------------- zero-shot
def zeroshot_jobs(a, records: Records) -> list[Job]:
    # resolve transformers' lazy attributes here, in the main thread: the jobs run in threads (--jobs), and a
    # first import racing in two of them once failed with "cannot import name 'AutoModelForCausalLM'"
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    jobs = []
    for variant in a.variants:
        for ps in a.pretrain_seeds:
            run = pretrain_dir(a, variant, ps)
            steps = sorted(p.name for p in run.glob("step-*") if (p / "model.safetensors").is_file())
            metrics = run / "final" / "metrics.json"
            last = json.loads(metrics.read_text())["step"] if metrics.is_file() else None
            # final/ is scored only when no checkpoint holds the same step (before pretraining: init and final)
            points = ["init", *steps] + ([] if last is not None and f"step-{last:06d}" in steps else ["final"])
            for point in points:
                key = f"zeroshot/{variant}-p{ps}/{point}"
                jobs.append(Job(key, lambda v=variant, s=ps, pt=point: zeroshot_point(a, v, s, pt),
                                f"zeroshot {variant} pre {ps} {point}", cost_key=("zeroshot",)))
    return jobs


def zeroshot_point(a, variant: str, ps: int, point: str) -> dict:
    """Score one checkpoint (``init``: the random init of the same seed, step 0) on the zero-shot tasks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gptune.data.glue import read_glue_split
    from gptune.evaluation import zeroshot as zs
    from gptune.tasks import get_task

    run = pretrain_dir(a, variant, ps)
    final = run / "final"
    if a.threads or a.jobs > 1:
        torch.set_num_threads(a.threads or 1)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(final)
    if point == "final":
        model, step = AutoModelForCausalLM.from_pretrained(final).eval(), json.loads((final / "metrics.json").read_text())["step"]
    elif point == "init":
        model, step = AutoModelForCausalLM.from_pretrained(random_init_model(a, variant, ps)).eval(), 0
    else:
        model, step = zs.load_checkpoint_lm(run / point, final), int(point.split("-")[1])
    from gptune.recipes import load_recipe

    recipe = load_recipe(run / "recipe.yaml", {}, [])
    tokens = step * recipe.train.global_batch_size * recipe.data.block_size  # packed blocks: every token counts
    data = task_data(a, ZS_TASKS)
    results = {}
    for t in ZS_TASKS:
        task = get_task(t)
        dev = read_glue_split(task, data, "validation").rows
        dev = shuffled(dev)[: a.zs_rows] if a.zs_rows else dev
        cal = shuffled(read_glue_split(task, data, "train").rows)[: a.zs_calibration] if t == "cola" else ()
        results[t] = zs.zero_shot(model, tok, t, dev, calibration=cal).to_dict()
    return {"status": "ok", "variant": variant, "pre_seed": ps, "point": point, "step": step, "tokens": tokens,
            "results": results, "wall_s": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------- running
def parse_deadline(text: str | None) -> float | None:
    if not text:
        return None
    hh, mm = map(int, text.split(":"))
    now = time.gmtime()
    return time.mktime((now.tm_year, now.tm_mon, now.tm_mday, hh, mm, 0, 0, 0, 0)) - time.timezone


def run_jobs(a, records: Records, phase: str, jobs: list[Job]) -> None:
    todo = [j for j in jobs if not records.done(j.key)]
    print(f"[{phase}] {len(jobs)} runs planned, {len(jobs) - len(todo)} already in {records.path}, {len(todo)} to run",
          flush=True)
    deadline = parse_deadline(a.deadline)

    def one(job: Job) -> None:
        if deadline is not None and time.time() > deadline:
            print(f"  deadline {a.deadline} UTC passed: not starting {job.describe}", flush=True)
            return
        print(f"  {job.describe}", flush=True)
        if a.dry_run:
            return
        try:
            rec = job.run()
        except StudyError as e:
            print(f"  skipped: {e}", flush=True)
            return
        rec = {"phase": phase, "key": job.key, "status": rec.pop("status", "failed"), **rec,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        records.add(rec)
        value = f" {rec['metric']} {rec['value']:.4f}" if rec.get("value") is not None else ""
        print(f"    {rec['status']}{value} ({rec.get('wall_s', 0):.0f} s)", flush=True)

    if a.jobs > 1 and not a.in_process:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(a.jobs) as pool:  # each worker waits on its own gptune process, in plan order
            list(pool.map(one, todo))
    else:
        for job in todo:
            one(job)


PLANNERS = {"select-lr": select_jobs, "table5": table5_jobs, "transfer": transfer_jobs,
            "zeroshot": zeroshot_jobs, "aux-size": aux_size_jobs}


def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    records = Records(out / "results.jsonl")
    try:
        if a.estimate:
            from study_report import estimate

            print(estimate(a, {p: planner for p, planner in PLANNERS.items()}, records))
            return 0
        for phase in a.phases:
            if phase == "pretrain":
                run_jobs(a, records, phase, [pretrain_job(a, v, s) for v in a.variants for s in a.pretrain_seeds])
            elif phase == "report":
                if a.dry_run:
                    continue
                from study_report import write_report

                print(write_report(a, records))
            else:
                run_jobs(a, records, phase, PLANNERS[phase](a, records))
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import study  # one module object: study_report imports `study`, and its StudyError must be this one

    sys.exit(study.main())
