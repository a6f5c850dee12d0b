"""Shared machinery of the benchmarks: paced worker processes, the matmul peak, tables, JSON.

Every contender runs in its own spawned process (so its peak RSS is its own) and is *paced*: its real
training loop calls ``Pacer()`` at the start of every optimizer step; the pacer times the step that just
ended and, at the end of a window, reports the window to the parent and blocks until told to go on.
The parent alternates the contenders window by window (A, B, A, B, ...), so a slow patch of the shared
machine hits both, and only one contender computes at any moment.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


DATA_LAYOUT = "books/gutenberg, glue/SST-2, glue/RTE, wikitext-2/wiki.test.raw, tokenizers/gpt2-hf"


def data_root(arg: str | None = None) -> Path:
    """``--data``, else ``$GPTUNE_DATA``; neither: stop with one line saying which to set."""
    root = arg or os.environ.get("GPTUNE_DATA")
    if not root:
        raise SystemExit(f"no benchmark data: pass --data DIR or set GPTUNE_DATA=DIR (a folder holding {DATA_LAYOUT})")
    return Path(root).expanduser()


# ----------------------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    """Peak resident set of this process since start (ru_maxrss, KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_hwm() -> bool:
    """Reset VmHWM (Linux: write 5 to clear_refs) so ``hwm_mb`` measures from now on."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_measured(cmd: list[str], name: str) -> dict:
    """Run `cmd` (a child that prints one JSON line last) and sample the memory of its process tree every
    0.2 s: its JSON plus ``peak_tree_mb`` (PSS: pages shared by forked workers counted once),
    ``peak_tree_rss_mb`` (the plain RSS sum) and the mean load average meanwhile."""
    import subprocess

    import psutil

    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPTUNE_NO_PROGRESS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    root = psutil.Process(proc.pid)
    peak, peak_rss, loads = 0, 0, []
    while proc.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_full_info().pss for p in tree))
            peak_rss = max(peak_rss, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        loads.append(os.getloadavg()[0])
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res.update(peak_tree_mb=peak / 2**20, peak_tree_rss_mb=peak_rss / 2**20, load_avg=sum(loads) / max(len(loads), 1))
    return res


# ----------------------------------------------------------------------------- pacing


class StopBench(Exception):
    """Raised inside a contender's loop when the parent ends the benchmark early."""


class Pacer:
    """Call at the start of every optimizer step. Windows are commanded by the parent over ``conn``."""

    def __init__(self, conn):
        self.conn, self.left, self.times, self.t = conn, 0, [], None
        self.free = False  # after "finish": run the remaining steps untimed
        self.train_hwm_reset = False

    def __call__(self) -> None:
        if self.free:
            return
        now = time.perf_counter()
        if self.t is not None:
            self.times.append(now - self.t)
        if self.left == 0:
            if self.t is not None:
                self.conn.send({"times": self.times, "hwm_mb": hwm_mb()})
            if not self.train_hwm_reset:  # the training-phase peak starts at the first step
                self.train_hwm_reset = reset_hwm()
            cmd = self.conn.recv()
            if cmd == "finish":
                self.free = True
                return
            if cmd == "stop":
                raise StopBench
            self.left, self.times = int(cmd), []
            now = time.perf_counter()
        self.left -= 1
        self.t = now


def _serve(conn, log_path: str, target: str, kwargs: dict) -> None:
    """Worker entry point: redirect output to a log, run ``module:function(pacer, **kwargs)``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    pacer = Pacer(conn)
    try:
        import importlib

        module, func = target.split(":")
        extra = getattr(importlib.import_module(module), func)(pacer, **kwargs) or {}
        conn.send({"done": True, "peak_rss_mb": peak_rss_mb(), "train_peak_mb": hwm_mb(), **extra})
    except StopBench:
        conn.send({"done": True, "peak_rss_mb": peak_rss_mb(), "train_peak_mb": hwm_mb()})
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which prints the log path
        traceback.print_exc()
        conn.send({"error": f"{type(e).__name__}: {e}", "log": log_path})
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


class Worker:
    """One contender in a spawned process."""

    def __init__(self, name: str, target: str, log_dir: Path, **kwargs):
        self.name = name
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.log = log_dir / f"{name.replace(' ', '_').replace('/', '_')}.log"
        self.log.write_text("")
        # not a daemon: a contender may start its own pools (gptune's tokenizer workers, datasets.map);
        # the driver stops every worker in a finally
        self.proc = ctx.Process(target=_serve, args=(child, str(self.log), target, kwargs))
        self.proc.start()
        self.windows: list[list[float]] = []
        self.result: dict = {}

    def _recv(self, timeout: float = 3600) -> dict:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.name}: no answer in {timeout:.0f} s (log: {self.log})")
        msg = self.conn.recv()
        if "error" in msg:
            raise RuntimeError(f"{self.name} failed: {msg['error']} (log: {self.log})")
        return msg

    def window(self, steps: int) -> list[float]:
        try:
            self.conn.send(steps)
        except (BrokenPipeError, ConnectionResetError):  # it died during setup: show its error
            self._recv(5)
            raise RuntimeError(f"{self.name} exited (log: {self.log})") from None
        msg = self._recv()
        if "done" in msg:
            raise RuntimeError(f"{self.name}: the run ended before the window was complete (log: {self.log})")
        return msg["times"]

    def finish(self, timeout: float = 3600) -> dict:
        """Let the run end on its own (it has one untimed step left), collect its final report."""
        self.conn.send("finish")
        self.result = self._recv(timeout)
        self.proc.join(60)
        return self.result

    def stop(self) -> dict:
        try:
            self.conn.send("stop")
            self.result = self._recv(600)
        except (OSError, RuntimeError, EOFError):
            self.result = {}
        self.proc.join(60)
        if self.proc.is_alive():
            self.proc.kill()
        return self.result


def alternate(workers: list[Worker], *, warmup_steps: int, steps: int, rounds: int,
              between=None) -> dict[str, list[list[float]]]:
    """Warm-up window (discarded) per worker, then ``rounds`` x (one window of ``steps`` per worker)."""
    out: dict[str, list[list[float]]] = {w.name: [] for w in workers}
    for w in workers:  # setup + warm-up, one at a time
        w.window(warmup_steps)
    for r in range(rounds):
        order = workers if r % 2 == 0 else workers[::-1]  # A B, B A, ...: no systematic position bias
        for w in order:
            if between is not None:
                between()
            out[w.name].append(w.window(steps))
    return out


# ----------------------------------------------------------------------------- statistics


@dataclass
class Stat:
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def lo(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def hi(self) -> float:
        return max(self.values) if self.values else float("nan")

    def to_json(self) -> dict:
        return {"median": self.median, "min": self.lo, "max": self.hi, "values": self.values}


def rates(windows: list[list[float]], units_per_step: float | list) -> Stat:
    """Units per second of each window (units / summed step times)."""
    return Stat([units_per_step * len(w) / sum(w) for w in windows])


def measure_peak_gflops(dtype: str = "float32") -> float:
    """Matmul throughput (GFLOP/s) of this machine now in ``dtype`` (``gptune.hardware.matmul_gflops``)."""
    from gptune.hardware import matmul_gflops

    return matmul_gflops(dtype, budget_s=1.0)


@functools.cache
def measured_machine():
    """The CPU, its ISA flags and fp32/bf16 matmul peaks, measured once, at the first call (a benchmark's
    start): every table and JSON carries them."""
    from gptune.hardware import Machine

    return Machine.measure(budget_s=1.0)


def machine_line() -> str:
    """The machine a figure was measured on, for a table's header and NOTES.md."""
    return (f"{measured_machine().line()} | {os.cpu_count()} CPUs, torch threads {_threads()}, "
            f"load average {os.getloadavg()[0]:.1f}")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# ----------------------------------------------------------------------------- reporting


def fmt(x: float, digits: int = 0) -> str:
    if x != x:  # nan
        return "-"
    return f"{x:,.{digits}f}"


def row(workload: str, metric: str, ours: Stat | float, peer: Stat | float | None, peer_name: str,
        *, target: str = "", higher_is_better: bool = True, digits: int = 0, note: str = "") -> dict:
    """One table row: medians, min-max and ours/peer."""
    o = ours if isinstance(ours, Stat) else Stat([ours])
    p = peer if isinstance(peer, Stat) or peer is None else Stat([peer])
    ratio = o.median / p.median if p is not None and p.median else float("nan")
    return {"workload": workload, "metric": metric, "gptune": o.to_json(),
            "peer": p.to_json() if p is not None else None, "peer_name": peer_name, "ratio": ratio,
            "target": target, "higher_is_better": higher_is_better, "digits": digits, "note": note}


def _cell(s: dict | None, digits: int) -> str:
    if s is None:
        return "-"
    if len(s["values"]) > 1:
        return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)})"
    return fmt(s["median"], digits)


