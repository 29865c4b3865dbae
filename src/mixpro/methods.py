"""Methods by name: the one place that maps mixing options to a mixer.

Owns :class:`MixOptions` (every mixing knob a recipe can set, with the paper's defaults), the
registry :data:`METHODS` (name → :class:`Method`: how to build the mixer and which options it
honours) and :func:`build_mixer`. A new method or mask strategy is added here and nowhere
else; the training app turns its recipe into :class:`MixOptions` and asks :func:`build_mixer`.

Table 6's component rows are presets: ``cutmix``; ``transmix``; ``maskmix_transmix``
(MaskMix relabelled the TransMix way, λ = 0.5·λ_attn + 0.5·λ_area, i.e. α = 0.5);
``cutmix_pal`` (CutMix boxes with PAL); ``mixpro``. Table 8's A is ``transmix_aligned``
(TransMix with boxes on patch borders).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace

import torch

from .mixers import CutMix, MaskMix, Mixer, MixPro, Mixup, NoMix, RandomChoice, TransMix
from .strategies import MASK_STRATEGIES, make_mask_strategy

AnyMixer = Mixer | RandomChoice


@dataclass(frozen=True)
class MixOptions:
    """Every mixing option a recipe can set (names are the recipe keys)."""

    label_smoothing: float = 0.1
    mix_prob: float = 1.0  # probability that a Mixup/CutMix/TransMix batch is mixed at all
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5
    transmix_ratio: float = 0.5  # TransMix: λ = r·λ_area + (1 − r)·λ_attn (released code)
    mask_strategy: str = "grid"  # see mixpro.strategies.MASK_STRATEGIES
    mask_scale: int = 2
    beta: float = 1.0
    mask_mode: str = "batch"
    pairing: str = "flip"
    rounding: str = "floor"
    alpha: str = "cosine"
    alpha_detach: bool = True
    pal_label_smoothing: float | None = None
    attention_norm: str = "paper"  # MixPro's λ_attn: paper (Eq. 5) | renormalize (official)
    maskmix_prob: float = 0.5  # paper: probability of MixPro instead of Mixup/CutMix


OPTION_NAMES = tuple(f.name for f in fields(MixOptions))
Builder = Callable[..., AnyMixer]  # (options, num_classes, patch_size, generator[, box_align])


@dataclass(frozen=True)
class Method:
    """A named method: ``build(options, num_classes, patch_size, generator)`` and the options
    it honours (``keys``); ``patch`` says whether it needs the model's patch size;
    ``token_aligned`` builders also take ``box_align``, the attention tokens' size in px."""

    build: Builder
    keys: frozenset[str]
    help: str
    patch: bool = False
    token_aligned: bool = False


_TIMM = frozenset({"label_smoothing", "mix_prob"})
_MASK = frozenset({"label_smoothing", "mask_strategy", "mask_scale", "beta", "mask_mode",
                   "pairing", "rounding"})
_PAL = frozenset({"alpha", "alpha_detach", "pal_label_smoothing", "attention_norm"})


def _strategy(o: MixOptions, patch: int):
    if o.mask_strategy == "grid":
        return None  # MaskMix's own grid, with its tiling check naming mask_scale
    return make_mask_strategy(o.mask_strategy, patch_size=patch, mask_scale=o.mask_scale,
                              rounding=o.rounding)


def _maskmix_args(o: MixOptions, k: int, p: int, g: torch.Generator) -> dict:
    return dict(num_classes=k, patch_size=p, mask_scale=o.mask_scale, beta=o.beta,
                mode=o.mask_mode, pairing=o.pairing, rounding=o.rounding,
                label_smoothing=o.label_smoothing, strategy=_strategy(o, p), generator=g)


def _mixpro(o: MixOptions, k: int, p: int, g: torch.Generator, **changes) -> MixPro:
    o = replace(o, **changes)
    return MixPro(**_maskmix_args(o, k, p, g), alpha=o.alpha, alpha_detach=o.alpha_detach,
                  pal_label_smoothing=o.pal_label_smoothing, attention_norm=o.attention_norm)


def _mixup_cutmix(o: MixOptions, k: int, g: torch.Generator) -> Mixup:
    return Mixup(mixup_alpha=o.mixup_alpha, cutmix_alpha=o.cutmix_alpha,
                 switch_prob=o.switch_prob, prob=o.mix_prob, label_smoothing=o.label_smoothing,
                 num_classes=k, generator=g)


def _paper(o: MixOptions, k: int, p: int, g: torch.Generator) -> RandomChoice:
    q = o.maskmix_prob
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"maskmix_prob must be in [0, 1], got {q}")
    return RandomChoice([_mixpro(o, k, p, g), _mixup_cutmix(o, k, g)], [q, 1.0 - q],
                        generator=g)


