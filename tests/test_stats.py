"""gptune.evaluation.stats (the GPT-1 study's intervals): Welch's test and the t interval equal scipy's; the
paired bootstrap pairs by unit."""

from __future__ import annotations

import pytest

from gptune.evaluation import stats as study_stats


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
