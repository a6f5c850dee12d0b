"""Predictions and scores of a task model on one split, gathered over processes without the
duplicated tail a distributed sampler pads with (``gather_for_metrics``)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from gptune.evaluation.metrics import compute_metrics
from gptune.tasks import TaskSpec


@torch.no_grad()
def predict(accelerator, model, loader, task: TaskSpec) -> tuple[list, list, list]:
    """(predictions, references, rows) in dataset order: label ids (argmax over classes or candidates)
    or floats (regression); references are -1 / NaN for unlabeled rows; rows are dataset positions."""
    model.eval()
    preds, refs, rows = [], [], []
    for batch in loader:
        labels = batch.pop("labels", None)
        row = batch.pop("row")
        logits = model(**batch)["logits"]  # (B, L) or (B, K)
        p = logits[:, 0].float() if task.is_regression else logits.argmax(-1)
        if labels is None:
            labels = torch.full((p.shape[0],), float("nan") if task.is_regression else -1,
                                device=p.device, dtype=p.dtype)
        p, labels, row = accelerator.gather_for_metrics((p, labels, row))
        preds += p.tolist()
        refs += labels.tolist()
        rows += row.tolist()
    order = sorted(range(len(rows)), key=rows.__getitem__)  # eval loaders may visit rows by length
    return [preds[i] for i in order], [refs[i] for i in order], [rows[i] for i in order]


def evaluate_splits(accelerator, model, loaders: dict, task: TaskSpec) -> dict:
    """{split: metrics} for every labeled eval split (MNLI: matched and mismatched)."""
    return {split: compute_metrics(task, *predict(accelerator, model, loader, task)[:2])
            for split, loader in loaders.items()}


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """{split: {metric: v}} -> {metric: v} for a single split, {split/metric: v} for several."""
    if len(results) == 1:
        return dict(next(iter(results.values())))
    return {f"{s}/{k}": v for s, m in results.items() for k, v in m.items()}


def label_string(task: TaskSpec, pred) -> str:
    """What a GLUE submission expects: the label as written in the files, or the score (regression)."""
    if task.is_regression:
        return f"{float(pred):.3f}"
    return task.labels[int(pred)]


def write_submission(path: Path, task: TaskSpec, indices: list[int], preds: list) -> Path:
    """GLUE-submission TSV: a header ``index\\tprediction``, one row per example."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["index", "prediction"])
        for i, p in zip(indices, preds, strict=True):
            w.writerow([i, label_string(task, p)])
    return path
