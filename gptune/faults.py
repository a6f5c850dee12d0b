"""Fault injection for the reliability tests: a ``Faults`` object the run hands to the loop, the checkpoint
writer and the data preparation; inert by default (``NO_FAULTS``). Tests in this process build one
(``Faults("nan@7")``); tests that start processes set ``GPTUNE_TEST_FAULT``, which ``Faults.from_env`` reads
once at the start of a run.

The spec ``KIND@STEP[/RANK]`` (several separated by commas) makes process RANK (any process when
absent) misbehave at optimizer step STEP (in the loop: the STEP-th step tried by this run, skipped ones
included; in a checkpoint write: the step it saves):

* ``nan``: its loss in that step is NaN;
* ``enospc``: its part of that step's checkpoint write fails with "No space left on device";
* ``pause``: it stops just before the processes agree in that step and waits (up to
  ``GPTUNE_TEST_PAUSE_SECONDS``, default 120) until a signal arrives, so a test can signal one process at a
  known step, or leave it hanging;
* ``pause_after_state``: the main process stops inside that step's checkpoint write, after the state files
  (for a ``kill -9`` at that moment).

A pausing process first writes its pid to ``GPTUNE_TEST_MARKER`` (when set), so the test knows whom to signal.
``GPTUNE_TEST_PREPARE_HOLD=N``: the preparing process waits until N others poll for the shards.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

ENV = "GPTUNE_TEST_FAULT"
HOLD_ENV = "GPTUNE_TEST_PREPARE_HOLD"


class Faults:
    """Where a run can be made to misbehave, at a given optimizer step and process."""

    def __init__(self, spec: str = "", hold: int = 0):
        self.items: list[tuple[str, int, int | None]] = []
        for item in filter(None, (i.strip() for i in spec.split(","))):
            what, _, where = item.partition("@")
            at, _, who = where.partition("/")
            self.items.append((what, int(at), int(who) if who else None))
        self.hold = hold

    @classmethod
    def from_env(cls) -> Faults:
        return cls(os.environ.get(ENV, ""), int(os.environ.get(HOLD_ENV, "0")))

    def at(self, kind: str, step: int, rank: int = 0) -> bool:
        """Whether process ``rank`` gets fault ``kind`` at optimizer step ``step``."""
        return any(k == kind and s == step and r in (None, rank) for k, s, r in self.items)

    def loss(self, loss, attempt: int, rank: int):
        """``nan``: the step's loss made NaN (the tensor stays on its device)."""
        return loss * float("nan") if self.at("nan", attempt, rank) else loss

    def before_agree(self, attempt: int, rank: int, until: Callable[[], bool]) -> None:
        """``pause``: stop before the processes agree in this step, until a signal arrives."""
        if self.at("pause", attempt, rank):
            pause(until)

    def checkpoint_write(self, step: int, rank: int) -> None:
        """``enospc``: this process's part of the checkpoint write fails with a full disk."""
        if self.at("enospc", step, rank):
            raise OSError(errno.ENOSPC, "No space left on device")

    def checkpoint_state_written(self, step: int) -> None:
        """``pause_after_state``: the main process stops after the state files, before the rename."""
        if self.at("pause_after_state", step):
            pause()

    def preparing(self, waiting: Callable[[], int]) -> None:
        """``hold``: the preparing process waits until ``waiting()`` others poll for the shards."""
        while self.hold and waiting() < self.hold:
            time.sleep(0.05)


NO_FAULTS = Faults()


def pause(until: Callable[[], bool] | None = None) -> None:
    """Write the marker, then sleep until ``until()`` holds or the pause time is over."""
    marker = os.environ.get("GPTUNE_TEST_MARKER")
    if marker:
        from gptune.data.cache import write_atomic

        write_atomic(Path(marker), str(os.getpid()))
    end = time.monotonic() + float(os.environ.get("GPTUNE_TEST_PAUSE_SECONDS", "120"))
    while time.monotonic() < end and not (until and until()):
        time.sleep(0.02)
