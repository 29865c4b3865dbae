"""Methods by name: the one place that maps mixing options to a mixer.

Owns :class:`MixOptions` (every mixing knob a recipe can set, each declared once with its type,
default, allowed values and help: :func:`mixpro.options.option`), the registry :data:`METHODS`
(name → :class:`Method`: how to build the mixer, which options it honours, what it needs) with
:func:`register`, and :func:`build_mixer`. Every consumer reads the registry: ``mixpro train`` /
``compare`` (choices, help, what to build), ``mixpro bench`` (its rows), the figures, the tests
and the README's method list (checked by a test). A new method is one mixer class
(:class:`mixpro.mixers.Mixer`: a dataclass of its keywords and ``draw``) and one
:func:`register` call; see ``docs/adding-a-method.md``.

Table 6's component rows are presets: ``cutmix``; ``transmix``; ``maskmix_transmix``
(MaskMix relabelled the TransMix way, λ = 0.5·λ_attn + 0.5·λ_area, i.e. α = 0.5);
``cutmix_pal`` (CutMix boxes with PAL); ``mixpro``. Table 8's A is ``transmix_aligned``
(TransMix with boxes on patch borders).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch

from . import _checks, options
from .attentive import AttentiveCutMix
from .batch import Objective
from .fmix import FourierMasks
from .gridmix import GridMix
from .gridmixup import GridMixupMasks
from .labels import ALPHA_STRATEGIES, AttentionNorm
from .mixers import (
    CutMix,
    MaskMix,
    MaskMode,
    Mixer,
    MixPro,
    Mixup,
    NoMix,
    Pairing,
    RandomChoice,
    Rounding,
    TransMix,
)
from .options import option
from .puzzlemix import PuzzleMix
from .resizemix import ResizeBoxes
from .saliencymix import Detector as SaliencyDetector
from .saliencymix import SaliencyMix
from .saliencymix import Scope as SaliencyScope
from .strategies import MASK_STRATEGIES, make_mask_strategy
from .tokenmix import LamMode as TokenMixLam
from .tokenmix import TokenMix

AnyMixer = Mixer | RandomChoice
AlphaName = Literal[ALPHA_STRATEGIES]  # type: ignore[valid-type]  # the labels' α names


@dataclass(frozen=True)
class MixOptions:
    """Every mixing option a recipe can set (names are the recipe keys), declared once."""

    label_smoothing: float = option(0.1, ge=0, lt=1,
                                    help="label smoothing of the (mixed) targets")
    mix_prob: float = option(1.0, ge=0, le=1, help="probability of mixing a batch at all "
                             "(Mixup, CutMix, TransMix)")
    mixup_alpha: float = option(0.8, ge=0, help="Mixup Beta parameter (mixup, mixup_cutmix, "
                                "transmix, paper)")
    cutmix_alpha: float = option(1.0, ge=0, help="CutMix Beta parameter (cutmix, "
                                 "mixup_cutmix, transmix, paper)")
    switch_prob: float = option(0.5, ge=0, le=1, help="probability of CutMix instead of "
                                "Mixup when both are on")
    transmix_ratio: float = option(0.5, ge=0, le=1, help="TransMix: lam = r * lam_area + "
                                   "(1 - r) * lam_attn (released code: 0.5)")
    mask_strategy: str = option("grid", choices=tuple(MASK_STRATEGIES),
                                help="where pixels come from (MaskMix/MixPro)")
    mask_scale: int = option(2, ge=1, help="MaskMix cell side in patches")
    beta: float = option(1.0, gt=0, help="MaskMix: tau ~ Beta(beta, beta)")
    mask_mode: MaskMode = option("batch", help="MaskMix: batch (paper) | positions "
                                 "(official) | elem")
    pairing: Pairing = option("flip", help="partner of sample i: flip (paper) | randperm "
                              "(official)")
    rounding: Rounding = option("floor", help="cells kept from sample i: floor (paper) | "
                                "ceil (official)")
    alpha: AlphaName = option("cosine", help="PAL factor (Table 10; none: area labels)")
    alpha_detach: bool = option(True, help="detach alpha (paper: unspecified; official: "
                                "not detached)")
    pal_label_smoothing: float | None = option(None, ge=0, lt=1, help="smoothing of PAL "
                                               "targets (null: label_smoothing; 0: official)")
    attention_norm: AttentionNorm = option("paper", help="MixPro lambda_attn: paper (Eq. 5, "
                                           "sum of m*a) | renormalize (official code: "
                                           "sum(m*a)/sum(a))")
    maskmix_prob: float = option(0.5, ge=0, le=1, help="paper recipe: probability of MixPro "
                                 "instead of Mixup/CutMix")
    token_align: bool = option(False, help="fmix, resizemix, gridmixup (and their _pal / "
                               "_transmix): masks and boxes in whole attention tokens")
    fmix_decay: float = option(3.0, gt=0, help="FMix: decay power of the mask's spectrum")
    resizemix_min: float = option(0.1, gt=0, le=1, help="ResizeMix: smallest box side / "
                                  "image side (tau ~ U(min, max))")
    resizemix_max: float = option(0.8, gt=0, le=1, help="ResizeMix: largest box side / "
                                  "image side")
    gridmixup_max_holes: int = option(6, ge=2, help="GridMixup: most columns of holes "
                                      "(drawn uniformly from 2..max)")
    saliency_scope: SaliencyScope = option("sample", help="SaliencyMix: sample (the paper: "
                                           "each box on its own partner's saliency peak) | "
                                           "batch (the released code: one box from the first "
                                           "partner's)")
    gridmix_weight: float = option(1.0, ge=0, help="GridMix: weight of the patch-level "
                                   "label loss (a per-token head on the patch tokens)")
    saliency_detector: SaliencyDetector = option("fine_grained", help="SaliencyMix: "
                                                 "fine_grained (OpenCV's, as the paper) | "
                                                 "spectral_residual")
    attentive_top_k: int | None = option(6, ge=1, help="Attentive-CutMix: cells kept from "
                                         "each image (paper: 6 of 49; null: AttentiveMix+, "
                                         "k = cells * lambda, lambda ~ Beta(beta, beta))")
    attentive_stage: int = option(-1, ge=-1, help="Attentive-CutMix: the extractor's map "
                                  "(-1: last stage, the paper; else that index of timm's "
                                  "forward_intermediates, ResNets: 0 stem, 1-4 stages)")
    puzzlemix_blocks: Literal["tokens", "official"] = option(
        "tokens", help="Puzzle-Mix: block counts per side drawn per batch: tokens (the "
        "divisors > 1 of the token grid's side, blocks of whole tokens) | official (2, 4, 8, "
        "16)")
    puzzlemix_clean_lam: float = option(0.0, ge=0, help="Puzzle-Mix: weight of the clean "
                                        "loss of the saliency pass (official 0)")
    puzzlemix_workers: int = option(0, ge=0, help="Puzzle-Mix: graph-cut worker processes "
                                    "(0: in the training process)")
    tokenmix_lam: TokenMixLam = option("sampled", help="TokenMix: sampled (paper: (1 - "
                                       "lambda) N tokens from the partner, lambda ~ Beta(beta, "
                                       "beta)) | fixed (released code: N/2 + 14/196 N)")
    tokenmix_loss: Objective = option("bce", help="TokenMix: bce (the official run's "
                                      "--use-bce) | ce")

    def __post_init__(self) -> None:
        options.check(self)


OPTION_NAMES = tuple(f.name for f in fields(MixOptions))


@dataclass(frozen=True)
class Context:
    """What a mixer is built for besides its options: ``num_classes``, the model's
    ``patch_size`` (px), the mixer's ``generator`` and ``token_size`` (px of the tokens the
    attention is read over: the patch, or the last stage's stride with a class-attention
    head; None: ``patch_size``), and the images' normalisation ``mean``/``std`` (0..1 scale;
    None: the images are in [0, 1]) for methods that look at the pixels."""

    num_classes: int
    patch_size: int
    generator: torch.Generator
    token_size: int | None = None
    mean: tuple[float, ...] | None = None  # the images' normalisation (SaliencyMix reads
    std: tuple[float, ...] | None = None   # the 0..255 image); None: images in [0, 1]
    model: Any = None  # the model being trained, for methods whose helpers include "model"
    extractor: Any = None  # Attentive-CutMix's frozen feature extractor
    teacher: Any = None  # TokenMix's frozen teacher

    @property
    def tokens(self) -> int:
        return self.token_size or self.patch_size


def _never(o: MixOptions) -> bool:
    return False


@dataclass(frozen=True)
class Method:
    """A registered method.

    Attributes:
        build: ``(options, context) -> mixer``.
        keys: the :class:`MixOptions` it honours (others given to it are refused).
        help: one line for ``--help`` and the docs.
        patch: it needs the model's patch size (its masks or boxes are in patches).
        attention: ``options -> bool``, whether its mixer relabels with attention under
            those options (the app then needs cls attention, a head on models without one).
        helpers: helper models it needs at construction (``"extractor"``, ``"teacher"``,
            ``"model"``); empty for methods that need only the batch.
    """

    build: Callable[[MixOptions, Context], AnyMixer]
    keys: frozenset[str]
    help: str
    patch: bool = False
    attention: Callable[[MixOptions], bool] = _never
    helpers: tuple[str, ...] = ()


METHODS: dict[str, Method] = {}


def register(name: str, method: Method) -> Method:
    """Add ``method`` as ``name`` (every app and the docs check read it from here).

    Raises:
        ValueError: ``name`` is taken, is not an identifier, or a key is not a MixOptions
            field.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"method name must be an identifier, got {name!r}")
    if name in METHODS:
        raise ValueError(f"method {name!r} is already registered")
    unknown = sorted(set(method.keys) - set(OPTION_NAMES))
    if unknown:
        raise ValueError(f"method {name!r}: keys {unknown} are not MixOptions fields")
    METHODS[name] = method
    return method


