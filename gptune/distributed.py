"""Several processes: ``--num-processes N`` (and ``--num-machines``/``--machine-rank``/``--main-process-ip``/
``--main-process-port``) re-run the same command under ``accelerate launch``; and the few decisions all ranks
must take together (stop, skip, abort), from one reduced flag."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass

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


@dataclass
class Machines:
    """Where the processes run: ``--num-machines``, ``--machine-rank``, ``--main-process-ip``,
    ``--main-process-port`` (one machine and a free local port unless given)."""

    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None
    config_file: str | None = None
    """``--config-file``: an Accelerate config (a path, or a shipped name: ``fsdp``, ``deepspeed_zero3`` ...)
    that decides the distributed type and precision instead of plain DDP."""

    def check(self, num_processes: int) -> None:
        problems = []
        if self.num_machines < 1:
            problems.append(f"--num-machines must be >= 1, got {self.num_machines}")
        elif num_processes % self.num_machines:
            problems.append(f"--num-processes {num_processes} (all machines together) is not a multiple of "
                            f"--num-machines {self.num_machines}")
        if not 0 <= self.machine_rank < max(self.num_machines, 1):
            problems.append(f"--machine-rank must be in [0, {self.num_machines - 1}], got {self.machine_rank}")
        if self.num_machines > 1 and not self.main_process_ip:
            problems.append("--main-process-ip: required with --num-machines > 1 (the address of machine 0, "
                            "reachable from every machine)")
        if self.main_process_port is not None and not 0 < self.main_process_port < 65536:
            problems.append(f"--main-process-port must be in 1..65535, got {self.main_process_port}")
        if self.config_file:
            from gptune.recipes import ACCELERATE, resolve_shipped

            try:
                resolve_shipped(self.config_file, ACCELERATE, "--config-file")
            except GptuneError as e:
                problems.extend(e.problems or [str(e)])
        if problems:
            raise GptuneError(*problems)


def launch_command(num_processes: int, argv: list[str], port: int | None = None,
                   machines: Machines | None = None) -> list[str]:
    """The accelerate launch command line. ``--multi_gpu`` starts N real processes (torchrun) on GPUs
    and on CPUs alike; ``--cpu`` would start one process unless an MPI host file is configured.
    ``num_processes`` counts the processes of all machines together, as accelerate does."""
    m = machines or Machines()
    where = ["--num_machines", str(m.num_machines)]
    if m.num_machines > 1:
        where += ["--machine_rank", str(m.machine_rank), "--main_process_ip", str(m.main_process_ip)]
    if m.config_file:
        from gptune.recipes import ACCELERATE, resolve_shipped

        how = ["--config_file", str(resolve_shipped(m.config_file, ACCELERATE, "--config-file"))]
    else:
        how = ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", str(num_processes), *where, *how,
        "--main_process_port", str(port or free_port()),
        "-m", "gptune", *argv,
    ]


def launch(num_processes: int, argv: list[str], machines: Machines | None = None) -> int:
    m = machines or Machines()
    if num_processes < 1:
        raise GptuneError(f"--num-processes must be >= 1, got {num_processes}")
    m.check(num_processes)
    port = m.main_process_port or int(os.environ.get("GPTUNE_MAIN_PORT", "0")) or None
    if m.num_machines > 1:
        port = port or 29500  # every machine must name the same port: no random free one
    elif port and port_in_use(port):
        raise GptuneError(f"port {port} (--main-process-port / GPTUNE_MAIN_PORT) is already in use; pick another")
    env = dict(os.environ, ACCELERATE_LAUNCHED_GPTUNE="1")
    import torch

    if not torch.cuda.is_available():
        # CPU processes share the cores: one thread each unless the user says otherwise
        threads = max(1, (os.cpu_count() or 1) * m.num_machines // num_processes)
        env.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        return subprocess.call(launch_command(num_processes, argv, port, m), env=env)
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
