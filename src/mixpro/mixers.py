"""The objects users hold: mixers that turn a batch into a :class:`MixedBatch`.

Every mixer has one call contract, ``mixer(images (B,C,H,W), labels (B,) | (B,K)) -> MixedBatch``
(``x, y = mixer(x, y)`` for timm's ``Mixup`` contract), and
every :class:`MixedBatch` turns into soft targets with one call,
``batch.targets(logits (B,K), attention (B,N) | None) -> (B, K)``.

* :class:`MaskMix`, :class:`MixPro` — the paper's grid mask, with area labels or with PAL.
* :class:`Mixup`, :class:`CutMix` — timm's ``Mixup`` semantics and keyword names.
* :class:`TransMix` — CutMix + attention relabelling as released by its authors.
* :class:`NoMix` — the unmixed baseline with the same return type.
* :class:`RandomChoice` — one mixer per batch with given probabilities; :func:`paper_recipe`.

:class:`MixedBatch` and its relabelling live in :mod:`mixpro.batch` (re-exported here).
"""

from __future__ import annotations

import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from functools import lru_cache
from typing import ClassVar, Literal

import torch
from torch import nn

from . import _checks
from .batch import AttentionRelabel, MixedBatch, Objective
from .labels import (
    ATTENTION_NORMS,
    AlphaStrategy,
    AttentionNorm,
    ConstantAlpha,
    make_alpha,
    move_parameter,
)
from .masks import BoxMasks, GridMasks, MaskGenerator, sample_beta
from .pixels import Blend, Identity, PixelSource, Switch, TokenMode

Pairing = Literal["flip", "randperm"]
MaskMode = Literal["batch", "positions", "elem"]
Rounding = Literal["floor", "ceil"]
TimmMode = Literal["batch", "pair", "elem"]
PAIRINGS: tuple[str, ...] = typing.get_args(Pairing)
MASK_MODES: tuple[str, ...] = typing.get_args(MaskMode)
ROUNDINGS: tuple[str, ...] = typing.get_args(Rounding)
TIMM_MODES: tuple[str, ...] = typing.get_args(TimmMode)
TOKEN_MODES: tuple[str, ...] = typing.get_args(TokenMode)


