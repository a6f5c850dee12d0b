"""Intervals for the GPT-1 study: a t interval over seeds, Welch's test for the gap between two settings
(from samples or from a table's mean/sd/n), and a paired bootstrap that pairs runs by seed.

Pure functions over lists of scores (no torch). Used by ``experiments/study_report.py`` (the second edition's
report) and ``experiments/study_first_edition.py`` (the first edition's table, a CSV transcribed from
docs/gpt1-small-scale.md).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def _t_quantile(conf: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + conf / 2, df))


def t_interval(values: Sequence[float], conf: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean; low = high = mean for a single value."""
    m = statistics.mean(values)
    if len(values) < 2:
        return m, m, m
    half = _t_quantile(conf, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


@dataclass
class Gap:
    """A difference of means (first minus second) with its interval."""

    diff: float
    low: float
    high: float
    t: float | None = None
    df: float | None = None
    n: int | None = None

    def fmt(self, scale: float = 1.0, digits: int = 1) -> str:
        s = f"{scale * self.diff:+.{digits}f} [{scale * self.low:+.{digits}f}, {scale * self.high:+.{digits}f}]"
        return s + (f", t {self.t:.2f}" if self.t is not None else "")

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def welch_summary(m1: float, s1: float, n1: int, m2: float, s2: float, n2: int, conf: float = 0.95) -> Gap:
    """Welch's unequal-variance t test from two (mean, sd, n): gap, t, Welch-Satterthwaite df, interval."""
    v1, v2 = s1 * s1 / n1, s2 * s2 / n2
    se = math.sqrt(v1 + v2)
    diff = m1 - m2
    if se == 0:
        return Gap(diff, diff, diff, math.inf if diff else 0.0, None, n1 + n2)
    df = (v1 + v2) ** 2 / ((v1 * v1 / (n1 - 1) if v1 else 0.0) + (v2 * v2 / (n2 - 1) if v2 else 0.0))
    half = _t_quantile(conf, df) * se
    return Gap(diff, diff - half, diff + half, diff / se, df, n1 + n2)


def welch(a: Sequence[float], b: Sequence[float], conf: float = 0.95) -> Gap | None:
    """Welch's test from samples (None when either side has fewer than 2 values)."""
    if len(a) < 2 or len(b) < 2:
        return None
    return welch_summary(statistics.mean(a), statistics.stdev(a), len(a), statistics.mean(b), statistics.stdev(b),
                         len(b), conf)


def paired_bootstrap(a: Mapping, b: Mapping, *, conf: float = 0.95, n_boot: int = 10000, seed: int = 0) -> Gap | None:
    """Mean of a[u] - b[u] over the units u (seeds) both have, with a percentile interval from resampling
    the units with replacement. None with fewer than 2 pairs."""
    units = sorted(set(a) & set(b))
    if len(units) < 2:
        return None
    d = [a[u] - b[u] for u in units]
    rng = random.Random(seed)
    n = len(d)
    means = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    lo = means[int(math.floor((1 - conf) / 2 * n_boot))]
    hi = means[min(n_boot - 1, int(math.ceil((1 + conf) / 2 * n_boot)) - 1)]
    return Gap(statistics.mean(d), lo, hi, None, None, n)
