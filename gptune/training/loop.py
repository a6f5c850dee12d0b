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
from gptune.distributed import agree
from gptune.errors import GptuneError, Interrupted, NonFiniteLoss
from gptune.faults import NO_FAULTS, Faults
from gptune.hardware import resolve_mixed_precision
from gptune.training.checkpoint import Checkpointer, TrainState


@dataclass
class StepOutput:
    """What one micro-batch contributes: the loss to differentiate and detached parts to log."""

    loss: torch.Tensor
    """Scalar loss of the micro-batch (mean over its tokens / examples)."""
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    """Named detached components (e.g. task_loss, lm_loss) to log."""
    tokens: int | torch.Tensor = 0
    """Tokens in the micro-batch (for tokens/s); a device tensor is summed without a host sync."""


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


def launch_engine() -> str | None:
    """The sharding engine ``accelerate launch`` asked for (from its environment): "deepspeed", "fsdp" or None."""
    import os

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return None


def _process_state(engine: str | None, timeout):
    """Accelerate's process state, right for every engine on GPUs and on CPU processes.

    Plain DDP on CPU needs ``cpu=True`` (gloo, MULTI_CPU). ``cpu=True`` would also switch DeepSpeed and
    FSDP off, so under those the state is built with the gloo backend instead: without it Accelerate
    reports 1 process, index 0 on every rank under DeepSpeed. Accelerate turns FSDP on only for
    accelerator devices; on CPU processes gptune marks the state multi-device so Accelerate's own
    FSDP2 path (``fully_shard`` per block, then the root) runs, over gloo -- how the test suite proves
    sharding without a GPU.
    """
    import os

    from accelerate import PartialState
    from accelerate.utils import DistributedType

    cuda = torch.cuda.is_available()
    if engine is None or cuda:
        return PartialState(cpu=engine is None and not cuda, timeout=timeout)
    if engine == "fsdp" and os.environ.get("FSDP_VERSION", "1") != "2":
        raise GptuneError("fsdp_config.fsdp_version: FSDP on CPU processes needs fsdp_version: 2 (FSDP2)")
    state = PartialState(backend="gloo", timeout=timeout)
    if engine == "fsdp" and state.distributed_type == DistributedType.NO and state.num_processes > 1:
        state._shared_state["distributed_type"] = DistributedType.MULTI_GPU  # Accelerate then takes FSDP
    return state


def _deepspeed_plugin(cfg: TrainConfig, accum: int):
    """The launcher's DeepSpeed config with gptune's numbers where it says ``auto`` (or nothing): the
    accumulation, clipping and batch sizes are decided by the recipe, before any DataLoader is prepared."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()
    ds = plugin.deepspeed_config
    ours = {"gradient_accumulation_steps": accum, "gradient_clipping": cfg.grad_clip,
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size, "train_batch_size": cfg.global_batch_size}
    for key, value in ours.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif float(ds[key]) != float(value):
            raise GptuneError(f"deepspeed config {key}={ds[key]} disagrees with the recipe ({value}); set it to "
                              "auto (gptune derives it from train.micro_batch_size, global_batch_size, grad_clip)")
    return plugin


def build_accelerator(cfg: TrainConfig, run_dir: Path | None, *, seed: int):
    """An Accelerator whose gradient accumulation keeps ``train.global_batch_size`` whatever the
    number of processes: accumulation = global / (micro x processes). Mixed precision:
    ``train.mixed_precision`` resolved by ``hardware.resolve_mixed_precision`` (``auto``: the launcher's,
    else by the device)."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import (
        DataLoaderConfiguration,
        GradientAccumulationPlugin,
        InitProcessGroupKwargs,
        ProjectConfiguration,
    )

    cpu = not torch.cuda.is_available()
    if not cpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for fp32 matmuls (Ampere+)
        torch.backends.cudnn.allow_tf32 = True
    # the process group is created here, first: a collective waiting longer than this raises
    timeout = timedelta(seconds=cfg.dist_timeout)
    engine = launch_engine()
    world = _process_state(engine, timeout).num_processes
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
    kwargs["mixed_precision"] = resolve_mixed_precision(cfg.mixed_precision)[0]
    if engine == "deepspeed":
        kwargs["deepspeed_plugin"] = _deepspeed_plugin(cfg, accum)
    acc = Accelerator(
        cpu=engine is None and cpu,
        # a plugin, not gradient_accumulation_steps=: Accelerate would int() the launcher's "auto"
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accum),
        # our schedule counts optimizer steps; Accelerate would step it once per process otherwise
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)],
        # batches come from pinned memory on CUDA (loader_kwargs): copy them to the GPU asynchronously
        dataloader_config=DataLoaderConfiguration(non_blocking=not cpu),
        **kwargs,
    )
    if engine == "deepspeed":
        _build_models_whole(acc.state.deepspeed_plugin)
    return acc


