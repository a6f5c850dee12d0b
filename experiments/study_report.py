"""The second edition's report from OUT/results.jsonl (experiments/study.py --phases report): Table 5 with
95% intervals and collapsed-run counts, every setting gap by Welch over units and by a paired bootstrap
(units = pretraining/init seed x fine-tuning seed, so pretrained seed s pairs with random init s), the lr
selection, Fig. 2 left (dev metric vs transferred layers), Fig. 2 right (zero-shot score vs pretraining
tokens), aux LM vs SST-2 size, and the compute spent. Also ``estimate``: planned runs and CPU time.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from study_design import SETTINGS, TASK_ORDER, TASKS, VARIANTS, ZS_TASKS, budget, task_data, train_rows

from gptune.evaluation.stats import paired_bootstrap, t_interval, welch

# Radford et al. 2018, Table 5 (x100; no WNLI column). Avg8: the paper's average over its 8 columns.
PAPER = {
    "aux": ("Transformer w/ aux LM (full)", {"cola": 45.4, "sst2": 91.3, "mrpc": 82.3, "stsb": 82.0, "rte": 56.0}, 74.7),
    "noaux": ("Transformer w/o aux LM", {"cola": 47.9, "sst2": 92.0, "mrpc": 84.9, "stsb": 83.2, "rte": 54.4}, 75.0),
    "scratch": ("Transformer w/o pre-training", {"cola": 18.9, "sst2": 84.0, "mrpc": 79.4, "stsb": 30.9, "rte": 53.8}, 59.9),
}
GAPS = [("aux", "scratch"), ("noaux", "scratch"), ("plain", "scratch"), ("noaux", "aux"), ("plain", "aux")]
FIRST_EDITION_CSV = Path(__file__).resolve().parent / "study-first-edition.csv"
PRETRAIN_S = {"base": 720.0, "large": 4 * 720.0}
"""Pretraining wall time (s): base measured in the first edition (600 steps, 2 idle cores); large assumed
4x (twice the layers, twice the steps)."""
ZEROSHOT_S = 60.0
"""Seconds per zero-shot checkpoint (dev of SST-2, RTE, CoLA + 1,000 CoLA train rows): an assumption, not
measured; the report's compute table gives the real figure once the phase has run."""
LAYERS_COST = {"base": 1.0, "large": 2.0}
"""Fine-tuning cost relative to the first edition's 4-layer model (large: 8 layers; assumed linear in depth)."""


def _ci(values: list[float]) -> str:
    if not values:
        return "–"
    m, lo, hi = t_interval(values)
    if len(values) == 1:
        return f"{100 * m:.1f} (n=1)"
    return f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _by_unit(runs: list[dict]) -> dict[str, float]:
    return {r["unit"]: r["value"] for r in runs}


def _averages(runs: list[dict], tasks: list[str]) -> dict[str, float]:
    """Per unit, the mean over ``tasks`` (units missing a task are left out)."""
    per = defaultdict(dict)
    for r in runs:
        per[r["unit"]][r["task"]] = r["value"]
    return {u: statistics.mean(v[t] for t in tasks) for u, v in per.items() if all(t in v for t in tasks)}


