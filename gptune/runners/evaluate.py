"""``gptune eval --task`` / ``--glue`` and ``gptune predict``: score or label a split with a task model
rebuilt from its ``final/`` folder alone (or, from a plain LM, fine-tune first)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gptune.config import Recipe, build_recipe, read_recipe_file
from gptune.console import console, is_main_process, say
from gptune.errors import GptuneError
from gptune.tasks import GLUE_TASKS, TaskSpec


def _eval_recipe(info, data_dir: str | None, batch_size: int = 16) -> Recipe:
    """A recipe holding what the data pipeline needs to rebuild a task model's inputs."""
    t = info.task
    task = {"name": t.name, "data_dir": data_dir, "input_style": info.input_style, "max_length": info.max_length}
    if not t.glue_dir:  # custom: the files recorded in task.json
        task.update(kind=t.kind, train_file=t.splits.get("train"), eval_file=t.splits.get("validation"),
                    text_fields=list(t.text_fields), label_field=t.label_field,
                    labels=None if t.labels is None else list(t.labels))
    return build_recipe({"model": {"name_or_path": "x"}, "task": task,
                         "train": {"max_steps": 1, "micro_batch_size": batch_size // 2,
                                   "global_batch_size": batch_size // 2}})


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


def _split_loaders(model_dir: str, task_name: str | None, data_dir: str | None, splits: tuple[str, ...] | None,
                   base_model: str | None = None):
    """Rebuild model + tokenizer + data loaders for ``splits`` from the model folder alone."""
    from accelerate import Accelerator

    from gptune.modeling.task_io import TaskModelInfo, check_model_folder, is_task_model, load_task_model
    from gptune.runners.finetune import build_collator, build_task_loaders, load_task_data

    check_model_folder(model_dir)
    if is_task_model(model_dir):  # refuse a task mismatch before loading any weights
        _same_task(TaskModelInfo.read(Path(model_dir)), task_name, model_dir)
    model, tokenizer, info = load_task_model(model_dir, base_model=base_model)
    recipe = _eval_recipe(info, data_dir)
    acc = Accelerator()
    data = load_task_data(recipe, info.task, tokenizer, info.special_ids, acc, train_split=False,
                          eval_splits=splits)
    _, loaders = build_task_loaders(recipe, data, build_collator(recipe, info.task, tokenizer, info.special_ids))
    model = acc.prepare(model)
    loaders = {k: acc.prepare(v) for k, v in loaders.items()}
    return acc, model, info, data, loaders


def run_task_eval(model_dir: str, *, task: str | None = None, data_dir: str | None = None,
                  split: str | None = None, base_model: str | None = None) -> dict:
    """{split: metrics} of a fine-tuned task model on its eval split(s) (or ``split``)."""
    from gptune.evaluation.glue import predict, score
    from gptune.modeling.task_io import is_task_model

    if not is_task_model(model_dir):
        if task is None:
            raise GptuneError(f"--model {model_dir}: not a task model; pass --task to fine-tune it on one first")
        summary = _finetune_for_eval(task, model_dir, data_dir, lora=True)
        model_dir = str(summary.final_dir)
    say(f"eval: model {model_dir} | data {data_dir or 'the task defaults (--data-dir, $GPTUNE_GLUE_DIR, ./glue_data, hub)'}")
    acc, model, info, data, loaders = _split_loaders(model_dir, task, data_dir, (split,) if split else None,
                                                      base_model)
    results = {}
    for name, loader in loaders.items():
        preds, refs, _ = predict(acc, model, loader, info.task)
        if refs and (refs[0] == -1 or refs[0] != refs[0]):
            raise GptuneError(f"split '{name}' of task {info.task.name} has no labels to score; "
                              "use gptune predict for unlabeled splits")
        results[name] = score(info.task, preds, refs)
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


def run_predict(model_dir: str, *, task: str | None = None, data_dir: str | None = None, split: str = "test",
                out: str | None = None, base_model: str | None = None) -> Path:
    """Label a split and write a GLUE-submission TSV (index, prediction)."""
    from gptune.evaluation.glue import predict, write_submission

    acc, model, info, data, loaders = _split_loaders(model_dir, task, data_dir, (split,), base_model)
    preds, _, rows = predict(acc, model, loaders[split], info.task)
    indices = data.evals[split]["idx"]
    path = Path(out) if out else Path(model_dir) / f"predictions-{info.task.name}-{split}.tsv"
    if acc.is_main_process:
        write_submission(path, info.task, [indices[r] for r in rows], preds)
    say(f"predict: {len(preds)} rows of {info.task.name}/{split} -> {path}")
    return path


# ----------------------------------------------------------------------------- --glue
def _has_data(task: TaskSpec, data_dir: str | None) -> bool:
    from gptune.data.glue import _task_folder, find_glue_dir

    folder = find_glue_dir(data_dir)
    if folder is None:
        return False
    try:
        tf = _task_folder(task, folder)
    except GptuneError:
        return False
    return all((tf / task.splits[s]).is_file() for s in ("train", *task.eval_splits))


def _finetune_for_eval(task: str, model: str, data_dir: str | None, *, lora: bool, sets: list[str] | None = None,
                       recipe_path: str | None = None):
    from gptune.runners.finetune import DEFAULT_RECIPE, run_finetune

    raw = read_recipe_file(recipe_path or DEFAULT_RECIPE)
    r = build_recipe(raw, {"task.name": task, "model.name_or_path": model, "task.data_dir": data_dir,
                           "lora.enabled": lora}, sets)
    out = Path("runs/glue") / Path(model).name.replace("/", "_") / f"{task}-{'lora' if lora else 'full'}"
    r = dataclasses.replace(r, out_dir=str(out))
    return run_finetune(r, overwrite=True, command=f"gptune finetune --task {task} --model {model}")


def run_glue_eval(model: str, *, data_dir: str | None = None, lora: bool = True, sets: list[str] | None = None,
                  recipe_path: str | None = None) -> dict:
    """Fine-tune + evaluate every GLUE task with local data; one table with the GLUE-style average
    (``metrics.glue_average``) and the GPT-1 paper's number beside each task."""
    from gptune.evaluation.metrics import glue_average, paper_scores, task_score

    tasks = [t for t in GLUE_TASKS.values() if _has_data(t, data_dir)]
    if not tasks:
        raise GptuneError("--glue: no GLUE task has train and dev files here; pass --data-dir DIR "
                          "(glue_data layout, e.g. DIR/RTE/train.tsv) or set GPTUNE_GLUE_DIR")
    say(f"eval --glue: model {model} | tasks {', '.join(t.name for t in tasks)}")
    results = {}
    for t in tasks:
        summary = _finetune_for_eval(t.name, model, data_dir, lora=lora, sets=sets, recipe_path=recipe_path)
        m = summary.metrics
        results[t.name] = ({s: {k.split('/', 1)[1]: v for k, v in m.items() if k.startswith(s + "/")}
                            for s in t.eval_splits} if len(t.eval_splits) > 1 else dict(m))
    paper = paper_scores()
    if is_main_process():
        from rich.table import Table

        table = Table(title=f"GLUE dev: {model}", title_justify="left")
        for col in ("task", "metrics (x100)", "score", "GPT-1 paper (test)"):
            table.add_column(col, justify="left" if col in ("task", "metrics (x100)") else "right")
        for name, m in results.items():
            flat = m if not any(isinstance(v, dict) for v in m.values()) else \
                {f"{s}/{k}": v for s, d in m.items() for k, v in d.items()}
            table.add_row(name, ", ".join(f"{k} {100 * v:.1f}" for k, v in flat.items()),
                          f"{100 * task_score(m):.1f}",
                          ", ".join(f"{k} {v:.1f}" for k, v in paper.get(name, {}).items()) or "-")
        avg = glue_average(results)
        table.add_row("average", f"{len(results)} of 9 tasks (mean of per-task scores)", f"{avg:.1f}", "72.8 (all 9)")
        console.print(table)
    return results
