"""Where each pixel of a mixed image comes from.

A *pixel source* says, for a batch and its partner index, how the mixed image is made:

* :class:`CellMask` — a binary mask on a rectilinear grid of cells (MaskMix grids, CutMix boxes,
  block-wise masks, …). ``True`` = the cell's pixels come from sample ``i``, ``False`` = from
  its partner ``j``. No per-pixel mask is ever materialised to mix; a pixel mask is built only
  on request (:meth:`CellMask.pixel_mask`, bool).
* :class:`Blend` — a per-sample convex blend (Mixup).
* :class:`Switch` — per-sample choice between a :class:`CellMask` and a :class:`Blend`
  (timm's ``pair``/``elem`` modes with both Mixup and CutMix on).
* :class:`Identity` — no mixing.

A *mask generator* turns a target share of sample ``i`` per sample (``ratio``, τ of the paper)
into a :class:`CellMask`: :class:`GridMasks` (random cells of any size and offset: MaskMix,
random 1×, Table 8 B and C), :class:`BoxMasks` (CutMix boxes, optionally patch-aligned:
Table 8 A) and :class:`BlockMasks` (BEiT-style block-wise masks). They share one protocol,
:class:`MaskGenerator`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch

from . import _checks

TokenMode = Literal["area", "nearest"]

# How a CellMask mixes (measured on 2 CPU cores, see benchmarks/): one strided copy per cell
# touches each pixel once (1.3x a plain copy at B=128, 3x224²) but pays a per-cell call; a
# select over a pixel mask with a gathered partner (`_choose`, by blocks of samples on CPU,
# `_mix_blocks`) is a few calls. The per-cell loop is used on CPU for batches past the caches
# with large cells; the select everywhere else (small batches, many tiny cells, per-sample
# masks, and on accelerators, where per-call launch latency dominates).
_MAX_CELL_LOOP = 1024
_LOOP_MIN_BYTES = 32 * 2**20
_LOOP_MIN_CELL_ELEMS = 32768


def _use_cell_loop(images: torch.Tensor, n_cells: int) -> bool:
    if images.device.type != "cpu" or images.requires_grad or n_cells > _MAX_CELL_LOOP:
        return False
    total = images.numel()
    return total * images.element_size() >= _LOOP_MIN_BYTES and (
        total // max(n_cells, 1) >= _LOOP_MIN_CELL_ELEMS
    )


# Per-sample masks and blends (a select/lerp against a gathered partner) run on CPU in blocks
# of samples of about _BLOCK_BYTES: each block's partner gather stays in cache (measured on 2
# CPU cores, B=128, 3x224²: gather + select over the whole batch 2.3x a plain copy, in 4 MB
# blocks 1.35x; gather + lerp 2.1x -> 1.2x). Loops of calls (blocks, the per-cell loop) run
# with one intra-op thread: with two, every call ends in an OpenMP barrier, and on a busy
# machine (other processes, data-loader workers) each barrier waits for a descheduled thread
# (measured at load 4 on 2 cores: 4 MB blocks 14-20x a copy with 2 threads, 1.1-1.4x with
# one). Accelerators (launch latency dominates) and autograd inputs take the whole batch in
# one call.
_BLOCK_BYTES = 4 * 2**20

_THREADS_LOCK = threading.Lock()
_threads_state = {"depth": 0, "saved": 1}


@contextmanager
def _single_threaded() -> Iterator[None]:
    """One intra-op thread for a loop of calls, restored afterwards (re-entrant and safe
    across Python threads: the count is restored when the last user leaves)."""
    with _THREADS_LOCK:
        if _threads_state["depth"] == 0:
            _threads_state["saved"] = torch.get_num_threads()
            if _threads_state["saved"] != 1:
                torch.set_num_threads(1)
        _threads_state["depth"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_state["depth"] -= 1
            if _threads_state["depth"] == 0 and _threads_state["saved"] != 1:
                torch.set_num_threads(_threads_state["saved"])


def _block_size(images: torch.Tensor) -> int:
    """Samples per block for :func:`_mix_blocks`: the whole batch off the CPU."""
    if images.device.type != "cpu" or images.requires_grad:
        return images.shape[0]
    per_sample = images[0].numel() * images.element_size()
    return max(1, _BLOCK_BYTES // max(per_sample, 1))


def _mix_blocks(
    images: torch.Tensor,
    partner: torch.Tensor,
    mix: Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor],
) -> torch.Tensor:
    """A new ``(B, C, H, W)`` tensor whose rows ``r`` are ``mix(images[r], images[partner[r]],
    r)``, block of samples by block (``r`` is a slice; see ``_BLOCK_BYTES``)."""
    b = images.shape[0]
    k = _block_size(images)
    if images.device.type != "cpu":
        return mix(images, images.index_select(0, partner), slice(0, b))
    with _single_threaded():  # also one block: a 2-thread index_select can stall for seconds
        if k >= b:
            return mix(images, images.index_select(0, partner), slice(0, b))
        out = torch.empty_like(images)
        for start in range(0, b, k):
            rows = slice(start, min(b, start + k))
            out[rows] = mix(images[rows], images.index_select(0, partner[rows]), rows)
    return out


def _rows(t: torch.Tensor, rows: slice) -> torch.Tensor:
    """``t[rows]``, or ``t`` itself when it has one row shared by the batch."""
    return t if t.shape[0] == 1 else t[rows]


def _choose(keep: torch.Tensor, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``x`` where ``keep`` (bool, broadcast) else ``other``, as a new tensor.

    Floating images use ``lerp(other, x, keep)``: exact for weights 0 and 1 and 2-4x faster
    than ``torch.where`` on CPU (measured); a non-finite value in one source then turns the
    chosen pixel non-finite too. Integer images use ``torch.where``.
    """
    if x.dtype.is_floating_point:
        return torch.lerp(other, x, keep.to(x.dtype))
    return torch.where(keep, x, other)