def unregister(name: str) -> None:
    """Remove ``name`` (a throw-away method of a test or a notebook)."""
    METHODS.pop(name, None)


def needs_attention(method: str, options: MixOptions) -> bool:
    """Whether ``method`` with ``options`` relabels with the model's cls attention."""
    return METHODS[method].attention(options)


# the TransMix labelling on a MaskMix-family mask: λ = (λ_area + λ_attn)/2, λ_attn renormalised
_TRANSMIX_RULE = {"alpha": "equal", "attention_norm": "renormalize"}
_TIMM = frozenset({"label_smoothing", "mix_prob"})
_MASK = frozenset({"label_smoothing", "mask_strategy", "mask_scale", "beta", "mask_mode",
                   "pairing", "rounding"})
_PAL = frozenset({"alpha", "alpha_detach", "pal_label_smoothing", "attention_norm"})
_TRANSMIX = _TIMM | {"mixup_alpha", "cutmix_alpha", "switch_prob", "transmix_ratio"}


def _strategy(o: MixOptions, patch: int):
    if o.mask_strategy == "grid":
        return None  # MaskMix's own grid, with its tiling check naming mask_scale
    return make_mask_strategy(o.mask_strategy, patch_size=patch, mask_scale=o.mask_scale,
                              rounding=o.rounding)


