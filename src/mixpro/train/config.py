"""Recipes: a flat dataclass of every training knob, loaded from YAML with CLI overrides.

Owns: :class:`Recipe` (fields, defaults = the embedded Fashion-MNIST default), loading a recipe
by name (``src/mixpro/recipes/<name>.yaml``) or path, overrides (``--key value`` flags made
from the fields, or ``--set key=value``), type/range validation with one-line
:class:`ConfigError` s naming the key, and the method registry :data:`METHODS`
(name → mixer factory).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

import mixpro

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class TrainError(ValueError):
    """A user error of the training app (printed as ``mixpro: error: ...``, exit 2)."""


class ConfigError(TrainError):
    """A bad recipe key or value."""


@dataclass
class Recipe:
    """Every knob of a training run (defaults: the embedded Fashion-MNIST recipe)."""

    name: str = "fashion_mnist"
    # data
    data: str = "fashion_mnist"  # 'fashion_mnist' or an ImageFolder root with train/ val/
    data_dir: str | None = None  # Fashion-MNIST idx folder (default $MIXPRO_FASHION_MNIST)
    train_subset: int | None = None  # fixed random subset of the training set
    subset_seed: int = 0
    holdout_classes: list = field(default_factory=list)  # Fashion-MNIST classes left out
    img_size: int = 32
    in_chans: int | None = None  # None: 1 for Fashion-MNIST, 3 for ImageFolder
    translate: int = 2  # Fashion-MNIST random shift (px)
    hflip: float = 0.5
    aa: str | None = None  # timm auto-augment string, e.g. rand-m9-mstd0.5-inc1
    re_prob: float = 0.0  # random erasing probability (ImageFolder)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    # model
    model: str = "vit_tiny_patch16_224"
    model_kwargs: dict = field(default_factory=lambda: {
        "embed_dim": 64, "depth": 4, "num_heads": 2, "mlp_ratio": 2.0})
    patch_size: int | None = 4  # None: the model's own
    drop_path: float = 0.1
    drop_rate: float = 0.0
    # mixing
    method: str = "mixpro"
    mask_scale: int = 2
    beta: float = 1.0
    mask_mode: str = "batch"
    pairing: str = "flip"
    rounding: str = "floor"
    alpha: str = "cosine"
    alpha_detach: bool = True
    pal_label_smoothing: float | None = None
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5
    mix_prob: float = 1.0
    maskmix_prob: float = 0.5
    transmix_ratio: float = 0.5
    label_smoothing: float = 0.1
    # optimisation
    epochs: int = 5
    batch_size: int = 64
    eval_batch_size: int = 512
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    opt: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    sched: str = "cosine"
    sched_per_step: bool = True
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    min_lr: float = 1e-5
    clip_grad: float | None = None
    ema: bool = False
    ema_decay: float = 0.9998
    amp: str = "auto"  # auto (CUDA only) | on | off
    # system
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # None: cores per process (- 1 with loader workers)
    workers: int | None = None  # None: fits the machine
    output: str | None = None
    tensorboard: bool = False
    progress: bool = True
    max_steps: int | None = None  # stop each epoch after this many steps (smoke tests)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def in_channels(self) -> int:
        if self.in_chans is not None:
            return self.in_chans
        return 1 if self.data == "fashion_mnist" else 3

    @property
    def run_name(self) -> str:
        return f"{self.name}-{self.method}-seed{self.seed}"


HELP: dict[str, str] = {
    "data": "'fashion_mnist' or an ImageFolder root holding train/ and val/",
    "data_dir": "Fashion-MNIST idx folder (default $MIXPRO_FASHION_MNIST or "
                "/usr/share/datasets/fashion-mnist)",
    "train_subset": "train on a fixed random subset of this many images",
    "subset_seed": "seed of that subset (the same for every method and seed)",
    "holdout_classes": "Fashion-MNIST class indices left out of training and test, e.g. "
                       "'[8, 9]'; mixpro eval uses their test images as the OOD set",
    "img_size": "input side in pixels",
    "in_chans": "input channels (null: 1 for Fashion-MNIST, 3 for ImageFolder)",
    "translate": "Fashion-MNIST: random shift of up to this many pixels",
    "hflip": "horizontal flip probability",
    "aa": "timm auto-augment, e.g. rand-m9-mstd0.5-inc1 (ImageFolder)",
    "re_prob": "random erasing probability (ImageFolder)",
    "interpolation": "resize interpolation (ImageFolder)",
    "crop_pct": "centre-crop fraction at evaluation (ImageFolder)",
    "model": "any timm model name",
    "model_kwargs": "extra timm.create_model keywords, YAML, e.g. '{depth: 6}'",
    "patch_size": "ViT patch size (null: the model's own)",
    "drop_path": "stochastic depth rate",
    "drop_rate": "dropout rate",
    "method": "none | mixup | cutmix | mixup_cutmix | transmix | maskmix | mixpro | paper",
    "mask_scale": "MaskMix cell side in patches",
    "beta": "MaskMix: tau ~ Beta(beta, beta)",
    "mask_mode": "MaskMix: batch (paper) | positions (official) | elem",
    "pairing": "partner of sample i: flip (paper) | randperm (official)",
    "rounding": "cells kept from sample i: floor (paper) | ceil (official)",
    "alpha": "PAL factor: cosine | equal | linear | parabolic | learnable | none",
    "alpha_detach": "detach alpha (paper: unspecified; official: not detached)",
    "pal_label_smoothing": "smoothing of PAL targets (null: label_smoothing; 0: official)",
    "mixup_alpha": "Mixup Beta parameter (mixup, mixup_cutmix, transmix, paper)",
    "cutmix_alpha": "CutMix Beta parameter (cutmix, mixup_cutmix, transmix, paper)",
    "switch_prob": "probability of CutMix instead of Mixup when both are on",
    "mix_prob": "probability of mixing a batch at all",
    "maskmix_prob": "paper recipe: probability of MixPro instead of Mixup/CutMix",
    "transmix_ratio": "TransMix: lam = r * lam_area + (1 - r) * lam_attn",
    "label_smoothing": "label smoothing of the (mixed) targets",
    "epochs": "training epochs",
    "batch_size": "batch size per process",
    "eval_batch_size": "evaluation batch size",
    "eval_every": "evaluate every N epochs (and after the last)",
    "opt": "timm optimiser name",
    "lr": "peak learning rate",
    "weight_decay": "weight decay",
    "sched": "timm scheduler name",
    "sched_per_step": "update the schedule every step instead of every epoch",
    "warmup_epochs": "linear warm-up epochs",
    "warmup_lr": "learning rate at the start of warm-up",
    "min_lr": "final learning rate of the cosine",
    "clip_grad": "clip the gradient norm to this (null: off)",
    "ema": "keep an EMA of the weights (timm ModelEmaV3) and test it too",
    "ema_decay": "EMA decay",
    "amp": "auto (CUDA only) | on | off",
    "seed": "random seed",
    "device": "auto | cpu | cuda | cuda:N",
    "threads": "intra-op threads (null: cores per process, minus one with loader workers)",
    "workers": "data-loader workers (null: fits the machine)",
    "output": "output folder (default runs/<recipe>-<method>-seed<seed>)",
    "tensorboard": "also write TensorBoard scalars",
    "progress": "show tqdm progress bars",
    "max_steps": "stop each epoch after this many steps (smoke tests)",
}

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Recipe)}
_HINTS = typing.get_type_hints(Recipe)


def _allowed(key: str) -> tuple[tuple[type, ...], bool]:
    hint = _HINTS[key]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    optional = type(None) in args
    kinds = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
    return kinds, optional


def coerce(key: str, value: Any) -> Any:
    """Check (and widen int → float) ``value`` for recipe field ``key``."""
    if key not in FIELDS:
        raise ConfigError(f"unknown recipe key {key!r}{_suggest(key)}")
    kinds, optional = _allowed(key)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} must not be null")
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if int in kinds and isinstance(value, bool):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds) + (" or null" if optional else "")
        raise ConfigError(f"{key} must be {names}, got {value!r}")
    return value


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(FIELDS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def read_yaml(recipe: str) -> dict[str, Any]:
    """The mapping in recipe ``name`` (packaged) or at a ``.yaml`` path."""
    path = Path(recipe)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = RECIPES_DIR / f"{recipe}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown recipe {recipe!r}: not a YAML file and not one of "
                f"{', '.join(available_recipes())}"
            )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read recipe {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of keys to values")
    data.setdefault("name", path.stem)
    return data


def parse_value(text: str) -> Any:
    """A CLI value as YAML (``1e-3`` → float, ``null`` → None, ``{depth: 2}`` → dict)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value


