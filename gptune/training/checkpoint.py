"""Run folders and checkpoints: ``step-NNNNNN/`` via ``save_state``, resume, atomic writes.

A checkpoint is written into a hidden temporary folder, its files fsync'ed, then renamed into
place; the ``latest`` pointer is replaced last. A run killed at any moment therefore leaves the
previous complete checkpoint as the latest one. ``trainer_state.json`` is the last file written
into a checkpoint, so its presence marks a complete one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gptune.config import Recipe
from gptune.data.cache import rename_into_place, write_atomic
from gptune.distributed import failures
from gptune.errors import GptuneError, first_line
from gptune.faults import NO_FAULTS, Faults
from gptune.recipes import recipe_diff

STATE_FILE = "trainer_state.json"
LATEST = "latest"

# Keys that may change when a run is resumed: how long it trains and how it logs, not what it is.
RESUMABLE_CHANGES = (
    "train.max_steps", "train.epochs", "train.eval_every", "train.eval_batches", "train.save_every",
    "train.keep_last", "train.log_every", "train.tracker", "train.skip_nonfinite", "train.dist_timeout",
    "train.num_workers", "train.mixed_precision", "data.num_proc",
    "data.cache_dir", "out_dir", "task.data_dir",
)


@dataclass
class TrainState:
    """Where a run is: saved in every checkpoint, restored on resume."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Current pass over the training data."""
    batch_in_epoch: int = 0
    """Micro-batches of the current epoch already consumed (skipped on resume)."""
    tokens: int = 0
    """Training tokens seen over all processes."""
    total_steps: int = 0
    """Steps the run is planned for."""
    skipped_batches: int = 0
    """Optimizer steps skipped (by every process) because a loss in them was not finite."""
    history: dict = field(default_factory=dict)
    """Last evaluation metrics."""
    best: dict = field(default_factory=dict)
    """``task.keep_best``: step, metric, value and metrics of the best evaluation so far."""
    lr_plan: dict = field(default_factory=dict)
    """The learning-rate plan (``training.optim.LrPlan``) the run follows; empty in older checkpoints."""
    processes: int = 0
    """Processes that wrote the checkpoint (0: unknown, an older checkpoint)."""


def fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_complete(ckpt: Path) -> bool:
    return (ckpt / STATE_FILE).exists()


def list_checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).glob("step-*") if p.is_dir() and is_complete(p))


