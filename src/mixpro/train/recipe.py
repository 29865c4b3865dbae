"""Recipes: a flat dataclass of every training knob, loaded from YAML with overrides.

Owns: :class:`Recipe` (fields, defaults = the embedded Fashion-MNIST default, one help text
per key in :data:`HELP`), loading a recipe by name (``src/mixpro/recipes/<name>.yaml``) or
path with overrides, and type/range validation with one-line :class:`ConfigError` s naming the
key. The mixing keys are :class:`mixpro.methods.MixOptions`' fields
(:meth:`Recipe.mix_options`); which method uses which key is said there. The command-line
flags made from these fields live in :mod:`mixpro.cli`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import mixpro
from mixpro.errors import UserError
from mixpro.methods import METHODS, OPTION_NAMES, MixOptions, ignored_options
from mixpro.models import CLS_HEADS
from mixpro.strategies import MASK_STRATEGIES

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class TrainError(UserError):
    """A user error of the training app (printed as ``mixpro: error: ...``, exit 2)."""


class ConfigError(TrainError):
    """A bad recipe key or value."""


@dataclass
class _RecipeData:
    """The data and model keys of a :class:`Recipe`."""

    name: str = "fashion_mnist"
    # data
    data: str = "fashion_mnist"  # 'fashion_mnist', an ImageFolder root, .tar, hfds/, wds/
    data_dir: str | None = None  # Fashion-MNIST idx folder (default $MIXPRO_FASHION_MNIST)
    train_split: str = "train"  # split names (or timm's synonyms) of data other than
    val_split: str = "val"  # Fashion-MNIST; val also finds validation, valid, eval, ...
    train_subset: int | None = None  # fixed random subset of the training set
    subset_seed: int = 0
    holdout_classes: list = field(default_factory=list)  # Fashion-MNIST classes left out
    img_size: int = 32
    in_chans: int | None = None  # None: 1 for Fashion-MNIST, 3 for ImageFolder
    translate: int = 0  # Fashion-MNIST random shift (px), 0..31
    hflip: float = 0.5
    aa: str | None = None  # timm auto-augment string, e.g. rand-m9-mstd0.5-inc1
    re_prob: float = 0.0  # random erasing probability (ImageFolder)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    # model
    model: str = "vit_tiny_patch16_224"
    model_kwargs: dict = field(default_factory=lambda: {
        "embed_dim": 96, "depth": 6, "num_heads": 3, "mlp_ratio": 2.0})
    patch_size: int | None = 8  # None: the model's own
    cls_head: str = "auto"  # auto | ca | ca_swin | none: class-attention head (no cls token)
    drop_path: float = 0.0
    drop_rate: float = 0.0
    pretrained: bool = False  # timm's weights, from the local cache only
    initial_checkpoint: str | None = None  # fine-tune from these weights (fresh runs only)
    fine_tune: bool = False  # a fresh run refuses to start without pretrained/initial_checkpoint
    method: str = "mixpro"


# the mixing keys: MixOptions' fields and defaults, declared once (mixpro.methods)
_RecipeMixing = dataclasses.make_dataclass(
    "_RecipeMixing",
    [(f.name, f.type, field(default=f.default) if f.default is not dataclasses.MISSING
      else field(default_factory=f.default_factory)) for f in dataclasses.fields(MixOptions)],
    bases=(_RecipeData,))
_RecipeMixing.__module__ = __name__  # its string annotations resolve in this module


@dataclass
class Recipe(_RecipeMixing):
    """Every knob of a training run: data and model keys, ``method`` and the mixing keys
    (:class:`mixpro.methods.MixOptions`), then optimisation and system keys. Defaults: the
    embedded Fashion-MNIST recipe's for data, model and optimisation keys (a recipe file
    starts from them), MixOptions' for the mixing keys (that recipe sets ``mask_scale: 1``,
    ``label_smoothing: 0.0``)."""

    # optimisation
    epochs: int = 15
    batch_size: int = 128
    eval_batch_size: int = 512
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    opt: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    layer_decay: float | None = None  # layer-wise lr decay (timm create_optimizer_v2)
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
    seed: int = 0  # 0 .. 2**63-1
    device: str = "auto"
    threads: int | None = None  # None: cores per process (- 1 with loader workers)
    workers: int | None = None  # None: fits the machine
    output: str | None = None
    tensorboard: bool = False
    progress: bool = True
    max_steps: int | None = None  # stop each epoch after this many steps (smoke tests)
    checkpoint_every_steps: int | None = None  # mid-epoch recovery checkpoints

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def mix_options(self) -> MixOptions:
        """The mixing keys of this recipe as :class:`mixpro.methods.MixOptions`."""
        return MixOptions(**{k: getattr(self, k) for k in OPTION_NAMES})

    @property
    def in_channels(self) -> int:
        if self.in_chans is not None:
            return self.in_chans
        return 1 if self.data == "fashion_mnist" else 3

    @property
    def run_name(self) -> str:
        return f"{self.name}-{self.method}-seed{self.seed}"


HELP: dict[str, str] = {
    "data": "'fashion_mnist', an ImageFolder root holding train/ and val/, or what "
            "timm.data.create_dataset reads: a .tar (<split>/<class>/<image> inside), a folder "
            "of <split>.tar or <split>/ tar shards, hfds/NAME (a local or cached Hugging Face "
            "dataset, never downloaded; pip install 'mixpro[hf]'), wds/FOLDER (webdataset "
            "shards; pip install 'mixpro[wds]')",
    "data_dir": "Fashion-MNIST idx folder (default $MIXPRO_FASHION_MNIST or "
                "/usr/share/datasets/fashion-mnist); for hfds/NAME the Hugging Face datasets "
                "cache (default $HF_DATASETS_CACHE)",
    "train_split": "training split of data (not Fashion-MNIST): a sub-folder, <name>.tar, an "
                   "hfds split or a wds split / shard pattern; 'training' is found too",
    "val_split": "test split of data, also used by mixpro eval (not Fashion-MNIST); synonyms "
                 "validation, valid, eval, evaluation are found too, and for hfds test",
    "train_subset": "train on a fixed random subset of this many images",
    "subset_seed": "seed of that subset (the same for every method and seed), 0..2**63-1",
    "holdout_classes": "Fashion-MNIST class indices left out of training and test, e.g. "
                       "'[8, 9]'; mixpro eval uses their test images as the OOD set",
    "img_size": "input side in pixels",
    "in_chans": "input channels (null: 1 for Fashion-MNIST, 3 for ImageFolder)",
    "translate": "Fashion-MNIST: random shift of up to this many pixels (0..31)",
    "hflip": "horizontal flip probability",
    "aa": "timm auto-augment, e.g. rand-m9-mstd0.5-inc1 (ImageFolder)",
    "re_prob": "random erasing probability (ImageFolder)",
    "interpolation": "resize interpolation (ImageFolder): nearest | bilinear | bicubic | box | "
                     "hamming | lanczos | random (training: bilinear or bicubic at random; "
                     "evaluation: bilinear)",
    "crop_pct": "centre-crop fraction at evaluation (ImageFolder)",
    "model": "any timm model name",
    "model_kwargs": "extra timm.create_model keywords, YAML, e.g. '{depth: 6}'",
    "patch_size": "ViT patch size (null: the model's own); for Swin the patch embedding (4), "
                  "for ConvNets the unit of MaskMix cells",
    "cls_head": "class-attention head for models without a cls token (Swin, ConvNeXt, ResNet, "
                "pooled ViTs): auto (added when the method needs attention: ca_swin for Swin, "
                "ca otherwise) | ca (a CaiT class-attention head) | ca_swin (CA-Swin: the last "
                "Swin block re-used) | none",
    "drop_path": "stochastic depth rate",
    "drop_rate": "dropout rate",
    "pretrained": "start from timm's pretrained weights of the model (from the local Hugging "
                  "Face / torch hub cache; never downloaded); the head is re-initialised for "
                  "another class count",
    "initial_checkpoint": "fine-tune from the weights in this file: a mixpro train checkpoint, "
                          "a plain state dict (.pth/.pt) or .safetensors; the head is "
                          "re-initialised for another class count (ignored by --resume)",
    "fine_tune": "a fine-tuning recipe: a fresh run refuses to start from random weights "
                 "(give --initial-checkpoint PATH or --pretrained)",
    "method": " | ".join(METHODS),
    "mask_strategy": "where pixels come from (MaskMix/MixPro): " + " | ".join(MASK_STRATEGIES),
    "mask_scale": "MaskMix cell side in patches",
    "beta": "MaskMix: tau ~ Beta(beta, beta)",
    "mask_mode": "MaskMix: batch (paper) | positions (official) | elem",
    "pairing": "partner of sample i: flip (paper) | randperm (official)",
    "rounding": "cells kept from sample i: floor (paper) | ceil (official)",
    "alpha": "PAL factor: cosine | equal | linear | parabolic | learnable | none",
    "alpha_detach": "detach alpha (paper: unspecified; official: not detached)",
    "pal_label_smoothing": "smoothing of PAL targets (null: label_smoothing; 0: official)",
    "attention_norm": "MixPro lambda_attn: paper (Eq. 5, sum of m*a) | renormalize (official "
                      "code: sum(m*a)/sum(a))",
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
    "layer_decay": "layer-wise lr decay in (0, 1]: layer l of L gets lr * layer_decay^(L - l) "
                   "(null: off)",
    "sched": "timm scheduler name",
    "sched_per_step": "update the schedule every step instead of every epoch",
    "warmup_epochs": "linear warm-up epochs",
    "warmup_lr": "learning rate at the start of warm-up",
    "min_lr": "final learning rate of the cosine",
    "clip_grad": "clip the gradient norm to this (null: off)",
    "ema": "keep an EMA of the weights (timm ModelEmaV3) and test it too",
    "ema_decay": "EMA decay",
    "amp": "auto (CUDA only) | on | off",
    "seed": "random seed, 0..2**63-1",
    "device": "auto | cpu | cuda | cuda:N",
    "threads": "intra-op threads (null: cores per process, minus one with loader workers)",
    "workers": "data-loader workers (null: fits the machine)",
    "output": "output folder (default runs/<recipe>-<method>-seed<seed>)",
    "tensorboard": "also write TensorBoard scalars",
    "progress": "show tqdm progress bars",
    "max_steps": "stop each epoch after this many steps (smoke tests)",
    "checkpoint_every_steps": "also save a step-exact last.pt every N steps (null: each epoch "
                              "only); --resume continues from it bit for bit",
}

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Recipe)}
_HINTS = typing.get_type_hints(Recipe)


def allowed_types(key: str) -> tuple[tuple[type, ...], bool]:
    hint = _HINTS[key]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    optional = type(None) in args
    kinds = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
    return kinds, optional


def coerce(key: str, value: Any) -> Any:
    """Check (and widen int → float) ``value`` for recipe field ``key``."""
    if key not in FIELDS:
        raise ConfigError(f"unknown recipe key {key!r}{suggest(key)}")
    kinds, optional = allowed_types(key)
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


def suggest(key: str) -> str:
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
    # YAML 1.1 reads "1e-3" (and "inf", "nan") as strings; accept them as numbers.
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def load_recipe(recipe: str | None = None, overrides: Mapping[str, Any] | None = None, *,
                check_ignored: bool = True) -> Recipe:
    """Recipe ``recipe`` (name or path; None = ``fashion_mnist``) with ``overrides``,
    validated. Raises :class:`ConfigError` naming the offending key, also for a mixing key
    given in ``overrides`` that the recipe's method does not use (``check_ignored``).

    ``model_kwargs`` and ``patch_size`` belong to the recipe's model: an override of ``model``
    without them starts from ``{}`` and None (the new model's own)."""
    values: dict[str, Any] = dict(read_yaml(recipe or "fashion_mnist"))
    overrides = dict(overrides or {})
    if "model" in overrides and overrides["model"] != values.get("model", Recipe.model):
        for key, own in (("model_kwargs", {}), ("patch_size", None)):
            if key not in overrides:
                values[key] = own
    values.update(overrides)
    checked = {}
    for key, value in values.items():
        kinds, _ = allowed_types(key) if key in FIELDS else ((), False)
        if (int in kinds or float in kinds) and str not in kinds:
            value = _number_like(value)
        checked[key] = coerce(key, value)
    cfg = Recipe(**checked)
    validate(cfg)
    if check_ignored:
        check_used(cfg.method, overrides or {})
    return cfg


def check_used(method: str, keys: Mapping[str, Any] | list[str]) -> None:
    """:class:`ConfigError` if ``method`` ignores one of the mixing ``keys`` given."""
    unused = ignored_options(method, [k for k in keys if k != "method"])
    if unused:
        raise ConfigError(f"method {method} does not use {', '.join(unused)}; drop "
                          f"{'it' if len(unused) == 1 else 'them'} or pick a method that does")


# seeds: torch takes up to 2**64 - 1, and the apps add small offsets (epoch, rank, repeat)
SEED_MAX = 2**63 - 1


def _device_ok(device: str) -> bool:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether CUDA is here is checked at start)."""
    if device in ("auto", "cpu"):
        return True
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        return False
    return parsed.type == "cuda"


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
    for key in ("lr", "warmup_lr", "min_lr", "weight_decay", "ema_decay", "beta",
                "mixup_alpha", "cutmix_alpha", "crop_pct"):
        v = getattr(cfg, key)
        _check(math.isfinite(v), f"{key} must be a finite number, got {v}")
    _check(cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    _check(cfg.warmup_lr >= 0, f"warmup_lr must be >= 0, got {cfg.warmup_lr}")
    _check(0 <= cfg.min_lr <= cfg.lr, f"min_lr must be in [0, lr={cfg.lr}], got {cfg.min_lr}")
    _check(cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}")
    _check(0 < cfg.ema_decay < 1, f"ema_decay must be in (0, 1), got {cfg.ema_decay}")
    _check(cfg.beta > 0, f"beta must be > 0, got {cfg.beta}")
    _check(cfg.mixup_alpha >= 0 and cfg.cutmix_alpha >= 0,
           "mixup_alpha and cutmix_alpha must be >= 0")
    _check(0 < cfg.crop_pct <= 1, f"crop_pct must be in (0, 1], got {cfg.crop_pct}")
    _check(cfg.mask_strategy in MASK_STRATEGIES,
           f"mask_strategy must be one of {', '.join(sorted(MASK_STRATEGIES))}, got "
           f"{cfg.mask_strategy!r}")
    _check(cfg.attention_norm in ("paper", "renormalize"),
           f"attention_norm must be paper or renormalize, got {cfg.attention_norm!r}")
    _check(0 <= cfg.warmup_epochs < cfg.epochs or cfg.warmup_epochs == 0,
           f"warmup_epochs ({cfg.warmup_epochs}) must be smaller than epochs ({cfg.epochs})")
    _check(cfg.img_size >= 1, "img_size must be >= 1")
    _check(cfg.patch_size is None or cfg.patch_size >= 1, "patch_size must be >= 1")
    _check(cfg.mask_scale >= 1, "mask_scale must be >= 1")
    _check(cfg.cls_head in CLS_HEADS,
           f"cls_head must be one of {', '.join(CLS_HEADS)}, got {cfg.cls_head!r}")
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
    _check(_device_ok(cfg.device), f"device must be auto, cpu or cuda[:N], got {cfg.device!r}")
    for key in ("seed", "subset_seed"):
        v = getattr(cfg, key)
        _check(0 <= v <= SEED_MAX, f"{key} must be in 0..2**63-1, got {v}")
    _check(0 <= cfg.translate < 32, f"translate must be in 0..31 (pixels of the 32-px padded "
           f"Fashion-MNIST image), got {cfg.translate}")
    from ..data.folder import INTERPOLATIONS, check_auto_augment

    _check(cfg.interpolation in INTERPOLATIONS, f"interpolation must be one of "
           f"{', '.join(INTERPOLATIONS)}, got {cfg.interpolation!r}")
    _check(cfg.aa is None or check_auto_augment(cfg.aa),
           f"aa must be null or a timm auto-augment spec (rand-m9-mstd0.5-inc1, "
           f"augmix-m5-w4-d2, original, v0r, 3a, ...), got {cfg.aa!r}")
    _check(cfg.in_chans in (None, 1, 3), "in_chans must be 1 or 3")
    for key, value in cfg.model_kwargs.items():
        hint = (" (YAML needs a space after ':', e.g. '{embed_dim: 96}')" if ":" in str(key)
                else "")
        _check(isinstance(key, str) and key.isidentifier(),
               f"model_kwargs: {key!r} is not a keyword name{hint}")
        _check(value is not None, f"model_kwargs: {key} is null, and timm.create_model "
               "silently ignores null keywords: give a value or drop it")
    _check(cfg.train_subset is None or cfg.train_subset >= 2, "train_subset must be >= 2")
    _check(bool(cfg.train_split) and bool(cfg.val_split), "train_split and val_split must "
           "not be empty")
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
    _check(cfg.checkpoint_every_steps is None or cfg.checkpoint_every_steps >= 1,
           "checkpoint_every_steps must be >= 1 or null")
    _check(cfg.clip_grad is None or cfg.clip_grad > 0, "clip_grad must be > 0 or null")
    _check(cfg.layer_decay is None or 0 < cfg.layer_decay <= 1,
           f"layer_decay must be in (0, 1] or null, got {cfg.layer_decay}")
    _check(not (cfg.pretrained and cfg.initial_checkpoint),
           "pretrained and initial_checkpoint both set the initial weights: choose one")
    for key in ("threads", "workers"):
        v = getattr(cfg, key)
        _check(v is None or v >= (1 if key == "threads" else 0), f"{key} is out of range: {v}")
