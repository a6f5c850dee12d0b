"""GPT-1 Table 5 at laptop scale: does pretraining (and the auxiliary LM loss, and GPT-1's input
transformation) help a small GPT fine-tuned on GLUE?

Drives the gptune CLI, one fine-tune at a time:

    gptune finetune --task T --full|--lora --model M --data-dir D --seed S --out-dir O --set ...

then reads O/final/metrics.json. Settings (rows of the table):

    aux        (a) pretrained, full fine-tuning, auxiliary LM loss (task.lm_coef=0.5)   -- GPT-1
    aux-lora   (a) the same with LoRA (r 8; lr from lora.lr)
    noaux      (b) pretrained, full, no auxiliary LM loss (task.lm_coef=0)
    scratch    (c) no pretraining: a randomly initialised model of the same config + tokenizer
                   (built once with save_pretrained into OUT/random-init), full, lm_coef=0.5
    plain      (d) pretrained, full, run_glue-style input (task.input_style=plain: no special
                   tokens, last-token pooling), lm_coef=0.5

Each finished run is appended to OUT/results.jsonl (setting, task, seed, metrics, steps, wall
time, exact command), so a second invocation resumes where the first stopped. At the end:
OUT/table.md (Table 5-shaped: settings x tasks + average, mean +- std over seeds, the paper's
rows beside) and OUT/plots/<task>.png (``gptune plot`` over the seed-1 runs of each setting).

    python benchmarks/study.py --quick                          # a few minutes: does it still run?
    python benchmarks/study.py --pretrained /work/exp/runs/books/final --seeds 1
    python benchmarks/study.py --seeds 1,2,3 --tasks rte,mrpc,wnli,stsb,cola
    python benchmarks/study.py --report-only                    # table + plots from results.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
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
# cheapest first: if the time runs out, the finished tasks have every setting
DEFAULT_TASKS = ["wnli", "cola", "sst2", "rte", "stsb", "mrpc"]

SETTINGS = {
    "aux": dict(label="(a) pretrained + aux LM, full", mode="--full", model="pretrained",
                sets=["task.lm_coef=0.5"]),
    "aux-lora": dict(label="(a) pretrained + aux LM, LoRA", mode="--lora", model="pretrained",
                     sets=["task.lm_coef=0.5"]),
    "noaux": dict(label="(b) pretrained, no aux LM, full", mode="--full", model="pretrained",
                  sets=["task.lm_coef=0"]),
    "scratch": dict(label="(c) no pretraining (random init), full", mode="--full", model="random",
                    sets=["task.lm_coef=0.5"]),
    "plain": dict(label="(d) pretrained, plain input (run_glue style), full", mode="--full",
                  model="pretrained", sets=["task.lm_coef=0.5", "task.input_style=plain"]),
}
DEFAULT_SETTINGS = ["aux", "noaux", "scratch", "plain"]  # the four; aux-lora on request

# Radford et al. 2018, Table 5 (ablations; x100). No WNLI column in the paper. Avg8 is the paper's
# average over its 8 columns (CoLA SST2 MRPC STSB QQP MNLI QNLI RTE).
PAPER = {
    "aux": ("Transformer w/ aux LM (full)", {"cola": 45.4, "sst2": 91.3, "mrpc": 82.3, "stsb": 82.0, "rte": 56.0}, 74.7),
    "noaux": ("Transformer w/o aux LM", {"cola": 47.9, "sst2": 92.0, "mrpc": 84.9, "stsb": 83.2, "rte": 54.4}, 75.0),
    "scratch": ("Transformer w/o pre-training", {"cola": 18.9, "sst2": 84.0, "mrpc": 79.4, "stsb": 30.9, "rte": 53.8}, 59.9),
}


def default_glue_dir() -> str:
    base = os.environ.get("GPTUNE_DATA")
    return str(Path(base) / "glue") if base else "/work/shared/data/glue"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=default_glue_dir(), help="GLUE folder in the glue_data layout (default $GPTUNE_DATA/glue or /work/shared/data/glue)")
    p.add_argument("--pretrained", default="/work/exp/runs/books/final", help="pretrained model folder (RUN/final)")
    p.add_argument("--out", default="/work/exp/study", help="study folder: results.jsonl, runs/, logs/, table.md, plots/")
    p.add_argument("--seeds", default="1", help="comma list, e.g. 1,2,3")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"comma list of {','.join(TASKS)}")
    p.add_argument("--settings", default=",".join(DEFAULT_SETTINGS), help=f"comma list of {','.join(SETTINGS)}")
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the training set (GPT-1: 3) ...")
    p.add_argument("--max-steps", type=int, default=150, help="... capped at this many optimizer steps")
    p.add_argument("--max-length", type=int, default=128, help="task.max_length")
    p.add_argument("--batch", type=int, default=32, help="train.global_batch_size")
    p.add_argument("--micro", type=int, default=16, help="train.micro_batch_size")
    p.add_argument("--lr", type=float, default=2.5e-4,
                   help="peak lr of the full fine-tunes (train.lr). GPT-1 fine-tuned at 1/4 of its pretraining lr "
                        "(6.25e-5 vs 2.5e-4); the books recipe pretrains at 1e-3, so 2.5e-4 keeps that ratio. "
                        "LoRA runs keep lora.lr")
    p.add_argument("--jobs", type=int, default=1,
                   help="fine-tunes run at once, each with cores/jobs threads (2 single-thread runs use 2 small-model "
                        "cores better than one 2-thread run)")
    p.add_argument("--set", dest="extra_sets", action="append", default=[], help="extra --set k=v for every run")
    p.add_argument("--order", choices=["task", "setting"], default="task",
                   help="inner loops: for each seed, tasks then settings (task) or settings then tasks (setting)")
    p.add_argument("--threads", default=None,
                   help="OMP_NUM_THREADS for each run: a number (1 avoids oversubscription on a shared machine), "
                        "or 'auto': all cores when they are idle just before the run, else 1")
    p.add_argument("--deadline", default=None, help="UTC time HH:MM after which no new run starts")
    p.add_argument("--quick", action="store_true", help="smoke test: wnli+rte, 1 seed, 4 steps, max_length 64, OUT/quick")
    p.add_argument("--report-only", action="store_true", help="only write table.md and plots from results.jsonl")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = p.parse_args(argv)
    if a.quick:
        a.out = str(Path(a.out) / "quick")
        a.tasks, a.seeds, a.max_steps, a.max_length = "wnli,rte", "1", 4, 64
    a.seeds = [int(s) for s in str(a.seeds).split(",") if s.strip()]
    a.tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    a.settings = [s.strip() for s in a.settings.split(",") if s.strip()]
    bad = [t for t in a.tasks if t not in TASKS] + [s for s in a.settings if s not in SETTINGS]
    if bad:
        p.error(f"unknown task/setting: {', '.join(bad)}")
    return a


# ----------------------------------------------------------------------------- planning
def train_rows(glue: Path, task: str) -> int:
    folder, header, _, _ = TASKS[task]
    with open(glue / folder / "train.tsv", encoding="utf-8-sig") as f:
        n = sum(1 for line in f if line.strip())
    return n - (1 if header else 0)


def planned_steps(rows: int, a) -> int:
    """What train.epochs would give (drop_last micro-batches, accumulation to the global batch), capped."""
    accum = max(1, a.batch // a.micro)
    per_epoch = math.ceil((rows // a.micro) / accum)
    return max(1, min(a.max_steps, math.ceil(a.epochs * per_epoch)))


def random_init_model(pretrained: Path, out: Path) -> Path:
    """Setting (c): a randomly initialised model with the pretrained model's config and tokenizer.

    AutoConfig of the pretrained folder -> AutoModelForCausalLM.from_config (HF init, N(0, 0.02), seed
    0) -> save_pretrained, plus the pretrained tokenizer. Without RUN/final yet (pretraining still
    running), the config comes from RUN/recipe.yaml and the tokenizer from RUN/tokenizer, as
    gptune pretrain builds them."""
    folder = out / "random-init"
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (pretrained / "config.json").is_file():
        config = AutoConfig.from_pretrained(pretrained)
        tok = AutoTokenizer.from_pretrained(pretrained)
        source = str(pretrained)
    else:
        run = pretrained.parent
        from gptune.modeling.gpt import random_config
        from gptune.recipes import load_recipe

        recipe = load_recipe(run / "recipe.yaml", {}, [])
        tok = AutoTokenizer.from_pretrained(run / "tokenizer")
        config = random_config(recipe.model, len(tok), bos_id=tok.bos_token_id, eos_id=tok.eos_token_id)
        source = f"{run}/recipe.yaml + {run}/tokenizer"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "random-init.json").write_text(json.dumps({"config_from": source, "seed": 0,
                                                      "params": sum(p.numel() for p in model.parameters())}, indent=2))
    tmp.rename(folder)
    print(f"random-init model: {folder} (config from {source})", flush=True)
    return folder


def command(a, setting: str, task: str, seed: int, steps: int, model: str, run_dir: Path) -> list[str]:
    s = SETTINGS[setting]
    sets = [f"task.max_length={a.max_length}", f"train.epochs={a.epochs:g}", f"train.max_steps={steps}",
            f"train.global_batch_size={a.batch}", f"train.micro_batch_size={a.micro}",
            "task.eval_every_epoch=false", "train.save_every=0", "train.log_every=5", *s["sets"]]
    if s["mode"] == "--full":
        sets.append(f"train.lr={a.lr:g}")
    sets += a.extra_sets
    cmd = ["gptune", "finetune", "--task", task, s["mode"], "--model", model, "--data-dir", a.data,
           "--seed", str(seed), "--out-dir", str(run_dir), "--overwrite"]
    for kv in sets:
        cmd += ["--set", kv]
    return cmd


# ----------------------------------------------------------------------------- results
def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def done_keys(results: list[dict]) -> set:
    return {(r["setting"], r["task"], r["seed"]) for r in results if r.get("status") == "ok"}


def idle_cores(seconds: float = 2.0) -> float:
    """Idle cores over a short window (from /proc/stat); the number of cores when it cannot be read."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)
    try:
        i0, t0 = snap()
        time.sleep(seconds)
        i1, t1 = snap()
        return (os.cpu_count() or 1) * (i1 - i0) / max(1, t1 - t0)
    except OSError:
        return float(os.cpu_count() or 1)


