"""Pixel sources: where each pixel of a mixed image comes from.

A *pixel source* says, for a batch and its partner index, how the mixed image is made, what
share of it comes from sample ``i`` (``lam_area``) and how much of each token (``token_fraction``):

* :class:`CellMask` — a binary mask on a rectilinear grid of cells (MaskMix grids, CutMix boxes,
  block-wise masks, …). ``True`` = the cell's pixels come from sample ``i``, ``False`` = from
  its partner ``j``. No per-pixel mask is ever materialised to mix; a pixel mask is built only
  on request (:meth:`CellMask.pixel_mask`, bool).
* :class:`Blend` — a per-sample convex blend (Mixup).
* :class:`Switch` — per-sample choice between a :class:`CellMask` and a :class:`Blend`
  (timm's ``pair``/``elem`` modes with both Mixup and CutMix on).
* :class:`Identity` — no mixing.
* :class:`ShuffledMask` — a :class:`CellMask` whose tiles are permuted (Table 9).

The mask generators that draw them live in :mod:`mixpro.masks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from typing import Literal, Protocol, runtime_checkable

import torch

from ._kernels import (
    _choose,
    _mix_blocks,
    _rows,
    cell_loop_allowed,
    fastest,
    mix_ways,
    signature,
    threaded_ways,
    timed_ways,
)

TokenMode = Literal["area", "nearest"]


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

    @classmethod
    def known(cls, cells: torch.Tensor, row_edges: tuple[int, ...], col_edges: tuple[int, ...],
              *, lam: torch.Tensor | None = None, pixel: torch.Tensor | None = None,
              boxes: torch.Tensor | None = None,
              box: tuple[int, int, int, int] | None = None) -> CellMask:
        """A mask whose generator already knows its ``lam_area`` ``(Bm,)``, its bool pixel
        mask ``(Bm, 1, H, W)`` (a box: two comparisons instead of gathers through the cells),
        for per-sample boxes the boxes ``(Bm, 4)`` int64 ``(y0, y1, x0, x1)`` whose pixels are
        False, and/or for one mask shared by the batch its one such ``box`` as host ints (the
        pixel mask is then built from it on request); :meth:`apply` can paste either kind of
        box. They are used as given."""
        mask = cls(cells, row_edges, col_edges)
        for name, value in (("lam", lam), ("pixel", pixel), ("boxes", boxes), ("box", box)):
            if value is not None:
                mask._cache[name] = value
        return mask

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
        lam, boxes = self._cache.get("lam"), self._cache.get("boxes")
        return CellMask.known(self.cells[index], self.row_edges, self.col_edges,
                              lam=None if lam is None else lam.index_select(0, index),
                              boxes=None if boxes is None else boxes.index_select(0, index))

    def pixel_mask(self) -> torch.Tensor:
        """Bool ``(Bm, 1, H, W)``, True = pixel from sample ``i`` (built on request only)."""
        if "pixel" in self._cache:
            return self._cache["pixel"]
        box = self._cache.get("box")
        if box is not None:  # one box for the batch: two calls instead of gathers
            y0, y1, x0, x1 = box
            h, w = self.image_size
            keep = torch.ones(1, 1, h, w, dtype=torch.bool, device=self.cells.device)
            keep[..., y0:y1, x0:x1] = False
            self._cache["pixel"] = keep
            return keep
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

        On CPU the fastest of these ways on this machine runs (:func:`~mixpro._kernels.fastest`;
        all give identical results): a select (:func:`~mixpro._kernels._choose`) over the
        bool pixel mask against the gathered partner, over the batch or in blocks of samples;
        a strided copy per cell (each pixel read and written once, no partner batch nor pixel
        mask); for a box (the one shared by the batch, or one per sample), a copy of the
        batch with the box pasted from the partner (timm's way). Elsewhere one select over
        the batch.
        """
        if self.image_size != tuple(images.shape[-2:]):
            raise ValueError(
                f"mask is for images of size {self.image_size}, got {tuple(images.shape[-2:])}"
            )

        keep = {}

        def select(x: torch.Tensor, other: torch.Tensor, rows: slice,
                   out: torch.Tensor | None) -> torch.Tensor:
            if "pixel" not in keep:  # built once per call, whichever rows it serves
                pixel = self.pixel_mask()
                if pixel.shape[0] == 1 and x.dtype.is_floating_point:  # its 0/1 weights once
                    pixel = pixel.to(x.dtype)
                keep["pixel"] = pixel
            return _choose(_rows(keep["pixel"], rows), x, other, out)

        if not timed_ways(images):
            return _mix_blocks(images, partner, select)
        ways = mix_ways(images, partner, select)
        gh, gw = self.cells.shape[1:]
        if not self.per_pixel and cell_loop_allowed(images, gh * gw):
            ways.update(threaded_ways("cells", lambda: self._cell_copy(images, partner)))
        boxes, box = self._cache.get("boxes"), self._cache.get("box")
        if boxes is not None:
            ways.update(threaded_ways("paste boxes",
                                      lambda: _paste_boxes(images, partner, boxes)))
        if box is not None:
            ways.update(threaded_ways("paste box", lambda: _paste_box(images, partner, box)))
        return fastest(signature("cells", images, tuple(self.cells.shape), boxes is not None,
                                 box is not None), ways)

    def _cell_copy(self, images: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        """The mixed batch by strided copies: one ``index_select`` per cell for per-sample
        masks; for one mask shared by the batch, one call per run of same-source cells in a
        row (a plain copy for sample ``i``'s runs, a gather of the partners for the others)."""
        b = images.shape[0]
        gh, gw = self.cells.shape[1:]
        out = torch.empty_like(images)
        re, ce = self.row_edges, self.col_edges
        if self.cells.shape[0] == 1:
            keep = self.cells[0].tolist()
            for r in range(gh):
                if re[r + 1] == re[r]:
                    continue
                c = 0
                while c < gw:
                    end = c + 1
                    while end < gw and keep[r][end] == keep[r][c]:
                        end += 1
                    sl = (slice(None), slice(None), slice(re[r], re[r + 1]),
                          slice(ce[c], ce[end]))
                    if ce[end] > ce[c]:
                        if keep[r][c]:
                            out[sl] = images[sl]
                        else:
                            torch.index_select(images[sl], 0, partner, out=out[sl])
                    c = end
            return out
        own = torch.arange(b, device=images.device)
        # source sample of every (sample, cell): (B, Gh, Gw)
        src = torch.where(self.cells, own.view(b, 1, 1), partner.view(b, 1, 1))
        for r in range(gh):
            if re[r + 1] == re[r]:
                continue
            for c in range(gw):
                if ce[c + 1] == ce[c]:
                    continue
                sl = (slice(None), slice(None), slice(re[r], re[r + 1]), slice(ce[c], ce[c + 1]))
                torch.index_select(images[sl], 0, src[:, r, c], out=out[sl])
        return out


def _paste_box(images: torch.Tensor, partner: torch.Tensor, box: tuple[int, int, int, int]
               ) -> torch.Tensor:
    """A copy of ``images`` with the one box ``(y0, y1, x0, x1)`` of every sample ``b`` taken
    from sample ``partner[b]`` (batch-level CutMix as timm computes it, out of place)."""
    y0, y1, x0, x1 = box
    out = images.clone()
    if y1 > y0 and x1 > x0:
        region = (slice(None), slice(None), slice(y0, y1), slice(x0, x1))
        torch.index_select(images[region], 0, partner, out=out[region])
    return out


def _paste_boxes(images: torch.Tensor, partner: torch.Tensor, boxes: torch.Tensor
                 ) -> torch.Tensor:
    """A copy of ``images`` with box ``boxes[b] = (y0, y1, x0, x1)`` of sample ``b`` taken
    from sample ``partner[b]`` (per-sample CutMix as timm computes it, out of place)."""
    out = images.clone()
    for b, (j, (y0, y1, x0, x1)) in enumerate(zip(partner.tolist(), boxes.tolist(),
                                                  strict=True)):
        if y1 > y0 and x1 > x0 and j != b:
            out[b, :, y0:y1, x0:x1] = images[j, :, y0:y1, x0:x1]
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
        w = self.weight.to(images.dtype)
        if w.numel() == 1 and w.device.type == "cpu":  # one weight: lerp's scalar form
            scalar = float(w)  # (the same values; no (1, 1, 1, 1) view to broadcast)
            weight_of = lambda rows: scalar  # noqa: E731
        else:
            column = w.view(-1, 1, 1, 1)
            weight_of = lambda rows: _rows(column, rows)  # noqa: E731
        return _mix_blocks(
            images, partner,
            lambda x, other, rows, out: torch.lerp(other, x, weight_of(rows), out=out),
            tag="blend", extra=(w.numel(),), inputs=(w,),
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
        """``lerp(x_j, x_i, W)`` with the per-pixel weight ``W`` = the mask (0/1, where
        ``lerp`` is exact) for box samples and ``w`` for blended ones, in one pass over the
        batch or its blocks; on CPU, for per-sample boxes, also timm's loop over the samples
        (out of place), whichever is fastest here (the same bits)."""
        if not images.dtype.is_floating_point:
            raise TypeError(f"Mixup blends need floating images, got {images.dtype}")
        use = self.use_mask.view(-1, 1, 1, 1)
        w = self.blend.weight.to(images.dtype)
        column = w.view(-1, 1, 1, 1)
        keep = {}

        def mix(x: torch.Tensor, other: torch.Tensor, rows: slice,
                out: torch.Tensor | None) -> torch.Tensor:
            if "pixel" not in keep:  # its 0/1 weights once per call, whichever rows they serve
                keep["pixel"] = self.mask.pixel_mask().to(images.dtype)
            k = _rows(keep["pixel"], rows)
            return torch.lerp(other, x, torch.where(_rows(use, rows), k, _rows(column, rows)),
                              out=out)

        boxes = self.mask._cache.get("boxes") if isinstance(self.mask, CellMask) else None
        if boxes is None or not timed_ways(images, w):
            return _mix_blocks(images, partner, mix, tag="switch", inputs=(w,))
        ways = mix_ways(images, partner, mix)
        ways.update(threaded_ways("per sample",
                                  lambda: self._per_sample(images, partner, boxes, w)))
        return fastest(signature("switch", images, "boxes"), ways)

    def _per_sample(self, images: torch.Tensor, partner: torch.Tensor, boxes: torch.Tensor,
                    w: torch.Tensor) -> torch.Tensor:
        """timm's per-sample loop, out of place: a box sample ``b`` is sample ``b`` with its
        box ``boxes[b] = (y0, y1, x0, x1)`` from ``partner[b]``; a blended one is
        ``lerp(x_j, x_b, w_b)`` with ``w_b`` as ``lerp``'s scalar weight (the same values)."""
        out = torch.empty_like(images)
        weights = w.expand(images.shape[0]) if w.numel() == 1 else w  # one weight: the batch's
        for b, (j, use, wb, (y0, y1, x0, x1)) in enumerate(zip(
                partner.tolist(), self.use_mask.tolist(), weights.tolist(), boxes.tolist(),
                strict=True)):
            if use:
                out[b] = images[b]
                if y1 > y0 and x1 > x0 and j != b:
                    out[b, :, y0:y1, x0:x1] = images[j, :, y0:y1, x0:x1]
            else:
                torch.lerp(images[j], images[b], wb, out=out[b])
        return out

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
