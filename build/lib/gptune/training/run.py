"""A training run around the loop, as every runner opens and closes one: the run folder, the Accelerator,
the optimizer and schedule, the restored state, ``final/``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from gptune.config import Recipe
from gptune.console import MetricsWriter, say
from gptune.training.checkpoint import (
    Checkpointer,
    TrainState,
    check_compatible,
    prepare_run_dir,
    read_state,
    resolve_resume,
    write_atomic,
)
from gptune.training.loop import build_accelerator, plan_steps


@dataclass
class RunSummary:
    run_dir: Path
    final_dir: Path
    steps: int
    tokens: int
    seconds: float
    metrics: dict

    def rows(self) -> dict:
        return {"run folder": str(self.run_dir), "final model": str(self.final_dir), "steps": self.steps,
                "tokens": self.tokens, "wall time (s)": round(self.seconds, 1),
                "tokens/s": round(self.tokens / max(self.seconds, 1e-9)), **self.metrics}


def recipe_header(command: str) -> str:
    return f"# resolved recipe, written by gptune; replay with:\n#   {command}\n"


def check_trackers(names: list[str]) -> None:
    """Every ``train.tracker`` importable, before any work: else one line naming what to install."""
    import importlib.util

    from gptune.config import TRACKERS
    from gptune.errors import GptuneError

    missing = [n for n in names if importlib.util.find_spec(TRACKERS[n]) is None]
    if missing:
        pip = " ".join(TRACKERS[n].replace("_", "-") for n in missing)
        raise GptuneError(f"train.tracker: {', '.join(missing)} needs its package; pip install {pip}")


def open_run(recipe: Recipe, *, resume: str | None, overwrite: bool, command: str):
    """Resolve the checkpoint to resume from, create the Accelerator and the run folder, write recipe.yaml."""
    run_dir = recipe.run_dir
    check_trackers(recipe.train.trackers)
    ckpt = resolve_resume(resume, run_dir)
    if ckpt is not None:
        saved = yaml.safe_load((ckpt / "recipe.yaml").read_text()) if (ckpt / "recipe.yaml").exists() else {}
        check_compatible(saved, recipe, ckpt)
    accelerator = build_accelerator(recipe.train, run_dir, seed=recipe.seed)
    if accelerator.is_main_process:
        prepare_run_dir(run_dir, resuming=ckpt is not None, overwrite=overwrite)
        write_atomic(run_dir / "recipe.yaml", recipe.to_yaml(recipe_header(command)))
    accelerator.wait_for_everyone()
    return accelerator, run_dir, ckpt


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop logged events past the checkpoint: they are about to be produced again."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
        write_atomic(path, "".join(ln + "\n" for ln in keep))


@dataclass
class Training:
    """Everything ``training.loop.train`` needs, prepared once by ``prepare_training``."""

    model: object
    optimizer: object
    loader: object
    scheduler: object
    checkpointer: Checkpointer
    state: TrainState
    metrics: MetricsWriter
    recipe_yaml: str


def prepare_training(accelerator, recipe: Recipe, model, train_loader, *, run_dir: Path, ckpt: Path | None,
                     command: str) -> Training:
    """Optimizer, schedule (planned on the prepared loader), one ``accelerator.prepare``, checkpointer,
    and -- when resuming -- the restored state with the metrics log cut back to the checkpoint."""
    from gptune.training.optim import LrPlan, build_optimizer, build_scheduler, plan_lr

    optimizer = build_optimizer(model, recipe.train)
    ds = accelerator.state.deepspeed_plugin
    if ds is not None and ds.zero_stage == 3:
        from gptune.modeling.gpt import register_head_for_zero3

        register_head_for_zero3(model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    total = plan_steps(recipe.train, len(train_loader), accelerator.gradient_accumulation_steps)
    saved = read_state(ckpt) if ckpt is not None else None
    if saved is None:
        plan = plan_lr(recipe.train, total)
    else:  # the checkpoint's plan (older checkpoints: the first plan of their total), extended if need be
        previous = LrPlan(**saved.lr_plan) if saved.lr_plan else plan_lr(recipe.train, saved.total_steps)
        plan = plan_lr(recipe.train, total, previous, saved.step)
    scheduler = accelerator.prepare(build_scheduler(optimizer, recipe.train, plan))
    recipe_yaml = recipe.to_yaml(recipe_header(command))
    checkpointer = Checkpointer(accelerator, run_dir, recipe.train.keep_last, recipe_yaml)
    state = TrainState(total_steps=total)
    if ckpt is not None:
        state = checkpointer.load(ckpt)
        state.total_steps = total
        say(f"  resumed from {ckpt} at step {state.step} of {total}")
        if accelerator.is_main_process:
            truncate_metrics(run_dir / "metrics.jsonl", state.step)
    state.lr_plan = dataclasses.asdict(plan)
    state.processes = accelerator.num_processes
    if recipe.train.trackers:
        accelerator.init_trackers(recipe.name)
    return Training(model, optimizer, train_loader, scheduler, checkpointer, state,
                    MetricsWriter(run_dir / "metrics.jsonl", accelerator.log if recipe.train.trackers else None),
                    recipe_yaml)


def finish(accelerator) -> None:
    """End a run on every process: wait for the others, close trackers, and tear the process group down
    before interpreter exit (left to exit, gloo's threads can abort a rank with "terminate called")."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def publish_final(run_dir: Path, write, recipe_yaml: str, metrics: dict, name: str = "final") -> Path:
    """``final/`` (or ``name``) written whole or not at all (main process): ``write(tmp)`` fills a
    temporary folder, the recipe, metrics and model card go beside it, then it is renamed into place."""
    import os
    import shutil

    from gptune.hub import write_card

    final, tmp = run_dir / name, run_dir / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    (tmp / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    write_card(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def promote_best(accelerator, run_dir: Path) -> Path:
    """``task.keep_best``: the best evaluation's folder (``best/``) becomes ``final/``."""
    import os
    import shutil

    final = run_dir / "final"
    accelerator.wait_for_everyone()
    # no best/ folder: this run was resumed after it had ended, and final/ already holds its best
    if accelerator.is_main_process and (run_dir / "best").is_dir():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(run_dir / "best", final)
    accelerator.wait_for_everyone()
    return final