def make_partner(
    batch: int, pairing: Pairing, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """Partner index ``(B,)``: ``'flip'`` pairs ``i`` with ``B-1-i`` (odd B: the middle sample is
    its own partner and stays unmixed); ``'randperm'`` is a random permutation (self-pairs
    possible, as the official MixPro code)."""
    if pairing == "flip":
        return torch.arange(batch - 1, -1, -1, device=device)
    gen_device = generator.device if generator is not None else device
    return torch.randperm(batch, device=gen_device, generator=generator).to(device)


@dataclass(frozen=True)
class Draw:
    """What a mixer drew for one batch, before anything is applied (Kornia's split of
    parameter sampling from application): the extension point of a new method.

    Attributes:
        source: the :class:`~mixpro.pixels.PixelSource` that makes the mixed images.
        partner: ``(B,)`` int64 partner index (:meth:`Mixer.partner`).
        lam_area: ``(B,)`` or ``(1,)`` share of each image's pixels from sample ``i``.
        method: the name the batch reports (``MixedBatch.method``).
        relabel: how the batch is relabelled with attention; None: area labels.
        auxiliary: an extra loss term of the batch (GridMix's patch-level labels).
        label_weights: ``(w_own, w_partner)``, each ``(B,)``: the label weights of ``y_i``
            and ``y_partner[i]`` when they are not the pixel shares (TokenMix: activation
            shares, not summing to 1); None: ``(lam_area, 1 - lam_area)``.
        objective: the loss of :meth:`MixedBatch.loss`: ``'ce'`` (soft-target
            cross-entropy) or ``'bce'`` (binary cross-entropy, TokenMix's official run).
    """

    source: PixelSource
    partner: torch.Tensor
    lam_area: torch.Tensor
    method: str
    relabel: AttentionRelabel | None = None
    auxiliary: Callable[[MixedBatch], torch.Tensor] | None = None
    label_weights: tuple[torch.Tensor, torch.Tensor] | None = None
    objective: Objective = "ce"


class Mixer(ABC):
    """Base of all mixers: validation, partners and self-pairs, progress, the call contract.

    A method is one subclass: a dataclass of its keywords whose ``__post_init__`` calls
    :meth:`_setup`, and :meth:`draw` (what to mix, as a :class:`Draw`). The base applies the
    draw and builds the :class:`MixedBatch`; a sample paired with itself is unmixed.
    """

    method: ClassVar[str] = "mixer"
    pairing: Pairing = "flip"
    relabel: AttentionRelabel | None = None  # attention-labelling mixers set it

    def _setup(self) -> None:
        """Check the keywords every mixer has (``num_classes``, ``label_smoothing``,
        ``generator``, ``pairing``) and start at progress 0."""
        self.num_classes = _checks.num_classes(self.num_classes)
        self.label_smoothing = _checks.smoothing(self.label_smoothing)
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise _checks.ArgumentTypeError(
                "generator", f"must be a torch.Generator, got {type(self.generator).__name__}")
        self.pairing = _checks.choice(self.pairing, "pairing", PAIRINGS)
        self.progress = 0.0

    def set_progress(self, progress: float) -> None:
        """Training progress t/T in [0, 1] (used by the ``linear``/``parabolic`` α strategies)."""
        self.progress = _checks.probability(progress, "progress")

    @property
    def needs_attention(self) -> bool:
        """Whether some batches of this mixer need the probe's attention in ``targets``."""
        return self.relabel is not None and self.relabel.alpha.needs_attention

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters (only the ``learnable`` α strategy has one)."""
        return []

    def to(self, device: torch.device | str) -> Mixer:
        """Move learnable parameters to ``device`` in place (the same Parameter objects, so
        an optimizer holding them keeps working); returns ``self``."""
        for p in self.parameters():
            move_parameter(p, device)
        return self

    def partner(self, batch: int, device: torch.device) -> torch.Tensor:
        """This mixer's partner index ``(batch,)`` (its ``pairing``, its generator)."""
        return make_partner(batch, self.pairing, device, self.generator)

    def generator_device(self, device: torch.device) -> torch.device:
        """Where this mixer draws: its generator's device, else ``device`` (the images')."""
        return self.generator.device if self.generator is not None else device

    def unmixed(self, batch: int, device: torch.device, partner: torch.Tensor,
                prob: float) -> Draw | None:
        """With probability ``1 - prob`` (one draw of the generator when ``prob < 1``) an
        unmixed :class:`Draw` (method ``'none'``), else None."""
        if prob >= 1.0 or bool(torch.rand(1, device=self.generator_device(device),
                                          generator=self.generator)[0] < prob):
            return None
        src = Identity(batch, device)
        return Draw(src, partner, src.lam_area(), "none")

    @abstractmethod
    def draw(self, images: torch.Tensor) -> Draw:
        """Draw what this batch mixes (``images (B, C, H, W)``, already validated)."""

    def draw_labelled(self, images: torch.Tensor, labels: torch.Tensor) -> Draw:
        """:meth:`draw` for a method whose draw reads the labels too (TokenMix's teacher maps
        are read for each image's own class); default: ``draw(images)``."""
        return self.draw(images)

    def mix(self, images: torch.Tensor, labels: torch.Tensor, *,
            mixer_needs_attention: bool | None = None) -> MixedBatch:
        """:meth:`__call__`; ``mixer_needs_attention``: what the batch says of the mixer that
        was called (a :class:`RandomChoice` passes its own; default: this mixer's)."""
        _checks.images_and_labels(images, labels, self.num_classes)
        d = self.draw_labelled(images, labels)
        b = images.shape[0]
        lam_area = d.lam_area.to(device=images.device, dtype=torch.float32).expand(b)
        weights = None if d.label_weights is None else tuple(
            w.to(device=images.device, dtype=torch.float32).expand(b) for w in d.label_weights)
        # a sample paired with itself is unmixed whatever was drawn for it (with flip pairing
        # only the middle one of an odd batch)
        if b % 2 or self.pairing != "flip":
            own = d.partner == torch.arange(b, device=d.partner.device)
            lam_area = torch.where(own, 1.0, lam_area)
            if weights is not None:
                weights = (torch.where(own, 1.0, weights[0]), torch.where(own, 0.0, weights[1]))
        return MixedBatch(
            images=d.source.apply(images, d.partner),
            labels=labels,
            partner=d.partner,
            lam_area=lam_area,
            method=d.method,
            source=d.source,
            num_classes=self.num_classes,
            label_smoothing=self.label_smoothing,
            relabel=d.relabel,
            progress=self.progress,
            mixer_needs_attention=(self.needs_attention if mixer_needs_attention is None
                                   else mixer_needs_attention),
            auxiliary=d.auxiliary,
            label_weights=weights,
            objective=d.objective,
        )

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> MixedBatch:
        """Mix ``images (B, C, H, W)`` with labels ``(B,)`` (class indices) or ``(B, K)``
        (multi-hot floats); neither is modified. ``x, y = mixer(x, y)`` gives timm's
        ``(mixed images, soft targets)`` for area-labelled mixers (see :class:`MixedBatch`)."""
        return self.mix(images, labels)


@dataclass(eq=False, kw_only=True)
class LabelledMixer(Mixer):
    """The keywords of every non-timm mixer (timm's :class:`Mixup` orders them its way)."""

    num_classes: int
    label_smoothing: float = 0.1
    generator: torch.Generator | None = field(default=None, repr=False)


@dataclass(eq=False, kw_only=True)
class NoMix(LabelledMixer):
    """No mixing; targets are the smoothed one-hot labels (the baseline, same return type)."""

    method: ClassVar[str] = "none"

    def __post_init__(self) -> None:
        self._setup()

    def draw(self, images: torch.Tensor) -> Draw:
        b = images.shape[0]
        src = Identity(b, images.device)
        return Draw(src, torch.arange(b, device=images.device), src.lam_area(), self.method)


# ------------------------------------------------------------------------------------------
# MaskMix and MixPro
# ------------------------------------------------------------------------------------------


@dataclass(eq=False, kw_only=True)
class MaskMix(LabelledMixer):
    """MaskMix (paper §3.2): a random grid mask whose cell is ``mask_scale × patch_size`` px.

    ``x̃ = M⊙x_i + (1-M)⊙x_j``: exactly ⌊S·τ⌋ of the S cells keep sample ``i`` (M = 1),
    τ ~ Beta(β, β); ``lam_area = mean(M)`` exactly. Labels are area labels.

    Args:
        num_classes: number of classes ``K``.
        patch_size: the ViT's patch size in pixels (int or ``(h, w)``).
        mask_scale: cell side in patches (int or ``(h, w)``); the cell must tile the image.
            Default 2: 32-px cells on ViT-B/16 at 224 px (a 7×7 grid of cells), the paper's.
        beta: β of τ ~ Beta(β, β).
        mode: ``'batch'`` one τ and one mask for the batch (paper pseudo-code, default);
            ``'positions'`` one τ per batch, cell positions per sample (official code);
            ``'elem'`` τ and positions per sample.
        pairing: ``'flip'`` (partner ``B-1-i``, default) or ``'randperm'`` (official code).
        rounding: ``'floor'`` (paper) or ``'ceil'`` (official code) for the cell count.
        label_smoothing: timm-style smoothing of both one-hots.
        strategy: another :class:`~mixpro.masks.MaskGenerator` for the ablations (box, block,
            misaligned or sub-patch grids) or another method's masks (FMix, ResizeMix,
            GridMixup); overrides ``mask_scale`` and ``rounding``.
        name: the method name the batches report (default: the class's, ``maskmix``).
        generator: ``torch.Generator`` for all draws (on its own device; results are moved
            to the images' device). Default: the global RNG of the images' device.
    """

    method: ClassVar[str] = "maskmix"

    patch_size: int | tuple[int, int]
    mask_scale: int | tuple[int, int] = 2
    beta: float = 1.0
    mode: MaskMode = "batch"
    pairing: Pairing = "flip"
    rounding: Rounding = "floor"
    strategy: MaskGenerator | None = None
    name: str | None = field(default=None, repr=False)  # what batches report; None: method

    def __post_init__(self) -> None:
        self._setup()
        self.patch_size = _checks.pair(self.patch_size, "patch_size")
        self.mask_scale = _checks.pair(self.mask_scale, "mask_scale")
        self.beta = _checks.positive(self.beta, "beta")
        self.mode = _checks.choice(self.mode, "mode", MASK_MODES)
        self.rounding = _checks.choice(self.rounding, "rounding", ROUNDINGS)
        if self.strategy is not None and not isinstance(self.strategy, MaskGenerator):
            raise _checks.ArgumentTypeError(
                "strategy", f"must be a MaskGenerator, got {type(self.strategy).__name__}")
        self.cell = (self.mask_scale[0] * self.patch_size[0],
                     self.mask_scale[1] * self.patch_size[1])
        self._custom_strategy = self.strategy is not None
        if self.strategy is None:
            self.strategy = GridMasks(self.cell, rounding=self.rounding)

    def _check_size(self, image_size: tuple[int, int]) -> None:
        h, w = image_size
        ph, pw = self.patch_size
        if h % ph or w % pw:
            raise _checks.ArgumentError(
                "patch_size", f"{self.patch_size} does not tile the image size {image_size}")
        if not self._custom_strategy and (h % self.cell[0] or w % self.cell[1]):
            nh, nw = h // ph, w // pw
            ok = [s for s in range(1, min(nh, nw) + 1) if nh % s == 0 and nw % s == 0]
            raise _checks.ArgumentError(
                "mask_scale",
                f"{self.mask_scale} × patch_size {self.patch_size} = cells of {self.cell} px "
                f"do not tile the image size {image_size}; mask_scale values that tile this "
                f"{nh}x{nw} token grid: {ok}")

    def draw(self, images: torch.Tensor) -> Draw:
        b, dev = images.shape[0], images.device
        size = (images.shape[-2], images.shape[-1])
        self._check_size(size)
        gen_dev = self.generator_device(dev)
        tau = sample_beta(self.beta, b if self.mode == "elem" else 1, device=gen_dev,
                          generator=self.generator)
        if self.mode == "positions":
            tau = tau.expand(b)
        mask = self.strategy(tau, size, device=dev, generator=self.generator)
        return Draw(mask, self.partner(b, dev), mask.lam_area(), self.name or self.method,
                    self.relabel)


@dataclass(eq=False, kw_only=True)
class MixPro(MaskMix):
    """MixPro: MaskMix + Progressive Attention Labeling (the paper's method).

    Targets use ``λ = α·λ_attn + (1-α)·λ_area`` (Eq. 9) with ``λ_attn = Σ_t m_t·a_t`` over
    patch tokens (Eq. 5; ``m``: share of each token from sample ``i``, ``a``: the probe's
    cls→patch attention, whose softmax also covers the cls token, so ``Σa < 1``) and α from
    ``alpha`` (cosine: Eq. 8 against the area-mixed label ỹ of Eq. 7).

    Args (in addition to :class:`MaskMix`'s):
        alpha: ``'cosine'`` (PAL, default), ``'equal'``, ``'linear'``, ``'parabolic'``,
            ``'learnable'``, ``'none'`` (area only), or an :class:`~mixpro.labels.AlphaStrategy`.
        alpha_detach: stop gradients through α (default True; the paper does not say, the
            official code keeps them: ``False``).
        pal_label_smoothing: smoothing of the PAL target; None = ``label_smoothing``. The
            official PAL loss is a hard-label CE, i.e. ``0.0``.
        alpha_target_smoothing: smoothing of the area target ỹ that α is measured against.
            Default ``0.0``: ỹ of Eq. 7 mixed from one-hot labels (the paper); None =
            ``label_smoothing`` (the official code smooths it by 0.1).
        attention_norm: ``'paper'`` (default): ``λ_attn = Σ m·a`` as Eq. 5, un-renormalised;
            ``'renormalize'``: ``Σ(m·a)/Σ(a)`` over patch tokens (the official code).
        token_mode: ``'area'`` (exact) or ``'nearest'`` (Eq. 5's ↓) token fractions; equal
            for MaskMix's aligned grids, they differ only for misaligned/sub-patch strategies.
    """

    method: ClassVar[str] = "mixpro"

    alpha: str | AlphaStrategy = "cosine"
    alpha_detach: bool = True
    pal_label_smoothing: float | None = None
    alpha_target_smoothing: float | None = 0.0
    attention_norm: AttentionNorm = "paper"
    token_mode: TokenMode = "area"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alpha = make_alpha(self.alpha, detach=self.alpha_detach)
        s = self.label_smoothing
        pal_s = s if self.pal_label_smoothing is None else self.pal_label_smoothing
        alpha_s = s if self.alpha_target_smoothing is None else self.alpha_target_smoothing
        self.relabel = AttentionRelabel(
            alpha=self.alpha,
            patch_size=self.patch_size,
            token_mode=_checks.choice(self.token_mode, "token_mode", TOKEN_MODES),
            smoothing=_checks.smoothing(pal_s, "pal_label_smoothing"),
            alpha_smoothing=_checks.smoothing(alpha_s, "alpha_target_smoothing"),
            attention_norm=_checks.choice(self.attention_norm, "attention_norm",
                                          ATTENTION_NORMS),
        )

    def parameters(self) -> list[nn.Parameter]:
        return list(self.alpha.parameters()) if isinstance(self.alpha, nn.Module) else []


# ------------------------------------------------------------------------------------------
# timm-compatible Mixup / CutMix, and TransMix
# ------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Mixup(Mixer):
    """Mixup/CutMix with ``timm.data.Mixup``'s keywords and semantics (a drop-in).

    Differences from timm: returns a :class:`MixedBatch` (call ``.targets(logits)``) instead of
    ``(x, target)``; never mixes in place; accepts odd batches (partner ``B-1-i``, the middle
    sample pairs with itself and stays unmixed). Per-sample modes are vectorised.

    Args:
        mixup_alpha, cutmix_alpha, cutmix_minmax, prob, switch_prob, mode, correct_lam,
            label_smoothing, num_classes: as timm, in timm's order (``mode`` is ``'batch'``,
            ``'pair'``, ``'elem'``; ``cutmix_minmax`` forces ``cutmix_alpha = 1``).
        box_align: snap CutMix boxes to multiples of this many pixels (Table 8 "A").
        generator: a CPU ``torch.Generator`` for all draws (parameters are drawn on the host,
            as timm does).
    """

    method: ClassVar[str] = "mixup"
    _cut_method: ClassVar[str] = "cutmix"

    mixup_alpha: float = 1.0
    cutmix_alpha: float = 0.0
    cutmix_minmax: tuple[float, float] | None = None
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: TimmMode = "batch"
    correct_lam: bool = True
    label_smoothing: float = 0.1
    num_classes: int = 1000
    _: KW_ONLY
    box_align: int | tuple[int, int] | None = None
    generator: torch.Generator | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._setup()
        if self.generator is not None and self.generator.device.type != "cpu":
            raise _checks.ArgumentError(
                "generator", "must be a CPU torch.Generator for Mixup/CutMix/TransMix")
        for name in ("mixup_alpha", "cutmix_alpha"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, float)) or val < 0:
                raise _checks.ArgumentError(name, f"must be a number >= 0, got {val!r}")
            setattr(self, name, float(val))
        if self.cutmix_minmax is not None and not isinstance(self.cutmix_minmax, (tuple, list)):
            raise _checks.ArgumentError(
                "cutmix_minmax", f"must be (min, max) or None, got {self.cutmix_minmax!r}")
        if self.cutmix_minmax is not None:  # checked by BoxMasks (0 <= min < max, as timm)
            self.cutmix_minmax = tuple(self.cutmix_minmax)
            self.cutmix_alpha = 1.0
        self.prob = _checks.probability(self.prob, "prob")
        self.mix_prob = self.prob  # timm's attribute name
        self.switch_prob = _checks.probability(self.switch_prob, "switch_prob")
        self.mode = _checks.choice(self.mode, "mode", TIMM_MODES)
        self.correct_lam = bool(self.correct_lam)
        self.boxes = BoxMasks(self.cutmix_minmax, self.box_align)
        self.mixup_enabled = True
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise _checks.ArgumentError(
                "mixup_alpha", "and cutmix_alpha are both 0: nothing to mix (use NoMix)")

    def _params(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """λ ``(n,)`` and use-CutMix ``(n,)`` drawn on the host, as timm's ``_params_per_*``."""
        g = self.generator
        u = torch.rand(2, n, generator=g)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cut = u[0] < self.switch_prob
            lam = torch.where(
                use_cut,
                sample_beta(self.cutmix_alpha, n, generator=g),
                sample_beta(self.mixup_alpha, n, generator=g),
            )
        elif self.mixup_alpha > 0:
            use_cut = _constant_flags(n, False)
            lam = sample_beta(self.mixup_alpha, n, generator=g)
        else:
            use_cut = _constant_flags(n, True)
            lam = sample_beta(self.cutmix_alpha, n, generator=g)
        if self.mixup_enabled and self.mix_prob >= 1.0:  # u < 1: every sample mixes
            return lam, use_cut
        active = (u[1] < self.mix_prob) & self.mixup_enabled
        return lam.masked_fill(~active, 1.0), use_cut & active

    def draw(self, images: torch.Tensor) -> Draw:
        b, dev = images.shape[0], images.device
        size = (images.shape[-2], images.shape[-1])
        partner = self.partner(b, dev)
        n = 1 if self.mode == "batch" else b
        lam, use_cut = self._params(n)
        if self.mode == "pair":  # pair (i, B-1-i) shares its draws
            mirror = torch.minimum(torch.arange(b), torch.arange(b - 1, -1, -1))
            lam, use_cut = lam[mirror], use_cut[mirror]
        if not _any_below_one(lam):
            src = Identity(b, dev)
            return Draw(src, partner, src.lam_area(), "none")
        if not _any(use_cut):
            return Draw(Blend(lam.to(dev)), partner, lam, "mixup")
        mask = self.boxes(lam, size, device=dev, generator=self.generator)
        if self.mode == "pair":
            mask = mask.select(mirror.to(dev))
        lam_cut = mask.lam_area() if self.correct_lam or self.cutmix_minmax else lam.to(dev)
        if _all(use_cut):
            return Draw(mask, partner, lam_cut, self._cut_method, self.relabel)
        sel = use_cut.to(dev)
        src = Switch(sel, mask, Blend(lam.to(dev)))
        lam_area = torch.where(sel, lam_cut.to(dev), lam.to(dev))
        return Draw(src, partner, lam_area, "mixup+" + self._cut_method, self.relabel)


@lru_cache(maxsize=32)
def _constant_flags(n: int, value: bool) -> torch.Tensor:
    """Host bool ``(n,)`` all ``value``, read only: :meth:`Mixup.draw` only tests it or
    derives new tensors from it."""
    return torch.full((n,), value, dtype=torch.bool)


def _any_below_one(lam: torch.Tensor) -> bool:
    """Whether some host ``λ`` is below 1 (one element: no tensor op)."""
    return float(lam) < 1.0 if lam.numel() == 1 else bool((lam < 1).any())


def _any(flags: torch.Tensor) -> bool:
    """Whether any of the host ``flags`` is True (one element: no reduction op)."""
    return bool(flags) if flags.numel() == 1 else bool(flags.any())


def _all(flags: torch.Tensor) -> bool:
    """Whether all of the host ``flags`` are True (one element: no reduction op)."""
    return bool(flags) if flags.numel() == 1 else bool(flags.all())


@dataclass(eq=False)
class CutMix(Mixup):
    """CutMix alone: :class:`Mixup` with ``mixup_alpha=0`` and timm's keywords (in timm's
    order, without ``mixup_alpha`` and ``switch_prob``)."""

    method: ClassVar[str] = "cutmix"

    mixup_alpha: float = field(default=0.0, init=False)
    cutmix_alpha: float = 1.0
    switch_prob: float = field(default=0.0, init=False)


@dataclass(eq=False)
class TransMix(Mixup):
    """TransMix: timm Mixup/CutMix, with CutMix batches relabelled by attention.

    ``λ = ratio·λ_area + (1-ratio)·λ_attn`` with ``ratio = 0.5`` (the released code; the paper's
    formula is ``ratio = 0``). Mixup batches keep area labels. The box is down-sampled to the
    token grid with nearest sampling (``token_mode='nearest'``, reference) or exactly
    (``'area'``). Defaults follow the released DeiT recipe (mixup 0.8, cutmix 1.0).

    Args: as :class:`Mixup`, plus ``patch_size`` (used only for attention tensors that do not
    carry the model's grid, i.e. not the probe's own; None: the grid of square tokens the image
    shape allows, ``H/gh = W/gw``, else ``ValueError``), ``ratio``, ``token_mode`` and
    ``attention_norm``
    (``'renormalize'``: ``λ_attn = Σ(m·a)/Σ(a)`` as the released code, default; ``'paper'``:
    ``Σ m·a``, the un-renormalised formula).
    """

    method: ClassVar[str] = "transmix"
    _cut_method: ClassVar[str] = "transmix"

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    _: KW_ONLY
    patch_size: int | tuple[int, int] | None = None
    ratio: float = 0.5
    token_mode: TokenMode = "nearest"
    attention_norm: AttentionNorm = "renormalize"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cutmix_alpha == 0:
            raise _checks.ArgumentError(
                "cutmix_alpha", "must be > 0 for TransMix (it relabels CutMix batches)")
        self.ratio = _checks.probability(self.ratio, "ratio")
        if self.patch_size is not None:
            self.patch_size = _checks.pair(self.patch_size, "patch_size")
        self.relabel = AttentionRelabel(
            alpha=ConstantAlpha(1.0 - self.ratio, "transmix"),
            patch_size=self.patch_size,
            token_mode=_checks.choice(self.token_mode, "token_mode", TOKEN_MODES),
            smoothing=self.label_smoothing,
            alpha_smoothing=self.label_smoothing,
            attention_norm=_checks.choice(self.attention_norm, "attention_norm",
                                          ATTENTION_NORMS),
        )

    @property
    def needs_attention(self) -> bool:
        return self.ratio < 1.0


# ------------------------------------------------------------------------------------------
# Composition
# ------------------------------------------------------------------------------------------


class RandomChoice:
    """Applies one of ``mixers`` per batch, chosen with probabilities ``p`` (default uniform).

    Same call contract as a mixer; ``set_progress`` reaches every child.
    """

    def __init__(
        self,
        mixers: Sequence[Mixer],
        p: Sequence[float] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        if not mixers or not all(isinstance(m, (Mixer, RandomChoice)) for m in mixers):
            raise TypeError("mixers must be a non-empty sequence of mixers")
        p = [1.0] * len(mixers) if p is None else list(p)
        if len(p) != len(mixers) or any(v < 0 for v in p) or sum(p) <= 0:
            raise ValueError(f"p must hold {len(mixers)} non-negative weights, got {p}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator for RandomChoice")
        self.mixers = list(mixers)
        self.p = torch.tensor(p, dtype=torch.float64) / sum(p)
        self.generator = generator
        first = self.mixers[0]
        self.num_classes = first.num_classes
        if any(m.num_classes != self.num_classes for m in self.mixers):
            raise ValueError("all mixers of a RandomChoice must have the same num_classes")

    @property
    def needs_attention(self) -> bool:
        return any(m.needs_attention for m in self.mixers)

    def set_progress(self, progress: float) -> None:
        for m in self.mixers:
            m.set_progress(progress)

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.mixers for p in m.parameters()]

    def to(self, device: torch.device | str) -> RandomChoice:
        """Move every child's learnable parameters to ``device`` in place; returns ``self``."""
        for m in self.mixers:
            m.to(device)
        return self

    def mix(self, images: torch.Tensor, labels: torch.Tensor, *,
            mixer_needs_attention: bool | None = None) -> MixedBatch:
        """One child, chosen with ``p``, mixes the batch; the batch says what this
        RandomChoice needs (the same on every batch)."""
        i = int(torch.multinomial(self.p, 1, generator=self.generator))
        needs = self.needs_attention if mixer_needs_attention is None else mixer_needs_attention
        return self.mixers[i].mix(images, labels, mixer_needs_attention=needs)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> MixedBatch:
        return self.mix(images, labels)


def paper_recipe(
    mixpro: MixPro,
    mixup: Mixup | None = None,
    *,
    maskmix_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> RandomChoice:
    """``mixpro`` with probability ``maskmix_prob`` per batch, else ``mixup`` (default: timm's
    Mixup 0.8 / CutMix 1.0 switched 50/50, with ``mixpro``'s classes, smoothing and
    generator).

    The paper's Table 11 lists "MixUp 0.8, CutMix 1, MixPro 1" without saying how they are
    combined; the per-batch 50 % switch (``maskmix_prob=0.5``, then CutMix with
    ``switch_prob``) is the official code's (``AUG.MASKMIX_PROB``).
    """
    gen = mixpro.generator if generator is None else generator
    if mixup is None:
        mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=mixpro.label_smoothing,
                      num_classes=mixpro.num_classes, generator=gen)
    p = _checks.probability(maskmix_prob, "maskmix_prob")
    return RandomChoice([mixpro, mixup], [p, 1.0 - p], generator=gen)
