"""Mask generators: a target share of sample ``i`` per sample in, a pixel source out.

A *mask generator* turns a target share of sample ``i`` per sample (``ratio``, τ of the paper)
into a :class:`~mixpro.pixels.CellMask`: :class:`GridMasks` (random cells of any size and
offset: MaskMix, random 1×, Table 8 B and C), :class:`BoxMasks` (CutMix boxes, optionally
patch-aligned: Table 8 A), :class:`BlockMasks` (BEiT-style block-wise masks) and
:class:`ShuffleMasks` (Table 9's shuffled patterns, a :class:`~mixpro.pixels.ShuffledMask`).
They share one protocol, :class:`MaskGenerator`. Also the random draws every mixer uses
(:func:`sample_beta`, :func:`rand`). The pixel sources themselves are :mod:`mixpro.pixels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch

from . import _checks
from .pixels import CellMask, ShuffledMask, ShuffleScope

__all__ = ["BlockMasks", "BoxMasks", "GridMasks", "MaskGenerator", "ShuffleMasks", "rand",
           "sample_beta"]


def sample_beta(
    concentration: float,
    n: int,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``n`` samples of Beta(c, c) as float32 ``(n,)`` on ``device`` (no host sync):
    ``g0 / max(g0 + g1, tiny)`` of two Gamma(c) draws. One sample on the CPU is divided in
    numpy float32 (the same IEEE float32 operations as the tensor path, without three tensor
    calls: what a batch-level mix costs on small images)."""
    g = torch._standard_gamma(_concentration(float(concentration), n, torch.device(device)),
                              generator=generator)
    if n == 1 and g.device.type == "cpu":
        (a,), (b,) = g.tolist()
        lam = np.float32(a) / max(np.float32(a) + np.float32(b), np.float32(_TINY))
        return torch.full((1,), float(lam), dtype=torch.float32)
    g0, g1 = g.unbind(0)
    return g0 / (g0 + g1).clamp_min_(_TINY)


_TINY = torch.finfo(torch.float32).tiny


@lru_cache(maxsize=64)
def _concentration(concentration: float, n: int, device: torch.device) -> torch.Tensor:
    """The ``(2, n)`` float32 Gamma concentrations of :func:`sample_beta` (read only)."""
    return torch.full((2, n), concentration, device=device, dtype=torch.float32)


