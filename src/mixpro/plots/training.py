"""The training run's PNGs (written by ``mixpro train`` into the run folder).

* :func:`train_curves` — train loss and test top-1 per epoch.
* :func:`alpha_per_epoch` — mean progressive factor α per epoch (the paper's Fig. 2a).
* :func:`alpha_curves` — the same for several α strategies on one plot, mean over seeds.
* :func:`alpha_histogram` — α distribution of the last attention-labelled batch (Fig. 2b).
* :func:`monitor_curves` — the same for several runs on one figure.
* :func:`attention_monitor` — attention quality and label errors per evaluation (the
  ``attn_*`` metrics of :class:`mixpro.train.monitor.AttentionMonitor`).
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


def attention_monitor(metrics: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """Three panels against epoch: the share of cls attention on object tokens (unmixed,
    mixed) with its chance level; each relabelling's label error |λ − o_i| (area, attention,
    PAL); PAL's α and Spearman's ρ(α, |λ_attn − o_i|)."""
    rows = [m for m in metrics if m.get("attn_object_share") is not None]
    ep = [m["epoch"] for m in rows]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, label in (("attn_object_share", "unmixed"), ("attn_mixed_object_share", "mixed"),
                       ("attn_chance", "chance (uniform)")):
        a.plot(ep, [m[key] for m in rows], marker="o", label=label,
               linestyle="--" if key == "attn_chance" else "-")
    a.set(xlabel="epoch", ylabel="attention on object tokens", title="attention quality")
    for key, label in (("attn_err_area", "λ_area"), ("attn_err_attn", "λ_attn"),
                       ("attn_err_pal", "PAL λ")):
        b.plot(ep, [m[key] for m in rows], marker="o", label=label)
    b.set(xlabel="epoch", ylabel="mean |λ − object share from i|", title="label error")
    c.plot(ep, [m["attn_alpha"] for m in rows], marker="o", label="mean α (cosine)")
    c.plot(ep, [m["attn_corr_alpha_error"] for m in rows], marker="s",
           label="ρ(α, |λ_attn − o_i|)")
    c.axhline(0, color="gray", lw=0.8)
    c.set(xlabel="epoch", title="does α track reliability?")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return save(fig, path)


def monitor_curves(runs: Mapping[str, Sequence[Mapping]], path: str | Path,
                   title: str = "") -> Path:
    """The attention monitor of several runs (label → metrics rows) on one figure: attention
    on object tokens (with chance), the label errors of λ_attn (solid), PAL's λ (dotted) and
    λ_area (dashed) on each run's own mixes, and PAL's mean α with ρ(α, |λ_attn − o_i|)."""
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 3.8))
    chance = None
    for n, (label, metrics) in enumerate(runs.items()):
        rows = [m for m in metrics if m.get("attn_object_share") is not None]
        ep = [m["epoch"] for m in rows]
        color = f"C{n}"
        a.plot(ep, [m["attn_object_share"] for m in rows], color=color, label=label)
        chance = rows[0]["attn_chance"] if rows else chance
        b.plot(ep, [m["attn_err_attn"] for m in rows], color=color, label=f"{label}: λ_attn")
        b.plot(ep, [m["attn_err_pal"] for m in rows], color=color, linestyle=":",
               label=f"{label}: PAL λ")
        c.plot(ep, [m["attn_alpha"] for m in rows], color=color, label=f"{label}: mean α")
        c.plot(ep, [m["attn_corr_alpha_error"] for m in rows], color=color, linestyle="--",
               label=f"{label}: ρ(α, err)")
        b.plot(ep, [m["attn_err_area"] for m in rows], color=color, linestyle="--", lw=1,
               label=f"{label}: λ_area")
    if chance is not None:
        a.axhline(chance, color="gray", linestyle="--", label="chance (uniform)")
    a.set(xlabel="epoch", ylabel="cls attention on object tokens", title="attention quality")
    b.set(xlabel="epoch", ylabel="mean |λ − o_i|", title="label error (mixed images)")
    c.axhline(0, color="gray", lw=0.8)
    c.set(xlabel="epoch", title="PAL's α and ρ(α, |λ_attn − o_i|)")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def alpha_per_epoch(metrics: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """Mean α of the attention-labelled batches per epoch of one run (Fig. 2a)."""
    return alpha_curves({"": [metrics]}, path, title=title or "progressive factor α")


def alpha_curves(runs: Mapping[str, Sequence[Sequence[Mapping]]], path: str | Path,
                 title: str = "") -> Path:
    """Fig. 2a for several α strategies: per label, the mean over its runs (seeds) of the
    per-epoch mean α, with the runs' min–max as a band. ``runs``: label -> each run's
    ``metrics.jsonl`` rows; runs without α (area labels) are left out."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, group in runs.items():
        curves = [{m["epoch"]: m["alpha_mean"] for m in ms if m.get("alpha_mean") is not None}
                  for ms in group]
        epochs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if not epochs:
            continue
        per = [[c[e] for c in curves] for e in epochs]
        marker = "o" if len(epochs) <= 30 else None
        line, = ax.plot(epochs, [sum(v) / len(v) for v in per], marker=marker,
                        label=label or None)
        if len(curves) > 1:
            ax.fill_between(epochs, [min(v) for v in per], [max(v) for v in per],
                            color=line.get_color(), alpha=0.2, lw=0)
    ax.set(xlabel="epoch", ylabel="mean α", ylim=(0, 1), title=title)
    if any(line.get_label() and not line.get_label().startswith("_") for line in ax.get_lines()):
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save(fig, path)


def alpha_histogram(alpha: Sequence[float], path: str | Path, title: str = "") -> Path:
    """Histogram of the per-sample α of one batch (Fig. 2b)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(list(alpha), bins=20, range=(0, 1), edgecolor="black")
    ax.set(xlabel="α", ylabel="samples", title=title or "α distribution, last batch")
    return save(fig, path)
