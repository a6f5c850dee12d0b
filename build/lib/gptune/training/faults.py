"""Fault injection for the reliability tests, driven by one environment variable and inert when it is unset.

``GPTUNE_TEST_FAULT=KIND@STEP[/RANK]`` (several separated by commas) makes process RANK (any process when
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
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def fault(kind: str, step: int, rank: int = 0) -> bool:
    """Whether GPTUNE_TEST_FAULT asks process ``rank`` for fault ``kind`` at optimizer step ``step``."""
    spec = os.environ.get("GPTUNE_TEST_FAULT")
    if not spec:
        return False
    for item in spec.split(","):
        what, _, where = item.strip().partition("@")
        at, _, who = where.partition("/")
        if what == kind and at and int(at) == step and (not who or int(who) == rank):
            return True
    return False


def pause(until: Callable[[], bool] | None = None) -> None:
    """Write the marker, then sleep until ``until()`` holds or the pause time is over."""
    marker = os.environ.get("GPTUNE_TEST_MARKER")
    if marker:
        tmp = Path(marker + ".tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, marker)
    end = time.monotonic() + float(os.environ.get("GPTUNE_TEST_PAUSE_SECONDS", "120"))
    while time.monotonic() < end and not (until and until()):
        time.sleep(0.02)