def markdown_table(head: list[str], body: list[list]) -> str:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=False)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(b) for b in body])


def print_table(rows: list[dict], title: str = "") -> None:
    print(table_text(rows, title), end="")
    sys.stdout.flush()


def table_text(rows: list[dict], title: str = "") -> str:
    """The rows as a markdown table (title above, notes below), as print_table shows them."""
    head = ["workload", "metric", "gptune median (min-max)", "peer", "peer median (min-max)", "ratio", "target"]
    body = [[r["workload"], r["metric"], _cell(r["gptune"], r["digits"]), r["peer_name"],
             _cell(r["peer"], r["digits"]), fmt(r["ratio"], 2) + "x" if r["ratio"] == r["ratio"] else "-",
             r["target"]] for r in rows]
    out = [f"\n{title}"] if title else []
    out.append(f"machine: {machine_line()}")
    out.append(markdown_table(head, body))
    out += [f"  - {r['workload']} / {r['metric']}: {r['note']}" for r in rows if r["note"]]
    return "\n".join(out) + "\n"


def machine() -> dict:
    import torch

    return {**dataclasses.asdict(measured_machine()), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "cuda": torch.cuda.is_available(), "platform": platform.platform(),
            "load_avg": os.getloadavg()}


def write_json(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str))
    return path


def interleaved_step_times(contenders: dict, ids, steps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of one training step (forward through ``LMWithLoss``, backward, optimizer step) of each
    ``name: (model, optimizer)``, the contenders taking turns step by step so a busy patch of a shared machine
    hits all of them; the first ``warmup`` rounds are not kept."""
    times = {name: [] for name in contenders}
    for i in range(warmup + steps):
        for name, (model, opt) in contenders.items():
            t = time.perf_counter()
            loss, _ = model(ids)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return times

