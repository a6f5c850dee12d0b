"""Validation that reports every problem at once: a section checks itself when built (``Checked``), and
while a recipe is read (``collecting``) the problems are gathered instead of raised."""

from __future__ import annotations

import contextlib
import contextvars

from gptune.errors import GptuneError

_PROBLEMS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("gptune_recipe_problems",
                                                                            default=None)


@contextlib.contextmanager
def collecting(problems: list[str]):
    """Inside: sections append their problems to ``problems`` instead of raising (one report of all)."""
    token = _PROBLEMS.set(problems)
    try:
        yield problems
    finally:
        _PROBLEMS.reset(token)


def report(problems: list[str]) -> None:
    """Raise one error listing ``problems`` (or hand them to the enclosing ``collecting``)."""
    sink = _PROBLEMS.get()
    if sink is not None:
        sink.extend(problems)
    elif problems:
        raise GptuneError(*problems)


class Checked:
    """A section that validates itself when built or replaced: ``_checks`` yields (key, message)."""

    _prefix = ""

    def __post_init__(self):
        report([f"{self._prefix}{key}: {message}" for key, message in self._checks()])

    def _checks(self):
        return ()
