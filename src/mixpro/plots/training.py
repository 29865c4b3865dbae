"""The training run's PNGs (written by ``mixpro train`` into the run folder).

* :func:`train_curves` — train loss and test top-1 per epoch.
* :func:`alpha_per_epoch` — mean progressive factor α per epoch (the paper's Fig. 2a).
* :func:`alpha_histogram` — α distribution of the last attention-labelled batch (Fig. 2b).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from ._common import plt, save


def train_curves(metrics: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """Train loss and test accuracy (%) against epoch, side by side."""
    ep = [m["epoch"] for m in metrics]
    tested = [m for m in metrics if m.get("test_acc") is not None]  # eval_every skips some
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [m["train_loss"] for m in metrics], marker="o")
    a.set(xlabel="epoch", ylabel="train loss (soft targets)", title="train loss")
    b.plot([m["epoch"] for m in tested], [m["test_acc"] for m in tested], marker="o",
           label="model")
    if any(m.get("test_acc_ema") is not None for m in tested):
        b.plot([m["epoch"] for m in tested], [m.get("test_acc_ema") for m in tested],
               marker="s", label="EMA")
        b.legend()
    b.set(xlabel="epoch", ylabel="top-1 (%)", title="test accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return save(fig, path)


def alpha_per_epoch(metrics: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """Mean α of the attention-labelled batches per epoch (Fig. 2a)."""
    rows = [m for m in metrics if m.get("alpha_mean") is not None]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([m["epoch"] for m in rows], [m["alpha_mean"] for m in rows], marker="o")
    ax.set(xlabel="epoch", ylabel="mean α", ylim=(0, 1), title=title or "progressive factor α")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save(fig, path)


def alpha_histogram(alpha: Sequence[float], path: str | Path, title: str = "") -> Path:
    """Histogram of the per-sample α of one batch (Fig. 2b)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(list(alpha), bins=20, range=(0, 1), edgecolor="black")
    ax.set(xlabel="α", ylabel="samples", title=title or "α distribution, last batch")
    return save(fig, path)