def _maskmix_args(o: MixOptions, c: Context) -> dict:
    return dict(num_classes=c.num_classes, patch_size=c.patch_size, mask_scale=o.mask_scale,
                beta=o.beta, mode=o.mask_mode, pairing=o.pairing, rounding=o.rounding,
                label_smoothing=o.label_smoothing, strategy=_strategy(o, c.patch_size),
                generator=c.generator)


def _mixpro(o: MixOptions, c: Context, **changes) -> MixPro:
    o = replace(o, **changes)
    return MixPro(**_maskmix_args(o, c), alpha=o.alpha, alpha_detach=o.alpha_detach,
                  pal_label_smoothing=o.pal_label_smoothing, attention_norm=o.attention_norm)


def _mixup(o: MixOptions, c: Context, cls: type[Mixup] = Mixup, **changes) -> Mixup:
    kw = dict(mixup_alpha=o.mixup_alpha, cutmix_alpha=o.cutmix_alpha, switch_prob=o.switch_prob,
              prob=o.mix_prob, label_smoothing=o.label_smoothing, num_classes=c.num_classes,
              generator=c.generator)
    kw.update(changes)
    return cls(**kw)


def _transmix(o: MixOptions, c: Context, box_align: int | None = None) -> TransMix:
    return _mixup(o, c, TransMix, patch_size=c.patch_size, ratio=o.transmix_ratio,
                  box_align=box_align)


