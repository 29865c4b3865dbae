"""ResizeMix (Qin et al., 2020): the whole partner, resized into a box, pasted on the image.

Owns :class:`ResizedPaste` (the pixel source: the partner batch resized once into the box),
:class:`ResizeBoxes` (the generator: a box of side ``τ·H × τ·W``, τ ~ U(0.1, 0.8), at a uniform
position inside the image) and :class:`ResizeMix` (area labels; PAL or TransMix labels on top
come from the registry). ``align`` puts the box on the attention-token grid (side
``round(τ·tokens)`` tokens, at a token position).

No official code was found; OpenMixup's port centres the box at a uniform point and clips it at
the border (so a clipped box holds a partner of distorted aspect) and returns its mask
transposed. Ours keeps the box inside the image (our choice: no clipping, no distortion), one box
per batch as OpenMixup, the mask exactly where the partner is pasted; ``lam_area`` is
``1 − box area / (H·W)``. The partner is resized with ``interpolation`` (default ``nearest``, as
OpenMixup).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from . import _checks
from .masks import _unit_grid, rand
from .mixers import MaskMix
from .pixels import CellMask, TokenMode

Interpolation = Literal["nearest", "bilinear", "bicubic", "area"]
_BOX = [[[True, True, True], [True, False, True], [True, True, True]]]


@dataclass(frozen=True)
class ResizedPaste:
    """The partner image resized into ``box`` (y0, y1, x0, x1) of every image (one box for
    the batch); ``mask`` is True outside the box (pixels of sample ``i``)."""

    mask: CellMask
    box: tuple[int, int, int, int]
    interpolation: Interpolation = "nearest"

    def lam_area(self) -> torch.Tensor:
        return self.mask.lam_area()

    def token_fraction(self, grid: tuple[int, int], mode: TokenMode = "area") -> torch.Tensor:
        return self.mask.token_fraction(grid, mode)

    def pixel_mask(self) -> torch.Tensor:
        return self.mask.pixel_mask()

    def apply(self, images: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        """Images with the resized partner in the box (a new tensor)."""
        y0, y1, x0, x1 = self.box
        out = images.clone()
        if y1 > y0 and x1 > x0:
            src = images.index_select(0, partner)
            kw = {} if self.interpolation in ("nearest", "area") else {"align_corners": False}
            small = F.interpolate(src.float(), size=(y1 - y0, x1 - x0),
                                  mode=self.interpolation, **kw)
            if not images.dtype.is_floating_point:
                small = small.round()
            out[..., y0:y1, x0:x1] = small.to(images.dtype)
        return out


@dataclass(frozen=True)
class ResizeBoxes:
    """One box per batch of side ``τ·H × τ·W`` px, τ ~ U(``scope``), at a uniform position
    inside the image (``ratio`` is not used: ResizeMix draws its own scale). ``align``: the
    box in whole ``align``-px tokens (side ``max(1, round(τ·tokens))``)."""

    scope: tuple[float, float] = (0.1, 0.8)
    align: int | tuple[int, int] | None = None
    interpolation: Interpolation = "nearest"

    def __post_init__(self) -> None:
        lo, hi = self.scope
        if not 0.0 < lo <= hi <= 1.0:
            raise _checks.ArgumentError("scope", f"must be (low, high) with 0 < low <= high "
                                                 f"<= 1, got {self.scope!r}")
        if self.align is not None:
            _checks.pair(self.align, "align")
        _checks.choice(self.interpolation, "interpolation",
                       ("nearest", "bilinear", "bicubic", "area"))

    def __call__(self, ratio: torch.Tensor, image_size: tuple[int, int], *,
                 device: torch.device, generator: torch.Generator | None = None
                 ) -> ResizedPaste:
        (uh, uw), (h, w), (gh, gw) = _unit_grid(ratio, self.align, image_size, "ResizeMix")
        u = rand(3, device=ratio.device, generator=generator).tolist()
        lo, hi = self.scope
        tau = lo + (hi - lo) * u[0]
        round_ = round if self.align is not None else math.floor
        bh, bw = max(1, round_(tau * gh)), max(1, round_(tau * gw))
        y0 = min(int(u[1] * (gh - bh + 1)), gh - bh) * uh
        x0 = min(int(u[2] * (gw - bw + 1)), gw - bw) * uw
        y1, x1 = y0 + bh * uh, x0 + bw * uw
        cells = torch.tensor(_BOX, device=device)
        mask = CellMask.known(cells, (0, y0, y1, h), (0, x0, x1, w),
                              lam=torch.tensor([1.0 - (y1 - y0) * (x1 - x0) / (h * w)],
                                               dtype=torch.float32, device=device))
        return ResizedPaste(mask, (y0, y1, x0, x1), self.interpolation)


@dataclass(eq=False, kw_only=True)
class ResizeMix(MaskMix):
    """ResizeMix: the whole partner resized into a box of side τ·H, τ ~ U(``scope``), pasted
    into each image (one box per batch); ``lam_area = 1 − box area / (H·W)`` exactly.

    Args (besides ``pairing``, ``label_smoothing``, ``num_classes``, ``generator``):
        scope: the range of τ (paper / OpenMixup: (0.1, 0.8)).
        align: the attention-token size in px: the box in whole tokens.
        interpolation: how the partner is resized (``nearest``, as OpenMixup).
    """

    method: ClassVar[str] = "resizemix"

    patch_size: int | tuple[int, int] = 1
    scope: tuple[float, float] = (0.1, 0.8)
    align: int | tuple[int, int] | None = None
    interpolation: Interpolation = "nearest"
    strategy: ResizeBoxes | None = field(default=None, init=False)
    mode: Literal["batch"] = field(default="batch", init=False)

    def __post_init__(self) -> None:
        self.strategy = ResizeBoxes(tuple(self.scope), self.align, self.interpolation)
        super().__post_init__()


__all__ = ["ResizeBoxes", "ResizeMix", "ResizedPaste"]
