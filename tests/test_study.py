"""experiments/study.py through its command line: --quick runs every phase end to end on fixture data
(resumably), the lr is chosen on a slice held out from train, and the report counts collapsed runs and pairs
runs by unit; experiments/study_first_edition.py prints the first edition's gaps. The scripts are run, never
imported (their statistics, gptune.evaluation.stats, are tested against scipy in test_stats.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_text
from gptune.evaluation import stats as study_stats

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
pytestmark = pytest.mark.slow  # every test here starts a script's process (the --quick one trains ~36 runs)
PHASES = ["pretrain", "select-lr", "table5", "transfer", "zeroshot", "aux-size", "report"]


def script(name: str, *args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``python experiments/NAME ARGS`` with this test run's environment (+ ``env``); its output."""
    full = {**os.environ, "GPTUNE_NO_PROGRESS": "1", **(env or {})}
    full.pop("GPTUNE_DATA", None)
    return subprocess.run([sys.executable, str(EXPERIMENTS / name), *map(str, args)], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """$GPTUNE_DATA layout: books/gutenberg/*.txt and glue/{SST-2,RTE,CoLA} (train 80 rows, dev 40)."""
    root = tmp_path_factory.mktemp("data")
    (root / "books" / "gutenberg").mkdir(parents=True)
    (root / "books" / "gutenberg" / "a.txt").write_text(make_text(400, 1))
    lines = iter(make_text(600, 2).splitlines())
    for name, n in (("train", 80), ("dev", 40)):
        sst = root / "glue" / "SST-2"
        sst.mkdir(parents=True, exist_ok=True)
        rows = [(f"{next(lines)} {w}", str(int(w == "good"))) for w in ["good", "bad"] * (n // 2)]
        (sst / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in rows))
        rte = root / "glue" / "RTE"
        rte.mkdir(parents=True, exist_ok=True)
        pairs = [f"{i}\t{next(lines)}\t{next(lines)}\t{['entailment', 'not_entailment'][i % 2]}" for i in range(n)]
        (rte / f"{name}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + "\n".join(pairs) + "\n")
        cola = root / "glue" / "CoLA"
        cola.mkdir(parents=True, exist_ok=True)
        (cola / f"{name}.tsv").write_text("".join(f"src\t{i % 2}\t\t{next(lines)}\n" for i in range(n)))
    return root


@pytest.fixture(scope="module")
def quick(data_root, tmp_path_factory):
    """One --quick study (its gptune runs in the study's process); (out folder, records, printed output of a
    second invocation, the results file before it)."""
    work = tmp_path_factory.mktemp("study")
    argv = ["--data", data_root, "--out", work / "s", "--quick", "--in-process"]
    env = {"GPTUNE_CACHE": str(work / "cache")}
    first = script("study.py", *argv, cwd=work, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = work / "s" / "quick"
    before = (out / "results.jsonl").read_text()
    second = script("study.py", *argv, cwd=work, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    return out, [json.loads(x) for x in before.splitlines()], second.stdout, before


def test_quick_runs_every_phase_and_a_second_run_resumes_without_rerunning(quick):
    out, recs, second, before = quick
    assert all(r["status"] == "ok" for r in recs), [r["key"] for r in recs if r["status"] != "ok"]
    count = {p: sum(r["phase"] == p for r in recs) for p in PHASES}
    # select: lr grid 2 x (4 settings on rte + aux, noaux on sst2 for aux-size); table5: 4 settings x rte x 2 seeds;
    # transfer: k 0,1 x rte x 2 seeds; zeroshot: init, step 2, step 4 (final is step 4); aux-size: 2 sizes x 2 x 2
    assert count == {"pretrain": 1, "select-lr": 12, "table5": 8, "transfer": 4, "zeroshot": 3, "aux-size": 8,
                     "report": 0}
    assert (out / "results.jsonl").read_text() == before  # nothing re-run
    assert "0 to run" in second and "12 already in" in second
    report = (out / "report.md").read_text()
    assert "## Table 5 (base)" in report and "c " in report
    for png in ("transfer.png", "zeroshot.png", "aux-size.png"):
        assert (out / "plots" / png).stat().st_size > 1000


def test_lr_is_chosen_on_the_held_out_train_slice_and_used(quick, data_root):
    out, recs, _, _ = quick
    sel = [r for r in recs if r["phase"] == "select-lr"]
    hold = out / "data" / "quick-holdout" / "RTE"
    train = (hold / "train.tsv").read_text().splitlines()[1:]
    held = (hold / "dev.tsv").read_text().splitlines()[1:]
    sliced = (out / "data" / "quick" / "RTE" / "train.tsv").read_text().splitlines()[1:]
    real_dev = set((data_root / "glue" / "RTE" / "dev.tsv").read_text().splitlines()[1:])
    assert len(held) == 16 and not set(held) & set(train) and sorted(held + train) == sorted(sliced)
    assert not set(held) & real_dev
    for r in (r for r in recs if r["phase"] in ("table5", "transfer", "aux-size")):
        setting = r["setting"]
        cands = {x["lr"]: x["value"] for x in sel if (x["setting"], x["task"]) == (setting, r["task"])}
        best = max(cands, key=lambda lr: (cands[lr], -lr))
        assert r["lr"] == best and r["lr_source"] == "held-out train slice", r["key"]


def test_phases_pass_their_keys_to_the_runs(quick):
    out, recs, _, _ = quick
    for r in recs:
        if r["phase"] in ("pretrain", "zeroshot"):
            continue
        saved = yaml.safe_load((Path(r["run_dir"]) / "final" / "recipe.yaml").read_text())
        assert not list(Path(r["run_dir"]).glob("step-*"))  # the driver keeps final/ only
        assert saved["model"]["transfer_layers"] == r.get("k")
        assert saved["train"]["lr"] == pytest.approx(r["lr"])
        # the dev split is scored once, at the end, and never picks weights
        assert saved["task"]["keep_best"] is False and saved["task"]["eval_every_epoch"] is False
        if r["phase"] == "aux-size":
            assert saved["task"]["lm_coef"] == r["lm_coef"]
            assert r["steps"] == 2  # --quick caps every fine-tune at 2 steps
        if r["task"] != "stsb":
            dev_rows = 16 if r["phase"] == "select-lr" else 32  # the held-out slice, or the quick dev slice
            assert r["collapsed"] == (len(r["pred_counts"]) == 1) and sum(r["pred_counts"].values()) == dev_rows
        if r["setting"] == "scratch":
            assert "random-init" in r["command"]
    n24 = (out / "data" / "sst2-n24" / "SST-2" / "train.tsv").read_text().splitlines()
    assert len(n24) == 25
    zs = sorted((r["step"], r["tokens"]) for r in recs if r["phase"] == "zeroshot")
    assert zs == [(0, 0), (2, 2 * 4 * 32), (4, 4 * 4 * 32)]
    pre = json.loads((out / "pretrain" / "base-p1" / "final" / "metrics.json").read_text())
    assert pre["step"] == 4


def test_no_data_is_a_one_line_error(tmp_path):
    out = script("study.py", "--out", tmp_path, "--phases", "pretrain", cwd=tmp_path)
    assert out.returncode == 2
    err = out.stderr.strip()
    assert err.count("\n") == 0 and "set --data DIR or $GPTUNE_DATA" in err


def test_first_edition_gaps_from_the_transcribed_table(tmp_path):
    out = script("study_first_edition.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    row = next(line for line in text.splitlines() if line.startswith("| aux - scratch"))
    assert "+0.2 [-2.3, +2.7] t 0.24" in row  # six-task average, GPT-1's own setting
    assert "+3.4 [-5.5, +12.3] t 1.29" in row  # SST-2


def test_report_table_counts_collapsed_runs_and_pairs_by_unit(tmp_path):
    def rec(setting, unit, value, collapsed, task="rte"):
        return {"phase": "table5", "key": f"{setting}-{task}-{unit}", "status": "ok", "variant": "base",
                "setting": setting, "task": task, "unit": unit, "value": value, "collapsed": collapsed}

    units = ["1-1", "1-2", "2-1", "2-2"]
    aux = [rec("aux", u, v, c) for u, v, c in zip(units, [0.55, 0.60, 0.527, 0.58], [False, False, True, False],
                                                    strict=True)]
    scratch = [rec("scratch", u, v, True) for u, v in zip(units, [0.473, 0.527, 0.473, 0.473], strict=True)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in aux + scratch))
    out = script("study.py", "--out", tmp_path, "--phases", "report", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = (tmp_path / "report.md").read_text()
    text = report[report.index("## Table 5 (base)"):].split("\n## ")[0]
    aux_row = next(line for line in text.splitlines() if line.startswith("| (a)"))
    assert "; c 1/4" in aux_row
    m, lo, hi = study_stats.t_interval([0.55, 0.60, 0.527, 0.58])
    assert f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" in aux_row
    assert "; c 4/4" in next(line for line in text.splitlines() if line.startswith("| (c)"))
    gap = next(line for line in text.splitlines() if line.startswith("| aux - scratch"))
    w = study_stats.welch([r["value"] for r in aux], [r["value"] for r in scratch])
    b = study_stats.paired_bootstrap({r["unit"]: r["value"] for r in aux}, {r["unit"]: r["value"] for r in scratch})
    assert f"{100 * w.diff:+.1f} [{100 * w.low:+.1f}, {100 * w.high:+.1f}]" in gap
    assert f"[{100 * b.low:+.1f}, {100 * b.high:+.1f}]" in gap and "(4)" in gap