def sample_beta(
    concentration: float,
    n: int,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``n`` samples of Beta(c, c) as float32 ``(n,)`` on ``device`` (no host sync)."""
    conc = torch.full((2, n), float(concentration), device=device, dtype=torch.float32)
    g = torch._standard_gamma(conc, generator=generator)
    return g[0] / (g[0] + g[1]).clamp_min(torch.finfo(torch.float32).tiny)


def rand(
    *shape: int, device: torch.device | str, generator: torch.Generator | None
) -> torch.Tensor:
    """Uniform [0, 1) float32 on ``device`` drawn with ``generator`` (helper for all samplers)."""
    return torch.rand(*shape, device=device, generator=generator)


@runtime_checkable
class PixelSource(Protocol):
    """How the mixed image is made from a sample and its partner."""

    def lam_area(self) -> torch.Tensor:
        """Share of each mixed image's pixels taken from sample ``i``: ``(Bm,)`` float32."""

    def apply(self, images: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        """Mixed images ``(B, C, H, W)``, a new tensor; ``images`` is not modified."""

    def token_fraction(self, grid: tuple[int, int], mode: TokenMode = "area") -> torch.Tensor:
        """Share of each token's pixels taken from sample ``i``: ``(Bm, Nh*Nw)`` float32."""

    def pixel_mask(self) -> torch.Tensor | None:
        """Bool ``(Bm, 1, H, W)`` (True = pixel from sample ``i``), or None for blends."""


# ------------------------------------------------------------------------------------------
# Binary masks on a rectilinear cell grid
# ------------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _cell_index(edges: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """For each pixel along one axis, the index of the cell containing it: ``(size,)`` int64."""
    sizes = torch.tensor([b - a for a, b in pairwise(edges)], dtype=torch.int64)
    idx = torch.repeat_interleave(torch.arange(len(edges) - 1), sizes)
    return idx.to(device)


@lru_cache(maxsize=256)
def _overlap(edges: tuple[int, ...], n_tokens: int, device: torch.device) -> torch.Tensor:
    """Pixels shared by token ``t`` and cell ``g`` along one axis: ``(n_tokens, n_cells)``."""
    size = edges[-1]
    step = size // n_tokens
    cell = torch.tensor(edges, dtype=torch.float64)
    tok = torch.arange(n_tokens + 1, dtype=torch.float64) * step
    lo = torch.maximum(tok[:-1, None], cell[None, :-1])
    hi = torch.minimum(tok[1:, None], cell[None, 1:])
    return (hi - lo).clamp_min(0).to(device=device, dtype=torch.float32)


@lru_cache(maxsize=256)
def _nearest_cells(edges: tuple[int, ...], n_tokens: int, device: torch.device) -> torch.Tensor:
    """Cell holding each token's sampling pixel under nearest down-sampling ``(n_tokens,)``.

    This is ``nn.Upsample(size=n_tokens, mode='nearest')``: token ``t`` reads pixel
    ``floor(t * size / n_tokens)`` (the top-left pixel of its patch), as TransMix does.
    """
    size = edges[-1]
    pix = (torch.arange(n_tokens, dtype=torch.float64) * (size / n_tokens)).floor().long()
    return _cell_index(edges, torch.device("cpu"))[pix].to(device)


@dataclass(frozen=True)
class CellMask:
    """A binary mask on a rectilinear grid of cells.

    Attributes:
        cells: bool ``(Bm, Gh, Gw)``, ``Bm`` is 1 (one mask for the batch) or ``B``;
            True = the cell's pixels come from sample ``i``.
        row_edges: ``Gh + 1`` non-decreasing pixel boundaries from 0 to ``H``.
        col_edges: ``Gw + 1`` non-decreasing pixel boundaries from 0 to ``W``.
    """

    cells: torch.Tensor
    row_edges: tuple[int, ...]
    col_edges: tuple[int, ...]
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.cells.dtype != torch.bool or self.cells.dim() != 3:
            raise TypeError("cells must be a bool tensor of shape (Bm, Gh, Gw)")
        for name, edges, n in (
            ("row_edges", self.row_edges, self.cells.shape[1]),
            ("col_edges", self.col_edges, self.cells.shape[2]),
        ):
            if len(edges) != n + 1 or edges[0] != 0:
                raise ValueError(f"{name} must have {n + 1} entries starting at 0, got {edges}")
            if any(b < a for a, b in pairwise(edges)):
                raise ValueError(f"{name} must be non-decreasing, got {edges}")

    @property
    def image_size(self) -> tuple[int, int]:
        return self.row_edges[-1], self.col_edges[-1]

    @property
    def per_pixel(self) -> bool:
        """True when every cell is one pixel (``cells`` is already the pixel mask)."""
        if "per_pixel" not in self._cache:
            h, w = self.image_size
            self._cache["per_pixel"] = (
                self.cells.shape[1:] == (h, w)
                and self.row_edges == tuple(range(h + 1))
                and self.col_edges == tuple(range(w + 1))
            )
        return self._cache["per_pixel"]

    def lam_area(self) -> torch.Tensor:
        """Exact pixel mean of the mask, ``(Bm,)`` float32."""
        if "lam" not in self._cache and self.per_pixel:
            kept = self.cells.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32).float()
            self._cache["lam"] = kept / float(self.image_size[0] * self.image_size[1])
        if "lam" not in self._cache:
            rows = _overlap(self.row_edges, 1, self.cells.device)[0]
            cols = _overlap(self.col_edges, 1, self.cells.device)[0]
            kept = torch.einsum("bhw,h,w->b", self.cells.float(), rows, cols)
            self._cache["lam"] = kept / float(self.image_size[0] * self.image_size[1])
        return self._cache["lam"]

    def select(self, index: torch.Tensor) -> CellMask:
        """The masks of rows ``index`` (int64 ``(n,)``), same grid; a computed λ is kept."""
        # advanced indexing: a 2-thread bool index_select took 1.5 s on a busy CPU (0.2 ms idle)
        out = CellMask(self.cells[index], self.row_edges, self.col_edges)
        if "lam" in self._cache:
            out._cache["lam"] = self._cache["lam"].index_select(0, index)
        return out

    def pixel_mask(self) -> torch.Tensor:
        """Bool ``(Bm, 1, H, W)``, True = pixel from sample ``i`` (built on request only)."""
        if "pixel" in self._cache:
            return self._cache["pixel"]
        if self.per_pixel:
            return self.cells.unsqueeze(1)
        dev = self.cells.device
        rows = _cell_index(self.row_edges, dev)
        cols = _cell_index(self.col_edges, dev)
        return self.cells[:, rows][:, :, cols].unsqueeze(1)

    def token_fraction(self, grid: tuple[int, int], mode: TokenMode = "area") -> torch.Tensor:
        """Share of each token's pixels from sample ``i``, ``(Bm, Nh*Nw)`` float32.

        ``mode='area'`` is exact (area-weighted); ``'nearest'`` reads the top-left pixel of each
        token as nearest down-sampling does (TransMix's reference).
        """
        nh, nw = grid
        h, w = self.image_size
        if h % nh or w % nw:
            raise ValueError(f"token grid {grid} does not tile the image size {(h, w)}")
        dev = self.cells.device
        if mode == "area":
            rows = _overlap(self.row_edges, nh, dev) / (h // nh)
            cols = _overlap(self.col_edges, nw, dev) / (w // nw)
            frac = torch.einsum("th,bhw,sw->bts", rows, self.cells.float(), cols)
        elif mode == "nearest":
            rows = _nearest_cells(self.row_edges, nh, dev)
            cols = _nearest_cells(self.col_edges, nw, dev)
            frac = self.cells[:, rows][:, :, cols].float()
        else:
            raise ValueError(f"token mode must be 'area' or 'nearest', got {mode!r}")
        return frac.reshape(frac.shape[0], nh * nw)

    def apply(self, images: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        """Mixed images: pixels of cells with True from ``images``, others from the partner.

        Large CPU batches with few cells: each pixel is read and written once (one strided
        gather per cell), no partner batch and no pixel mask is materialised. Otherwise
        a select (:func:`_choose`) over the bool pixel mask against the gathered partner, in
        blocks of samples on CPU (see ``_use_cell_loop``, ``_mix_blocks``).
        """
        b = images.shape[0]
        if self.image_size != tuple(images.shape[-2:]):
            raise ValueError(
                f"mask is for images of size {self.image_size}, got {tuple(images.shape[-2:])}"
            )
        gh, gw = self.cells.shape[1:]
        own = torch.arange(b, device=images.device)
        if not _use_cell_loop(images, gh * gw):
            keep = self.pixel_mask()
            return _mix_blocks(
                images, partner, lambda x, other, rows: _choose(_rows(keep, rows), x, other)
            )
        # source sample of every (sample, cell): (B, Gh, Gw)
        src = torch.where(self.cells, own.view(b, 1, 1), partner.view(b, 1, 1))
        out = torch.empty_like(images)
        re, ce = self.row_edges, self.col_edges
        with _single_threaded():
            for r in range(gh):
                if re[r + 1] == re[r]:
                    continue
                for c in range(gw):
                    if ce[c + 1] == ce[c]:
                        continue
                    sl = (slice(None), slice(None), slice(re[r], re[r + 1]),
                          slice(ce[c], ce[c + 1]))
                    torch.index_select(images[sl], 0, src[:, r, c], out=out[sl])
        return out


# ------------------------------------------------------------------------------------------
# Blends, switches and no-ops
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blend:
    """Per-sample convex blend ``x̃ = w·x_i + (1-w)·x_j`` (Mixup); ``weight`` is ``(Bm,)``."""

    weight: torch.Tensor

    def lam_area(self) -> torch.Tensor:
        return self.weight.float()

    def apply(self, images: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        if not images.dtype.is_floating_point:
            raise TypeError(f"Mixup blends need floating images, got {images.dtype}")
        w = self.weight.to(images.dtype).view(-1, 1, 1, 1)
        return _mix_blocks(
            images, partner, lambda x, other, rows: torch.lerp(other, x, _rows(w, rows))
        )

    def token_fraction(self, grid: tuple[int, int], mode: TokenMode = "area") -> torch.Tensor:
        return self.weight.float()[:, None].expand(-1, grid[0] * grid[1])

    def pixel_mask(self) -> None:
        return None


@dataclass(frozen=True)
class Switch:
    """Per-sample choice: sample ``b`` uses ``mask`` where ``use_mask[b]``, else ``blend``."""

    use_mask: torch.Tensor  # bool (B,)
    mask: CellMask
    blend: Blend

    def _pick(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sel = self.use_mask.view(-1, *([1] * (a.dim() - 1)))
        return torch.where(sel, a, b)

    def lam_area(self) -> torch.Tensor:
        return self._pick(self.mask.lam_area(), self.blend.lam_area())

    def apply(self, images: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        """One pass: ``lerp(x_j, x_i, W)`` with the per-pixel weight ``W`` = the mask (0/1,
        where ``lerp`` is exact) for box samples and ``w`` for blended ones."""
        if not images.dtype.is_floating_point:
            raise TypeError(f"Mixup blends need floating images, got {images.dtype}")
        keep = self.mask.pixel_mask()
        use = self.use_mask.view(-1, 1, 1, 1)
        w = self.blend.weight.to(images.dtype).view(-1, 1, 1, 1)

        def mix(x: torch.Tensor, other: torch.Tensor, rows: slice) -> torch.Tensor:
            k = _rows(keep, rows).to(images.dtype)
            return torch.lerp(other, x, torch.where(_rows(use, rows), k, _rows(w, rows)))

        return _mix_blocks(images, partner, mix)

    def token_fraction(self, grid: tuple[int, int], mode: TokenMode = "area") -> torch.Tensor:
        return self._pick(
            self.mask.token_fraction(grid, mode), self.blend.token_fraction(grid, mode)
        )

    def pixel_mask(self) -> None:
        return None


@dataclass(frozen=True)
class Identity:
    """No mixing: every pixel from sample ``i``."""

    batch: int
    device: torch.device

    def lam_area(self) -> torch.Tensor:
        return torch.ones(self.batch, device=self.device)

    def apply(self, images: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        return images

    def token_fraction(self, grid: tuple[int, int], mode: TokenMode = "area") -> torch.Tensor:
        return torch.ones(self.batch, grid[0] * grid[1], device=self.device)

    def pixel_mask(self) -> None:
        return None


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
        cells = _random_cells(self.count(ratio, gh * gw), gh * gw, generator)
        return CellMask(cells.view(-1, gh, gw).to(device), rows, cols)


_BOX_CELLS = [[[True, True, True], [True, False, True], [True, True, True]]]


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
            cut = (1.0 - ratio.double()).clamp(0, 1).sqrt()
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
                u = rand(4, 1, device=ratio.device, generator=generator)[:, 0].tolist()
                y0, y1, x0, x1 = self._box_py(float(ratio[0]), u, h, w)
            else:
                y0, y1, x0, x1 = self.boxes(ratio, image_size, generator)[0].tolist()
            mask = CellMask(torch.tensor(_BOX_CELLS, device=device), (0, y0, y1, h),
                            (0, x0, x1, w))
            kept = np.float32(h * w - (y1 - y0) * (x1 - x0)) / np.float32(h * w)
            mask._cache["lam"] = torch.tensor([kept], device=device)
            keep = torch.ones(1, 1, h, w, dtype=torch.bool, device=device)
            keep[..., y0:y1, x0:x1] = False
            mask._cache["pixel"] = keep  # two calls instead of gathers through the cells
            return mask
        box = self.boxes(ratio, image_size, generator)
        # per-sample boxes: the pixel mask from broadcast comparisons, (B, H, 1) | (B, 1, W)
        box = box.to(device)
        ys = torch.arange(h, device=device)[None, :, None]
        xs = torch.arange(w, device=device)[None, None, :]
        y0, y1, x0, x1 = (box[:, i, None, None] for i in range(4))
        keep = torch.logical_or((ys < y0) | (ys >= y1), (xs < x0) | (xs >= x1))
        mask = CellMask(keep, tuple(range(h + 1)), tuple(range(w + 1)))
        area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])  # boxes lie inside the image
        mask._cache["lam"] = (h * w - area).float() / float(h * w)
        return mask


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
        ph, pw = _checks.pair(self.patch, "patch")
        h, w = image_size
        if h % ph or w % pw:
            raise ValueError(f"patch {(ph, pw)} does not tile the image size {(h, w)}")
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
            bh = (area * asp).sqrt().round().long().clamp(1, nh)
            bw = (area / asp).sqrt().round().long().clamp(1, nw)
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


# ------------------------------------------------------------------------------------------
# Shuffled patches (Table 9: "random shuffling on the cropped patches")
# ------------------------------------------------------------------------------------------

ShuffleScope = Literal["partner", "own", "both"]


def _tile_view(x: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C, T, th*tw)``: the image's tiles in row-major order."""
    b, c, h, w = x.shape
    th, tw = tile
    t = x.reshape(b, c, h // th, th, w // tw, tw).permute(0, 1, 2, 4, 3, 5)
    return t.reshape(b, c, (h // th) * (w // tw), th * tw)


@dataclass(frozen=True)
class ShuffledMask:
    """A :class:`CellMask` whose tiles are permuted within each source's region.

    Output tile ``t`` of mixed image ``b`` is tile ``source_tile[b, t]`` of sample ``b``
    where ``keep[b, t]`` and of its partner otherwise; ``source_tile`` only permutes tiles
    within the kept region and within the partner's region, so which *sample* every pixel
    comes from — and hence ``lam_area``, ``token_fraction`` and ``pixel_mask`` — is exactly
    that of ``mask``.

    Attributes:
        mask: the tile-aligned :class:`CellMask` (``Bm`` rows).
        tile: ``(th, tw)`` tile size in pixels; tiles must tile the image.
        keep: bool ``(Bm, Th*Tw)``, True = the tile comes from sample ``i``.
        source_tile: int64 ``(Bm, Th*Tw)``, a permutation of ``range(Th*Tw)`` per row that
            maps kept tiles to kept tiles and partner tiles to partner tiles.
    """

    mask: CellMask
    tile: tuple[int, int]
    keep: torch.Tensor
    source_tile: torch.Tensor

    def __post_init__(self) -> None:
        h, w = self.mask.image_size
        th, tw = self.tile
        if h % th or w % tw:
            raise ValueError(f"tile {self.tile} does not tile the image size {(h, w)}")
        shape = (self.mask.cells.shape[0], (h // th) * (w // tw))
        if tuple(self.keep.shape) != shape or self.keep.dtype != torch.bool:
            raise ValueError(f"keep must be bool of shape {shape}, got {tuple(self.keep.shape)}")
        if tuple(self.source_tile.shape) != shape:
            raise ValueError(
                f"source_tile must have shape {shape}, got {tuple(self.source_tile.shape)}"
            )

    def lam_area(self) -> torch.Tensor:
        """Exact pixel mean of the mask, ``(Bm,)`` float32 (shuffling keeps it)."""
        return self.mask.lam_area()

    def pixel_mask(self) -> torch.Tensor:
        """Bool ``(Bm, 1, H, W)``, True = pixel from sample ``i`` (shuffling keeps it)."""
        return self.mask.pixel_mask()

    def token_fraction(self, grid: tuple[int, int], mode: TokenMode = "area") -> torch.Tensor:
        """Share of each token's pixels from sample ``i``, ``(Bm, Nh*Nw)`` (as ``mask``)."""
        return self.mask.token_fraction(grid, mode)

    def apply(self, images: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        """Mixed images ``(B, C, H, W)`` with the tiles moved; ``images`` is not modified."""
        if self.mask.image_size != tuple(images.shape[-2:]):
            raise ValueError(
                f"mask is for images of size {self.mask.image_size}, "
                f"got {tuple(images.shape[-2:])}"
            )
        b, c, h, w = images.shape
        th, tw = self.tile
        idx = self.source_tile.to(images.device).expand(b, -1)
        idx = idx[:, None, :, None].expand(b, c, -1, th * tw)
        own = _tile_view(images, self.tile).gather(2, idx)
        other = _tile_view(images.index_select(0, partner), self.tile).gather(2, idx)
        keep = self.keep.to(images.device)[:, None, :, None]
        out = torch.where(keep, own, other)
        out = out.reshape(b, c, h // th, w // tw, th, tw).permute(0, 1, 2, 4, 3, 5)
        return out.reshape(b, c, h, w)


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
        th, tw = _checks.pair(self.tile, "tile")
        h, w = image_size
        if h % th or w % tw:
            raise ValueError(f"tile {(th, tw)} does not tile the image size {(h, w)}")
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
