"""GLUE metrics as an ``evaluate.Metric`` (a local module: ``evaluate.load(path_to_this_file, config_name)``,
no hub access). gptune scores every evaluation through it, and ``evaluate.combine``, ``evaluator`` or a
metric Space can reuse it.

``config_name``: a GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, mnli_matched, mnli_mismatched, qnli,
rte, wnli, ax), or a comma-separated list of metric names for a custom task (``accuracy,f1_macro``).
Same keys, library calls and input casting as the hub's ``glue`` metric (int64 labels, float32 for
stsb and ``pearson``/``spearmanr`` lists); values are fractions, not percentages.

Self-contained on purpose: ``evaluate.load`` copies this file into its module cache and imports it there.
"""

import datasets
import evaluate
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

_DESCRIPTION = "GLUE task metrics (accuracy, F1, Matthews correlation, Pearson/Spearman) computed locally."
_KWARGS_DESCRIPTION = """
Args:
    predictions: label ids (int), or floats for stsb / regression.
    references: gold label ids (int), or floats.
Returns: a dict of the task's metrics, e.g. {"accuracy": 0.5, "f1": 0.0} for mrpc.
Example:
    >>> metric = evaluate.load("gptune/evaluation/glue_metric.py", "mrpc")
    >>> metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'accuracy': 0.75, 'f1': 0.6666666666666666}
"""

TASK_METRICS = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy",),
    "mnli_matched": ("accuracy",),
    "mnli_mismatched": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
    "ax": ("matthews_correlation",),
}
REGRESSION = ("pearson", "spearmanr")

# Argument order follows the hub glue script (sklearn: y_true first; scipy: predictions first).
_FUNCTIONS = {
    "accuracy": lambda p, r: (p == r).mean(),
    "f1": lambda p, r: f1_score(y_true=r, y_pred=p),
    "f1_macro": lambda p, r: f1_score(y_true=r, y_pred=p, average="macro"),
    "matthews_correlation": lambda p, r: matthews_corrcoef(r, p),
    "pearson": lambda p, r: pearsonr(p, r)[0],
    "spearmanr": lambda p, r: spearmanr(p, r)[0],
}


def metric_names(config_name):
    """The metrics a config computes; a ValueError naming the known ones otherwise."""
    if config_name in TASK_METRICS:
        return TASK_METRICS[config_name]
    names = tuple(n.strip() for n in (config_name or "").split(",") if n.strip())
    unknown = [n for n in names if n not in _FUNCTIONS]
    if not names or unknown:
        raise KeyError(f"glue_metric: unknown config {config_name!r}; use a GLUE task ({', '.join(TASK_METRICS)}) "
                       f"or metric names from {', '.join(_FUNCTIONS)}")
    return names


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GlueMetric(evaluate.Metric):
    def _info(self):
        names = metric_names(self.config_name)
        dtype = "float32" if any(n in REGRESSION for n in names) else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
            format="numpy",
        )

    def _compute(self, predictions, references):
        return {n: float(_FUNCTIONS[n](predictions, references)) for n in metric_names(self.config_name)}