METHODS: dict[str, Method] = {
    "none": Method(lambda o, k, p, g: NoMix(num_classes=k, label_smoothing=o.label_smoothing),
                   frozenset({"label_smoothing"}), "no mixing (smoothed one-hot targets)"),
    "mixup": Method(
        lambda o, k, p, g: Mixup(mixup_alpha=o.mixup_alpha, cutmix_alpha=0.0, prob=o.mix_prob,
                                 label_smoothing=o.label_smoothing, num_classes=k, generator=g),
        _TIMM | {"mixup_alpha"}, "Mixup (timm semantics)"),
    "cutmix": Method(
        lambda o, k, p, g: CutMix(cutmix_alpha=o.cutmix_alpha, prob=o.mix_prob,
                                  label_smoothing=o.label_smoothing, num_classes=k, generator=g),
        _TIMM | {"cutmix_alpha"}, "CutMix, area labels (Table 6 row 1)"),
    "mixup_cutmix": Method(lambda o, k, p, g: _mixup_cutmix(o, k, g),
                           _TIMM | {"mixup_alpha", "cutmix_alpha", "switch_prob"},
                           "Mixup or CutMix per batch (timm)"),
    "transmix": Method(
        lambda o, k, p, g: TransMix(
            mixup_alpha=o.mixup_alpha, cutmix_alpha=o.cutmix_alpha, switch_prob=o.switch_prob,
            prob=o.mix_prob, patch_size=p, ratio=o.transmix_ratio,
            label_smoothing=o.label_smoothing, num_classes=k, generator=g),
        _TIMM | {"mixup_alpha", "cutmix_alpha", "switch_prob", "transmix_ratio"},
        "TransMix (Table 6 row 2)", patch=True),
    "transmix_aligned": Method(
        lambda o, k, p, g, box_align: TransMix(
            mixup_alpha=o.mixup_alpha, cutmix_alpha=o.cutmix_alpha, switch_prob=o.switch_prob,
            prob=o.mix_prob, patch_size=p, ratio=o.transmix_ratio, box_align=box_align,
            label_smoothing=o.label_smoothing, num_classes=k, generator=g),
        _TIMM | {"mixup_alpha", "cutmix_alpha", "switch_prob", "transmix_ratio"},
        "TransMix with CutMix boxes on attention-token borders (Table 8 A)", patch=True,
        token_aligned=True),
    "maskmix": Method(lambda o, k, p, g: MaskMix(**_maskmix_args(o, k, p, g)), _MASK,
                      "MaskMix with area labels", patch=True),
    "maskmix_transmix": Method(
        lambda o, k, p, g: _mixpro(o, k, p, g, alpha="equal", attention_norm="renormalize"),
        _MASK | {"pal_label_smoothing", "alpha_detach"},
        "MaskMix + TransMix labelling: λ = (λ_area + λ_attn)/2 (Table 6 row 3)", patch=True),
    "cutmix_pal": Method(lambda o, k, p, g: _mixpro(o, k, p, g, mask_strategy="box"),
                         (_MASK - {"mask_strategy", "mask_scale"}) | _PAL,
                         "CutMix boxes + PAL (Table 6 row 4)", patch=True),
    "mixpro": Method(lambda o, k, p, g: _mixpro(o, k, p, g), _MASK | _PAL,
                     "MaskMix + PAL (Table 6 row 5)", patch=True),
    "paper": Method(_paper, _MASK | _PAL | _TIMM | {"mixup_alpha", "cutmix_alpha",
                                                  "switch_prob", "maskmix_prob"},
                    "MixPro or timm Mixup/CutMix per batch (Table 11)", patch=True),
}


def ignored_options(method: str, keys: Iterable[str]) -> list[str]:
    """The mixing options among ``keys`` that ``method`` does not use (sorted)."""
    return sorted(k for k in keys if k in OPTION_NAMES and k not in METHODS[method].keys)


def build_mixer(method: str, options: MixOptions, *, num_classes: int, patch_size: int,
                generator: torch.Generator, token_size: int | None = None) -> AnyMixer:
    """The mixer of ``method`` with ``options``.

    ``token_size``: the px size of the tokens the model's attention is read over (default
    ``patch_size``; the last stage's stride with a class-attention head): Table 8 A's
    ``transmix_aligned`` puts its boxes on those tokens' borders.

    Raises:
        ValueError: unknown method or strategy, or an option value the mixer refuses.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if options.mask_strategy not in MASK_STRATEGIES:
        raise ValueError(f"mask_strategy must be one of {', '.join(sorted(MASK_STRATEGIES))}, "
                         f"got {options.mask_strategy!r}")
    spec = METHODS[method]
    if spec.token_aligned:
        return spec.build(options, num_classes, patch_size, generator,
                          token_size or patch_size)
    return spec.build(options, num_classes, patch_size, generator)


__all__ = ["METHODS", "OPTION_NAMES", "Method", "MixOptions", "build_mixer", "ignored_options"]
