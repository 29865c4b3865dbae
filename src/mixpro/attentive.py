"""Attentive-CutMix (Walawalkar, Shen, Liu & Savvides, ICASSP 2020): the most attended cells of a
frozen feature extractor's map are kept from the image, the rest comes from its partner.

Owns :class:`AttentiveCutMix`. Per sample ``i``: the extractor's map of image ``i`` (its last
stage by default, ResNet-50's 2048×7×7 at 224 px in the paper), reduced over channels, gives
one score per cell; the ``top_k`` cells with the highest scores keep ``i``'s pixels, every
other cell takes the partner's; ``lam_area = k / cells`` (6/49 ≈ 0.122 by default).

Choices and where ports differ (spec ``table2-methods.md`` §4): the map is reduced by the
channel mean (OpenMixup; the third-party reference code takes the last channel:
``reduce='last'``); ``top_k=None`` is OpenMixup's "AttentiveMix+" (k = clip(⌊cells·λ⌋, 1,
cells), λ ~ Beta(β, β)), drawn here per sample (OpenMixup: one λ per batch); the extractor
runs in eval mode under ``no_grad`` (OpenMixup leaves its ResNet in train mode, so its
BatchNorm statistics drift) on the batch as the model sees it, optionally resized to
``extractor_size`` (OpenMixup: 224 px). Ties between cell scores go to the lower cell index.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .helpers import evaluating, feature_map, frozen, on_device
from .masks import sample_beta
from .mixers import Draw, LabelledMixer, Pairing
from .pixels import CellMask

__all__ = ["REDUCTIONS", "AttentiveCutMix"]

Reduce = Literal["mean", "last"]
REDUCTIONS: tuple[str, ...] = typing.get_args(Reduce)


@dataclass(eq=False, kw_only=True)
class AttentiveCutMix(LabelledMixer):
    """Attentive-CutMix: keep each image's ``top_k`` most attended extractor cells.

    Args:
        num_classes: number of classes ``K``.
        extractor: a frozen feature extractor (any timm model with ``forward_features`` or
            ``forward_intermediates``, trained on no more data than the model it helps); its
            parameters get ``requires_grad=False``, it runs in eval mode under ``no_grad`` and
            is returned to its mode afterwards.
        top_k: cells kept from each image (paper: 6 of 49); None: AttentiveMix+ (k drawn per
            sample from λ ~ Beta(β, β)).
        beta: β of AttentiveMix+'s λ (OpenMixup's DeiT configs: 2.0); unused with ``top_k``.
        stage: the extractor's map: -1 = its last stage (``forward_features``, the paper),
            else that index of timm's ``forward_intermediates`` (ResNets: 0 stem, 1-4 stages).
        reduce: ``'mean'`` over channels (default) or ``'last'`` channel (reference code).
        extractor_size: side the batch is resized to (bilinear) for the extractor; None: as is.
        align: the model's token size in px: each cell must be whole tokens (else an
            error naming ``extractor``); None: no check.
        prob: probability that a batch is mixed (an unmixed batch reports ``'none'``).
        pairing: ``'flip'`` (default) or ``'randperm'`` (OpenMixup).
        label_smoothing, generator: as every mixer.

    The cell grid is the extractor map's ``(h, w)``; it must tile the image
    (``H % h == W % w == 0``).
    """

    method: ClassVar[str] = "attentive_cutmix"

    extractor: nn.Module = field(repr=False)
    top_k: int | None = 6
    beta: float = 2.0
    stage: int = -1
    reduce: Reduce = "mean"
    extractor_size: int | None = None
    align: int | tuple[int, int] | None = None
    prob: float = 1.0
    pairing: Pairing = "flip"

    def __post_init__(self) -> None:
        self._setup()
        self.extractor = frozen(self.extractor, "extractor")
        if self.top_k is not None and (isinstance(self.top_k, bool)
                                       or not isinstance(self.top_k, int) or self.top_k < 1):
            raise _checks.ArgumentError("top_k", f"must be an int >= 1 or None, got "
                                        f"{self.top_k!r}")
        self.beta = _checks.positive(self.beta, "beta")
        if isinstance(self.stage, bool) or not isinstance(self.stage, int) or self.stage < -1:
            raise _checks.ArgumentError("stage", f"must be -1 (last) or an index >= 0, got "
                                        f"{self.stage!r}")
        self.reduce = _checks.choice(self.reduce, "reduce", REDUCTIONS)
        if self.extractor_size is not None:
            self.extractor_size = _checks.pair(self.extractor_size, "extractor_size")[0]
        if self.align is not None:
            self.align = _checks.pair(self.align, "align")
        self.prob = _checks.probability(self.prob, "prob")

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """The extractor's cell scores of ``images (B, C, H, W)``: ``(B, h, w)`` float32."""
        x = images.detach()
        if not x.dtype.is_floating_point:
            x = x.float() / 255.0
        on_device(self.extractor, x.device)
        if self.extractor_size is not None and tuple(x.shape[-2:]) != (self.extractor_size,) * 2:
            x = F.interpolate(x, size=(self.extractor_size,) * 2, mode="bilinear",
                              align_corners=False)
        with torch.no_grad(), evaluating(self.extractor):
            fmap = feature_map(self.extractor, x, stage=self.stage, name="extractor").float()
        return fmap.mean(1) if self.reduce == "mean" else fmap[:, -1]

    def _grid(self, cells: tuple[int, int], size: tuple[int, int]
              ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        (gh, gw), (h, w) = cells, size
        if h % gh or w % gw:
            raise _checks.ArgumentError(
                "extractor", f"map of {gh}x{gw} cells does not tile the {h}x{w} images "
                             f"(choose another stage or extractor_size)")
        ch, cw = h // gh, w // gw
        if self.align is not None and (ch % self.align[0] or cw % self.align[1]):
            raise _checks.ArgumentError(
                "extractor", f"cells of {ch}x{cw} px are not whole {self.align[0]}x"
                             f"{self.align[1]} px tokens (the map is {gh}x{gw} on {h}x{w} "
                             f"images; choose a stage whose stride is a multiple of the patch)")
        return tuple(range(0, h + 1, ch)), tuple(range(0, w + 1, cw))

    def counts(self, batch: int, cells: int, device: torch.device) -> torch.Tensor:
        """Cells kept per sample, ``(B,)`` int64: ``top_k`` (fewer than ``cells``), or
        AttentiveMix+'s clip(⌊cells·λ⌋, 1, cells) with λ ~ Beta(β, β) per sample."""
        if self.top_k is not None:
            if self.top_k >= cells:
                raise _checks.ArgumentError(
                    "top_k", f"{self.top_k} keeps all {cells} cells of the extractor's map: "
                             "nothing would come from the partner (choose an extractor stage "
                             "with more cells, or a smaller top_k)")
            return torch.full((batch,), self.top_k, device=device, dtype=torch.long)
        gen_dev = self.generator_device(device)
        lam = sample_beta(self.beta, batch, device=gen_dev, generator=self.generator)
        return (lam.double() * cells).floor().long().clamp(1, cells).to(device)

    def draw(self, images: torch.Tensor) -> Draw:
        b, dev = images.shape[0], images.device
        size = (int(images.shape[-2]), int(images.shape[-1]))
        partner = self.partner(b, dev)
        skip = self.unmixed(b, dev, partner, self.prob)
        if skip is not None:
            return skip
        score = self.scores(images)
        gh, gw = score.shape[-2:]
        rows, cols = self._grid((gh, gw), size)
        k = self.counts(b, gh * gw, dev)
        order = torch.sort(score.flatten(1), dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(gh * gw, device=dev).expand(b, -1))
        keep = (rank < k[:, None]).view(b, gh, gw)
        mask = CellMask.known(keep, rows, cols, lam=k.float() / float(gh * gw))
        return Draw(mask, partner, mask.lam_area(), self.method, self.relabel)
