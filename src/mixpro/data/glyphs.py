"""The far-OOD set for Fashion-MNIST: typeset letters, made offline.

Owns :func:`glyph_images`: a notMNIST-style set of real typeset letters (A–Z, a–z) rendered
from the fonts matplotlib ships (21 text fonts, 1,092 images), centred in a 20×20 box on 28×28
like MNIST. It needs no download and shares no class with clothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GLYPH_FONTS = (
    [f"DejaVu{fam}{sty}.ttf" for fam in ("Sans", "SansMono", "Serif")
     for sty in ("", "-Bold", "-Oblique" if fam != "Serif" else "-Italic",
                 "-BoldOblique" if fam != "Serif" else "-BoldItalic")]
    + [f"STIXGeneral{s}.ttf" for s in ("", "Bol", "Italic", "BolIta")]
    + [f"{n}.ttf" for n in ("cmr10", "cmb10", "cmss10", "cmti10", "cmtt10")]
)
GLYPH_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def glyph_images(size: int = 28, box: int = 20) -> np.ndarray:
    """Every letter of :data:`GLYPH_CHARS` in every font of :data:`GLYPH_FONTS`, white on
    black, scaled to fit a ``box``×``box`` square centred in ``size``×``size``.

    Returns uint8 ``(1092, size, size)``.
    """
    import matplotlib
    from matplotlib.ft2font import FT2Font
    from PIL import Image

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    out = []
    for name in GLYPH_FONTS:
        font = FT2Font(str(root / name))
        for ch in GLYPH_CHARS:
            font.set_size(48, 72)
            font.set_text(ch)
            font.draw_glyphs_to_bitmap(antialiased=True)
            g = Image.fromarray(np.asarray(font.get_image()))
            scale = box / max(g.size)
            w, h = max(1, round(g.size[0] * scale)), max(1, round(g.size[1] * scale))
            g = g.resize((w, h), Image.Resampling.BILINEAR)
            canvas = Image.new("L", (size, size))
            canvas.paste(g, ((size - w) // 2, (size - h) // 2))
            out.append(np.asarray(canvas))
    return np.stack(out)
