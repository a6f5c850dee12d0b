"""What the machine can do: the CPU's model and the ISA flags that decide bf16, matmul peaks measured now,
and ``train.mixed_precision: auto`` resolved against them.

"Native bf16" means the chip multiplies bf16 at least as fast as fp32: a CUDA device that supports bf16,
or a CPU flagged ``avx512_bf16`` / ``amx_bf16`` (x86) or ``bf16`` (Arm). Elsewhere PyTorch emulates bf16
matmuls, measured 50-150x slower than fp32 (benchmarks/NOTES.md, "Where a step goes"). ``GPTUNE_NATIVE_BF16=1|0``
overrides the detection (the test suite pins 0, so its numbers are fp32 on every machine).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 BF16, x86 AMX tiles, Arm (FEAT_BF16)
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what ``platform`` says)."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The ISA flags of the first CPU (x86 ``flags``, Arm ``Features``); empty when unreadable."""
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_capability() -> str:
    """What PyTorch dispatches its CPU kernels for (``AVX2``, ``AVX512``, ...)."""
    import torch

    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        return "unknown"


def cpu_native_bf16(flags: set[str] | None = None) -> bool:
    """A CPU with bf16 units: flagged in /proc/cpuinfo; without it, oneDNN's own check."""
    flags = cpu_flags() if flags is None else flags
    if flags:
        return any(f in flags for f in BF16_FLAGS)
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_bf16() -> bool:
    """bf16 at full speed on the device training runs on (``GPTUNE_NATIVE_BF16`` overrides)."""
    forced = os.environ.get("GPTUNE_NATIVE_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_native_bf16()


def matmul_gflops(dtype_name: str = "float32", budget_s: float = 0.3, max_n: int = 2048) -> float:
    """Best n x n x n matmul throughput (GFLOP/s) in ``dtype_name`` on this CPU now. n doubles from 128
    while a product takes under a tenth of ``budget_s``, so an emulated bf16 costs no more than fp32."""
    import torch

    dtype = getattr(torch, dtype_name)
    n, best = 128, 0.0
    while True:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)  # warm-up: first call picks kernels
        t_end = time.perf_counter() + budget_s / 3  # best of as many products as fit in a third of the budget
        while True:
            t = time.perf_counter()
            torch.mm(a, b)
            dt = time.perf_counter() - t
            best = max(best, 2 * n**3 / dt / 1e9)
            if t + dt > t_end:
                break
        if dt > budget_s / 10 or n >= max_n:
            return best
        n *= 2


@dataclass(frozen=True)
class Machine:
    """The CPU a benchmark ran on, with its matmul peaks measured at the start."""

    cpu: str
    flags: tuple[str, ...]
    capability: str
    native_bf16: bool
    peak_fp32_gflops: float
    peak_bf16_gflops: float

    @classmethod
    def measure(cls, budget_s: float = 0.6) -> Machine:
        flags = cpu_flags()
        return cls(cpu_model(), tuple(f for f in SHOWN_FLAGS if f in flags), cpu_capability(),
                   cpu_native_bf16(flags), matmul_gflops("float32", budget_s), matmul_gflops("bfloat16", budget_s))

    def peak(self, precision: str) -> float:
        """GFLOP/s of the matmuls a run in ``precision`` (``no``/``fp32`` or ``bf16``) does."""
        return self.peak_bf16_gflops if precision == "bf16" else self.peak_fp32_gflops

    def line(self) -> str:
        return (f"{self.cpu} | flags {' '.join(self.flags) or '-'} | torch kernels {self.capability} | "
                f"matmul peak fp32 {self.peak_fp32_gflops:.0f} GFLOP/s, bf16 {self.peak_bf16_gflops:.1f} GFLOP/s"
                f" ({'native' if self.native_bf16 else 'emulated'} bf16)")


def resolve_mixed_precision(value: str | None) -> tuple[str, str]:
    """``train.mixed_precision`` as Accelerate takes it (``no``/``bf16``/``fp16``) and the line saying why.
    ``auto`` (or absent): the launcher's bf16/fp16 when it names one (``accelerate launch
    --mixed_precision``, an Accelerate config file), else bf16 where the device has native bf16, else fp32."""
    if value not in (None, "auto"):
        return value, f"precision: {'fp32' if value == 'no' else value} (train.mixed_precision: {value})"
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher in ("bf16", "fp16"):
        return launcher, f"precision: {launcher} (auto: the launcher's mixed_precision)"
    if native_bf16():
        return "bf16", f"precision: bf16 (auto: {_device()} has native bf16)"
    return "no", f"precision: fp32 (auto: {_device()} has no native bf16)"


def precision_warning(resolved: str, asked: str = "train.mixed_precision=bf16",
                      instead: str = "set it to auto or no") -> str | None:
    """One line when bf16 was asked for (``asked``) where it is emulated, with the slowdown of its matmuls
    measured now (a fraction of a second)."""
    import torch

    if resolved != "bf16" or native_bf16() or torch.cuda.is_available():
        return None
    fp32, bf16 = matmul_gflops("float32", 0.1, 512), matmul_gflops("bfloat16", 0.1, 512)
    return (f"{asked} on {_device()}, which has no native bf16 (no avx512_bf16/amx_bf16): its matmuls measured "
            f"{fp32 / bf16:.0f}x slower than fp32 here ({bf16:.1f} vs {fp32:.0f} GFLOP/s), so expect steps up to "
            f"that much slower; {instead}")


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"the CPU ({cpu_model()})"
