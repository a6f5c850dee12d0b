"""GLUE scores: each task's metrics through the local ``evaluate`` module ``glue_metric.py`` (no hub
download), and the GLUE-style averages over tasks and MNLI's two dev sets.

`compute_metrics` returns what the hub's ``glue`` metric returns for a GLUE task: same keys and
values. Values are fractions in [0, 1] (correlations in [-1, 1]); `glue_average` reports x100.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from gptune.tasks import GLUE_TASKS, TaskSpec

METRIC_MODULE = Path(__file__).with_name("glue_metric.py")
"""``evaluate.load(str(METRIC_MODULE), config_name)`` gives the ``evaluate.Metric`` gptune scores with."""


def metric_config(task: TaskSpec) -> str:
    """The metric module's config for a task: the GLUE name when its metrics are GLUE's, else the metric list."""
    from gptune.evaluation.glue_metric import TASK_METRICS

    if set(TASK_METRICS.get(task.hub_name, ())) == set(task.metrics):
        return task.hub_name
    return ",".join(task.metrics)


@functools.cache
def load_metric(config_name: str):
    """The ``evaluate.Metric`` of one config, loaded once per process (in memory: no cache files)."""
    import evaluate

    return evaluate.load(str(METRIC_MODULE), config_name, keep_in_memory=True)


def compute_metrics(task: TaskSpec, predictions: Sequence, references: Sequence) -> dict[str, float]:
    """`task.metrics` on one eval split. predictions/references: label ids (int), or floats for regression."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if len(references) == 0:
        raise ValueError("no predictions to score")
    out = load_metric(metric_config(task)).compute(predictions=list(predictions), references=list(references))
    return {k: out[k] for k in task.metrics}


def task_score(metrics: Mapping[str, float | Mapping[str, float]]) -> float:
    """One number per task, GLUE-leaderboard style: the mean of its metrics (MRPC/QQP: F1 and
    accuracy; STS-B: Pearson and Spearman). A nested dict {eval split: metrics} (MNLI matched /
    mismatched) is the mean over splits of each split's mean."""
    values = list(metrics.values())
    if not values:
        raise ValueError("no metrics to average")
    if all(isinstance(v, Mapping) for v in values):
        return float(np.mean([task_score(v) for v in values]))
    return float(np.mean([float(v) for v in values]))


def glue_average(results: Mapping[str, Mapping[str, float | Mapping[str, float]]]) -> float:
    """GLUE score x100: `task_score` per task, then the unweighted mean over the tasks given.

    results: {task name: compute_metrics output} or, for tasks with several eval splits,
    {task name: {eval split: compute_metrics output}}. It is the GLUE benchmark score only when all
    nine tasks are present (the leaderboard also averages WNLI; AX is not part of the score).
    """
    if not results:
        raise ValueError("no task results to average")
    return 100.0 * float(np.mean([task_score(m) for m in results.values()]))


def paper_scores() -> dict[str, dict[str, float]]:
    """GPT-1 paper numbers per GLUE task (x100, test server), from `TaskSpec.paper_score`."""
    return {name: dict(t.paper_score) for name, t in GLUE_TASKS.items() if t.paper_score}