def rand(
    *shape: int, device: torch.device | str, generator: torch.Generator | None
) -> torch.Tensor:
    """Uniform [0, 1) float32 on ``device`` drawn with ``generator`` (helper for all samplers)."""
    return torch.rand(*shape, device=device, generator=generator)


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded square root of a float64 tensor ``x`` (any shape, no grad), on its
    device: what ``math.sqrt`` and numpy (timm's ``rand_bbox``) give element by element.

    torch's vectorised CPU kernel is not correctly rounded: it is one ulp off for ~1 % of
    float64 inputs (an AVX-512 build, seen 2026-12-03), e.g. ``sqrt(1 - 2**-53)`` gives 1.0, so
    a box side ``int(H·sqrt(1-λ))`` could be one pixel larger than timm's. On the CPU the root
    is taken by numpy (IEEE ``sqrt``); CUDA's float64 ``sqrt`` is already correctly rounded.
    """
    if x.dtype != torch.float64:
        raise TypeError(f"x must be a float64 tensor, got {x.dtype}")
    if x.device.type != "cpu":
        return x.sqrt()
    with np.errstate(invalid="ignore"):  # a negative input gives NaN, as torch's sqrt does
        return torch.from_numpy(np.asarray(np.sqrt(x.detach().resolve_neg().numpy())))


# ------------------------------------------------------------------------------------------
# Mask generators
# ------------------------------------------------------------------------------------------


@runtime_checkable
class MaskGenerator(Protocol):
    """Turns a target share of sample ``i`` into a pixel source (a :class:`CellMask`, or a
    :class:`ShuffledMask` for the shuffled patterns of Table 9).

    ``ratio`` is ``(Bm,)`` float in [0, 1] (Bm = 1: one mask shared by the batch; Bm = B: one
    mask per sample); random draws happen on ``ratio.device`` with ``generator``; the cells
    are returned on ``device``.
    """

    def __call__(
        self,
        ratio: torch.Tensor,
        image_size: tuple[int, int],
        *,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> CellMask | ShuffledMask: ...


def _random_cells(
    count: torch.Tensor, n_cells: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Bool ``(Bm, n_cells)`` with exactly ``count[b]`` True at random positions per row."""
    keys = rand(count.shape[0], n_cells, device=count.device, generator=generator)
    order = keys.argsort(dim=1)
    first = torch.arange(n_cells, device=count.device)[None, :] < count[:, None]
    return torch.zeros_like(first).scatter_(1, order, first)


def _tiling(unit: int | tuple[int, int], name: str, image_size: tuple[int, int]
            ) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(unit (uh, uw), image (h, w))`` after checking that ``unit`` px tiles the image
    (an :class:`~mixpro._checks.ArgumentError` naming ``name`` otherwise)."""
    uh, uw = _checks.pair(unit, name)
    h, w = image_size
    if h % uh or w % uw:
        raise _checks.ArgumentError(name, f"{(uh, uw)} does not tile the image size {(h, w)}")
    return (uh, uw), (h, w)


def _unit_grid(ratio: torch.Tensor, align: int | tuple[int, int] | None,
               image_size: tuple[int, int], one_per_batch: str | None = None
               ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """``(unit, image, grid)`` of a mask drawn on ``align``-px units (None: pixels): the unit
    ``(uh, uw)``, the image ``(h, w)`` and the grid of units ``(gh, gw)``. ``one_per_batch``:
    the method's name when it draws one mask per batch (``ratio`` must have one row)."""
    if one_per_batch is not None and ratio.shape[0] != 1:
        raise _checks.ArgumentError("mode", f"must be 'batch' for {one_per_batch} (one mask "
                                            "per batch, as the reference)")
    (uh, uw), (h, w) = _tiling(align or 1, "align", image_size)
    return (uh, uw), (h, w), (h // uh, w // uw)


def _edges(size: int, cell: int, offset: int) -> tuple[int, ...]:
    """Cell boundaries of a grid of ``cell`` pixels shifted by ``offset`` (clipped to 0..size)."""
    inner = range(cell - offset if offset else cell, size, cell)
    return (0, *inner, size)


@dataclass(frozen=True)
class GridMasks:
    """Random cells of ``cell`` pixels: exactly ``⌊S·ratio⌋`` (or ``⌈S·ratio⌉``) of the S cells
    are True.

    Args:
        cell: cell size in pixels, int or ``(h, w)``; MaskMix uses ``mask_scale × patch_size``.
        offset: shift of the grid in pixels, ``(dy, dx)``; non-zero offsets give cells that
            straddle patch borders (Table 8 "B"), with partial cells at the image border.
        rounding: ``'floor'`` (paper: ⌊S·τ⌋) or ``'ceil'`` (official code: ⌈S·τ⌉).
    """

    cell: int | tuple[int, int]
    offset: int | tuple[int, int] = 0
    rounding: Literal["floor", "ceil"] = "floor"

    def __post_init__(self) -> None:
        _checks.pair(self.cell, "cell")
        off = (self.offset, self.offset) if isinstance(self.offset, int) else self.offset
        if len(off) != 2 or min(off) < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset!r}")
        _checks.choice(self.rounding, "rounding", ("floor", "ceil"))

    def edges(self, image_size: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        ch, cw = _checks.pair(self.cell, "cell")
        oy, ox = (self.offset, self.offset) if isinstance(self.offset, int) else self.offset
        return _edges(image_size[0], ch, oy % ch), _edges(image_size[1], cw, ox % cw)

    def count(self, ratio: torch.Tensor, n_cells: int) -> torch.Tensor:
        """Number of True cells, ``⌊S·ratio⌋`` (``'floor'``) or ``⌈S·ratio⌉`` (``'ceil'``).

        ``ratio`` ``(Bm,)`` float32 or float64 is read as the value it stands for: ``S·ratio``
        is computed in float64 and snapped to the nearest integer when within the rounding
        error of ``ratio``'s dtype (``2·eps·S``), so a float32 ``0.7`` (0.69999999) with
        ``S = 10`` keeps 7 cells, not 6. Returns int64 ``(Bm,)`` in ``[0, S]``.
        """
        if ratio.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"ratio must be a float32 or float64 tensor, got {ratio.dtype}")
        scaled = ratio.double() * n_cells
        nearest = scaled.round()
        tol = 2.0 * torch.finfo(ratio.dtype).eps * max(n_cells, 1)
        scaled = torch.where((scaled - nearest).abs() <= tol, nearest, scaled)
        k = scaled.floor() if self.rounding == "floor" else scaled.ceil()
        return k.long().clamp_(0, n_cells)

    def __call__(
        self,
        ratio: torch.Tensor,
        image_size: tuple[int, int],
        *,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> CellMask:
        rows, cols = self.edges(image_size)
        gh, gw = len(rows) - 1, len(cols) - 1
        count = self.count(ratio, gh * gw)
        cells = _random_cells(count, gh * gw, generator).view(-1, gh, gw).to(device)
        (ch, cw), (h, w) = _checks.pair(self.cell, "cell"), image_size
        lam = None
        if rows == tuple(range(0, h + 1, ch)) and cols == tuple(range(0, w + 1, cw)) \
                and h * w < 2**24:
            # equal cells: λ is the k cells' pixels over the image's, the float32 pixel mean
            # (both counts are exact in float32) without a sum over the cells
            lam = (count * (ch * cw)).to(device=device, dtype=torch.float32) / float(h * w)
        return CellMask.known(cells, rows, cols, lam=lam)


_BOX_CELLS = [[[True, True, True], [True, False, True], [True, True, True]]]


@lru_cache(maxsize=16)
def _box_cells(device: torch.device) -> torch.Tensor:
    """The 3x3 cells of one box (the middle one from the partner) on ``device``; callers
    take a copy (a mask owns its cells)."""
    return torch.tensor(_BOX_CELLS, device=device)


@dataclass(frozen=True)
class BoxMasks:
    """CutMix boxes: a box of about ``1 - ratio`` of the image comes from the partner.

    Follows timm's ``rand_bbox`` (box of side ``int(H·sqrt(1-λ))`` centred uniformly, clipped)
    or ``rand_bbox_minmax`` when ``minmax=(lo, hi)`` is given (side drawn uniformly from
    ``[int(H·lo), int(H·hi))``, corner from ``[0, H - side]``; ``lo = 0`` allows empty boxes).
    ``align`` snaps the box edges to multiples of ``align`` pixels (a patch-aligned box,
    Table 8 "A").

    ``minmax`` is accepted where timm accepts it: ``0 <= lo < hi``; an image size for which
    timm's ``randint`` would fail (``int(s·lo) >= int(s·hi)``, or a side that can exceed the
    image: ``int(s·hi) > s + 1``) raises ``ValueError`` when the boxes are drawn.
    """

    minmax: tuple[float, float] | None = None
    align: int | tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.minmax is not None:
            mm = self.minmax
            if (
                not isinstance(mm, (tuple, list)) or len(mm) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in mm)
            ):
                raise ValueError(f"cutmix_minmax must be a pair of numbers (min, max), got {mm!r}")
            lo, hi = mm
            if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi):
                raise ValueError(f"cutmix_minmax must satisfy 0 <= min < max, got {mm!r}")
        if self.align is not None:
            _checks.pair(self.align, "align")

    def boxes(
        self,
        ratio: torch.Tensor,
        image_size: tuple[int, int],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Boxes ``(Bm, 4)`` int64 as ``(y0, y1, x0, x1)``, half-open, on ``ratio.device``.

        One box on the CPU (batch mode) is computed with Python floats, as timm does with
        numpy (the same float64 arithmetic as the tensor path, a few µs instead of ~40).
        """
        h, w = image_size
        n, dev = ratio.shape[0], ratio.device
        u = rand(4, n, device=dev, generator=generator)
        if n == 1 and dev.type == "cpu":
            return torch.tensor([self._box_py(float(ratio[0]), u[:, 0].tolist(), h, w)])
        return self._boxes_tensor(ratio, u, h, w)

    def _box_py(self, ratio: float, u: list[float], h: int, w: int) -> list[int]:
        """One box from ``ratio`` and 4 uniforms, in Python floats (see :meth:`boxes`)."""
        if self.minmax is None:
            cut = math.sqrt(min(max(1.0 - ratio, 0.0), 1.0))
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = int(u[0] * h), int(u[1] * w)
            box = [min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h),
                   min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)]
        else:
            lo, hi = self.minmax
            self._check_minmax(h, w)
            ch = int(int(h * lo) + u[0] * (int(h * hi) - int(h * lo)))
            cw = int(int(w * lo) + u[1] * (int(w * hi) - int(w * lo)))
            y0, x0 = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
            box = [y0, y0 + ch, x0, x0 + cw]
        if self.align is not None:
            ah, aw = _checks.pair(self.align, "align")
            box = [min(int(round(v / a) * a), lim - lim % a)
                   for v, a, lim in zip(box, (ah, ah, aw, aw), (h, h, w, w), strict=True)]
        return box

    def _check_minmax(self, h: int, w: int) -> None:
        lo, hi = self.minmax
        for s in (h, w):  # where timm's np.random.randint would raise
            if not int(s * lo) < int(s * hi) <= s + 1:
                raise ValueError(
                    f"cutmix_minmax {self.minmax} gives box sides in "
                    f"[{int(s * lo)}, {int(s * hi)}) for an image side of {s} px: "
                    "empty range or a box larger than the image"
                )

    def _boxes_tensor(self, ratio: torch.Tensor, u: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Boxes ``(Bm, 4)`` from ``ratio (Bm,)`` and uniforms ``u (4, Bm)``, as tensors."""
        dev = ratio.device
        u = u.double()
        if self.minmax is None:
            cut = sqrt_rn((1.0 - ratio.double()).clamp(0, 1))
            ch, cw = (h * cut).long(), (w * cut).long()
            cy, cx = (u[0] * h).long(), (u[1] * w).long()
            y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch // 2).clamp(0, h)
            x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw // 2).clamp(0, w)
        else:
            lo, hi = self.minmax
            self._check_minmax(h, w)
            # timm: side ~ randint(int(s·lo), int(s·hi)), corner ~ randint(0, s - side + 1)
            ch = (int(h * lo) + u[0] * (int(h * hi) - int(h * lo))).long()
            cw = (int(w * lo) + u[1] * (int(w * hi) - int(w * lo))).long()
            y0 = (u[2] * (h - ch + 1)).long()
            x0 = (u[3] * (w - cw + 1)).long()
            y1, x1 = y0 + ch, x0 + cw
        box = torch.stack([y0, y1, x0, x1], dim=1)
        if self.align is not None:
            ah, aw = _checks.pair(self.align, "align")
            step = torch.tensor([ah, ah, aw, aw], device=dev, dtype=torch.float64)
            lim = torch.tensor([h, h, w, w], device=dev)
            snapped = (box.double() / step).round() * step
            box = torch.minimum(snapped.long(), lim - (lim % step.long()))
        return box

    def __call__(
        self,
        ratio: torch.Tensor,
        image_size: tuple[int, int],
        *,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> CellMask:
        h, w = image_size
        if ratio.shape[0] == 1:  # one box for the batch: 3x3 cells, the middle one from j
            if ratio.device.type == "cpu":  # Python floats, no tensor round trip
                u = rand(4, device=ratio.device, generator=generator).tolist()
                y0, y1, x0, x1 = self._box_py(ratio.item(), u, h, w)
            else:
                y0, y1, x0, x1 = self.boxes(ratio, image_size, generator)[0].tolist()
            kept = np.float32(h * w - (y1 - y0) * (x1 - x0)) / np.float32(h * w)
            return CellMask.known(_box_cells(torch.device(device)).clone(), (0, y0, y1, h),
                                  (0, x0, x1, w), box=(y0, y1, x0, x1),
                                  lam=torch.full((1,), float(kept), dtype=torch.float32,
                                                 device=device))
        box = self.boxes(ratio, image_size, generator)
        # per-sample boxes: the pixel mask from broadcast comparisons, (B, H, 1) | (B, 1, W)
        box = box.to(device)
        ys = torch.arange(h, device=device)[None, :, None]
        xs = torch.arange(w, device=device)[None, None, :]
        y0, y1, x0, x1 = (box[:, i, None, None] for i in range(4))
        keep = torch.logical_or((ys < y0) | (ys >= y1), (xs < x0) | (xs >= x1))
        area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])  # boxes lie inside the image
        return CellMask.known(keep, tuple(range(h + 1)), tuple(range(w + 1)),
                              lam=(h * w - area).float() / float(h * w), boxes=box)


