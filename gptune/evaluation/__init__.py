"""Evaluation: sliding-window perplexity (GLUE prediction and metrics live beside it)."""

from gptune.evaluation.perplexity import (
    NllResult,
    Window,
    encode_text,
    join_documents,
    load_eval_text,
    perplexity_report,
    plan_windows,
    resolve_windowing,
    sliding_window_nll,
)

__all__ = [
    "NllResult",
    "Window",
    "encode_text",
    "join_documents",
    "load_eval_text",
    "perplexity_report",
    "plan_windows",
    "resolve_windowing",
    "sliding_window_nll",
]
