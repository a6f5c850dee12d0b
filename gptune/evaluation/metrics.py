"""Official GLUE metric definitions, computed locally (scikit-learn / scipy, no hub download).

`compute_metrics` returns exactly what the `evaluate` "glue" metric returns for a GLUE task
(huggingface/evaluate metrics/glue/glue.py): same keys, same library calls, and the same input
casting (that script declares int64 features, float32 for stsb), so numbers match to the last bit.
Values are fractions in [0, 1] (correlations in [-1, 1]); `glue_average` reports x100.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from gptune.tasks import GLUE_TASKS, TaskSpec


def compute_metrics(task: TaskSpec, predictions: Sequence, references: Sequence) -> dict[str, float]:
    """`task.metrics` on one eval split. predictions/references: label ids (int), or floats for regression."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if len(references) == 0:
        raise ValueError("no predictions to score")
    dtype = np.float32 if task.is_regression else np.int64
    preds = np.asarray(predictions, dtype=dtype)
    refs = np.asarray(references, dtype=dtype)
    return {name: float(_METRICS[name](preds, refs)) for name in task.metrics}


# Argument order follows the evaluate glue script (sklearn: y_true first; scipy: predictions first).
_METRICS = {
    "accuracy": lambda p, r: (p == r).mean(),
    "f1": lambda p, r: f1_score(y_true=r, y_pred=p),
    "f1_macro": lambda p, r: f1_score(y_true=r, y_pred=p, average="macro"),
    "matthews_correlation": lambda p, r: matthews_corrcoef(r, p),
    "pearson": lambda p, r: pearsonr(p, r)[0],
    "spearmanr": lambda p, r: spearmanr(p, r)[0],
}


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