def _paper(o: MixOptions, c: Context) -> RandomChoice:
    q = o.maskmix_prob
    return RandomChoice([_mixpro(o, c), _mixup(o, c)], [q, 1.0 - q], generator=c.generator)


def _pal(o: MixOptions) -> bool:
    return o.alpha != "none"


def _transmix_attention(o: MixOptions) -> bool:
    return o.transmix_ratio < 1.0


register("none", Method(
    lambda o, c: NoMix(num_classes=c.num_classes, label_smoothing=o.label_smoothing),
    frozenset({"label_smoothing"}), "no mixing (smoothed one-hot targets)"))
register("mixup", Method(lambda o, c: _mixup(o, c, cutmix_alpha=0.0), _TIMM | {"mixup_alpha"},
                         "Mixup (timm semantics)"))
register("cutmix", Method(
    lambda o, c: CutMix(cutmix_alpha=o.cutmix_alpha, prob=o.mix_prob,
                        label_smoothing=o.label_smoothing, num_classes=c.num_classes,
                        generator=c.generator),
    _TIMM | {"cutmix_alpha"}, "CutMix, area labels (Table 6 row 1)"))
register("mixup_cutmix", Method(lambda o, c: _mixup(o, c),
                                _TIMM | {"mixup_alpha", "cutmix_alpha", "switch_prob"},
                                "Mixup or CutMix per batch (timm)"))
register("transmix", Method(lambda o, c: _transmix(o, c), _TRANSMIX,
                            "TransMix (Table 6 row 2)", patch=True,
                            attention=_transmix_attention))
register("transmix_aligned", Method(
    lambda o, c: _transmix(o, c, box_align=c.tokens), _TRANSMIX,
    "TransMix with CutMix boxes on attention-token borders (Table 8 A)", patch=True,
    attention=_transmix_attention))
register("maskmix", Method(lambda o, c: MaskMix(**_maskmix_args(o, c)), _MASK,
                           "MaskMix with area labels", patch=True))
register("maskmix_transmix", Method(
    lambda o, c: _mixpro(o, c, **_TRANSMIX_RULE),
    _MASK | {"pal_label_smoothing", "alpha_detach"},
    "MaskMix + TransMix labelling: λ = (λ_area + λ_attn)/2 (Table 6 row 3)", patch=True,
    attention=lambda o: True))
register("cutmix_pal", Method(lambda o, c: _mixpro(o, c, mask_strategy="box"),
                              (_MASK - {"mask_strategy", "mask_scale"}) | _PAL,
                              "CutMix boxes + PAL (Table 6 row 4)", patch=True, attention=_pal))
register("mixpro", Method(lambda o, c: _mixpro(o, c), _MASK | _PAL,
                          "MaskMix + PAL (Table 6 row 5)", patch=True, attention=_pal))
register("paper", Method(_paper, _MASK | _PAL | _TIMM | {"mixup_alpha", "cutmix_alpha",
                                                         "switch_prob", "maskmix_prob"},
                         "MixPro or timm Mixup/CutMix per batch (Table 11)", patch=True,
                         attention=_pal))


# -- the paper's Table 2, part 1: masks that need only the batch ----------------------------
# Each mask is a MaskMix strategy: with area labels (NAME), PAL (NAME_pal) or the TransMix rule
# λ = (λ_area + λ_attn)/2 (NAME_transmix), the same for every mask (Table 6-style grids).

