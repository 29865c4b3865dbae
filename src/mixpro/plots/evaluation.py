"""The evaluation's occlusion plot.

Owns :func:`occlusion_curves`: accuracy vs information loss, one panel per PatchDrop mode, one
line (mean ± std band) per checkpoint (paper Fig. 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._common import plt, save

MODE_TITLES = {
    "random": "Random PatchDrop",
    "salient": "Salient (foreground) PatchDrop",
    "non_salient": "Non-salient (background) PatchDrop",
}



def occlusion_curves(results: Sequence[dict], path: str | Path, *, title: str = "") -> Path:
    """Fig. 3: one panel per PatchDrop mode; x = information loss (%), y = top-1 (%).

    ``results``: ``mixpro eval`` result dicts with ``name`` and ``occlusion`` (see
    :func:`mixpro.evaluate.occlusion.occlusion_sweep`).
    """
    runs = [r for r in results if "occlusion" in r]
    modes = [m for m in MODE_TITLES if any(m in r["occlusion"]["curves"] for r in runs)]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 4.4), squeeze=False)
    markers = "osD^vP*X"
    for ax, mode in zip(axes[0], modes, strict=True):
        for i, r in enumerate(runs):
            pts = r["occlusion"]["curves"].get(mode)
            if not pts:
                continue
            x = np.array([100 * p["info_loss"] for p in pts])
            y = np.array([100 * p["acc_mean"] for p in pts])
            s = np.array([100 * p["acc_std"] for p in pts])
            line, = ax.plot(x, y, marker=markers[i % len(markers)], ms=5, lw=1.8,
                            label=r["name"])
            if s.any():
                ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(MODE_TITLES[mode], fontsize=12)
        ax.set_xlabel("information loss (%)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_xlim(-2, 102)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize=10,
               frameon=False)
    occ = runs[0]["occlusion"] if runs else {}
    grid = occ.get("grid", ["?", "?"])
    px = occ.get("patch_px", ["?", "?"])
    sub = (f"{grid[0]}×{grid[1]} patches of {px[0]}×{px[1]} px, {occ.get('num_images')} "
           f"images, random: mean ± std of {occ.get('repeats')} draws, saliency: "
           f"{occ.get('saliency', 'own cls attention')}")
    fig.suptitle(f"Robustness to occlusion — {title}\n{sub}" if title else sub, fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save(fig, path, tight=False)
