"""SaliencyMix (Uddin et al., ICLR 2021): a CutMix box centred on the partner's saliency peak.

The box (CutMix's size, ``√(1−λ)`` of each side, λ ~ Beta(β, β)) is centred on the peak of a
model-free saliency map of the partner image (:mod:`mixpro.saliency`), and that region of the
partner is pasted at the same place into the image; labels are area labels.

Paper vs released code (spec: ``table2-methods.md`` §5): the paper pastes each source's own
peak-salient region (``scope='sample'``, the default here); the released code draws **one**
box for the whole batch from the saliency of the first partner image (``scope='batch'``) and
pairs with ``randperm`` (``pairing='randperm'``). The released code also hands OpenCV the
mean/std-normalised float tensor, for which OpenCV's result is essentially content-blind
(spec §5.4); here the detector always sees the de-normalised 0..255 image (``mean``/``std``).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from . import _checks
from .masks import sample_beta, sqrt_rn
from .mixers import Draw, LabelledMixer, Pairing
from .pixels import CellMask
from .saliency import fine_grained_saliency, spectral_residual_saliency

__all__ = ["DETECTORS", "SALIENCY_SCOPES", "SaliencyMix"]

Scope = Literal["sample", "batch"]
Detector = Literal["fine_grained", "spectral_residual"]
SALIENCY_SCOPES: tuple[str, ...] = typing.get_args(Scope)
DETECTORS: tuple[str, ...] = typing.get_args(Detector)


@dataclass(eq=False, kw_only=True)
class SaliencyMix(LabelledMixer):
    """SaliencyMix: a CutMix box centred on the saliency peak of the partner image.

    Per mixed sample ``i`` with partner ``j`` (``scope='sample'``): λ ~ Beta(β, β); a box of
    ``int(H·√(1−λ)) × int(W·√(1−λ))`` px (CutMix's, as the official code: half-sides
    ``⌊cut/2⌋`` either side of the centre) centred on the peak of ``j``'s saliency map (its
    first maximum in row-major order), clipped to the image; the box's pixels come from ``j``,
    the rest from ``i``. ``lam_area = 1 − box area / (H·W)``, exact per sample.

    Args:
        num_classes: number of classes ``K``.
        beta: β of λ ~ Beta(β, β) (the official commands: 1.0).
        prob: probability that a batch is mixed (timm's ``prob``; the official code's
            ``salmix_prob``: 1.0 on ImageNet, 0.5 on CIFAR); an unmixed batch reports
            ``method='none'``.
        scope: ``'sample'`` (default, the paper): λ and box per sample, each centred on its
            own partner's peak; ``'batch'`` (the released code): one λ and one box for the
            batch, centred on the peak of the first partner image ``x[partner[0]]``.
        detector: ``'fine_grained'`` (default: OpenCV's ``StaticSaliencyFineGrained``, the
            official code's) or ``'spectral_residual'`` (:mod:`mixpro.saliency`).
        mean, std: the per-channel normalisation of floating images on the 0..1 scale
            (timm's ``IMAGENET_DEFAULT_MEAN`` / ``_STD``), undone to get the 0..255 pixels the
            detector reads: ``255·(x·std + mean)``. None (default): floating images are taken
            to be in [0, 1] (``255·x``). Integer images (``uint8``) are read as 0..255 and
            take no ``mean``/``std``.
        align: token size in px (int or ``(h, w)``; it must tile the image): the box is
            snapped to the token grid, ``round(√(1−λ)·T)`` tokens per axis (``T`` tokens of
            the image side), placed so that the token holding the peak is its centre token
            (the lower-right middle one for an even count) and shifted, not clipped, to lie
            inside the image; λ is then ``1 − box tokens / tokens``. None: pixel boxes.
        pairing: ``'flip'`` (partner ``B-1-i``, default) or ``'randperm'`` (official code).
        label_smoothing: timm-style smoothing of both one-hots.
        generator: ``torch.Generator`` for all draws (on its own device; results are moved
            to the images' device). Default: the global RNG of the images' device.

    The saliency is computed without gradients on the detached images, on their device,
    for the whole batch at once (the per-sample maps cost a few box filters per image).
    """

    method: ClassVar[str] = "saliencymix"

    beta: float = 1.0
    prob: float = 1.0
    scope: Scope = "sample"
    detector: Detector = "fine_grained"
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    align: int | tuple[int, int] | None = None
    pairing: Pairing = "flip"

    def __post_init__(self) -> None:
        self._setup()
        self.beta = _checks.positive(self.beta, "beta")
        self.prob = _checks.probability(self.prob, "prob")
        self.scope = _checks.choice(self.scope, "scope", SALIENCY_SCOPES)
        self.detector = _checks.choice(self.detector, "detector", DETECTORS)
        self.mean = _checks.channel_stats(self.mean, "mean")
        self.std = _checks.channel_stats(self.std, "std")
        if (self.mean is None) != (self.std is None):
            missing = "std" if self.std is None else "mean"
            raise _checks.ArgumentError(missing, "must be given together with "
                                        f"{'mean' if missing == 'std' else 'std'}")
        if self.align is not None:
            self.align = _checks.pair(self.align, "align")

    # -- pieces ---------------------------------------------------------------------------

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """The 0..255 pixel values the detector reads, ``(B, C, H, W)`` float32 (detached)."""
        x = images.detach()
        c = x.shape[1]
        if not x.dtype.is_floating_point:
            if self.mean is not None:
                raise _checks.ArgumentError(
                    "mean", f"applies to floating images, got {x.dtype} images (read as 0..255)")
            return x.float()
        x = x.float()
        if self.mean is not None:
            for name, stats in (("mean", self.mean), ("std", self.std)):
                if len(stats) not in (1, c):
                    raise _checks.ArgumentError(
                        name, f"has {len(stats)} values for images of {c} channels")
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            x = x * std + mean
        return x * 255.0

    def saliency(self, images: torch.Tensor) -> torch.Tensor:
        """This mixer's saliency maps of ``images (B, C, H, W)``: ``(B, H, W)`` in [0, 1]."""
        with torch.no_grad():
            px = self.pixels(images)
            if self.detector == "fine_grained":
                return fine_grained_saliency(px)
            return spectral_residual_saliency(px)

    def peaks(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 2)`` int64 ``(row, col)`` of the first maximum (row-major) of each map."""
        sal = self.saliency(images)
        w = sal.shape[-1]
        flat = sal.flatten(1).argmax(1)  # the first maximal index
        return torch.stack([flat.div(w, rounding_mode="floor"), flat.remainder(w)], 1)

    def boxes(self, lam: torch.Tensor, peaks: torch.Tensor, image_size: tuple[int, int]
              ) -> torch.Tensor:
        """Boxes ``(n, 4)`` int64 ``(y0, y1, x0, x1)``, half-open, on ``peaks.device``, from
        ``lam (n,)`` (the sides are computed in float64 on ``lam.device``, as CutMix's) and
        ``peaks (n, 2)``."""
        h, w = image_size
        dev = peaks.device
        cut = sqrt_rn((1.0 - lam.double()).clamp(0, 1))
        cy, cx = peaks[:, 0], peaks[:, 1]
        if self.align is None:  # CutMix's size, centred on the peak, clipped
            ch, cw = (h * cut).long().to(dev), (w * cut).long().to(dev)
            return torch.stack([(cy - ch // 2).clamp(0, h), (cy + ch // 2).clamp(0, h),
                                (cx - cw // 2).clamp(0, w), (cx + cw // 2).clamp(0, w)], 1)
        ah, aw = self.align
        th, tw = h // ah, w // aw
        nh, nw = (th * cut).round().long().to(dev), (tw * cut).round().long().to(dev)
        y0 = (cy // ah - nh // 2).clamp_min(0).minimum(th - nh)
        x0 = (cx // aw - nw // 2).clamp_min(0).minimum(tw - nw)
        return torch.stack([y0 * ah, (y0 + nh) * ah, x0 * aw, (x0 + nw) * aw], 1)

    def _check_size(self, image_size: tuple[int, int]) -> None:
        if self.align is not None:
            h, w = image_size
            if h % self.align[0] or w % self.align[1]:
                raise _checks.ArgumentError(
                    "align", f"{self.align} does not tile the image size {image_size}")

    # -- the draw -------------------------------------------------------------------------

    def draw(self, images: torch.Tensor) -> Draw:
        b, dev = images.shape[0], images.device
        h, w = size = (images.shape[-2], images.shape[-1])
        self._check_size(size)
        partner = self.partner(b, dev)
        gen_dev = self.generator_device(dev)
        skip = self.unmixed(b, dev, partner, self.prob)
        if skip is not None:
            return skip
        n = b if self.scope == "sample" else 1
        lam = sample_beta(self.beta, n, device=gen_dev, generator=self.generator)
        if self.scope == "sample":  # each sample's box on its own partner's peak
            peaks = self.peaks(images).index_select(0, partner)
        else:  # one box, on the peak of the first partner image
            peaks = self.peaks(images.index_select(0, partner[:1]))
        box = self.boxes(lam, peaks, size)
        ys = torch.arange(h, device=dev)[None, :, None]
        xs = torch.arange(w, device=dev)[None, None, :]
        y0, y1, x0, x1 = (box[:, i, None, None] for i in range(4))
        keep = torch.logical_or((ys < y0) | (ys >= y1), (xs < x0) | (xs >= x1))  # (n, H, W)
        area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])  # boxes lie inside the image
        mask = CellMask.known(keep, tuple(range(h + 1)), tuple(range(w + 1)),
                              lam=(h * w - area).float() / float(h * w))
        return Draw(mask, partner, mask.lam_area(), self.method, self.relabel)
