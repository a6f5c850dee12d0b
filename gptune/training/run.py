"""A training run around the loop, as every runner opens and closes one: the run folder, the Accelerator,
the optimizer and schedule, the restored state, ``final/``."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from gptune.config import Recipe
from gptune.console import MetricsWriter, say, summary_table, warn
from gptune.data.cache import publish, rename_into_place, write_atomic
from gptune.faults import Faults
from gptune.training.checkpoint import (
    Checkpointer,
    TrainState,
    check_compatible,
    prepare_run_dir,
    read_state,
    resolve_resume,
)
from gptune.training.loop import LoopHooks, Training, build_accelerator, plan_steps, train


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


def resolve_precision(recipe: Recipe) -> Recipe:
    """``train.mixed_precision`` resolved (``auto`` by the device), said in the run's first lines, with one
    warning before the first step when bf16 would be emulated; recipe.yaml records the resolved value."""
    from gptune.hardware import precision_warning, resolve_mixed_precision

    value, why = resolve_mixed_precision(recipe.train.mixed_precision)
    say(f"  {why}")
    if (warning := precision_warning(value)) is not None:
        warn(warning)
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, mixed_precision=value))


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


def prepare_training(accelerator, recipe: Recipe, model, train_loader, *, run_dir: Path, ckpt: Path | None,
                     recipe_yaml: str, faults: Faults) -> Training:
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
    checkpointer = Checkpointer(accelerator, run_dir, recipe.train.keep_last, recipe_yaml, faults)
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
    from gptune.hub import write_card

    def write_all(tmp: Path) -> None:
        write(tmp)
        (tmp / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        write_card(tmp)

    final = run_dir / name
    publish(final, write_all, replace=True, strict=True)
    return final


def promote_best(accelerator, run_dir: Path) -> Path:
    """``task.keep_best``: the best evaluation's folder (``best/``) becomes ``final/``."""
    final = run_dir / "final"
    accelerator.wait_for_everyone()
    # no best/ folder: this run was resumed after it had ended, and final/ already holds its best
    if accelerator.is_main_process and (run_dir / "best").is_dir():
        rename_into_place(run_dir / "best", final, replace=True)
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------- the frame every runner uses
class Run:
    """One training run, as every runner opens, drives and closes it: the run folder and its recipe.yaml, the
    one Accelerator, one ``prepare`` of everything trained or evaluated, the loop, ``final/`` through the
    runner's own writer (with recipe, metrics and model card beside it), and the ending with its summary.

    A runner reads as a table of contents over it::

        run = Run(recipe, resume=..., overwrite=..., command=...)
        t = run.prepare(model, train_loader, {"validation": val_loader})
        state = run.train(step_fn, evaluate_fn=..., description="pretrain")
        final = run.save(writer, {"step": state.step, **metrics})
        return run.end(final, state, metrics, "pretrain finished")
    """

    def __init__(self, recipe: Recipe, *, resume: str | None = None, overwrite: bool = False, command: str,
                 started: float | None = None, faults: Faults | None = None):
        self.t0 = started if started is not None else time.perf_counter()  # the runner's start, for the summary
        recipe.check_complete()  # a recipe built in code, not through gptune.recipes, too
        self.recipe = resolve_precision(recipe)
        recipe = self.recipe
        self.faults = faults if faults is not None else Faults.from_env()  # tests' injected faults, else none
        self.recipe_yaml = recipe.to_yaml(recipe_header(command))
        self.accelerator, self.dir, self.ckpt = open_run(recipe, resume=resume, overwrite=overwrite,
                                                         command=command)
        self.training: Training | None = None
        self.eval_loaders: dict = {}

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def prepare(self, model, train_loader, eval_loaders: dict | None = None) -> Training:
        """The one place a run hands things to Accelerate: model, optimizer and train loader together, the
        schedule planned on the prepared loader, the evaluation loaders; the checkpoint restored."""
        self.training = prepare_training(self.accelerator, self.recipe, model, train_loader, run_dir=self.dir,
                                         ckpt=self.ckpt, recipe_yaml=self.recipe_yaml, faults=self.faults)
        self.eval_loaders = {k: self.accelerator.prepare(v) for k, v in (eval_loaders or {}).items()}
        return self.training

    @property
    def model(self):
        return self.training.model

    @property
    def metrics(self) -> MetricsWriter:
        return self.training.metrics

    def train(self, step_fn, *, evaluate_fn: Callable | None = None, on_epoch_end: Callable | None = None,
              description: str) -> TrainState:
        """The loop to ``train.max_steps``, then a resumable checkpoint (every run ends with one)."""
        t = self.training
        state = train(self.accelerator, t, self.recipe.train,
                      LoopHooks(step_fn, evaluate_fn, on_epoch_end, description, self.faults))
        t.checkpointer.save_unless_saved(state)
        return state

    def save(self, write: Callable, metrics: dict, name: str = "final") -> Path:
        """``final/`` (or ``name``): ``write(tmp, model, state_dict)`` fills a temporary folder on the main
        process with the unwrapped model and its full state dict (gathered on every process: FSDP/ZeRO-3
        shards), ``publish_final`` adds recipe, metrics and card and renames it into place."""
        acc = self.accelerator
        acc.wait_for_everyone()
        inner = acc.unwrap_model(self.model)
        state_dict = acc.get_state_dict(self.model)
        if acc.is_main_process:
            publish_final(self.dir, lambda tmp: write(tmp, inner, state_dict), self.recipe_yaml, metrics, name)
        acc.wait_for_everyone()
        return self.dir / name

    def promote_best(self) -> Path:
        return promote_best(self.accelerator, self.dir)

    def end(self, final: Path, state: TrainState, metrics: dict, title: str) -> RunSummary:
        """Close the metrics log, draw the curves, end on every process, print the summary."""
        self.metrics.close()
        if self.is_main:
            from gptune.plot import write_curves

            write_curves(self.dir)
        finish(self.accelerator)
        summary = RunSummary(self.dir, final, state.step, state.tokens, time.perf_counter() - self.t0, metrics)
        summary_table(title, summary.rows())
        return summary
