"""gptune plot: curves from metrics.jsonl, several runs overlaid."""

from __future__ import annotations

import json

import pytest

from gptune.errors import GptuneError
from gptune.plot import plot_runs


def fake_run(root, name, slope):
    run = root / name
    run.mkdir()
    lines = [{"event": "train", "step": s, "loss": 5 - slope * s, "lm_loss": 4 - slope * s, "lr": 1e-3,
              "tokens": 100 * s} for s in range(1, 11)]
    lines.append({"event": "eval", "step": 10, "accuracy": 0.5 + slope})
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


def test_plot_overlays_runs_into_a_png_with_one_panel_per_metric(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    real_savefig = Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    a, b = fake_run(tmp_path, "a", 0.1), fake_run(tmp_path, "b", 0.2)
    out = plot_runs([a, b], x="tokens")
    assert out == a / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = {ax.get_title(): ax for ax in saved[0].axes if ax.get_title()}
    assert list(panels) == ["loss (train)", "lm_loss (train)", "lr (train)", "accuracy (eval)"]
    for title, ax in panels.items():  # every panel overlays both runs
        assert [line.get_label() for line in ax.get_lines()] == ["a", "b"], title
    loss_b = panels["loss (train)"].get_lines()[1]
    assert list(loss_b.get_xdata()) == [100 * s for s in range(1, 11)]  # x = tokens seen
    assert list(loss_b.get_ydata()) == pytest.approx([5 - 0.2 * s for s in range(1, 11)])
    acc_a = panels["accuracy (eval)"].get_lines()[0]
    assert list(acc_a.get_xdata()) == [1000] and list(acc_a.get_ydata()) == pytest.approx([0.6])


def test_plot_names_a_folder_without_metrics(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptuneError, match="empty has no metrics.jsonl"):
        plot_runs([tmp_path / "empty"])
