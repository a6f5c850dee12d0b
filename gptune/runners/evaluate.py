"""``gptune predict``: label a split with a task model rebuilt from its ``final/`` folder alone. (``eval
--task`` may fine-tune first, so its runner sits with the fine-tuning one: ``runners.finetune.run_task_eval``;
both score through ``gptune.evaluation.task_model``.)"""

from __future__ import annotations

from pathlib import Path

from gptune.console import say
from gptune.evaluation.task_model import split_loaders


def run_predict(model_dir: str, *, task: str | None = None, data_dir: str | None = None, split: str = "test",
                out: str | None = None, base_model: str | None = None) -> Path:
    """Label a split and write a GLUE-submission TSV (index, prediction)."""
    from gptune.evaluation.glue import predict, write_submission

    acc, model, info, data, loaders = split_loaders(model_dir, task, data_dir, (split,), base_model)
    preds, _, rows = predict(acc, model, loaders[split], info.task)
    indices = data.evals[split]["idx"]
    path = Path(out) if out else Path(model_dir) / f"predictions-{info.task.name}-{split}.tsv"
    if acc.is_main_process:
        write_submission(path, info.task, [indices[r] for r in rows], preds)
    say(f"predict: {len(preds)} rows of {info.task.name}/{split} -> {path}")
    return path
