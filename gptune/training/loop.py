"""The one Accelerate training loop, shared by pretraining and fine-tuning.

The caller supplies ``step_fn(model, batch) -> StepOutput`` (the loss of one micro-batch) and an
optional ``evaluate_fn(state) -> dict``; the loop owns accumulation, clipping, the schedule,
logging, periodic evaluation and checkpoints, interruption and non-finite losses.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptune.config import TrainConfig
from gptune.console import MetricsWriter, make_progress
from gptune.errors import GptuneError
from gptune.training.checkpoint import Checkpointer, TrainState


@dataclass
class StepOutput:
    """What one micro-batch contributes: the loss to differentiate and detached parts to log."""

    loss: torch.Tensor
    """Scalar loss of the micro-batch (mean over its tokens / examples)."""
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    """Named detached components (e.g. task_loss, lm_loss) to log."""
    tokens: int = 0
    """Tokens in the micro-batch (for tokens/s)."""


class Interrupted(Exception):
    """Raised after SIGINT/SIGTERM once a checkpoint has been written."""

    def __init__(self, signum: int, checkpoint: Path | None):
        self.signum = signum
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class NonFiniteLoss(GptuneError):
    pass


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between optimizer steps, saves, and stops."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def build_accelerator(cfg: TrainConfig, run_dir: Path | None, *, seed: int):
    """An Accelerator whose gradient accumulation keeps ``train.global_batch_size`` whatever the
    number of processes: accumulation = global / (micro x processes)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import ProjectConfiguration

    # Without accelerators, processes started by torchrun talk over gloo only when told cpu=True.
    cpu = not torch.cuda.is_available()
    world = PartialState(cpu=cpu).num_processes
    per_step = cfg.micro_batch_size * world
    if cfg.global_batch_size % per_step:
        raise GptuneError(
            f"train.global_batch_size={cfg.global_batch_size} is not a multiple of train.micro_batch_size "
            f"({cfg.micro_batch_size}) x processes ({world}); change one of them"
        )
    accum = cfg.global_batch_size // per_step
    # GPT LM heads share their weight with the token embedding; Accelerate warns on every save.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    kwargs = {}
    if cfg.trackers and run_dir is not None:
        kwargs = dict(log_with=cfg.trackers, project_config=ProjectConfiguration(project_dir=str(run_dir),
                                                                                logging_dir=str(run_dir / "logs")))
    acc = Accelerator(
        cpu=cpu,
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=accum,
        # our schedule counts optimizer steps; Accelerate would step it once per process otherwise
        step_scheduler_with_optimizer=False,
        **kwargs,
    )
    return acc


class EpochSampler(torch.utils.data.Sampler):
    """A seeded permutation per epoch: the order depends only on (seed, epoch), so a resumed run
    sees exactly the batches an uninterrupted one would."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def plan_steps(cfg: TrainConfig, batches_per_epoch: int, accum: int) -> int:
    """Optimizer steps of the run: ``train.max_steps``, else ``train.epochs`` worth of batches."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    return max(1, int(math.ceil(cfg.epochs * steps_per_epoch)))


def train(
    *,
    accelerator,
    model,
    optimizer,
    scheduler,
    loader,
    cfg: TrainConfig,
    state: TrainState,
    step_fn: Callable[[torch.nn.Module, dict], StepOutput],
    evaluate_fn: Callable[[TrainState], dict] | None = None,
    checkpointer: Checkpointer | None = None,
    metrics: MetricsWriter | None = None,
    on_epoch_end: Callable[[TrainState], None] | None = None,
    description: str = "train",
) -> TrainState:
    acc = accelerator
    metrics = metrics or MetricsWriter(None)
    total = state.total_steps
    model.train()
    running: dict[str, torch.Tensor] = {}
    n_running = 0
    tokens_window = 0
    t_window = time.perf_counter()
    last_saved: tuple[int, Path | None] = (-1, None)
    grad_norm = None
    progress = make_progress()
    with StopFlag() as stop, progress:
        bar = progress.add_task(description, total=total, completed=state.step, info="")
        while state.step < total:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(state.epoch)
            skip = state.batch_in_epoch
            finished_epoch = True
            for i, batch in enumerate(loader):
                if i < skip:  # resume mid-epoch: same order, skip what was consumed
                    continue
                with acc.accumulate(model):
                    out = step_fn(model, batch)
                    if not torch.isfinite(out.loss.detach()):
                        _nonfinite(acc, state, cfg, out)
                        optimizer.zero_grad(set_to_none=True)
                        state.batch_in_epoch += 1
                        continue
                    acc.backward(out.loss)
                    if acc.sync_gradients and cfg.grad_clip > 0:
                        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)  # before clipping
                    optimizer.step()
                    if acc.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batch_in_epoch += 1
                tokens_window += out.tokens
                for k, v in {"loss": out.loss.detach(), **out.parts}.items():
                    running[k] = running.get(k, 0) + v.detach().float()
                n_running += 1
                if not acc.sync_gradients:
                    continue
                state.step += 1
                progress.update(bar, completed=state.step)
                if state.step % cfg.log_every == 0 or state.step == total:
                    tok = int(acc.reduce(torch.tensor(tokens_window, device=acc.device), "sum").item())
                    state.tokens += tok
                    dt = time.perf_counter() - t_window
                    logged = {k: float(acc.reduce(v / n_running, "mean").item()) for k, v in running.items()}
                    logged.update(lr=scheduler.get_last_lr()[0], tokens=state.tokens, epoch=state.epoch,
                                  tokens_per_s=tok / max(dt, 1e-9))
                    if grad_norm is not None:
                        logged["grad_norm"] = float(grad_norm)  # of this optimizer step
                    metrics.write("train", step=state.step, **logged)  # and to the trackers
                    progress.update(bar, info=f"loss {logged['loss']:.4f} lr {logged['lr']:.2e} "
                                              f"{logged['tokens_per_s']:,.0f} tok/s")
                    running, n_running, tokens_window, t_window = {}, 0, 0, time.perf_counter()
                if evaluate_fn and cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < total:
                    state.history = evaluate_fn(state)
                    model.train()
                if checkpointer and cfg.save_every and state.step % cfg.save_every == 0:
                    last_saved = (state.step, checkpointer.save(state))
                if stop.signum is not None:
                    ckpt = last_saved[1] if last_saved[0] == state.step else None
                    if checkpointer and ckpt is None:
                        ckpt = checkpointer.save(state)
                    raise Interrupted(stop.signum, ckpt)
                if state.step >= total:
                    finished_epoch = i == len(loader) - 1 if hasattr(loader, "__len__") else False
                    break
            if state.step >= total and not finished_epoch:
                break
            state.epoch += 1
            state.batch_in_epoch = 0
            if on_epoch_end:
                on_epoch_end(state)
                model.train()
    return state


def _nonfinite(acc, state: TrainState, cfg: TrainConfig, out: StepOutput) -> None:
    state.skipped_batches += 1
    if state.skipped_batches > cfg.skip_nonfinite:
        raise NonFiniteLoss(
            f"the loss became {float(out.loss.detach())} at step {state.step + 1} (epoch {state.epoch}, "
            f"batch {state.batch_in_epoch}); the last good checkpoint is kept. Lower train.lr, or set "
            "train.skip_nonfinite=N to skip up to N bad batches"
        )
