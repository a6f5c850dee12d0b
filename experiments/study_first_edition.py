"""What the first edition's table supports: Welch's t and 95% intervals for every setting gap, computed
from the means and standard deviations the document reports (3 seeds per cell; the raw results are
lost), and the dev score of every constant prediction (what a collapsed run scores).

    python experiments/study_first_edition.py                      # gaps, from experiments/study-first-edition.csv
    python experiments/study_first_edition.py --data $GPTUNE_DATA  # + constant-prediction dev scores

The table's values are rounded to 0.1, so t and the intervals carry that rounding.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections import Counter
from pathlib import Path

from gptune.evaluation.stats import welch_summary

CSV = Path(__file__).resolve().parent / "study-first-edition.csv"
COLUMNS = ["cola", "sst2", "mrpc", "stsb", "rte", "wnli", "avg6", "avg5"]
GAPS = [("aux", "scratch"), ("noaux", "scratch"), ("plain", "scratch"), ("noaux", "aux"), ("plain", "aux")]
# dev files, label column, metric, the label names (GLUE TSV layout)
DEV = {"sst2": ("SST-2", -1, True), "rte": ("RTE", -1, True), "wnli": ("WNLI", -1, True),
       "mrpc": ("MRPC", 0, True), "cola": ("CoLA", 1, False)}


def read_table(path: Path = CSV) -> dict[tuple[str, str], tuple[float, float, int]]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return {(r["setting"], r["task"]): (float(r["mean"]), float(r["sd"]), int(r["n"])) for r in rows}


def gap_table(table) -> str:
    lines = ["| gap (x100) | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for a, b in GAPS:
        cells = []
        for t in COLUMNS:
            m1, s1, n1 = table[(a, t)]
            m2, s2, n2 = table[(b, t)]
            if s1 == 0 and s2 == 0:
                cells.append(f"{m1 - m2:+.1f} (all runs equal)")
                continue
            g = welch_summary(m1, s1, n1, m2, s2, n2)
            cells.append(f"{g.diff:+.1f} [{g.low:+.1f}, {g.high:+.1f}] t {g.t:.2f}")
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread_table(table) -> str:
    """The noise a single gap carries: one dev score's binomial SE near 50% vs the seed spread."""
    sizes = {"sst2": 872, "mrpc": 408, "rte": 277, "wnli": 71}
    lines = ["| task | dev rows | SE of one score near 50% | seed sd (scratch) | SE of a 3-seed mean gap (aux vs scratch) |",
             "|---|---:|---:|---:|---:|"]
    for t, n in sizes.items():
        s_a, s_c = table[("aux", t)][1], table[("scratch", t)][1]
        lines.append(f"| {t} | {n} | {100 * math.sqrt(0.25 / n):.1f} | {s_c:.1f} | {math.sqrt(s_a ** 2 / 3 + s_c ** 2 / 3):.1f} |")
    return "\n".join(lines)


def _labels(glue: Path, task: str, split: str) -> list[str]:
    folder, col, header = DEV[task]
    with open(glue / folder / f"{split}.tsv", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r]
    return [r[col] for r in (rows[1:] if header else rows)]


def constant_scores(glue: Path) -> str:
    """Dev score (x100) of predicting one label for every row; MRPC: F1, CoLA: MCC (0 for any constant).
    Last row: the majority class of each task's *training* labels (STS-B: a constant, counted as 0) and
    its averages over the six tasks and the five without WNLI."""
    lines = ["| task | dev rows | label counts | score of each constant prediction |", "|---|---:|---|---|"]
    majority = {"stsb": 0.0}
    for t in DEV:
        labels = _labels(glue, t, "dev")
        counts = Counter(labels)
        if t == "mrpc":
            pos = counts["1"]
            scores = {"1": 100 * 2 * pos / (2 * pos + (len(labels) - pos)), "0": 0.0}
            what = "F1"
        elif t == "cola":
            scores = {k: 0.0 for k in counts}
            what = "MCC"
        else:
            scores = {k: 100 * v / len(labels) for k, v in counts.items()}
            what = "acc"
        cells = ", ".join(f"always {k}: {v:.1f} ({what}; {counts[k]}/{len(labels)})" for k, v in sorted(scores.items()))
        lines.append(f"| {t} | {len(labels)} | {dict(sorted(counts.items()))} | {cells} |")
        majority[t] = scores[Counter(_labels(glue, t, "train")).most_common(1)[0][0]]
    six = sum(majority.values()) / 6
    five = sum(v for k, v in majority.items() if k != "wnli") / 5
    lines.append(f"| majority training class | | | {', '.join(f'{k} {v:.1f}' for k, v in sorted(majority.items()))}; "
                 f"average of six {six:.1f}, of five (no WNLI) {five:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default=str(CSV), help="the transcribed first-edition table (CSV)")
    p.add_argument("--data", default=os.environ.get("GPTUNE_DATA"),
                   help="data root with glue/ (default $GPTUNE_DATA); absent: no constant-prediction table")
    a = p.parse_args(argv)
    table = read_table(Path(a.table))
    print("Welch's t over 3 seeds per cell, 95% interval of the gap (first minus second), x100:\n")
    print(gap_table(table))
    print("\nNoise: one dev score's sampling error vs the seed-to-seed spread:\n")
    print(spread_table(table))
    if a.data:
        print("\nConstant predictions on the dev sets:\n")
        print(constant_scores(Path(a.data) / "glue"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