def table2_masks(o: MixOptions, c: Context) -> dict[str, Any]:
    """The mask generators of FMix, ResizeMix and GridMixup (the classes ``mixpro.FMix``,
    ``ResizeMix``, ``GridMixup`` are MaskMix with these)."""
    align = c.tokens if o.token_align else None
    return {"fmix": FourierMasks(o.fmix_decay, align),
            "resizemix": ResizeBoxes((o.resizemix_min, o.resizemix_max), align),
            "gridmixup": GridMixupMasks((2, o.gridmixup_max_holes), align=align)}


_MASK_KEYS = {"fmix": {"fmix_decay"}, "resizemix": {"resizemix_min", "resizemix_max"},
              "gridmixup": {"gridmixup_max_holes"}}
_TABLE2_HELP = {"fmix": "FMix: a binarised low-frequency Fourier mask, area labels",
                "resizemix": "ResizeMix: the whole partner resized into a box, area labels",
                "gridmixup": "GridMixup (OpenMixup's gridmix): holes in a crop, no wrap, area "
                             "labels"}


def _strategy_mixer(name: str, labels: str) -> Callable[[MixOptions, Context], AnyMixer]:
    def build(o: MixOptions, c: Context) -> AnyMixer:
        strategy = table2_masks(o, c)[name]
        common = dict(num_classes=c.num_classes, patch_size=c.patch_size, beta=o.beta,
                      mode="batch", pairing=o.pairing, label_smoothing=o.label_smoothing,
                      strategy=strategy, generator=c.generator, name=f"{name}_{labels}")
        if labels == "area":
            common["name"] = name
            return MaskMix(**common)
        if labels == "pal":
            return MixPro(**common, alpha=o.alpha, alpha_detach=o.alpha_detach,
                          pal_label_smoothing=o.pal_label_smoothing,
                          attention_norm=o.attention_norm)
        return MixPro(**common, **_TRANSMIX_RULE, pal_label_smoothing=o.pal_label_smoothing,
                      alpha_detach=o.alpha_detach)
    return build


for _name in ("fmix", "resizemix", "gridmixup"):
    _keys = frozenset({"label_smoothing", "beta", "pairing", "token_align"}) | _MASK_KEYS[_name]
    register(_name, Method(_strategy_mixer(_name, "area"), _keys, _TABLE2_HELP[_name]))
    register(f"{_name}_pal", Method(
        _strategy_mixer(_name, "pal"), _keys | _PAL,
        _TABLE2_HELP[_name].replace("area labels", "PAL labels"), patch=True, attention=_pal))
    register(f"{_name}_transmix", Method(
        _strategy_mixer(_name, "transmix"), _keys | {"pal_label_smoothing", "alpha_detach"},
        _TABLE2_HELP[_name].replace("area labels", "TransMix labels (λ_area + λ_attn)/2"),
        patch=True, attention=lambda o: True))


def _pal_relabel(o: MixOptions, c: Context, transmix: bool = False):
    """The relabelling MixPro (PAL) or the TransMix rule would use, for a mixer of another
    family (MixPro's own construction and checks, nothing re-declared)."""
    if o.alpha == "learnable" and not transmix:
        raise ValueError("alpha learnable is not offered on saliencymix_pal (its α would not "
                         "be trained); choose another alpha")
    kw = _TRANSMIX_RULE if transmix else dict(
        alpha=o.alpha, attention_norm=o.attention_norm)
    return MixPro(num_classes=c.num_classes, patch_size=c.patch_size,
                  label_smoothing=o.label_smoothing, alpha_detach=o.alpha_detach,
                  pal_label_smoothing=o.pal_label_smoothing, **kw).relabel


