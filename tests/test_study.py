"""benchmarks/study.py: --quick runs every phase end to end on fixture data (resumably), the lr is
chosen on a slice held out from train, and the report's statistics equal scipy's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_text

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import study  # noqa: E402
import study_first_edition  # noqa: E402
import study_stats  # noqa: E402


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
    """One --quick study, run in process; (out folder, records, printed output of a second invocation)."""
    import os

    work = tmp_path_factory.mktemp("study")
    old = os.getcwd()
    os.chdir(work)
    env = {"GPTUNE_NO_PROGRESS": "1", "GPTUNE_CACHE": str(work / "cache")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        argv = ["--data", str(data_root), "--out", str(work / "s"), "--quick", "--in-process"]
        assert study.main(argv) == 0
        out = work / "s" / "quick"
        before = (out / "results.jsonl").read_text()
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert study.main(argv) == 0
        yield out, [json.loads(x) for x in before.splitlines()], buf.getvalue(), before
    finally:
        os.chdir(old)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_quick_runs_every_phase_and_a_second_run_resumes_without_rerunning(quick):
    out, recs, second, before = quick
    assert all(r["status"] == "ok" for r in recs), [r["key"] for r in recs if r["status"] != "ok"]
    count = {p: sum(r["phase"] == p for r in recs) for p in study.PHASES}
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


def test_no_data_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GPTUNE_DATA", raising=False)
    assert study.main(["--out", str(tmp_path), "--phases", "pretrain"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "set --data DIR or $GPTUNE_DATA" in err


def test_welch_and_t_interval_equal_scipy():
    from scipy import stats

    a, b = [0.61, 0.58, 0.66, 0.59, 0.63], [0.52, 0.57, 0.49, 0.55]
    g = study_stats.welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert g.t == pytest.approx(ref.statistic) and g.df == pytest.approx(ref.df)
    ci = ref.confidence_interval(0.95)
    assert (g.low, g.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    m, lo, hi = study_stats.t_interval(a)
    ref_ci = stats.t.interval(0.95, len(a) - 1, loc=stats.tmean(a), scale=stats.sem(a))
    assert (lo, hi) == (pytest.approx(ref_ci[0]), pytest.approx(ref_ci[1]))
    # from a table's mean/sd/n: the first edition's five-task gap, noaux vs scratch
    s = study_stats.welch_summary(40.8, 1.0, 3, 38.5, 1.6, 3)
    r = stats.ttest_ind_from_stats(40.8, 1.0, 3, 38.5, 1.6, 3, equal_var=False)
    assert s.t == pytest.approx(r.statistic) and s.excludes_zero is False


def test_paired_bootstrap_pairs_by_unit():
    a = {"1-1": 0.60, "1-2": 0.70, "2-1": 0.55, "2-2": 0.65, "9-9": 5.0}
    b = {u: v - 0.05 for u, v in a.items() if u != "9-9"}  # unit 9-9 has no partner: left out
    g = study_stats.paired_bootstrap(a, b)
    assert g.n == 4 and g.diff == pytest.approx(0.05) and g.low == pytest.approx(0.05) and g.high == pytest.approx(0.05)
    # unpaired the spread between units would swamp a constant shift: Welch's interval contains 0
    assert not study_stats.welch([a[u] for u in b], list(b.values())).excludes_zero


def test_first_edition_gaps_from_the_transcribed_table():
    table = study_first_edition.read_table()
    text = study_first_edition.gap_table(table)
    row = next(line for line in text.splitlines() if line.startswith("| aux - scratch"))
    assert "+0.2 [-2.3, +2.7] t 0.24" in row  # six-task average, GPT-1's own setting
    assert "+3.4 [-5.5, +12.3] t 1.29" in row  # SST-2


def test_report_table_counts_collapsed_runs_and_pairs_by_unit():
    import study_report

    def rec(setting, unit, value, collapsed, task="rte"):
        return {"variant": "base", "setting": setting, "task": task, "unit": unit, "value": value,
                "collapsed": collapsed}

    units = ["1-1", "1-2", "2-1", "2-2"]
    aux = [rec("aux", u, v, c) for u, v, c in zip(units, [0.55, 0.60, 0.527, 0.58], [False, False, True, False],
                                                    strict=True)]
    scratch = [rec("scratch", u, v, True) for u, v in zip(units, [0.473, 0.527, 0.473, 0.473], strict=True)]
    text = study_report.table5(aux + scratch, "base")
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