def inference_accelerator(mixed_precision: str = "no"):
    """The Accelerator of a run that only evaluates (``eval --task``/``--ppl``, ``predict``): no optimizer, no
    accumulation; ``mixed_precision`` applies inside ``accelerator.autocast()``. On CPU it asks for the CPU
    state first: only then do launched CPU processes form a group."""
    from accelerate import Accelerator, PartialState

    cpu = not torch.cuda.is_available()
    PartialState(cpu=cpu)
    return Accelerator(cpu=cpu, **({} if mixed_precision == "no" else {"mixed_precision": mixed_precision}))


def compile_in_place(model: torch.nn.Module) -> None:
    """``train.compile``: compile the module's forward in place (``nn.Module.compile``). ``torch.compile(model)``
    would wrap it instead, and every state dict taken through the wrapper (checkpoints, ``final/``) would carry
    ``_orig_mod.`` keys that ``from_pretrained`` silently ignores, loading random weights."""
    model.compile()


def _build_models_whole(plugin) -> None:
    """gptune builds (and resizes) the model before ``prepare``, which partitions it. Accelerate registers
    its DeepSpeed config with transformers even when ``zero3_init_flag`` is false, and transformers then
    builds ZeRO-3 models already partitioned (every weight empty); unregister it."""
    if plugin.zero3_init_flag:
        raise GptuneError("deepspeed_config.zero3_init_flag: gptune builds the model before prepare(); set it to "
                          "false in the Accelerate config")
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


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


@dataclass
class Training:
    """Everything ``train`` runs on, prepared once (``training.run.prepare_training``)."""

    model: torch.nn.Module
    optimizer: object
    loader: object
    scheduler: object
    checkpointer: Checkpointer
    state: TrainState
    metrics: MetricsWriter
    recipe_yaml: str


@dataclass
class LoopHooks:
    """What a runner plugs into the loop: its step, its evaluation, what ends an epoch, the progress label,
    and the faults a test injects (none by default)."""

    step_fn: Callable[[torch.nn.Module, dict], StepOutput]
    evaluate_fn: Callable[[TrainState], dict] | None = None
    on_epoch_end: Callable[[TrainState], None] | None = None
    description: str = "train"
    faults: Faults = NO_FAULTS


def train(accelerator, t: Training, cfg: TrainConfig, hooks: LoopHooks) -> TrainState:
    """Run optimizer steps until ``state.total_steps``.

    Nothing in a micro-batch reads a value back to the host: losses, their finiteness and token counts
    accumulate on the device. Once per optimizer step the processes agree (one small all-reduce, then
    the step's one host read) on whether a signal arrived anywhere and whether any loss of the step was
    not finite; every process then skips, stops or goes on identically."""
    acc = accelerator
    model, optimizer, scheduler, loader, state, metrics = t.model, t.optimizer, t.scheduler, t.loader, t.state, t.metrics
    checkpointer, evaluate_fn, on_epoch_end, faults = t.checkpointer, hooks.evaluate_fn, hooks.on_epoch_end, hooks.faults
    total = state.total_steps
    model.train()
    step_acc, window = _Sums(acc.device), _Sums(acc.device)
    last_saved: tuple[int, Path | None] = (-1, None)
    grad_norm = None
    progress = make_progress()
    with StopFlag() as stop, progress:
        bar = progress.add_task(hooks.description, total=total, completed=state.step, info="")
        while state.step < total:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(state.epoch)
            skip = state.batch_in_epoch
            finished_epoch = True
            for i, batch in enumerate(loader):
                if i < skip:  # resume mid-epoch: same order, skip what was consumed
                    continue
                with acc.accumulate(model):
                    out = hooks.step_fn(model, batch)
                    attempt = state.step + state.skipped_batches + 1  # optimizer steps tried, skipped ones included
                    out.loss = faults.loss(out.loss, attempt, acc.process_index)
                    step_acc.add(out)
                    # always backward, even a NaN: under DDP a rank that skipped it would leave the others
                    # waiting in the gradient all-reduce
                    acc.backward(out.loss)
                    if acc.sync_gradients:
                        faults.before_agree(attempt, acc.process_index, until=lambda: stop.signum is not None)
                        signum, nan, inf = agree(acc, step_acc.flags(stop.signum))
                        if not (nan or inf):
                            if cfg.grad_clip > 0:
                                grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                            optimizer.step()
                            scheduler.step()
                    optimizer.zero_grad(set_to_none=True)  # under accumulation a no-op until the step ends
                state.batch_in_epoch += 1
                if not acc.sync_gradients:
                    continue
                if nan or inf:
                    _nonfinite(state, cfg, "nan" if nan else "inf")
                else:
                    window.merge(step_acc)
                    state.step += 1
                    progress.update(bar, completed=state.step)
                    if state.step % cfg.log_every == 0 or state.step == total:
                        logged = _log(acc, state, window, scheduler)
                        if grad_norm is not None:
                            logged["grad_norm"] = float(grad_norm)  # of this optimizer step, before clipping
                        metrics.write("train", step=state.step, **logged)  # and to the trackers
                        progress.update(bar, info=f"loss {logged['loss']:.4f} lr {logged['lr']:.2e} "
                                                  f"{logged['tokens_per_s']:,.0f} tok/s")
                        window = _Sums(acc.device)
                    if evaluate_fn and cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < total:
                        state.history = evaluate_fn(state)
                        model.train()
                    if checkpointer and cfg.save_every and state.step % cfg.save_every == 0:
                        last_saved = (state.step, checkpointer.save(state))
                step_acc = _Sums(acc.device)
                if signum:  # agreed: every process saves and stops here
                    ckpt = last_saved[1] if last_saved[0] == state.step else None
                    if checkpointer and ckpt is None:
                        ckpt = checkpointer.save(state)
                    raise Interrupted(int(signum), ckpt)
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


