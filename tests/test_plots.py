"""Plots that take plain data: Fig. 2a over several α strategies."""

from __future__ import annotations

import numpy as np

from mixpro.plots import training


def test_alpha_curves_plot_the_mean_over_seeds_with_a_min_max_band(tmp_path, monkeypatch):
    figs = []
    monkeypatch.setattr(training, "save", lambda fig, path: figs.append(fig) or path)
    run = lambda alphas: [{"epoch": e + 1, "alpha_mean": a} for e, a in enumerate(alphas)]  # noqa: E731
    runs = {"linear": [run([0.1, 0.5, 0.9]), run([0.3, 0.7, 0.5])],
            "none": [[{"epoch": 1, "alpha_mean": None}, {"epoch": 2, "alpha_mean": None}]]}
    training.alpha_curves(runs, tmp_path / "a.png")
    (ax,) = figs[0].axes
    (line,) = ax.get_lines()  # 'none' has no α: no line
    assert line.get_label() == "linear"
    np.testing.assert_allclose(line.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(line.get_ydata(), [0.2, 0.6, 0.7])
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert np.isclose(ys.min(), 0.1) and np.isclose(ys.max(), 0.9)


def test_alpha_per_epoch_writes_a_png(tmp_path):
    path = training.alpha_per_epoch([{"epoch": 1, "alpha_mean": 0.4}, {"epoch": 2,
                                     "alpha_mean": 0.5}], tmp_path / "a.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
