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


def test_plot_overlays_runs_into_a_png_with_one_panel_per_metric(tmp_path):
    import matplotlib.image as mpimg

    a, b = fake_run(tmp_path, "a", 0.1), fake_run(tmp_path, "b", 0.2)
    out = plot_runs([a, b], x="tokens")
    assert out == a / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = mpimg.imread(out).shape[:2]
    assert width > height > 300  # a grid of 4 panels (loss, lm_loss, lr, accuracy) in 2 rows x 3


def test_plot_names_a_folder_without_metrics(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptuneError, match="empty has no metrics.jsonl"):
        plot_runs([tmp_path / "empty"])