def table5(recs: list[dict], variant: str) -> str:
    runs = [r for r in recs if r["variant"] == variant]
    tasks = [t for t in TASK_ORDER if any(r["task"] == t for r in runs)]
    five = [t for t in tasks if t != "wnli"]
    lines = [f"Dev metric x100, mean [95% t interval] over units (pretraining or init seed x fine-tuning seed); "
             f"c/n = runs whose dev predictions are all one class / runs (variant {variant}).", "",
             "| setting | " + " | ".join(TASKS[t][3] for t in tasks) + " | avg (all) | avg (no WNLI) |",
             "|---|" + "---:|" * (len(tasks) + 2)]
    for s in SETTINGS:
        rs = [r for r in runs if r["setting"] == s]
        if not rs:
            continue
        cells = []
        for t in tasks:
            cell = [r for r in rs if r["task"] == t]
            coll = [r for r in cell if r.get("collapsed")]
            known = [r for r in cell if r.get("collapsed") is not None]
            c = f"; c {len(coll)}/{len(known)}" if known else ""
            cells.append(_ci([r["value"] for r in cell]) + c)
        avg = [_ci(list(_averages(rs, tt).values())) for tt in (tasks, five)]
        lines.append(f"| {SETTINGS[s]['label']} | " + " | ".join(cells) + " | " + " | ".join(avg) + " |")
    for name, vals, avg8 in PAPER.values():  # GLUE test scores of a 117M model, for the direction only
        cells = [f"{vals[t]:.1f}" if t in vals else "n/a" for t in tasks]
        lines.append(f"| paper: {name} | " + " | ".join(cells) + f" | (8 tasks: {avg8:.1f}) | – |")
    lines += ["", "Gaps (first minus second, x100): mean [Welch 95% interval] / [paired bootstrap 95% interval, "
              "pairs]. An interval that excludes 0 is marked *.", "",
              "| gap | " + " | ".join(tasks) + " | avg (all) | avg (no WNLI) |", "|---|" + "---:|" * (len(tasks) + 2)]
    for x, y in GAPS:
        rx, ry = [r for r in runs if r["setting"] == x], [r for r in runs if r["setting"] == y]
        if not rx or not ry:
            continue
        cells = []
        for t in [*tasks, "avg", "avg5"]:
            if t in ("avg", "avg5"):
                tt = tasks if t == "avg" else five
                ax, ay = _averages(rx, tt), _averages(ry, tt)
            else:
                ax, ay = _by_unit([r for r in rx if r["task"] == t]), _by_unit([r for r in ry if r["task"] == t])
            cells.append(_gap_cell(ax, ay))
        lines.append(f"| {x} - {y} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _gap_cell(ax: dict, ay: dict) -> str:
    w = welch(list(ax.values()), list(ay.values()))
    b = paired_bootstrap(ax, ay)
    if w is None and b is None:
        return "–"
    parts = []
    if w is not None and w.low == w.high:
        parts.append(f"{100 * w.diff:+.1f} (no spread)")
    elif w is not None:
        parts.append(f"{100 * w.diff:+.1f} [{100 * w.low:+.1f}, {100 * w.high:+.1f}]{'*' if w.excludes_zero else ''}")
    if b is not None:
        parts.append(f"[{100 * b.low:+.1f}, {100 * b.high:+.1f}]{'*' if b.excludes_zero else ''} ({b.n})")
    return " / ".join(parts)


def selection_table(recs: list[dict]) -> str:
    if not recs:
        return "No lr selection in results.jsonl (runs used --lr, see each record's lr_source)."
    grid = sorted({r["lr"] for r in recs})
    lines = ["Held-out score x100 (train slice, never dev) per lr; the chosen lr is in bold.", "",
             "| variant / setting / task | " + " | ".join(f"{lr:g}" for lr in grid) + " |", "|---|" + "---:|" * len(grid)]
    groups = defaultdict(lambda: defaultdict(list))
    for r in recs:
        groups[(r["variant"], r["setting"], r["task"])][r["lr"]].append(r["value"])
    for (v, s, t), by in sorted(groups.items()):
        means = {lr: statistics.mean(x) for lr, x in by.items()}
        best = max(means, key=lambda lr: (means[lr], -lr))
        cells = [("**%.1f**" if lr == best else "%.1f") % (100 * means[lr]) if lr in means else "–" for lr in grid]
        lines.append(f"| {v} / {s} / {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def transfer_table(recs: list[dict], table5_recs: list[dict], out: Path) -> str:
    rows = defaultdict(list)
    for r in recs:
        rows[(r["variant"], r["task"], r["k"])].append(r["value"])
    for r in table5_recs:  # k = n_layer: the table5 aux runs of the same pretraining seeds
        if r["setting"] == "aux" and any(x["variant"] == r["variant"] and x["task"] == r["task"] for x in recs):
            n = max(x["k"] for x in recs if x["variant"] == r["variant"]) + 1
            rows[(r["variant"], r["task"], n)].append(r["value"])
    if not rows:
        return "No transfer runs yet."
    lines = ["Dev metric x100 vs blocks transferred (k; embeddings always), mean [95% interval]:", "",
             "| variant / task | k | score |", "|---|---:|---:|"]
    for (v, t, k), vals in sorted(rows.items()):
        lines.append(f"| {v} / {t} | {k} | {_ci(vals)} |")
    _plot_lines({f"{v} {t}": [(k, vals) for (v2, t2, k), vals in sorted(rows.items()) if (v2, t2) == (v, t)]
                 for (v, t, _) in rows}, out / "plots" / "transfer.png", "blocks transferred (k)", "dev metric")
    return "\n".join(lines)


def zeroshot_table(recs: list[dict], out: Path) -> str:
    if not recs:
        return "No zero-shot scores yet."
    lines = ["Zero-shot dev score x100 (SST-2, RTE: accuracy, chance 50; CoLA: MCC, chance 0) vs pretraining tokens:",
             "", "| run | step | tokens | " + " | ".join(ZS_TASKS) + " |", "|---|---:|---:|" + "---:|" * len(ZS_TASKS)]
    series = defaultdict(list)
    for r in sorted(recs, key=lambda r: (r["variant"], r["pre_seed"], r["step"])):
        cells = [f"{100 * r['results'][t]['value']:.1f}" for t in ZS_TASKS]
        lines.append(f"| {r['variant']}-p{r['pre_seed']} | {r['step']} | {r['tokens']:,} | " + " | ".join(cells) + " |")
        for t in ZS_TASKS:
            series[f"{t} ({r['variant']})"].append((r["tokens"], [r["results"][t]["value"]]))
    merged = {}
    for name, pts in series.items():  # seeds of the same point pooled into one mean +- interval
        by = defaultdict(list)
        for x, v in pts:
            by[x] += v
        merged[name] = sorted(by.items())
    _plot_lines(merged, out / "plots" / "zeroshot.png", "pretraining tokens", "zero-shot score (chance: SST-2/RTE 0.5, CoLA 0)")
    return "\n".join(lines)


def aux_size_table(recs: list[dict], out: Path) -> str:
    if not recs:
        return "No aux-size runs yet."
    lines = ["SST-2 dev accuracy x100 by training rows and lm_coef; gap = 0.5 minus 0, Welch / paired bootstrap:", "",
             "| variant | rows | steps | lm_coef 0 | lm_coef 0.5 | gap |", "|---|---:|---:|---:|---:|---:|"]
    groups = defaultdict(lambda: defaultdict(list))
    for r in recs:
        groups[(r["variant"], r["rows"])][r["lm_coef"]].append(r)
    series = defaultdict(list)
    for (v, n), by in sorted(groups.items()):
        a0, a5 = _by_unit(by.get(0.0, [])), _by_unit(by.get(0.5, []))
        steps = sorted({r.get("steps") for rs in by.values() for r in rs})
        lines.append(f"| {v} | {n:,} | {','.join(map(str, steps))} | {_ci(list(a0.values()))} | {_ci(list(a5.values()))} "
                     f"| {_gap_cell(a5, a0)} |")
        for coef, rs in by.items():
            series[f"lm_coef {coef:g} ({v})"].append((n, [r["value"] for r in rs]))
    _plot_lines(series, out / "plots" / "aux-size.png", "SST-2 training rows", "dev accuracy", logx=True)
    return "\n".join(lines)


def _plot_lines(series: dict, png: Path, xlabel: str, ylabel: str, logx: bool = False) -> Path | None:
    """One line per series, mean with a 95% t-interval bar at each x."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, pts in series.items():
        pts = sorted(pts)
        xs = [x for x, _ in pts]
        stats = [t_interval(v) for _, v in pts]
        ax.errorbar(xs, [m for m, _, _ in stats], yerr=[[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]],
                    marker="o", capsize=3, lw=1.2, label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def compute_table(records) -> str:
    per = defaultdict(lambda: [0, 0.0])
    for r in records.ok():
        per[r["phase"]][0] += 1
        per[r["phase"]][1] += r.get("wall_s", 0.0) + r.get("predict_wall_s", 0.0)
    lines = ["| phase | runs | wall time (h, summed over runs) |", "|---|---:|---:|"]
    lines += [f"| {p} | {n} | {s / 3600:.2f} |" for p, (n, s) in per.items()]
    return "\n".join(lines)


def write_report(a, records) -> str:
    out = Path(a.out)
    t5 = records.ok("table5")
    parts = ["# GPT-1 study, second edition: results", "",
             f"From `{records.path.name}` ({len(records.ok())} finished runs). Every number below is computed by "
             "`python experiments/study.py --out OUT --phases report`.", "", "## lr selection", "",
             selection_table(records.ok("select-lr")), ""]
    sources = sorted({r.get("lr_source", "") for r in t5})
    if sources:
        parts += [f"lr source of the table5 runs: {', '.join(sources)}.", ""]
    for v in sorted({r["variant"] for r in t5}):
        parts += [f"## Table 5 ({v})", "", table5(t5, v), ""]
    parts += ["## Fig. 2 left: transferred layers", "", transfer_table(records.ok("transfer"), t5, out), "",
              "## Fig. 2 right: zero-shot over pretraining", "", zeroshot_table(records.ok("zeroshot"), out), "",
              "## Aux LM vs data size", "", aux_size_table(records.ok("aux-size"), out), "",
              "## Compute", "", compute_table(records), ""]
    text = "\n".join(parts)
    (out / "report.md").write_text(text)
    return text


# ----------------------------------------------------------------------------- estimate
def first_edition_rates() -> dict[tuple[str, str], float]:
    """Seconds per optimizer step per (setting, task), from the first edition's wall-time table."""
    import csv

    with open(FIRST_EDITION_CSV, encoding="utf-8") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return {(r["setting"], r["task"]): float(r["wall_s"]) / float(r["steps"]) for r in rows if r["wall_s"]}


def estimate(a, planners: dict, records) -> str:
    """Planned runs per phase and their single-thread CPU time, from the first edition's seconds per step
    (2-4 single-thread runs at once on 2 cores; max_length 128, micro-batch 16; 100-step runs, so start-up
    and the final evaluation are spread over the steps: rough, on the high side for longer runs) and its
    pretraining time."""
    rates = first_edition_rates()
    data = task_data(a, a.tasks)
    lines = ["| task | train rows | steps of 3 epochs | steps run (fine-tunes) |", "|---|---:|---:|---:|"]
    for t in a.tasks:
        run, full = budget(a, train_rows(data, t), a.sst2_max_steps if t == "sst2" else None)
        lines.append(f"| {t} | {train_rows(data, t):,} | {full:,} | {run:,} |")
    lines += ["", "| phase | runs | optimizer steps | CPU hours (estimate) |", "|---|---:|---:|---:|"]
    total = 0.0
    n_pre = len(a.variants) * len(a.pretrain_seeds)
    pre_s = sum(PRETRAIN_S[v] * 2 for v in a.variants) * len(a.pretrain_seeds)  # 2 cores busy
    lines.append(f"| pretrain | {n_pre} | – | {pre_s / 3600:.1f} |")
    total += pre_s
    for phase in ("select-lr", "table5", "transfer", "aux-size"):
        if phase not in a.phases:
            continue
        jobs = planners[phase](a, records)
        secs = sum(j.steps * rates[j.cost_key[:2]] * LAYERS_COST[j.cost_key[2]] for j in jobs)
        lines.append(f"| {phase} | {len(jobs)} | {sum(j.steps for j in jobs):,} | {secs / 3600:.1f} |")
        total += secs
    ckpts = sum(int(_pretrain_steps(a, v) // a.ckpt_every) + 1 for v in a.variants) * len(a.pretrain_seeds)
    lines.append(f"| zeroshot | {ckpts} | – | {ckpts * ZEROSHOT_S / 3600:.1f} |")
    total += ckpts * ZEROSHOT_S
    lines.append(f"| **total** | | | **{total / 3600:.1f}** (= {total / 3600 / 2:.1f} h of wall time on 2 idle cores) |")
    return "\n".join(lines)


def _pretrain_steps(a, variant: str) -> int:
    from gptune.recipes import load_recipe

    return load_recipe(a.pretrain_recipe, {}, [*VARIANTS[variant], *a.pretrain_set]).train.max_steps