def _saliencymix(labels: str) -> Callable[[MixOptions, Context], AnyMixer]:
    def build(o: MixOptions, c: Context) -> AnyMixer:
        mixer = SaliencyMix(num_classes=c.num_classes, label_smoothing=o.label_smoothing,
                            beta=o.beta, scope=o.saliency_scope, detector=o.saliency_detector,
                            mean=c.mean, std=c.std, pairing=o.pairing,
                            align=c.tokens if o.token_align else None, generator=c.generator)
        if labels != "area":
            mixer.relabel = _pal_relabel(o, c, transmix=labels == "transmix")
        return mixer
    return build


_SALIENCY_KEYS = frozenset({"label_smoothing", "beta", "pairing", "token_align",
                            "saliency_scope", "saliency_detector"})
register("saliencymix", Method(_saliencymix("area"), _SALIENCY_KEYS,
                               "SaliencyMix: a CutMix box on the partner's saliency peak "
                               "(OpenCV's fine-grained detector, in torch), area labels"))
register("saliencymix_pal", Method(_saliencymix("pal"), _SALIENCY_KEYS | _PAL,
                                   "SaliencyMix boxes, PAL labels", patch=True,
                                   attention=_pal))
register("saliencymix_transmix", Method(
    _saliencymix("transmix"), _SALIENCY_KEYS | {"pal_label_smoothing", "alpha_detach"},
    "SaliencyMix boxes, TransMix labels (λ_area + λ_attn)/2", patch=True,
    attention=lambda o: True))


register("gridmix", Method(
    lambda o, c: GridMix(**_maskmix_args(o, c), model=c.model, local_weight=o.gridmix_weight),
    _MASK | {"gridmix_weight"},
    "GridMix (Baek et al.): MaskMix's grid, area labels, plus patch-level labels from a "
    "per-token head on the model's patch tokens", patch=True, helpers=("model",)))


def _helper(c: Context, name: str) -> Any:
    got = getattr(c, name)
    if got is None:
        raise _checks.ArgumentError(name, "is needed by this method: a frozen model "
                                    "(mixpro train: a checkpoint path or a timm model name)")
    return got


register("attentive_cutmix", Method(
    lambda o, c: AttentiveCutMix(
        num_classes=c.num_classes, label_smoothing=o.label_smoothing,
        extractor=_helper(c, "extractor"), top_k=o.attentive_top_k, beta=o.beta,
        stage=o.attentive_stage, align=c.tokens, pairing=o.pairing, generator=c.generator),
    frozenset({"label_smoothing", "attentive_top_k", "attentive_stage", "beta", "pairing"}),
    "Attentive-CutMix: each image keeps its top-k cells of a frozen extractor's map, the "
    "rest from the partner, area labels", patch=True, helpers=("extractor",)))
register("puzzlemix", Method(
    lambda o, c: PuzzleMix(
        num_classes=c.num_classes, label_smoothing=o.label_smoothing,
        model=_helper(c, "model"), patch_size=c.tokens,
        blocks=(2, 4, 8, 16) if o.puzzlemix_blocks == "official" else None, beta=o.beta,
        clean_lam=o.puzzlemix_clean_lam, mean=c.mean, std=c.std,
        workers=o.puzzlemix_workers, pairing=o.pairing, generator=c.generator),
    frozenset({"label_smoothing", "puzzlemix_blocks", "puzzlemix_clean_lam",
               "puzzlemix_workers", "beta", "pairing"}),
    "Puzzle-Mix: per-sample graph-cut masks {1, 1/2, 0} on the model's input saliency, "
    "with transport; per-sample mask-mean labels (needs mixpro[puzzlemix])", patch=True,
    helpers=("model",)))
register("tokenmix", Method(
    lambda o, c: TokenMix(
        num_classes=c.num_classes, label_smoothing=o.label_smoothing,
        teacher=_helper(c, "teacher"), patch_size=c.tokens, beta=o.beta, lam=o.tokenmix_lam,
        objective=o.tokenmix_loss, pairing=o.pairing, generator=c.generator),
    frozenset({"label_smoothing", "tokenmix_lam", "tokenmix_loss", "beta", "pairing"}),
    "TokenMix: a block mask of whole tokens; labels = each image's share of a frozen "
    "teacher's class activation in the tokens it contributes (BCE)", patch=True,
    helpers=("teacher",)))


