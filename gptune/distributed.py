"""Several processes: ``--num-processes N`` (and ``--num-machines``/``--machine-rank``/``--main-process-ip``/
``--main-process-port``) re-run the same command under ``accelerate launch``; and the few decisions all ranks
must take together (stop, skip, abort), from one reduced flag."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from gptune.errors import GptuneError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def launch_command(num_processes: int, argv: list[str], port: int | None = None) -> list[str]:
    """The accelerate launch command line. ``--multi_gpu`` starts N real processes (torchrun) on GPUs
    and on CPUs alike; ``--cpu`` would start one process unless an MPI host file is configured."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", str(num_processes), "--num_machines", "1", "--multi_gpu",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port or free_port()),
        "-m", "gptune", *argv,
    ]


def launch(num_processes: int, argv: list[str]) -> int:
    if num_processes < 1:
        raise GptuneError(f"--num-processes must be >= 1, got {num_processes}")
    port = int(os.environ.get("GPTUNE_MAIN_PORT", "0")) or None
    if port and port_in_use(port):
        raise GptuneError(f"GPTUNE_MAIN_PORT={port} is already in use; pick another port or unset it")
    env = dict(os.environ, ACCELERATE_LAUNCHED_GPTUNE="1")
    import torch

    if not torch.cuda.is_available():
        # CPU processes share the cores: one thread each unless the user says otherwise
        threads = max(1, (os.cpu_count() or 1) // num_processes)
        env.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        return subprocess.call(launch_command(num_processes, argv, port), env=env)
    except KeyboardInterrupt:
        return 130


# ----------------------------------------------------------------------------- deciding together


def agree(accelerator, flags):
    """The elementwise maximum of ``flags`` (a small 1-D tensor on the accelerator's device) over all
    processes, as a list of Python numbers. Every process calls it at the same point, so all take the
    decision it feeds (stop, skip a step, abort) together; reading the result is the one host sync."""
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.tolist()


def is_timeout(e: BaseException) -> bool:
    """A collective that waited longer than ``train.dist_timeout`` (gloo and NCCL word it differently)."""
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("timed out" in text or "timeout" in text) and (
        "gloo" in text or "nccl" in text or "distbackenderror" in type(e).__name__.lower()
        or "watchdog" in text)


def failures(accelerator, error: str | None) -> list[str]:
    """Every process's error at this point (empty when none failed). All processes call it together, so an
    error on one of them (a full disk on the main process) is raised on all, not left waiting at a barrier."""
    import torch

    if not agree(accelerator, torch.tensor([1.0 if error else 0.0], device=accelerator.device))[0]:
        return []
    if accelerator.num_processes == 1:
        return [error]
    import torch.distributed as dist

    errors = [None] * accelerator.num_processes
    dist.all_gather_object(errors, error)
    return [f"process {i}: {e}" for i, e in enumerate(errors) if e]
