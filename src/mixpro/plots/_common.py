"""What every plot shares: the Agg backend (no display needed) and saving a figure.

Owns :func:`save` (tight layout, 120 dpi, parent folders created, figure closed).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(fig: plt.Figure, path: str | Path, *, tight: bool = True) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["plt", "save"]