def pick_threads(spec) -> int | None:
    if spec in (None, ""):
        return None
    if str(spec) != "auto":
        return int(spec)
    cores = os.cpu_count() or 1
    return cores if idle_cores() > cores - 0.5 else 1


_RESULTS_LOCK = threading.Lock()


def run_one(a, setting, task, seed, steps, model, out: Path) -> dict:
    run_dir = out / "runs" / setting / f"{task}-s{seed}"
    cmd = command(a, setting, task, seed, steps, model, run_dir)
    line = shlex.join(cmd)
    print(f"\n$ {line}", flush=True)
    if a.dry_run:
        return {}
    log = out / "logs" / f"{setting}-{task}-s{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    env = dict(os.environ)
    threads = pick_threads(a.threads)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    wall = time.time() - t0
    rec = {"setting": setting, "task": task, "seed": seed, "steps": steps, "wall_s": round(wall, 1),
           "command": line, "threads": threads, "run_dir": str(run_dir), "log": str(log), "model": model, "rc": rc,
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    metrics_file = run_dir / "final" / "metrics.json"
    if rc == 0 and metrics_file.is_file():
        m = json.loads(metrics_file.read_text())
        key = TASKS[task][2]
        rec.update(status="ok", metric=key, value=m.get(key), metrics=m)
        train_events = [e for e in load_results(run_dir / "metrics.jsonl") if e.get("event") == "train"]
        if train_events:
            rec["train_tokens"] = train_events[-1].get("tokens")
            rec["last_task_loss"] = train_events[-1].get("task_loss")
        print(f"  {setting} {task} seed {seed}: {key} {rec['value']:.4f}  ({wall:.0f} s)", flush=True)
    else:
        rec["status"] = "failed"
        print(f"  FAILED (rc {rc}, {wall:.0f} s): see {log}", flush=True)
    with _RESULTS_LOCK, open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


# ----------------------------------------------------------------------------- report
def _fmt(vals: list[float]) -> str:
    if not vals:
        return "–"
    m = 100 * statistics.mean(vals)
    if len(vals) == 1:
        return f"{m:.1f}"
    return f"{m:.1f} ± {100 * statistics.stdev(vals):.1f}"


def report(a, out: Path) -> str:
    results = [r for r in load_results(out / "results.jsonl") if r.get("status") == "ok"]
    latest = {}
    for r in results:  # a re-run of the same (setting, task, seed) replaces the earlier one
        latest[(r["setting"], r["task"], r["seed"])] = r
    results = list(latest.values())
    tasks = [t for t in DEFAULT_TASKS if any(r["task"] == t for r in results)]
    order = ["cola", "sst2", "mrpc", "stsb", "rte", "wnli"]
    tasks = [t for t in order if t in tasks]
    settings = [s for s in SETTINGS if any(r["setting"] == s for r in results)]
    lines = ["| setting | " + " | ".join(TASKS[t][3] for t in tasks) + " | avg (all shown) | avg (5, no WNLI) | seeds |",
             "|---|" + "---:|" * (len(tasks) + 3)]
    for s in settings:
        cells, per_seed = [], {}
        seeds_seen = set()
        for t in tasks:
            vals = [r["value"] for r in results if r["setting"] == s and r["task"] == t]
            for r in results:
                if r["setting"] == s and r["task"] == t:
                    per_seed.setdefault(r["seed"], {})[t] = r["value"]
                    seeds_seen.add(r["seed"])
            cells.append(_fmt(vals) + (f" (n={len(vals)})" if len(vals) not in (0, max_n(results, s)) else ""))
        # averages: per seed over the tasks that seed completed for every task shown, then mean +- std
        full = [v for v in per_seed.values() if all(t in v for t in tasks)]
        avg_all = [statistics.mean(v[t] for t in tasks) for v in full]
        five = [t for t in tasks if t != "wnli"]
        full5 = [v for v in per_seed.values() if all(t in v for t in five)]
        avg5 = [statistics.mean(v[t] for t in five) for v in full5] if five else []
        lines.append(f"| {SETTINGS[s]['label']} | " + " | ".join(cells) + f" | {_fmt(avg_all)} | {_fmt(avg5)} | "
                     + ",".join(map(str, sorted(seeds_seen))) + " |")
    try:
        base = majority_baseline(Path(a.data))
        five = [base[t] for t in tasks if t != "wnli"]
        lines.append("| majority class (reference, no model) | " + " | ".join(f"{base[t]:.1f}" for t in tasks)
                     + f" | {statistics.mean(base[t] for t in tasks):.1f} | {statistics.mean(five):.1f} | – |")
    except (OSError, IndexError):
        pass
    lines.append("| *paper, Table 5 (117M, BooksCorpus; x100)* |" + " |" * (len(tasks) + 3))
    for name, vals, avg8 in PAPER.values():
        cells = [f"{vals[t]:.1f}" if t in vals else "n/a" for t in tasks]
        five = [vals[t] for t in ("cola", "sst2", "mrpc", "stsb", "rte")]
        lines.append(f"| paper: {name} | " + " | ".join(cells) + f" | (8 tasks: {avg8:.1f}) | {statistics.mean(five):.1f} | – |")
    table = "\n".join(lines)

    wl = ["| setting | " + " | ".join(t for t in tasks) + " | total |", "|---|" + "---:|" * (len(tasks) + 1)]
    for s in settings:
        row, tot = [], 0.0
        for t in tasks:
            w = [r["wall_s"] for r in results if r["setting"] == s and r["task"] == t]
            st = [r["steps"] for r in results if r["setting"] == s and r["task"] == t]
            row.append(f"{statistics.mean(w):.0f} s / {st[0]} st" if w else "–")
            tot += sum(w)
        wl.append(f"| {s} | " + " | ".join(row) + f" | {tot / 60:.1f} min |")
    walls = "\n".join(wl)
    text = (f"# Study results ({len(results)} runs)\n\nDev-set main metric x100, mean ± std over seeds "
            f"(a single number: one seed).\n\n{table}\n\nWall time per run (mean over seeds) / optimizer steps:\n\n{walls}\n")
    (out / "table.md").write_text(text)
    return text


def majority_baseline(glue: Path) -> dict[str, float]:
    """Dev score of always predicting the most frequent training label (STS-B: a constant, Pearson
    undefined, counted as 0). x100."""
    import csv
    from collections import Counter

    label_col = {"cola": 1, "sst2": -1, "mrpc": 0, "rte": -1, "wnli": -1}
    out = {"stsb": 0.0}
    for t, col in label_col.items():
        folder, header, metric, _ = TASKS[t]

        def read(split, folder=folder, header=header, col=col):
            with open(glue / folder / f"{split}.tsv", encoding="utf-8-sig") as f:
                rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            return [r[col] for r in (rows[1:] if header else rows) if r]

        major = Counter(read("train")).most_common(1)[0][0]
        dev = read("dev")
        if metric == "accuracy":
            out[t] = 100 * sum(y == major for y in dev) / len(dev)
        elif metric == "f1":  # all-positive when the majority is the positive class, else F1 = 0
            pos = sum(y == "1" for y in dev)
            out[t] = 100 * 2 * pos / (2 * pos + (len(dev) - pos)) if major == "1" else 0.0
        else:  # matthews correlation of a constant prediction
            out[t] = 0.0
    return out


def max_n(results, setting) -> int:
    from collections import Counter

    c = Counter(r["task"] for r in results if r["setting"] == setting)
    return max(c.values()) if c else 0


def plots(a, out: Path) -> list[Path]:
    """``gptune plot`` per task over the settings' runs of the first seed."""
    results = [r for r in load_results(out / "results.jsonl") if r.get("status") == "ok"]
    made = []
    for t in TASKS:
        seeds = sorted({r["seed"] for r in results if r["task"] == t})
        if not seeds:
            continue
        runs = []
        for s in SETTINGS:
            rs = [r for r in results if r["task"] == t and r["setting"] == s and r["seed"] == seeds[0]]
            if rs and Path(rs[-1]["run_dir"], "metrics.jsonl").is_file():
                runs.append(rs[-1]["run_dir"])
        if not runs:
            continue
        png = out / "plots" / f"{t}-s{seeds[0]}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        # gptune plot labels each curve by its folder name: link the runs as <setting> names
        links = out / "plots" / f".{t}-s{seeds[0]}"
        links.mkdir(parents=True, exist_ok=True)
        named = []
        for rd in runs:
            name = links / Path(rd).parent.name
            if name.is_symlink() or name.exists():
                name.unlink()
            name.symlink_to(Path(rd).resolve())
            named.append(str(name))
        cmd = ["gptune", "plot", *named, "--out", str(png)]
        print("$ " + shlex.join(cmd), flush=True)
        if subprocess.call(cmd, stdout=subprocess.DEVNULL) == 0:
            made.append(png)
    return made


def curves_figure(out: Path, key: str = "task_loss") -> Path | None:
    """One compact PNG for the write-up: the training task loss of every setting (seed-1 runs),
    one panel per task, with each run's final dev metric in the legend."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in load_results(out / "results.jsonl") if r.get("status") == "ok"]
    order = [t for t in ("cola", "sst2", "mrpc", "stsb", "rte", "wnli") if any(r["task"] == t for r in results)]
    if not order:
        return None
    seed = min(r["seed"] for r in results)
    cols = 3
    rows = (len(order) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
    for ax, t in zip(axes.flat, order, strict=False):
        for i, s in enumerate(SETTINGS):
            rs = [r for r in results if r["task"] == t and r["setting"] == s and r["seed"] == seed]
            if not rs:
                continue
            ev = [e for e in load_results(Path(rs[-1]["run_dir"]) / "metrics.jsonl") if e.get("event") == "train"]
            if not any(key in e for e in ev):
                continue
            xs = [e["step"] for e in ev if key in e]
            ys = [e[key] for e in ev if key in e]
            ax.plot(xs, ys, label=f"{s} ({100 * rs[-1]['value']:.1f})", lw=1.2, color=f"C{i}")
        ax.set_title(f"{TASKS[t][3]}, seed {seed}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(key, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, title="setting (dev x100)", title_fontsize=6)
    for ax in list(axes.flat)[len(order):]:
        ax.axis("off")
    fig.tight_layout()
    png = out / "plots" / f"curves-{key}-s{seed}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    glue = Path(a.data)
    if not a.report_only:
        pretrained = Path(a.pretrained)
        needs_pre = any(SETTINGS[s]["model"] == "pretrained" for s in a.settings)
        if needs_pre and not (pretrained / "config.json").is_file():
            print(f"--pretrained {pretrained}: no config.json (pretraining not finished?)", file=sys.stderr)
            return 2
        random_dir = random_init_model(pretrained, out) if "scratch" in a.settings else None
        deadline = None
        if a.deadline:
            hh, mm = map(int, a.deadline.split(":"))
            now = time.gmtime()
            deadline = time.mktime((now.tm_year, now.tm_mon, now.tm_mday, hh, mm, 0, 0, 0, 0)) - time.timezone
        done = done_keys(load_results(out / "results.jsonl"))
        plan = []
        for seed in a.seeds:
            pairs = ([(t, s) for t in a.tasks for s in a.settings] if a.order == "task"
                     else [(t, s) for s in a.settings for t in a.tasks])
            plan += [(s, t, seed) for t, s in pairs]
        todo = [p for p in plan if p not in done]
        print(f"{len(plan)} runs planned, {len(plan) - len(todo)} already in {out / 'results.jsonl'}, {len(todo)} to run",
              flush=True)
        rows = {t: train_rows(glue, t) for t in a.tasks}
        if a.jobs > 1 and a.threads is None:  # share the cores between the concurrent runs
            a.threads = str(max(1, (os.cpu_count() or 1) // a.jobs))

        def one(item) -> None:
            setting, task, seed = item
            if deadline is not None and time.time() > deadline:
                print(f"deadline {a.deadline} UTC passed: not starting {setting} {task} seed {seed}", flush=True)
                return
            model = str(random_dir) if SETTINGS[setting]["model"] == "random" else str(pretrained)
            run_one(a, setting, task, seed, planned_steps(rows[task], a), model, out)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(a.jobs) as pool:  # each worker thread waits on its own gptune process, in plan order
            list(pool.map(one, todo))
    if a.dry_run:
        return 0
    print("\n" + report(a, out))
    if not a.no_plots:
        for png in [*plots(a, out), curves_figure(out), curves_figure(out, "lm_loss")]:
            if png:
                print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
