"""What the user sees and what a run logs: a rich console, progress bars, metrics.jsonl.

Only the main process prints or writes; other processes get silent no-ops, so callers never
branch on the process index themselves.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def is_main_process() -> bool:
    # Accelerate sets RANK / LOCAL_RANK for every launched process; without them we are alone.
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def say(message: str) -> None:
    """Print one line on the main process."""
    if is_main_process():
        console.print(message, soft_wrap=True)  # one logical line stays one line (logs, grep, tests)


def warn(message: str) -> None:
    if is_main_process():
        err_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)  # one line, as say


def make_progress(transient: bool = False) -> Progress:
    """A progress bar with step count, elapsed time and ETA; fields are filled in by the caller."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not is_main_process() or os.environ.get("GPTUNE_NO_PROGRESS", "") != "",
    )


def make_byte_progress() -> Progress:
    """A progress bar over bytes of text: bytes done / total, bytes/s, a caller-filled info field (tokens/s)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not is_main_process() or os.environ.get("GPTUNE_NO_PROGRESS", "") != "",
    )


class MetricsWriter:
    """Appends one JSON object per event to ``metrics.jsonl`` (main process only), and hands its numbers to
    ``log(values, step=)`` (e.g. ``accelerator.log``, the experiment trackers) as ``event/key`` at the same step."""

    def __init__(self, path: Path | None, log=None):
        self.path = path if is_main_process() else None
        self.log = log
        self._fh = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, event: str, **values: Any) -> None:
        if self._fh is None:
            return
        record = {"event": event, "time": round(time.time(), 3)}
        for k, v in values.items():
            if isinstance(v, float) and not math.isfinite(v):
                v = str(v)
            record[k] = v
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        numbers = {f"{event}/{k}": v for k, v in values.items() if k != "step" and isinstance(v, int | float)
                   and not isinstance(v, bool)}
        if self.log is not None and numbers and "step" in values:
            self.log(numbers, step=values["step"])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summary_table(title: str, rows: dict[str, Any]) -> None:
    if not is_main_process():
        return
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in rows.items():
        if isinstance(v, float):
            v = f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
        table.add_row(k, str(v))
    console.print(table)
