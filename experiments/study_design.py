"""What the GPT-1 study compares and the data each of its runs reads: the tasks, the settings (a)-(d), the
pretraining variants, the phases; the derived GLUE folders (--quick slices, the held-out train slice of the
lr selection, SST-2 subsamples) and the fine-tuning budget. Shared by ``study.py`` (the driver) and
``study_report.py`` (the report and the estimate), so neither imports the other.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

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
