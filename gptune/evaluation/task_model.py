"""A task model rebuilt from its ``final/`` folder alone, and its scores on splits. Shared by the runners of
``gptune eval --task`` (a task model as it is, or a plain LM once fine-tuned on the task) and ``predict``."""

from __future__ import annotations

from pathlib import Path

from gptune.console import console, is_main_process, say
from gptune.errors import GptuneError
from gptune.tasks import TaskSpec

EVAL_BATCH_SIZE = 16
"""Rows per evaluation batch of ``eval --task`` / ``predict``."""


def _same_task(info, task_name: str | None, model: str) -> None:
    if task_name is None:
        return
    from gptune.tasks import get_task

    try:
        wanted = get_task(task_name).name
    except GptuneError:
        wanted = task_name  # a custom task's name
    if wanted != info.task.name:
        raise GptuneError(f"--model {model} was fine-tuned on task '{info.task.name}', not '{wanted}'; "
                          f"pass --task {info.task.name} or a model fine-tuned on {wanted}")


def split_loaders(model_dir: str, task_name: str | None, data_dir: str | None, splits: tuple[str, ...] | None,
                  base_model: str | None = None):
    """(accelerator, model, TaskModelInfo, task data, {split: loader}) for ``splits`` (None: the task's eval
    splits), rebuilt from the model folder alone."""
    from gptune.data.task_data import build_collator, build_task_loaders, load_task_data
    from gptune.modeling.task_io import TaskModelInfo, check_model_folder, is_task_model, load_task_model
    from gptune.training.loop import inference_accelerator

    check_model_folder(model_dir)
    if is_task_model(model_dir):  # refuse a task mismatch before loading any weights
        _same_task(TaskModelInfo.read(Path(model_dir)), task_name, model_dir)
    model, tokenizer, info = load_task_model(model_dir, base_model=base_model)
    acc = inference_accelerator()
    data = load_task_data(info.task, tokenizer, info.special_ids, acc, data_dir=data_dir, style=info.input_style,
                          max_length=info.max_length, train_split=False, eval_splits=splits)
    collate = build_collator(info.task, tokenizer, info.special_ids, info.input_style)
    _, loaders = build_task_loaders(data, collate, micro_batch_size=EVAL_BATCH_SIZE // 2)
    model = acc.prepare(model)
    loaders = {k: acc.prepare(v) for k, v in loaders.items()}
    return acc, model, info, data, loaders


def score_task_model(model_dir: str, *, task: str | None = None, data_dir: str | None = None,
                     split: str | None = None, base_model: str | None = None) -> dict:
    """{split: metrics} of a task model folder on its eval split(s) (or ``split``), printed as a table."""
    from gptune.evaluation.glue import predict
    from gptune.evaluation.metrics import compute_metrics

    say(f"eval: model {model_dir} | data {data_dir or 'the task defaults (--data-dir, $GPTUNE_GLUE_DIR, ./glue_data, hub)'}")
    acc, model, info, data, loaders = split_loaders(model_dir, task, data_dir, (split,) if split else None,
                                                     base_model)
    results = {}
    for name, loader in loaders.items():
        preds, refs, _ = predict(acc, model, loader, info.task)
        if refs and (refs[0] == -1 or refs[0] != refs[0]):
            raise GptuneError(f"split '{name}' of task {info.task.name} has no labels to score; "
                              "use gptune predict for unlabeled splits")
        results[name] = compute_metrics(info.task, preds, refs)
    _print_results(info.task, results)
    return results


def _print_results(task: TaskSpec, results: dict) -> None:
    if not is_main_process():
        return
    from rich.table import Table

    table = Table(title=f"{task.name}", title_justify="left")
    table.add_column("split")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for split, metrics in results.items():
        for k, v in metrics.items():
            table.add_row(split, k, f"{100 * v:.2f}")
    console.print(table)
