"""``gptune plot``: training curves from ``metrics.jsonl`` as a PNG (matplotlib, the ``[plot]`` extra)."""

from __future__ import annotations

from pathlib import Path

from gptune.console import read_metrics
from gptune.errors import GptuneError

# train-event keys drawn when present, in panel order
TRAIN_KEYS = ("loss", "task_loss", "lm_loss", "lr")
SKIP_EVAL = {"step", "event", "time", "final", "epoch", "val_tokens", "tokens"}


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _series(events: list[dict], key: str, x: str) -> tuple[list[float], list[float]]:
    pts = [(e[x], e[key]) for e in events if isinstance(e.get(key), int | float) and x in e]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_runs(runs: list[Path], out: Path | None = None, *, x: str = "step") -> Path:
    """Overlay the curves of several run folders; returns the PNG path (default RUN/curves.png)."""
    if not runs:
        raise GptuneError("plot: name at least one run folder")
    if not have_matplotlib():
        raise GptuneError("plot: matplotlib is not installed; pip install 'gptune[plot]'")
    if x not in ("step", "tokens"):
        raise GptuneError(f"--x must be step or tokens, got {x}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {}
    for run in runs:
        path = Path(run) / "metrics.jsonl"
        if not path.exists():
            raise GptuneError(f"plot: {run} has no metrics.jsonl (is it a gptune run folder?)")
        data[Path(run)] = read_metrics(path)
    train_keys = [k for k in TRAIN_KEYS if any(k in e for ev in data.values() for e in ev if e["event"] == "train")]
    eval_keys = sorted({k for ev in data.values() for e in ev if e["event"] == "eval" for k in e
                        if k not in SKIP_EVAL and isinstance(e[k], int | float)})
    panels = train_keys + [f"eval:{k}" for k in eval_keys]
    cols = min(3, len(panels)) or 1
    rows = (len(panels) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        kind, _, key = panel.partition(":") if panel.startswith("eval:") else ("train", "", panel)
        for run, events in data.items():
            chosen = [e for e in events if e["event"] == kind]
            if kind == "eval" and x == "tokens":  # eval events carry the step; map it to tokens seen
                tok = {e["step"]: e.get("tokens") for e in events if e["event"] == "train"}
                chosen = [dict(e, tokens=tok.get(e["step"])) for e in chosen if tok.get(e["step"]) is not None]
            xs, ys = _series(chosen, key, x)
            if xs:
                ax.plot(xs, ys, marker="o" if kind == "eval" else None, ms=3, label=run.name)
        ax.set_title(f"{key} ({kind})")
        ax.set_xlabel(x)
        ys_all = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
        if ys_all and max(ys_all) / min(ys_all) > 5:  # log scale only when the curve spans a wide range
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out) if out else Path(runs[0]) / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_curves(run_dir: Path) -> Path | None:
    """At the end of a run: curves.png when matplotlib is installed, silently nothing otherwise."""
    if not have_matplotlib():
        return None
    try:
        return plot_runs([run_dir])
    except GptuneError:
        return None
