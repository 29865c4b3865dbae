"""GridMixup (IlyaDobrynin/GridMixup; OpenMixup's ``gridmix``): GridMask holes inside a CutMix
crop, the holes filled from the partner.

Owns :class:`GridMixupMasks` (the generator) and :class:`GridMixup` (area labels; PAL or
TransMix labels on top come from the registry). This is **not** Baek et al.'s GridMix (the paper
of MixPro's Table 2, with a patch-level label objective), whose name OpenMixup gives it.

Per batch (as the reference): λ ~ Beta(β, β); ``n_holes`` columns of cells (an integer uniform
in ``n_holes``), ``cut_area`` ~ U(``cut_area``), ``cut_aspect`` ~ U(``cut_aspect``); a crop of
area ``⌊H·W·cut_area⌋``, width ``w = ⌊√(A / aspect)⌋``, height ``⌊w·aspect⌋`` at a uniform
position; inside it a lattice of cells of width ``⌈w / n_holes⌉`` and height ``⌊width ·
hole_aspect⌋``, a hole of ``⌊cell·√(1−λ)⌋`` (clamped to [1, cell − 1]) in the top-left corner of
each; ``lam_area`` = the exact share of pixels outside the holes (recomputed, as the reference).

The reference's crop is larger than the image in about 56 % of batches (``w > W`` when
``aspect < cut_area``), its origin goes negative and Python's slices wrap the holes to the far
border. Ours clamps the crop to the image (its width and height to ``W`` and ``H``, its origin
to ≥ 0) before placing the lattice: the holes are where the crop is, never wrapped.
``align``: every size and position in whole ``align``-px tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from . import _checks
from .masks import _unit_grid, rand
from .mixers import MaskMix
from .pixels import CellMask


def _range(value: tuple[float, float], name: str, low: float, high: float
           ) -> tuple[float, float]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and low <= value[0] <= value[1] <= high):
        raise _checks.ArgumentError(name, f"must be (low, high) within [{low}, {high}], "
                                          f"got {value!r}")
    return float(value[0]), float(value[1])


@dataclass(frozen=True)
class GridMixupMasks:
    """GridMixup masks (one per batch): True outside the holes (pixels of sample ``i``)."""

    n_holes: tuple[int, int] = (2, 6)
    hole_aspect: float = 1.0
    cut_area: tuple[float, float] = (0.5, 1.0)
    cut_aspect: tuple[float, float] = (0.5, 2.0)
    align: int | tuple[int, int] | None = None

    def __post_init__(self) -> None:
        lo, hi = self.n_holes
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise _checks.ArgumentError("n_holes", f"must be (low, high) ints >= 1, got "
                                                   f"{self.n_holes!r}")
        _checks.positive(self.hole_aspect, "hole_aspect")
        _range(self.cut_area, "cut_area", 1e-6, 1.0)
        _range(self.cut_aspect, "cut_aspect", 1e-6, 1e6)
        if self.align is not None:
            _checks.pair(self.align, "align")

    def holes(self, lam: float, grid: tuple[int, int], u: list[float]) -> torch.Tensor:
        """Bool ``(gh, gw)`` hole mask on a grid of ``grid`` units from the uniforms ``u``
        (5 values)."""
        gh, gw = grid
        n_lo, n_hi = self.n_holes
        n = min(n_lo + int(u[0] * (n_hi - n_lo + 1)), n_hi)
        area_ratio = self.cut_area[0] + (self.cut_area[1] - self.cut_area[0]) * u[1]
        aspect = self.cut_aspect[0] + (self.cut_aspect[1] - self.cut_aspect[0]) * u[2]
        area = math.floor(gh * gw * area_ratio)
        width = math.floor(math.sqrt(area / aspect))
        height = math.floor(width * aspect)
        width, height = max(1, min(width, gw)), max(1, min(height, gh))  # never wrapped
        x0 = int((gw - width) * u[3])
        y0 = int((gh - height) * u[4])
        cell_w = max(1, math.ceil(width / n))
        cell_h = max(1, math.floor(cell_w * self.hole_aspect))
        shrink = math.sqrt(max(0.0, 1.0 - lam))
        hole_w = max(1, min(math.floor(cell_w * shrink), cell_w - 1))
        hole_h = max(1, min(math.floor(cell_h * shrink), cell_h - 1))
        ys = torch.arange(gh) - y0
        xs = torch.arange(gw) - x0
        rows = (ys >= 0) & (ys < height) & (ys % cell_h < hole_h)
        cols = (xs >= 0) & (xs < width) & (xs % cell_w < hole_w)
        return rows[:, None] & cols[None, :]

    def __call__(self, ratio: torch.Tensor, image_size: tuple[int, int], *,
                 device: torch.device, generator: torch.Generator | None = None) -> CellMask:
        (uh, uw), (h, w), (gh, gw) = _unit_grid(ratio, self.align, image_size, "GridMixup")
        u = rand(5, device=ratio.device, generator=generator).tolist()
        keep = ~self.holes(float(ratio[0]), (gh, gw), u)
        return CellMask(keep[None].to(device), tuple(range(0, h + 1, uh)),
                        tuple(range(0, w + 1, uw)))


@dataclass(eq=False, kw_only=True)
class GridMixup(MaskMix):
    """GridMixup: a lattice of holes inside a CutMix-like crop comes from the partner
    (:class:`GridMixupMasks`), one mask per batch; ``lam_area`` = share outside the holes.

    Args (besides ``beta``, ``pairing``, ``label_smoothing``, ``num_classes``, ``generator``):
        n_holes, hole_aspect, cut_area, cut_aspect: the reference's ranges (OpenMixup's
            defaults: (2, 6), 1, (0.5, 1), (0.5, 2)).
        align: the attention-token size in px: everything in whole tokens.
    """

    method: ClassVar[str] = "gridmixup"

    patch_size: int | tuple[int, int] = 1
    n_holes: tuple[int, int] = (2, 6)
    hole_aspect: float = 1.0
    cut_area: tuple[float, float] = (0.5, 1.0)
    cut_aspect: tuple[float, float] = (0.5, 2.0)
    align: int | tuple[int, int] | None = None
    strategy: GridMixupMasks | None = field(default=None, init=False)
    mode: Literal["batch"] = field(default="batch", init=False)

    def __post_init__(self) -> None:
        self.strategy = GridMixupMasks(tuple(self.n_holes), self.hole_aspect,
                                       tuple(self.cut_area), tuple(self.cut_aspect), self.align)
        super().__post_init__()


__all__ = ["GridMixup", "GridMixupMasks"]
