"""The one exception type a user sees: a message that names the bad field, file or value.

The CLI turns it into one red line and exit code 2 (no traceback unless ``--debug``).
"""

from __future__ import annotations


class GptuneError(Exception):
    """A problem the user can fix (bad recipe, missing file, wrong flag).

    ``problems`` holds one line per problem, so that every problem is reported at once.
    """

    exit_code = 2

    def __init__(self, *problems: str):
        self.problems = [p for p in problems if p]
        super().__init__("\n".join(self.problems))


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty): what a
    one-line error quotes of a library's multi-line message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Interrupted(Exception):
    """A run stopped by SIGINT/SIGTERM (on any process) after writing a checkpoint; the CLI prints how to
    resume and exits with 128 + the signal number."""

    def __init__(self, signum: int, checkpoint=None):
        import signal

        self.signum = signum
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class NonFiniteLoss(GptuneError):
    """The loss was NaN/inf more often than ``train.skip_nonfinite`` allows."""