def find_latest(run_dir: Path) -> Path | None:
    """The latest complete checkpoint of a run folder (the ``latest`` pointer, else the newest)."""
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST
    if pointer.exists():
        cand = run_dir / pointer.read_text().strip()
        if cand.is_dir() and is_complete(cand):
            return cand
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def newest_final(root: Path = Path("runs"), *, pretrained_only: bool = False) -> Path | None:
    """The newest ``final/`` under ``root`` written by gptune (its recipe.yaml beside it); with
    ``pretrained_only``, the newest written by ``gptune pretrain`` (a model whose recipe has no task)."""
    import yaml

    found = []
    for final in Path(root).glob("**/final"):
        if not (final / "recipe.yaml").is_file():
            continue
        if pretrained_only:
            if not (final / "config.json").is_file() or (final / "task.json").exists():
                continue
            try:
                saved = yaml.safe_load((final / "recipe.yaml").read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue
            if (saved.get("task") or {}).get("name"):
                continue
        found.append((final.stat().st_mtime, final))
    return max(found)[1] if found else None


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """``--resume auto`` -> latest checkpoint of the run folder (None when there is none yet is an error);
    ``--resume PATH`` -> that checkpoint or the latest one in that run folder."""
    if not resume:
        return None
    if resume == "auto":
        found = find_latest(run_dir)
        if found is None:
            raise GptuneError(f"--resume auto: {run_dir} holds no complete checkpoint (step-*/) to resume from; "
                              "drop --resume to start a new run")
        return found
    path = Path(resume)
    if not path.exists():
        raise GptuneError(f"--resume {resume}: no such checkpoint folder")
    if is_complete(path):
        return path
    found = find_latest(path)
    if found is None:
        raise GptuneError(f"--resume {resume}: not a complete checkpoint (no {STATE_FILE}) and holds no step-*/ folder")
    return found


def prepare_run_dir(run_dir: Path, *, resuming: bool, overwrite: bool) -> None:
    """Refuse to write a new run over an old one unless asked to."""
    run_dir = Path(run_dir)
    holds_run = run_dir.exists() and any(
        (run_dir / n).exists() for n in ("final", LATEST, "metrics.jsonl")
    ) or bool(list(run_dir.glob("step-*")))
    if holds_run and not resuming:
        if not overwrite:
            raise GptuneError(f"output folder {run_dir} already holds a run; pass --resume auto to continue it, "
                              "--overwrite to replace it, or --out-dir for a new folder")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def check_compatible(saved_recipe: dict, recipe: Recipe, ckpt: Path) -> list[str]:
    """Keys that differ between the checkpoint's recipe and this one, other than the training length."""
    diff = recipe_diff(saved_recipe, recipe.to_dict())
    bad = [k for k in diff if k not in RESUMABLE_CHANGES]
    if bad:
        raise GptuneError(
            f"--resume {ckpt}: the checkpoint was written by a different recipe; these keys differ: "
            f"{', '.join(bad)} (only the training length and logging may change on resume)"
        )
    return diff


class Checkpointer:
    """Writes and prunes ``step-NNNNNN/`` checkpoints of one run folder."""

    def __init__(self, accelerator, run_dir: Path, keep_last: int, recipe_yaml: str, faults: Faults = NO_FAULTS):
        self.accelerator = accelerator
        self.faults = faults
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.recipe_yaml = recipe_yaml
        self.saved_step: int | None = None
        """Step of the newest checkpoint written or loaded by this run."""

    def save(self, state: TrainState) -> Path:
        """Every process takes part (each writes its own RNG state, the main one the weights); an error on
        any of them is raised on all, after the partial checkpoint is removed."""
        acc = self.accelerator
        name = f"step-{state.step:06d}"
        final = self.run_dir / name
        tmp = self.run_dir / f".tmp-{name}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        error = _attempt(lambda: self._write_state(tmp, state))
        self._raise_if_failed(error, final, tmp)
        error = _attempt(lambda: self._publish(tmp, final, state)) if acc.is_main_process else None
        self._raise_if_failed(error, final, tmp)  # also the barrier: nobody goes on before the rename
        self.saved_step = state.step
        return final

    def _write_state(self, tmp: Path, state: TrainState) -> None:
        self.faults.checkpoint_write(state.step, self.accelerator.process_index)
        self.accelerator.save_state(str(tmp), safe_serialization=True)

    def _publish(self, tmp: Path, final: Path, state: TrainState) -> None:
        """Main process: recipe and state beside the weights, fsync, rename into place, move ``latest``."""
        (tmp / "recipe.yaml").write_text(self.recipe_yaml, encoding="utf-8")
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
        self.faults.checkpoint_state_written(state.step)
        fsync_tree(tmp)
        rename_into_place(tmp, final, replace=True)
        write_atomic(self.run_dir / LATEST, final.name + "\n")
        self._prune()

    def _raise_if_failed(self, error: str | None, final: Path, tmp: Path) -> None:
        problems = failures(self.accelerator, error)
        if not problems:
            return
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = find_latest(self.run_dir)
        reason = problems[0] if len(problems) == 1 else "; ".join(problems)
        raise GptuneError(f"could not write checkpoint {final}: {reason}; the partial checkpoint was removed"
                          + (f" and {kept.name} is intact" if kept else ""))

    def save_unless_saved(self, state: TrainState) -> Path | None:
        """The end of a run: a resumable checkpoint of its last step, whatever ``train.save_every`` is."""
        return None if self.saved_step == state.step else self.save(state)

    def _prune(self) -> None:
        ckpts = list_checkpoints(self.run_dir)
        for old in ckpts[: max(0, len(ckpts) - self.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, ckpt: Path) -> TrainState:
        """Restore everything from ``ckpt``. Weights come from safetensors and the optimizer/RNG pickles
        are read with ``weights_only=True``: a checkpoint can hold data, never code that runs."""
        saved = read_state(ckpt)
        here = self.accelerator.num_processes
        # older checkpoints do not say: save_state wrote one random_states_<rank>.pkl per process
        wrote = saved.processes or len(list(Path(ckpt).glob("random_states_*.pkl")))
        if wrote and wrote != here:
            raise GptuneError(f"--resume {ckpt}: the checkpoint was written by {wrote} process(es) and "
                              f"this run has {here}; resume with --num-processes {wrote} (the data "
                              "position and random states are per process)")
        try:
            self.accelerator.load_state(str(ckpt))
            self.saved_step = saved.step
            return saved
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError) as e:
            first = first_line(e)
            raise GptuneError(f"--resume {ckpt}: cannot load this checkpoint safely ({type(e).__name__}: "
                              f"{first[:200]}); resume from an earlier step-*/ folder") from None
        except Exception as e:  # pickle.UnpicklingError and friends from a tampered file
            if "pickl" in type(e).__name__.lower() or "weights_only" in str(e):
                raise GptuneError(f"--resume {ckpt}: refused to unpickle a file that is not plain data "
                                  f"({type(e).__name__}); the checkpoint may have been tampered with") from None
            raise


def _attempt(write) -> str | None:
    """Run ``write()``; an OSError becomes its one-line reason (None when it worked)."""
    try:
        write()
    except OSError as e:
        return "the disk is full" if e.errno == errno.ENOSPC else str(e)
    return None


def read_state(ckpt: Path) -> TrainState:
    """The ``TrainState`` a checkpoint was written at (its ``trainer_state.json``)."""
    path = Path(ckpt) / STATE_FILE
    try:
        return TrainState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise GptuneError(f"--resume {ckpt}: cannot read {STATE_FILE} ({type(e).__name__}: {e})") from None
