"""FMix (Harris et al., 2020): a binarised low-frequency Fourier mask.

Owns :class:`FourierMasks` (the mask generator: a random image whose spectrum decays as
``1/f^δ``, its top ``⌈λN⌉`` or ``⌊λN⌋`` pixels set to 1, a coin flip choosing the rounding, as the
official code) and :class:`FMix` (MaskMix with that generator and area labels; PAL or TransMix
labels on top come from the registry). ``align`` builds the mask on the attention-token grid
(cells of ``align`` px), so every token comes from one image.

Paper vs official code vs ours: the official code returns the *sampled* λ (within ``1/N`` of the
mask mean); we return the mask mean exactly, per sample. ``max_soft`` (a soft ramp) and
``reformulate`` (λ ~ Beta(α+1, α)) of the official code are not offered (defaults 0 / off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from . import _checks
from .masks import _unit_grid, rand
from .mixers import MaskMix
from .pixels import CellMask


def _frequencies(h: int, w: int) -> torch.Tensor:
    """``|f|`` of ``torch.fft.rfft2``'s ``(h, w//2+1)`` output, float64."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


@dataclass(frozen=True)
class FourierMasks:
    """FMix masks: per row of ``ratio`` a low-frequency image binarised to its top pixels.

    Args:
        decay: δ of the ``1/max(f, 1/max(h, w))^δ`` spectrum (paper: 3).
        align: cell size in px of the grid the mask is drawn on (the attention tokens;
            None: pixels).
    """

    decay: float = 3.0
    align: int | tuple[int, int] | None = None

    def __post_init__(self) -> None:
        _checks.positive(self.decay, "decay")
        if self.align is not None:
            _checks.pair(self.align, "align")

    def noise(self, n: int, grid: tuple[int, int], generator: torch.Generator | None
              ) -> torch.Tensor:
        """The real low-frequency images ``(n, gh, gw)``, min-max normalised to [0, 1]."""
        gh, gw = grid
        freqs = _frequencies(gh, gw)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(gh, gw)) ** self.decay
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        param = torch.randn(n, 2, *freqs.shape, generator=generator, device=gen_dev,
                            dtype=torch.float64).cpu()
        spectrum = torch.complex(param[:, 0], param[:, 1]) * scale
        img = torch.fft.irfft2(spectrum, s=(gh, gw))
        lo = img.flatten(1).min(1).values[:, None, None]
        hi = img.flatten(1).max(1).values[:, None, None]
        return (img - lo) / (hi - lo).clamp_min(1e-12)

    def __call__(self, ratio: torch.Tensor, image_size: tuple[int, int], *,
                 device: torch.device, generator: torch.Generator | None = None) -> CellMask:
        (uh, uw), (h, w), (gh, gw) = _unit_grid(ratio, self.align, image_size)
        n_cells = gh * gw
        m = ratio.shape[0]
        img = self.noise(m, (gh, gw), generator).flatten(1)
        ceil = rand(m, device=ratio.device, generator=generator).cpu() > 0.5
        scaled = ratio.double().cpu() * n_cells
        keep = torch.where(ceil, scaled.ceil(), scaled.floor()).long().clamp_(0, n_cells)
        # the top `keep` values of each row are True (stable order: ties by position)
        order = torch.argsort(img, dim=1, descending=True, stable=True)
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(n_cells).expand(m, -1))
        cells = (ranks < keep[:, None]).view(m, gh, gw).to(device)
        return CellMask(cells, tuple(range(0, h + 1, uh)), tuple(range(0, w + 1, uw)))


@dataclass(eq=False, kw_only=True)
class FMix(MaskMix):
    """FMix: the images mixed by a binarised Fourier mask (:class:`FourierMasks`), area labels.

    ``x̃ = M⊙x_i + (1-M)⊙x_j`` with exactly ``⌈λN⌉`` or ``⌊λN⌋`` of the ``N`` pixels (or
    ``align``-px cells) from sample ``i``, λ ~ Beta(β, β); ``lam_area`` is the mask mean.
    ``mode``: ``'batch'`` one mask per batch (official), ``'elem'`` one per sample.

    Args (besides MaskMix's ``beta``, ``mode``, ``pairing``, ``label_smoothing``, ...):
        decay: the spectrum's decay power δ (paper: 3).
        align: the attention-token size in px: the mask is drawn on that grid.
    """

    method: ClassVar[str] = "fmix"

    patch_size: int | tuple[int, int] = 1
    decay: float = 3.0
    align: int | tuple[int, int] | None = None
    strategy: FourierMasks | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.strategy = FourierMasks(self.decay, self.align)
        super().__post_init__()


__all__ = ["FMix", "FourierMasks"]