def _mixpro_official(o: MixOptions, c: Context) -> RandomChoice:
    """Every quirk of the released MixPro code at once."""
    official = replace(o, mask_mode="positions", pairing="randperm", rounding="ceil",
                       alpha="cosine", alpha_detach=False, attention_norm="renormalize",
                       pal_label_smoothing=0.0, mask_strategy="grid")
    mixpro = MixPro(**_maskmix_args(official, c), alpha="cosine", alpha_detach=False,
                    pal_label_smoothing=0.0, alpha_target_smoothing=None,
                    attention_norm="renormalize")
    q = o.maskmix_prob
    return RandomChoice([mixpro, _mixup(o, c)], [q, 1.0 - q], generator=c.generator)


register("mixpro_official", Method(
    _mixpro_official, frozenset({"label_smoothing", "mask_scale", "beta", "mixup_alpha",
                                 "cutmix_alpha", "switch_prob", "maskmix_prob"}),
    "the released MixPro code: positions, randperm, ceil, α not detached against the smoothed "
    "target, renormalised λ_attn, hard-label λ-weighted CE, 50 % timm Mixup/CutMix",
    patch=True, attention=lambda o: True))
register("transmix_official", Method(
    lambda o, c: _mixup(o, c, TransMix, patch_size=c.patch_size, ratio=0.5, mode="batch",
                        token_mode="nearest", attention_norm="renormalize"),
    frozenset({"label_smoothing", "mix_prob", "mixup_alpha", "cutmix_alpha", "switch_prob"}),
    "the released TransMix code: (λ_area + λ_attn)/2 on CutMix batches, nearest box→token, "
    "renormalised λ_attn, one box per batch", patch=True, attention=lambda o: True))


HELPER_KEYS = ("extractor", "teacher")  # the helpers a recipe names (Method.helpers); the
# third helper, "model", is the model being trained (the recipe key `model` is its timm name)


def uses(method: str, key: str) -> bool:
    """Whether runs of ``method`` read the recipe key ``key``: False for a mixing option the
    method does not honour and for a helper model (``extractor``, ``teacher``) it does not
    need (such a key cannot change its run); True for every other key."""
    if key in OPTION_NAMES:
        return key in METHODS[method].keys
    if key in HELPER_KEYS:
        return key in METHODS[method].helpers
    return True


def ignored_options(method: str, keys: Iterable[str]) -> list[str]:
    """The mixing options among ``keys`` that ``method`` does not use (sorted)."""
    return sorted(k for k in keys if k in OPTION_NAMES and k not in METHODS[method].keys)


def build_mixer(method: str, options: MixOptions, *, num_classes: int, patch_size: int,
                generator: torch.Generator, token_size: int | None = None,
                mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, model: Any = None,
                extractor: Any = None, teacher: Any = None) -> AnyMixer:
    """The mixer of ``method`` with ``options``.

    ``token_size``: the px size of the tokens the model's attention is read over (default
    ``patch_size``; the last stage's stride with a class-attention head): Table 8 A's
    ``transmix_aligned`` puts its boxes on those tokens' borders. ``mean``/``std``: the
    images' normalisation (0..1 scale), for methods that look at the pixels (SaliencyMix);
    ``model``: the model being trained, for methods that need it (GridMix's token head,
    Puzzle-Mix's saliency); ``extractor`` / ``teacher``: the frozen helper models of
    Attentive-CutMix / TokenMix (see :attr:`Method.helpers`).

    Raises:
        ValueError: unknown method, or an option value the mixer refuses.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method].build(options, Context(
        num_classes, patch_size, generator, token_size,
        None if mean is None else tuple(mean), None if std is None else tuple(std), model,
        extractor, teacher))


__all__ = ["HELPER_KEYS", "METHODS", "OPTION_NAMES", "Context", "Method", "MixOptions",
           "build_mixer", "ignored_options", "needs_attention", "register", "table2_masks",
           "unregister", "uses"]
