"""GLUE metrics against values worked out by hand (confusion matrices, closed-form correlations) and
published examples, through the local ``evaluate`` module gptune scores with; the GLUE average rule."""

from __future__ import annotations

import math

import pytest

from gptune.evaluation.metrics import METRIC_MODULE, compute_metrics, glue_average, load_metric, task_score
from gptune.tasks import GLUE_TASKS, METRICS, custom_task, get_task

# one binary case, four cells: TP 3 (rows 0, 4, 6), FP 2 (1, 7), FN 1 (3), TN 2 (2, 5)
PREDS = [1, 1, 0, 0, 1, 0, 1, 1]
REFS = [1, 0, 0, 1, 1, 0, 1, 0]


def test_binary_confusion_matrix_by_hand():
    got = compute_metrics(get_task("mrpc"), PREDS, REFS)
    assert got["accuracy"] == pytest.approx(5 / 8)  # (TP + TN) / n
    assert got["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # 2TP / (2TP + FP + FN) = 2/3
    assert set(got) == {"accuracy", "f1"}
    # Matthews: (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6 - 2) / sqrt(5*4*4*3)
    assert compute_metrics(get_task("cola"), PREDS, REFS) == {"matthews_correlation": pytest.approx(4 / math.sqrt(240))}
    assert compute_metrics(get_task("qqp"), PREDS, REFS) == got


def test_published_examples():
    # scikit-learn's matthews_corrcoef docstring: y_true [+1, +1, +1, -1], y_pred [+1, -1, +1, +1] -> -0.33...
    assert compute_metrics(get_task("cola"), [1, 0, 1, 1], [1, 1, 1, 0])["matthews_correlation"] == pytest.approx(-1 / 3)
    # scikit-learn's f1_score docstring: macro F1 of y_true [0, 1, 2, 0, 1, 2], y_pred [0, 2, 1, 0, 0, 1] -> 0.26...
    topics = custom_task("topics", "classification", ["t"], "y", ["a", "b", "c"], {}, metrics=["accuracy", "f1_macro"])
    got = compute_metrics(topics, [0, 2, 1, 0, 0, 1], [0, 1, 2, 0, 1, 2])
    assert got == {"accuracy": pytest.approx(2 / 6), "f1_macro": pytest.approx(0.8 / 3)}  # class F1s 0.8, 0, 0
    # the hub glue metric's examples: perfect predictions score 1
    assert compute_metrics(get_task("mrpc"), [0, 1], [0, 1]) == {"accuracy": 1.0, "f1": 1.0}
    assert compute_metrics(get_task("stsb"), [0.0, 1, 2, 3, 4, 5], [0.0, 1, 2, 3, 4, 5]) == {
        "pearson": pytest.approx(1.0), "spearmanr": pytest.approx(1.0)}


def test_correlations_in_closed_form():
    # x = 1..4, y = x^2: deviations (-1.5, -.5, .5, 1.5) and (-6.5, -3.5, 1.5, 8.5): r = 25 / sqrt(5 * 129);
    # the ranks agree exactly, so Spearman is 1
    got = compute_metrics(get_task("stsb"), [1.0, 2.0, 3.0, 4.0], [1.0, 4.0, 9.0, 16.0])
    assert got["pearson"] == pytest.approx(25 / math.sqrt(645), rel=1e-6)
    assert got["spearmanr"] == pytest.approx(1.0)
    # y = (1, 3, 2): r = 1 / 2 and, the values being their own ranks, Spearman too
    got = compute_metrics(get_task("stsb"), [1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert (got["pearson"], got["spearmanr"]) == (pytest.approx(0.5, rel=1e-6), pytest.approx(0.5, rel=1e-6))


def test_mnli_matched_mismatched_and_glue_average():
    mnli = get_task("mnli")
    matched = compute_metrics(mnli, [0, 1, 2, 2], [0, 1, 2, 0])  # 3 of 4
    mismatched = compute_metrics(mnli, [0, 0, 1, 2], [0, 1, 1, 0])  # 2 of 4
    assert (matched, mismatched) == ({"accuracy": 0.75}, {"accuracy": 0.5})
    results = {
        "mnli": {"validation_matched": matched, "validation_mismatched": mismatched},  # task score 0.625
        "mrpc": compute_metrics(get_task("mrpc"), PREDS, REFS),  # (5/8 + 2/3) / 2 = 31/48
        "cola": {"matthews_correlation": 0.40},
        "stsb": {"pearson": 0.90, "spearmanr": 0.80},  # 0.85
    }
    assert task_score(results["mnli"]) == pytest.approx(0.625)
    assert task_score(results["mrpc"]) == pytest.approx(31 / 48)
    assert glue_average(results) == pytest.approx(100 * (0.625 + 31 / 48 + 0.40 + 0.85) / 4)


def test_glue_average_of_paper_numbers_reproduces_paper_table():
    from gptune.evaluation.metrics import paper_scores

    # GPT-1 Table 4 lists the per-task scores used here; the leaderboard averages MRPC/QQP F1 with
    # accuracy, which the paper does not print, so only a hand-computed check on what it does print.
    scores = paper_scores()
    assert set(scores) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"}
    per_task = {name: {k: v / 100 for k, v in s.items()} for name, s in scores.items()}
    expected = (45.4 + 91.3 + 82.3 + 82.0 + 70.3 + (82.1 + 81.4) / 2 + 88.1 + 56.0) / 8
    assert glue_average(per_task) == pytest.approx(expected)


def test_an_evaluate_metric_loadable_by_path_and_combinable():
    import evaluate

    metric = evaluate.load(str(METRIC_MODULE), "mrpc", keep_in_memory=True)
    assert isinstance(metric, evaluate.Metric) and isinstance(load_metric("mrpc"), evaluate.Metric)
    combined = evaluate.combine([metric])
    assert combined.compute(predictions=PREDS, references=REFS) == compute_metrics(get_task("mrpc"), PREDS, REFS)
    with pytest.raises(KeyError, match="unknown config 'bleu'"):
        evaluate.load(str(METRIC_MODULE), "bleu")


def test_every_task_metric_is_in_the_module():
    from gptune.evaluation.glue_metric import _FUNCTIONS, TASK_METRICS

    assert set(METRICS) == set(_FUNCTIONS)
    for name, task in GLUE_TASKS.items():
        assert set(TASK_METRICS[task.hub_name]) == set(task.metrics), name


def test_length_mismatch_and_empty_raise():
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        compute_metrics(get_task("sst2"), [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="no predictions"):
        compute_metrics(get_task("sst2"), [], [])


def test_constant_predictions_give_nan_correlation():
    with pytest.warns(Warning):
        got = compute_metrics(get_task("stsb"), [1.0, 1.0, 1.0], [0.0, 2.0, 4.0])
    assert math.isnan(got["pearson"])