class _Sums:
    """Device-side sums over micro-batches (loss parts, tokens, non-finite counts): adding never syncs."""

    def __init__(self, device):
        self.device = device
        self.parts: dict[str, torch.Tensor] = {}
        self.n = 0
        self.tokens = torch.zeros((), dtype=torch.int64, device=device)
        self.bad = torch.zeros(2, device=device)  # (NaN losses, infinite losses)
        self.t0 = time.perf_counter()

    def add(self, out: StepOutput) -> None:
        loss = out.loss.detach().float()
        self.bad += torch.stack((loss.isnan(), loss.isinf())).float()
        for k, v in {"loss": loss, **out.parts}.items():
            self.parts[k] = self.parts.get(k, 0) + v.detach().float()
        self.n += 1
        self.tokens += out.tokens

    def flags(self, signum: int | None) -> torch.Tensor:
        """(signal number or 0, any NaN, any inf) of this process, to be agreed on."""
        f = torch.zeros(3, device=self.device)
        f[0] = signum or 0
        f[1:] = self.bad.clamp(max=1)
        return f

    def merge(self, other: _Sums) -> None:
        for k, v in other.parts.items():
            self.parts[k] = self.parts.get(k, 0) + v
        self.n += other.n
        self.tokens += other.tokens


def _log(acc, state: TrainState, window: _Sums, scheduler) -> dict:
    """The logged means over the window and over processes (this is where the loop reads numbers back)."""
    tok = int(acc.reduce(window.tokens.clone(), "sum").item())
    state.tokens += tok
    dt = time.perf_counter() - window.t0
    logged = {k: float(acc.reduce(v / max(window.n, 1), "mean").item()) for k, v in window.parts.items()}
    logged.update(lr=scheduler.get_last_lr()[0], tokens=state.tokens, epoch=state.epoch,
                  tokens_per_s=tok / max(dt, 1e-9))
    if acc.device.type == "cuda":  # the allocator's high-water mark on this process's GPU (no sync)
        logged["cuda_peak_gib"] = torch.cuda.max_memory_allocated(acc.device) / 2**30
    return logged


def _nonfinite(state: TrainState, cfg: TrainConfig, kind: str) -> None:
    """A step whose loss was NaN/inf on some process: all processes dropped it; stop once over budget."""
    state.skipped_batches += 1
    if state.skipped_batches > cfg.skip_nonfinite:
        raise NonFiniteLoss(
            f"the loss became {kind} at step {state.step + 1} (epoch {state.epoch}, batch {state.batch_in_epoch}); "
            "the last good checkpoint is kept. Lower train.lr, or set train.skip_nonfinite=N to skip up to N "
            "bad steps"
        )
