"""Metrics equal sklearn/scipy and the `evaluate` glue script's formulas; the GLUE average rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from gptune.evaluation.metrics import compute_metrics, glue_average, paper_scores, task_score
from gptune.tasks import GLUE_TASKS, custom_task, get_task


def evaluate_glue_reference(config_name, predictions, references):
    """Same formulas, keys and input casting as huggingface/evaluate metrics/glue/glue.py `_compute`
    (features int64, float32 for stsb; `format="numpy"`)."""
    dtype = np.float32 if config_name == "stsb" else np.int64
    predictions, references = np.asarray(predictions, dtype=dtype), np.asarray(references, dtype=dtype)
    if config_name == "cola":
        return {"matthews_correlation": matthews_corrcoef(references, predictions)}
    if config_name == "stsb":
        return {
            "pearson": float(pearsonr(predictions, references)[0]),
            "spearmanr": float(spearmanr(predictions, references)[0]),
        }
    if config_name in ("mrpc", "qqp"):
        return {
            "accuracy": float((predictions == references).mean()),
            "f1": float(f1_score(y_true=references, y_pred=predictions)),
        }
    return {"accuracy": float((predictions == references).mean())}


def random_case(task, n=200, seed=0):
    rng = np.random.default_rng(seed)
    if task.is_regression:
        refs = rng.uniform(0, 5, n)
        return (refs + rng.normal(0, 1.5, n)).tolist(), refs.tolist()
    k = len(task.labels)
    refs = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.6, refs, rng.integers(0, k, n))  # better than chance
    return preds.tolist(), refs.tolist()


@pytest.mark.parametrize("name", sorted(GLUE_TASKS))
def test_matches_evaluate_glue_formulas_keys_and_values(name):
    task = get_task(name)
    preds, refs = random_case(task, seed=len(name))
    ours = compute_metrics(task, preds, refs)
    ref = evaluate_glue_reference(task.hub_name, preds, refs)
    assert set(ours) == set(ref)
    for key in ref:
        assert ours[key] == ref[key], key  # same calls, same casting: bit-identical
        assert isinstance(ours[key], float)


def test_values_equal_sklearn_scipy_directly():
    preds, refs = random_case(get_task("mrpc"), seed=3)
    got = compute_metrics(get_task("mrpc"), preds, refs)
    assert got["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    assert got["f1"] == pytest.approx(f1_score(refs, preds))
    preds, refs = random_case(get_task("cola"), seed=4)
    assert compute_metrics(get_task("cola"), preds, refs)["matthews_correlation"] == pytest.approx(
        matthews_corrcoef(refs, preds)
    )
    preds, refs = random_case(get_task("stsb"), seed=5)
    got = compute_metrics(get_task("stsb"), preds, refs)
    assert got["pearson"] == pytest.approx(pearsonr(preds, refs)[0], abs=1e-6)
    assert got["spearmanr"] == pytest.approx(spearmanr(preds, refs)[0], abs=1e-6)


def test_f1_positive_class_is_label_index_one():
    # all-zero predictions: accuracy 0.5 but F1 of class 1 ("equivalent") is 0
    got = compute_metrics(get_task("mrpc"), [0, 0, 0, 0], [0, 1, 0, 1])
    assert got == {"accuracy": 0.5, "f1": 0.0}


def test_custom_task_uses_its_metrics():
    task = custom_task(
        "topics", "classification", ["t"], "y", ["a", "b", "c"], {}, metrics=["accuracy", "f1_macro"]
    )
    preds, refs = [0, 1, 2, 2, 1], [0, 1, 1, 2, 2]
    got = compute_metrics(task, preds, refs)
    assert got == {
        "accuracy": pytest.approx(0.6),
        "f1_macro": pytest.approx(f1_score(refs, preds, average="macro")),
    }


def test_length_mismatch_and_empty_raise():
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        compute_metrics(get_task("sst2"), [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="no predictions"):
        compute_metrics(get_task("sst2"), [], [])


def test_glue_average_rule():
    results = {
        "cola": {"matthews_correlation": 0.40},
        "mrpc": {"f1": 0.80, "accuracy": 0.70},  # task score 0.75
        "stsb": {"pearson": 0.90, "spearmanr": 0.80},  # 0.85
        "mnli": {  # mean of matched / mismatched: 0.80
            "validation_matched": {"accuracy": 0.82},
            "validation_mismatched": {"accuracy": 0.78},
        },
    }
    assert task_score(results["mnli"]) == pytest.approx(0.80)
    assert glue_average(results) == pytest.approx(100 * (0.40 + 0.75 + 0.85 + 0.80) / 4)


def test_glue_average_of_paper_numbers_reproduces_paper_table():
    # GPT-1 Table 4 lists the per-task scores used here; the leaderboard averages MRPC/QQP F1 with
    # accuracy, which the paper does not print, so only a hand-computed check on what it does print.
    scores = paper_scores()
    assert set(scores) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"}
    per_task = {name: {k: v / 100 for k, v in s.items()} for name, s in scores.items()}
    expected = (45.4 + 91.3 + 82.3 + 82.0 + 70.3 + (82.1 + 81.4) / 2 + 88.1 + 56.0) / 8
    assert glue_average(per_task) == pytest.approx(expected)


def test_constant_predictions_give_nan_correlation_like_scipy():
    with pytest.warns(Warning):
        got = compute_metrics(get_task("stsb"), [1.0, 1.0, 1.0], [0.0, 2.0, 4.0])
    assert math.isnan(got["pearson"])
