"""The ``mixpro compare`` bar plot.

Owns :func:`compare_bars`: top-1 mean ± std per method (or variant) of a sweep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ._common import plt, save


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
    return save(fig, path)
