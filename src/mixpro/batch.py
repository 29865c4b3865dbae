"""What a mixer returns: :class:`MixedBatch`, one type for every method and batch, and how it
turns into targets (:class:`AttentionRelabel`: λ = α·λ_attn + (1-α)·λ_area).

``batch.targets(logits (B,K), attention (B,N) | None) -> (B, K)``; ``x, y = batch`` gives
timm's ``(images, area targets)`` for area-labelled mixers. The mixers themselves live in
:mod:`mixpro.mixers`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from . import _checks
from .attention import attention_origin
from .labels import (
    AlphaStrategy,
    AttentionNorm,
    attention_lambda,
    combine_lambda,
    mix_targets,
)
from .loss import binary_cross_entropy, soft_target_cross_entropy
from .pixels import PixelSource, TokenMode

Objective = Literal["ce", "bce"]  # what MixedBatch.loss trains with


@dataclass(frozen=True)
class AttentionRelabel:
    """How a batch is relabelled with attention: ``λ = α·λ_attn + (1-α)·λ_area``.

    Attributes:
        alpha: the α strategy (PAL: cosine; TransMix: constant ``1 - ratio``).
        patch_size: ``(ph, pw)`` of the model, or None: the grid of square tokens the
            image shape allows. A probe's attention tensor brings its own grid.
        token_mode: ``'area'`` (exact token fraction) or ``'nearest'`` (TransMix reference).
        smoothing: label smoothing of the relabelled target.
        alpha_smoothing: label smoothing of the area target that cosine α is measured against.
        attention_norm: ``'paper'`` (``λ_attn = Σ m·a``, Eq. 5) or ``'renormalize'``
            (``Σ(m·a)/Σ(a)``, official code); see :func:`~mixpro.labels.attention_lambda`.
    """

    alpha: AlphaStrategy
    patch_size: tuple[int, int] | None
    token_mode: TokenMode
    smoothing: float
    alpha_smoothing: float
    attention_norm: AttentionNorm = "paper"

    def token_grid(self, images: torch.Tensor, attention: torch.Tensor) -> tuple[int, int]:
        """The token grid ``(gh, gw)`` of ``attention (B, N)`` for the batch's ``images``.

        A :class:`~mixpro.ClsAttention` map carries the forward pass it came from: it must be
        the forward on ``images`` (else ``ValueError``), and its grid is the model's. Other
        tensors: :meth:`grid`.
        """
        src = attention_origin(attention)
        if src is not None:
            if not src.came_from(images):
                raise ValueError(
                    f"attention comes from another forward pass than this batch's images "
                    f"{tuple(images.shape)}: {src.describe()}. Pass the probe's attention "
                    "right after logits = model(batch.images) (if the images are transformed "
                    "before the model, assign the result to batch.images first)"
                )
            if src.grid is not None:
                return src.grid
        return self.grid((int(images.shape[-2]), int(images.shape[-1])), attention.shape[1])

    def grid(self, image_size: tuple[int, int], n_tokens: int) -> tuple[int, int]:
        """The token grid of ``n_tokens`` tokens on ``image_size`` images: ``image // patch_size``;
        without ``patch_size`` the one grid of square tokens the image shape allows
        (``H/gh = W/gw``, an integer stride), else ``ValueError`` naming ``patch_size``."""
        h, w = image_size
        if self.patch_size is not None:
            ph, pw = self.patch_size
            grid = (h // ph, w // pw)
            if grid[0] * grid[1] != n_tokens:
                raise ValueError(
                    f"attention has {n_tokens} patch tokens but images {image_size} with "
                    f"patch_size {self.patch_size} give {grid[0]}x{grid[1]} = "
                    f"{grid[0] * grid[1]} (pass the probe's attention tensor itself: it "
                    "carries the model's token grid)"
                )
            return grid
        area, rest = divmod(h * w, n_tokens) if n_tokens > 0 else (0, 1)
        stride = math.isqrt(area)
        if rest or stride < 1 or stride * stride != area or h % stride or w % stride:
            raise ValueError(
                f"patch_size: cannot infer the token grid of {n_tokens} tokens on images "
                f"{image_size} (no grid of square tokens fits); pass patch_size=(ph, pw) or the "
                "probe's attention tensor itself (it carries the model's token grid)"
            )
        return h // stride, w // stride


@dataclass(eq=False)
class MixedBatch:
    """A mixed batch; the same type for every method and every batch.

    Attributes:
        images: mixed images ``(B, C, H, W)`` (a new tensor unless ``method == 'none'``).
        labels: the original labels, class indices ``(B,)`` or multi-hot float ``(B, K)``
            (multi-label); sample ``i``'s partner is ``partner[i]``.
        partner: ``(B,)`` int64 index of the sample mixed into each image.
        lam_area: ``(B,)`` float32 share of each image's pixels from sample ``i``.
        method: ``'none'``, ``'mixup'``, ``'cutmix'``, ``'transmix'``, ``'maskmix'``, ``'mixpro'``,
            or the mixer's custom name.
        source: the :class:`~mixpro.pixels.PixelSource` that made the images.
        label_weights: ``(w_own, w_partner)`` ``(B,)`` float32 label weights that are not
            the pixel shares (TokenMix's activation shares; they need not sum to 1), or None:
            ``(lam_area, 1 - lam_area)``.
        objective: ``'ce'`` (soft-target cross-entropy) or ``'bce'`` (binary cross-entropy
            on the soft targets, TokenMix's official run); multi-label batches use BCE.
        alpha, lam_attn, lam: ``(B,)`` float32, set by :meth:`targets`. For area-labelled
            batches ``alpha`` is 0, ``lam_attn`` is None and ``lam == lam_area`` (with
            ``label_weights``: ``w_own``).

    A sample paired with itself (``partner[i] == i``: the middle sample of an odd batch with
    ``flip`` pairing, ``randperm`` self-pairs) is its own image and label, so its
    ``lam_area``, ``lam_attn``, ``lam`` and token fractions are 1, whatever the mask or blend
    drew for it (:attr:`mask` still shows the drawn cells; both sources are the same image).

    **timm's contract**: ``x, y = mixer(x, y)`` unpacks a batch into ``(images, area_targets())``,
    exactly what ``timm.data.Mixup`` returns, so a mixer is a literal drop-in in a loop written
    for timm. A mixer that relabels with attention (MixPro, TransMix, ``paper_recipe``) refuses
    to be unpacked, on every batch (its targets need ``batch.targets(logits, attention)``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    partner: torch.Tensor
    lam_area: torch.Tensor
    method: str
    source: PixelSource
    num_classes: int
    label_smoothing: float
    relabel: AttentionRelabel | None = None
    progress: float = 0.0
    mixer_needs_attention: bool = False  # the mixer (not only this batch) relabels with attention
    auxiliary: Callable[[MixedBatch], torch.Tensor] | None = None  # an extra loss (GridMix's
    # patch-level labels): added to loss(); it reads what the mixer's own probe captured
    label_weights: tuple[torch.Tensor, torch.Tensor] | None = None
    objective: Objective = "ce"
    alpha: torch.Tensor | None = field(default=None, init=False)
    lam_attn: torch.Tensor | None = field(default=None, init=False)
    lam: torch.Tensor | None = field(default=None, init=False)

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]

    @property
    def multi_label(self) -> bool:
        """True for multi-hot ``(B, K)`` labels (targets and :meth:`loss` are then binary)."""
        return self.labels.dim() == 2

    def __iter__(self):
        """``x, y = batch``: ``(images, area_targets())``, timm's ``Mixup`` return value."""
        if self.mixer_needs_attention:
            raise TypeError(
                f"a {self.method} batch cannot be unpacked as (images, targets): this mixer "
                "relabels with attention, so call batch.targets(logits, attention) after the "
                "forward pass (area-labelled mixers, e.g. Mixup, CutMix, MaskMix, unpack as "
                "timm's Mixup does)")
        return iter((self.images, self.area_targets()))

    @property
    def self_paired(self) -> torch.Tensor:
        """Bool ``(B,)``: True where a sample is its own partner (it stays unmixed)."""
        return self.partner == torch.arange(self.batch_size, device=self.partner.device)

    @property
    def needs_attention(self) -> bool:
        """True when :meth:`targets` uses the attention argument for this batch."""
        return self.relabel is not None and self.relabel.alpha.needs_attention

    @property
    def mask(self) -> torch.Tensor | None:
        """Bool ``(B|1, 1, H, W)``, True = pixel from sample ``i``; None for blends (Mixup)."""
        return self.source.pixel_mask()

    def token_fraction(self, grid: tuple[int, int], mode: TokenMode = "area") -> torch.Tensor:
        """Share of each token's pixels from sample ``i``: ``(B, Nh*Nw)`` float32 (rows of
        self-paired samples are 1)."""
        frac = self.source.token_fraction(grid, mode).expand(self.batch_size, -1)
        return torch.where(self.self_paired[:, None], 1.0, frac)

    def targets(
        self, logits: torch.Tensor, attention: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Soft targets ``(B, num_classes)`` for ``logits`` of this batch's forward pass.

        Args:
            logits: ``(B, num_classes)`` model output on :attr:`images`.
            attention: ``(B, N_patches)`` cls→patch attention of the same forward pass
                (:class:`~mixpro.ClsAttention`); ignored by area-labelled batches.

        Sets :attr:`alpha`, :attr:`lam_attn` and :attr:`lam`. Multi-label batches: targets
        are ``λ·y_i + (1-λ)·y_j`` of the (smoothed) multi-hot rows, and PAL's α compares the
        per-class probabilities ``sigmoid(z)`` with the area target (α strategies receive
        ``logsigmoid(z)``, whose softmax is ``sigmoid(z)`` up to a positive factor, which the
        cosine ignores).
        """
        b, k = self.batch_size, self.num_classes
        _checks.logits(logits, b, k)
        if not self.needs_attention:
            _checks.values(logits, self.labels, k, None)
            self.alpha = torch.zeros(b, device=logits.device)
            self.lam_attn = None
            self.lam = self.lam_area if self.label_weights is None else self.label_weights[0]
            return self.area_targets()
        rl = self.relabel
        assert rl is not None
        attention = _checks.attention(attention, b)
        _checks.values(logits, self.labels, k, attention)
        grid = rl.token_grid(self.images, attention)
        frac = self.token_fraction(grid, rl.token_mode)
        lam_attn = attention_lambda(attention.detach(), frac, rl.attention_norm)
        self.lam_attn = torch.where(self.self_paired, 1.0, lam_attn)
        area_targets = mix_targets(self.labels, self.partner, self.lam_area, k, rl.alpha_smoothing)
        scores = F.logsigmoid(logits) if self.multi_label else logits
        self.alpha = rl.alpha(scores, area_targets, self.progress)
        self.lam = combine_lambda(self.alpha, self.lam_attn, self.lam_area)
        return mix_targets(self.labels, self.partner, self.lam, k, rl.smoothing)

    def area_targets(self) -> torch.Tensor:
        """Soft targets ``(B, num_classes)`` without attention: λ = ``lam_area`` (or the
        batch's ``label_weights``); needs no logits."""
        if self.label_weights is not None:
            own, other = self.label_weights
            return mix_targets(self.labels, self.partner, own, self.num_classes,
                               self.label_smoothing, partner_lam=other)
        return mix_targets(self.labels, self.partner, self.lam_area, self.num_classes,
                           self.label_smoothing)

    def loss(self, logits: torch.Tensor, attention: torch.Tensor | None = None) -> torch.Tensor:
        """Mean soft-target cross-entropy of ``logits`` against :meth:`targets` (multi-label or
        ``objective='bce'``: :func:`~mixpro.binary_cross_entropy`), plus the mixer's auxiliary
        loss if it has one (GridMix's patch-level labels)."""
        targets = self.targets(logits, attention)
        if self.multi_label or self.objective == "bce":
            loss = binary_cross_entropy(logits, targets)
        else:
            loss = soft_target_cross_entropy(logits, targets)
        return loss if self.auxiliary is None else loss + self.auxiliary(self)


__all__ = ["AttentionRelabel", "MixedBatch", "Objective"]
