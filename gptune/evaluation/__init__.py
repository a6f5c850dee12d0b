"""Evaluation: sliding-window perplexity (GLUE prediction and metrics, and a task model scored from its
folder alone (``task_model``), live beside it; the text to score is read by ``gptune.data.eval_text``)."""

from gptune.evaluation.perplexity import (
    NllResult,
    Window,
    perplexity_report,
    plan_windows,
    resolve_windowing,
    sliding_window_nll,
)

__all__ = [
    "NllResult",
    "Window",
    "perplexity_report",
    "plan_windows",
    "resolve_windowing",
    "sliding_window_nll",
]
