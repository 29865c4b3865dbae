"""Every PNG the training apps write (matplotlib, Agg backend, no display needed).

* :func:`train_curves` — train loss and test top-1 per epoch.
* :func:`alpha_per_epoch` — mean progressive factor α per epoch (the paper's Fig. 2a).
* :func:`alpha_histogram` — α distribution of the last attention-labelled batch (Fig. 2b).
* :func:`compare_bars` — top-1 mean ± std per method of a ``mixpro compare`` sweep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    return _save(fig, path)


def alpha_per_epoch(metrics: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """Mean α of the attention-labelled batches per epoch (Fig. 2a)."""
    rows = [m for m in metrics if m.get("alpha_mean") is not None]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([m["epoch"] for m in rows], [m["alpha_mean"] for m in rows], marker="o")
    ax.set(xlabel="epoch", ylabel="mean α", ylim=(0, 1), title=title or "progressive factor α")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def alpha_histogram(alpha: Sequence[float], path: str | Path, title: str = "") -> Path:
    """Histogram of the per-sample α of one batch (Fig. 2b)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(list(alpha), bins=20, range=(0, 1), edgecolor="black")
    ax.set(xlabel="α", ylabel="samples", title=title or "α distribution, last batch")
    return _save(fig, path)


def compare_bars(rows: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """Bars of top-1 mean ± std per method (``rows``: ``method``, ``mean``, ``std``)."""
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2, 3.8))
    names = [r["method"] for r in rows]
    means, stds = [r["mean"] for r in rows], [r["std"] for r in rows]
    ax.bar(names, means, yerr=stds, capsize=6, color="tab:blue", alpha=0.8)
    lo = min(means) - 3 * max(stds + [0.5])
    tops = [m + s for m, s in zip(means, stds, strict=True)]
    ax.set_ylim(max(0.0, lo), min(100.0, max(tops) + 1.5))
    for x, (m, s) in enumerate(zip(means, stds, strict=True)):  # above the error bar
        ax.annotate(f"{m:.2f} ± {s:.2f}", (x, m + s), xytext=(0, 5), textcoords="offset points",
                    ha="center", va="bottom")
    ax.set(ylabel="top-1 (%)", title=title or "mixpro compare")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