@dataclass(frozen=True)
class BlockMasks:
    """BEiT-style block-wise masks on the token grid (cells of ``patch`` pixels).

    Blocks of ``min_block`` to the remaining number of tokens, aspect ratio log-uniform in
    ``[aspect, 1/aspect]``, are placed at random until ``floor(N·ratio)`` tokens are True or a
    sample fails ``max_tries`` draws in a row (as BEiT, the count may end a little short; the
    mixer's ``lam_area`` is always the exact mean of the mask). Vectorised over the batch; the
    loop is over placement rounds.
    """

    patch: int | tuple[int, int]
    min_block: int = 4
    aspect: float = 0.3
    max_tries: int = 10

    def __call__(
        self,
        ratio: torch.Tensor,
        image_size: tuple[int, int],
        *,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> CellMask:
        (ph, pw), (h, w) = _tiling(self.patch, "patch", image_size)
        nh, nw = h // ph, w // pw
        n, dev = ratio.shape[0], ratio.device
        target = (ratio.double() * nh * nw).floor().long()
        mask = torch.zeros(n, nh, nw, dtype=torch.bool, device=dev)
        fails = torch.zeros(n, dtype=torch.long, device=dev)
        ys = torch.arange(nh, device=dev)[None, :, None]
        xs = torch.arange(nw, device=dev)[None, None, :]
        log_lo, log_hi = math.log(self.aspect), math.log(1.0 / self.aspect)
        for _ in range(nh * nw * (self.max_tries + 1)):
            count = mask.flatten(1).sum(1)
            remaining = target - count
            active = (remaining > 0) & (fails < self.max_tries)
            if not bool(active.any()):
                break
            u = rand(5, n, device=dev, generator=generator).double()
            lo = torch.minimum(remaining, torch.full_like(remaining, self.min_block)).double()
            area = lo + u[0] * (remaining.double() - lo)
            asp = torch.exp(log_lo + u[1] * (log_hi - log_lo))
            bh = sqrt_rn(area * asp).round().long().clamp(1, nh)
            bw = sqrt_rn(area / asp).round().long().clamp(1, nw)
            top = (u[2] * (nh - bh + 1)).long()
            left = (u[3] * (nw - bw + 1)).long()
            block = (
                (ys >= top[:, None, None]) & (ys < (top + bh)[:, None, None])
                & (xs >= left[:, None, None]) & (xs < (left + bw)[:, None, None])
            )
            new = (block & ~mask).flatten(1).sum(1)
            ok = active & (new > 0) & (new <= remaining)
            mask |= block & ok[:, None, None]
            fails = torch.where(ok, torch.zeros_like(fails), fails + active.long())
        return CellMask(mask.to(device), _edges(h, ph, 0), _edges(w, pw, 0))


@dataclass(frozen=True)
class ShuffleMasks:
    """Table 9's noisy patterns: a ``base`` mask whose tiles are randomly shuffled.

    The ``base`` generator (MaskMix grid by default in the registry) decides which tiles
    come from sample ``i`` and which from its partner; then, per mask row, the tiles of the
    ``scope`` region are randomly permuted among that region's positions:
    ``'partner'`` = the cropped patches pasted from ``x_j`` (the paper's "random shuffling on
    the cropped patches"), ``'own'`` = the kept patches of ``x_i``, ``'both'`` = both regions,
    each within itself. The base mask must be aligned to the tiles (each tile from one
    sample), else ``ValueError``. One permutation per mask row: shared by the batch when the
    mask is (``Bm = 1``), per sample otherwise.

    Args:
        base: a :class:`MaskGenerator` returning :class:`CellMask`.
        tile: shuffled unit in pixels, int or ``(h, w)`` (the ViT patch size in the registry).
        scope: ``'partner'``, ``'own'`` or ``'both'``.
    """

    base: MaskGenerator
    tile: int | tuple[int, int]
    scope: ShuffleScope = "partner"

    def __post_init__(self) -> None:
        if not isinstance(self.base, MaskGenerator):
            raise TypeError(f"base must be a MaskGenerator, got {type(self.base).__name__}")
        _checks.pair(self.tile, "tile")
        _checks.choice(self.scope, "scope", ("partner", "own", "both"))

    def __call__(
        self,
        ratio: torch.Tensor,
        image_size: tuple[int, int],
        *,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> ShuffledMask:
        (th, tw), (h, w) = _tiling(self.tile, "tile", image_size)
        mask = self.base(ratio, image_size, device=device, generator=generator)
        if not isinstance(mask, CellMask):
            raise TypeError(f"base must return a CellMask, got {type(mask).__name__}")
        pm = mask.pixel_mask().reshape(-1, h // th, th, w // tw, tw)
        keep, any_kept = pm.all(dim=(2, 4)).flatten(1), pm.any(dim=(2, 4)).flatten(1)
        if not torch.equal(keep, any_kept):
            raise ValueError(
                f"the base mask cuts tiles of {(th, tw)} px; shuffling needs a mask whose "
                "edges lie on tile borders"
            )
        n_rows, n_tiles = keep.shape
        u = rand(n_rows, n_tiles, device=ratio.device, generator=generator)
        u = u.to(device=device, dtype=torch.float64)
        # sort by (region, index) and by (region, random key in shuffled regions): the k-th
        # tiles of both orders lie in the same region, so mapping one onto the other permutes
        # tiles within regions only (identity in regions left in place)
        region = (~keep).double() * 2.0
        index = torch.arange(n_tiles, device=device, dtype=torch.float64) / n_tiles
        shuffled = {"partner": ~keep, "own": keep, "both": torch.ones_like(keep)}[self.scope]
        dest = (region + index).argsort(dim=1)
        src = (region + torch.where(shuffled, u, index)).argsort(dim=1)
        source_tile = torch.empty_like(dest).scatter_(1, dest, src)
        return ShuffledMask(mask, (th, tw), keep, source_tile)
