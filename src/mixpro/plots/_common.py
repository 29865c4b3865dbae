"""What every plot shares: the Agg backend (no display needed) and saving a figure.

Owns :func:`save` (tight layout, 120 dpi, parent folders created, written atomically,
figure closed).
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mixpro.files import atomic_write_bytes  # noqa: E402


def save(fig: plt.Figure, path: str | Path, *, tight: bool = True) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders created; atomically, so a full disk is a
    :class:`~mixpro.files.WriteError`, never a truncated PNG) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    png = io.BytesIO()
    try:
        fig.savefig(png, dpi=120, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(png.getvalue(), path)
    return path


__all__ = ["plt", "save"]