def _number_like(value: Any) -> Any:
    # YAML 1.1 reads "1e-3" as a string; accept it as a number.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def load_recipe(recipe: str | None = None, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Recipe ``recipe`` (name or path; None = ``fashion_mnist``) with ``overrides``,
    validated. Raises :class:`ConfigError` naming the offending key."""
    values: dict[str, Any] = dict(read_yaml(recipe or "fashion_mnist"))
    values.update(overrides or {})
    checked = {}
    for key, value in values.items():
        kinds, _ = _allowed(key) if key in FIELDS else ((), False)
        if (int in kinds or float in kinds) and str not in kinds:
            value = _number_like(value)
        checked[key] = coerce(key, value)
    cfg = Recipe(**checked)
    validate(cfg)
    return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Recipe) -> None:
    """Value checks that need no data or model (those come in :mod:`.run`)."""
    _check(cfg.method in METHODS,
           f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    _check(cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    _check(cfg.batch_size >= 2, f"batch_size must be >= 2 (mixing pairs images), got "
           f"{cfg.batch_size}")
    _check(cfg.eval_batch_size >= 1, "eval_batch_size must be >= 1")
    _check(cfg.eval_every >= 1, "eval_every must be >= 1")
    _check(cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    _check(0 <= cfg.warmup_epochs < cfg.epochs or cfg.warmup_epochs == 0,
           f"warmup_epochs ({cfg.warmup_epochs}) must be smaller than epochs ({cfg.epochs})")
    _check(cfg.img_size >= 1, "img_size must be >= 1")
    _check(cfg.patch_size is None or cfg.patch_size >= 1, "patch_size must be >= 1")
    _check(cfg.mask_scale >= 1, "mask_scale must be >= 1")
    for key in ("label_smoothing", "drop_path", "drop_rate", "mix_prob", "switch_prob",
                "maskmix_prob", "transmix_ratio", "hflip", "re_prob"):
        v = getattr(cfg, key)
        _check(0.0 <= v <= 1.0, f"{key} must be in [0, 1], got {v}")
    _check(cfg.amp in ("auto", "on", "off"), f"amp must be auto, on or off, got {cfg.amp!r}")
    _check(cfg.alpha in mixpro.ALPHA_STRATEGIES,
           f"alpha must be one of {', '.join(mixpro.ALPHA_STRATEGIES)}, got {cfg.alpha!r}")
    _check(cfg.mask_mode in ("batch", "positions", "elem"), "mask_mode: batch|positions|elem")
    _check(cfg.pairing in ("flip", "randperm"), "pairing must be flip or randperm")
    _check(cfg.rounding in ("floor", "ceil"), "rounding must be floor or ceil")
    _check(cfg.device in ("auto", "cpu") or cfg.device.startswith("cuda"),
           f"device must be auto, cpu or cuda[:N], got {cfg.device!r}")
    _check(cfg.in_chans in (None, 1, 3), "in_chans must be 1 or 3")
    _check(cfg.train_subset is None or cfg.train_subset >= 2, "train_subset must be >= 2")
    if cfg.holdout_classes:
        _check(cfg.data == "fashion_mnist",
               "holdout_classes works with data: fashion_mnist only (for an ImageFolder, leave "
               "the classes out of its train/ and val/ folders)")
        from ..data import DatasetError
        from ..data.fashion_mnist import class_split

        try:
            class_split(cfg.holdout_classes)
        except DatasetError as e:
            raise ConfigError(str(e)) from None
    _check(cfg.max_steps is None or cfg.max_steps >= 1, "max_steps must be >= 1")
    _check(cfg.clip_grad is None or cfg.clip_grad > 0, "clip_grad must be > 0 or null")
    for key in ("threads", "workers"):
        v = getattr(cfg, key)
        _check(v is None or v >= (1 if key == "threads" else 0), f"{key} is out of range: {v}")


# ------------------------------------------------------------------------------------------
# method registry: name -> factory(cfg, num_classes, patch_size, generator) -> mixer
# ------------------------------------------------------------------------------------------

MixerFactory = Callable[[Recipe, int, int, torch.Generator], Any]


def _maskmix_args(c: Recipe, k: int, p: int, g: torch.Generator) -> dict[str, Any]:
    return dict(num_classes=k, patch_size=p, mask_scale=c.mask_scale, beta=c.beta,
                mode=c.mask_mode, pairing=c.pairing, rounding=c.rounding,
                label_smoothing=c.label_smoothing, generator=g)


def _timm_args(c: Recipe, k: int, g: torch.Generator) -> dict[str, Any]:
    return dict(prob=c.mix_prob, label_smoothing=c.label_smoothing, num_classes=k, generator=g)


METHODS: dict[str, MixerFactory] = {
    "none": lambda c, k, p, g: mixpro.NoMix(num_classes=k, label_smoothing=c.label_smoothing),
    "mixup": lambda c, k, p, g: mixpro.Mixup(mixup_alpha=c.mixup_alpha, cutmix_alpha=0.0,
                                             **_timm_args(c, k, g)),
    "cutmix": lambda c, k, p, g: mixpro.CutMix(cutmix_alpha=c.cutmix_alpha,
                                               **_timm_args(c, k, g)),
    "mixup_cutmix": lambda c, k, p, g: mixpro.Mixup(
        mixup_alpha=c.mixup_alpha, cutmix_alpha=c.cutmix_alpha, switch_prob=c.switch_prob,
        **_timm_args(c, k, g)),
    "transmix": lambda c, k, p, g: mixpro.TransMix(
        mixup_alpha=c.mixup_alpha, cutmix_alpha=c.cutmix_alpha, switch_prob=c.switch_prob,
        patch_size=p, ratio=c.transmix_ratio, **_timm_args(c, k, g)),
    "maskmix": lambda c, k, p, g: mixpro.MaskMix(**_maskmix_args(c, k, p, g)),
    "mixpro": lambda c, k, p, g: mixpro.MixPro(
        **_maskmix_args(c, k, p, g), alpha=c.alpha, alpha_detach=c.alpha_detach,
        pal_label_smoothing=c.pal_label_smoothing),
    "paper": lambda c, k, p, g: mixpro.paper_recipe(
        num_classes=k, patch_size=p, mask_scale=c.mask_scale, maskmix_prob=c.maskmix_prob,
        mixup_alpha=c.mixup_alpha, cutmix_alpha=c.cutmix_alpha, switch_prob=c.switch_prob,
        label_smoothing=c.label_smoothing, alpha=c.alpha, generator=g),
}
MASK_METHODS = ("maskmix", "mixpro", "paper")


def make_mixer(cfg: Recipe, num_classes: int, patch_size: int, generator: torch.Generator):
    """The mixer of ``cfg.method`` (a :class:`mixpro.Mixer` or :class:`mixpro.RandomChoice`)."""
    try:
        return METHODS[cfg.method](cfg, num_classes, patch_size, generator)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"method {cfg.method}: {e}") from None


# ------------------------------------------------------------------------------------------
# command line: one flag per recipe key
# ------------------------------------------------------------------------------------------


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """``--recipe``, ``--set key=value`` and one ``--<key>`` flag per :class:`Recipe` field
    (values parsed as YAML: ``--lr 1e-3``, ``--model-kwargs '{depth: 2}'``,
    ``--clip-grad null``)."""
    parser.add_argument("--recipe", default=None,
                        help=f"recipe name ({', '.join(available_recipes())}) or a YAML path")
    parser.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe key (repeatable)")
    group = parser.add_argument_group("recipe keys (override the recipe)")
    for name in FIELDS:
        if name == "name":
            continue
        flag = "--" + name.replace("_", "-")
        kinds, optional = _allowed(name)
        text = HELP[name]
        if kinds == (bool,):
            group.add_argument(flag, dest=name, default=None, help=text,
                               action=argparse.BooleanOptionalAction)
        elif kinds == (str,) and not optional:  # names and paths stay strings
            group.add_argument(flag, dest=name, default=None, type=str, metavar="V", help=text)
        else:
            group.add_argument(flag, dest=name, default=None, type=parse_value, metavar="V",
                               help=text)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe overrides given on the command line (flags, then ``--set``)."""
    out = {k: getattr(args, k) for k in FIELDS if getattr(args, k, None) is not None}
    for item in args.set_:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key = key.strip().replace("-", "_")
        if key not in FIELDS:
            raise ConfigError(f"unknown recipe key {key!r}{_suggest(key)}")
        out[key] = parse_value(text)
    return out
