"""Recipes: a flat dataclass of every training knob, loaded from YAML with overrides.

Owns: :class:`Recipe` (every key declared once, :func:`mixpro.options.option`: type, default =
the embedded Fashion-MNIST default, allowed values or range, help), loading a recipe by name
(``src/mixpro/recipes/<name>.yaml``) or path with overrides, and validation with one-line
:class:`ConfigError` s naming the key (:data:`SPECS`, then the checks across keys in
:func:`validate`). The mixing keys are :class:`mixpro.methods.MixOptions`' fields, declared
there (:meth:`Recipe.mix_options`); which method uses which key is said in the method
registry. The command-line flags (:mod:`mixpro.cli`) and the options table of
``docs/training.md`` are made from the same declarations.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from mixpro import options
from mixpro._checks import ArgumentError
from mixpro.data.folder import INTERPOLATIONS
from mixpro.errors import UserError, first_line
from mixpro.methods import HELPER_KEYS, METHODS, OPTION_NAMES, MixOptions, ignored_options
from mixpro.models import CLS_HEADS
from mixpro.options import SEED_MAX, option

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class TrainError(UserError):
    """A user error of the training app (printed as ``mixpro: error: ...``, exit 2)."""


class ConfigError(TrainError):
    """A bad recipe key or value."""


@dataclass
class _RecipeData:
    """The data and model keys of a :class:`Recipe`."""

    name: str = option("fashion_mnist", help="the recipe's name (run folders are named by "
                       "it)", flag=False)
    data: str = option("fashion_mnist", help=(
        "'fashion_mnist', an ImageFolder root holding train/ and val/, or what "
        "timm.data.create_dataset reads: a .tar (<split>/<class>/<image> inside), a folder "
        "of <split>.tar or <split>/ tar shards, hfds/NAME (a local or cached Hugging Face "
        "dataset, never downloaded; pip install 'mixpro[hf]'), wds/FOLDER (webdataset "
        "shards; pip install 'mixpro[wds]')"))
    data_dir: str | None = option(None, help=(
        "Fashion-MNIST idx folder (default $MIXPRO_FASHION_MNIST or "
        "/usr/share/datasets/fashion-mnist); for hfds/NAME the Hugging Face datasets cache "
        "(default $HF_DATASETS_CACHE)"))
    train_split: str = option("train", help=(
        "training split of data (not Fashion-MNIST): a sub-folder, <name>.tar, an hfds split "
        "or a wds split / shard pattern; 'training' is found too"))
    val_split: str = option("val", help=(
        "test split of data, also used by mixpro eval (not Fashion-MNIST); synonyms "
        "validation, valid, eval, evaluation are found too, and for hfds test"))
    train_subset: int | None = option(None, ge=2, help="train on a fixed random subset of "
                                      "this many images")
    subset_seed: int = option(0, ge=0, le=SEED_MAX, help="seed of that subset (the same for "
                              "every method and seed)")
    holdout_classes: list = option(factory=list, help=(
        "Fashion-MNIST class indices left out of training and test, e.g. '[8, 9]'; mixpro "
        "eval uses their test images as the OOD set"))
    img_size: int = option(24, ge=1, help="input side in pixels")
    in_chans: Literal[1, 3] | None = option(None, help="input channels (null: 1 for "
                                            "Fashion-MNIST, 3 for ImageFolder)")
    translate: int = option(0, ge=0, le=31, help="Fashion-MNIST: random shift of up to this "
                            "many pixels (of the 32-px padded image)")
    hflip: float = option(0.5, ge=0, le=1, help="horizontal flip probability")
    aa: str | None = option(None, help="timm auto-augment, e.g. rand-m9-mstd0.5-inc1 "
                            "(ImageFolder)")
    re_prob: float = option(0.0, ge=0, le=1, help="random erasing probability (ImageFolder)")
    interpolation: str = option("bicubic", choices=INTERPOLATIONS,
                                help="resize interpolation (ImageFolder)")
    crop_pct: float = option(0.875, gt=0, le=1, help="centre-crop fraction at evaluation "
                             "(ImageFolder)")
    # model
    model: str = option("vit_tiny_patch16_224", help="any timm model name")
    model_kwargs: dict = option(factory=lambda: {
        "embed_dim": 64, "depth": 3, "num_heads": 2, "mlp_ratio": 2.0},
        help="extra timm.create_model keywords, YAML, e.g. '{depth: 6}'")
    patch_size: int | None = option(4, ge=1, help=(
        "ViT patch size (null: the model's own); for Swin the patch embedding (4), for "
        "ConvNets the unit of MaskMix cells"))
    cls_head: str = option("auto", choices=CLS_HEADS, help=(
        "class-attention head for models without a cls token (Swin, ConvNeXt, ResNet, pooled "
        "ViTs): auto (added when the method needs attention: ca_swin for Swin, ca otherwise) "
        "| ca (a CaiT class-attention head) | ca_swin (CA-Swin: the last Swin block re-used) "
        "| none"))
    attention_block: int = option(-1, help=(
        "which block's cls attention PAL / TransMix relabel with on a plain ViT: -1 (the last, "
        "the paper's: the one that drives the classifier) or another block index (a study of "
        "better-localised layers)"))
    drop_path: float = option(0.0, ge=0, le=1, help="stochastic depth rate")
    drop_rate: float = option(0.0, ge=0, le=1, help="dropout rate")
    pretrained: bool = option(False, help=(
        "start from timm's pretrained weights of the model (from the local Hugging Face / "
        "torch hub cache; never downloaded); the head is re-initialised for another class "
        "count"))
    initial_checkpoint: str | None = option(None, help=(
        "fine-tune from the weights in this file: a mixpro train checkpoint, a plain state "
        "dict (.pth/.pt) or .safetensors; the head is re-initialised for another class count "
        "(ignored by --resume)"))
    fine_tune: bool = option(False, help="a fine-tuning recipe: a fresh run refuses to start "
                             "from random weights (give --initial-checkpoint PATH or "
                             "--pretrained)")
    method: str = option("mixpro", help="the mixing method (mixpro.methods.METHODS)")
    extractor: str | None = option(None, help=(
        "attentive_cutmix's frozen feature extractor: a mixpro train checkpoint, NAME@PATH (a "
        "timm model and a state dict / safetensors file) or a timm name whose weights are in "
        "the local cache (never downloaded)"))
    teacher: str | None = option(None, help=(
        "tokenmix's frozen teacher (its class-activation maps label the mix): a mixpro train "
        "checkpoint, NAME@PATH or a cached timm name"))


# the mixing keys: MixOptions' fields, declared once (mixpro.methods), with their types resolved
_MIX_HINTS = typing.get_type_hints(MixOptions)
_RecipeMixing = dataclasses.make_dataclass(
    "_RecipeMixing",
    [(f.name, _MIX_HINTS[f.name], dataclasses.field(default=f.default, metadata=f.metadata))
     for f in dataclasses.fields(MixOptions)],
    bases=(_RecipeData,))
_RecipeMixing.__module__ = __name__


@dataclass
class Recipe(_RecipeMixing):
    """Every knob of a training run: data and model keys, ``method`` and the mixing keys
    (:class:`mixpro.methods.MixOptions`), then optimisation and system keys. Defaults: the
    embedded Fashion-MNIST recipe's for data, model and optimisation keys (a recipe file
    starts from them; but ``mix_until`` and ``fused_attn``, which that recipe sets to 0.7 and
    false, default to 1 and null: mix to the end, timm's attention), MixOptions' for the mixing keys
    (that recipe sets ``label_smoothing: 0.0``)."""

    # optimisation
    epochs: int = option(13, ge=1, help="training epochs")
    mix_until: float = option(1.0, ge=0, le=1, help=(
        "share of the run that mixes: the first round(mix_until * epochs) epochs (at least 1 "
        "when above 0, halves rounded up), then the rest on the unmixed images with their "
        "(smoothed) one-hot labels, as timm's --mixup-off-epoch; a share, so that --epochs "
        "keeps the recipe's shape; 1: mix to the end"))
    batch_size: int = option(128, ge=2, help="batch size per process (mixing pairs images)")
    eval_batch_size: int = option(512, ge=1, help="evaluation batch size")
    eval_every: int = option(1, ge=1, help="evaluate every N epochs (and after the last)")
    attention_monitor: int = option(256, ge=0, help=(
        "at every evaluation, log the cls attention's quality and each relabelling's label "
        "error (attn_* in metrics.jsonl) on this many fixed test images, unmixed and mixed, "
        "where the object is known (Fashion-MNIST: pixels > 0); 0: off"))
    opt: str = option("adamw", help="timm optimiser name")
    lr: float = option(4e-3, gt=0, help="peak learning rate")
    weight_decay: float = option(0.05, ge=0, help="weight decay")
    layer_decay: float | None = option(None, gt=0, le=1, help=(
        "layer-wise lr decay in (0, 1]: layer l of L gets lr * layer_decay^(L - l) "
        "(null: off)"))
    sched: str = option("cosine", help="timm scheduler name")
    sched_per_step: bool = option(True, help="update the schedule every step instead of "
                                  "every epoch")
    warmup_epochs: int = option(1, ge=0, help="linear warm-up epochs")
    warmup_lr: float = option(1e-5, ge=0, help="learning rate at the start of warm-up")
    min_lr: float = option(1e-5, help="final learning rate of the cosine; in [0, lr]")
    clip_grad: float | None = option(None, gt=0, help="clip the gradient norm to this "
                                     "(null: off)")
    ema: bool = option(False, help="keep an EMA of the weights (timm ModelEmaV3) and test "
                       "it too")
    ema_decay: float = option(0.9998, gt=0, lt=1, help="EMA decay")
    amp: Literal["auto", "on", "off"] = option("auto", help="auto (CUDA only) | on | off")
    fused_opt: bool = option(True, help=(
        "torch's fused optimiser step where the optimiser has one (Adam, AdamW, SGD, Adagrad "
        "on CPU and CUDA): one kernel per parameter instead of a loop of small ops; false: "
        "torch's default (how the committed ablations ran)"))
    fused_attn: bool | None = option(None, help=(
        "timm's fused attention (scaled_dot_product_attention) in every attention block: "
        "true | false (q·kᵀ, softmax, ·v written out: faster for short token sequences on "
        "CPU) | null (timm's default, TIMM_FUSED_ATTN)"))
    # system
    seed: int = option(0, ge=0, le=SEED_MAX, help="random seed")
    device: str = option("auto", help="auto | cpu | cuda | cuda:N")
    threads: int | None = option(None, ge=1, help=(
        "intra-op threads (null: cores per process, minus one with loader workers); "
        "mixpro train sets torch's thread count to it for the run"))
    workers: int | None = option(None, ge=0, help="data-loader workers (null: fits the "
                                 "machine)")
    output: str | None = option(None, help="output folder (default "
                                "runs/<recipe>-<method>-seed<seed>)")
    tensorboard: bool = option(False, help="also write TensorBoard scalars")
    progress: bool = option(True, help="show tqdm progress bars")
    max_steps: int | None = option(None, ge=1, help="stop each epoch after this many steps "
                                   "(smoke tests)")
    checkpoint_every_steps: int | None = option(None, ge=1, help=(
        "also save a step-exact last.pt every N steps (null: each epoch only); --resume "
        "continues from it bit for bit"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def mix_options(self) -> MixOptions:
        """The mixing keys of this recipe as :class:`mixpro.methods.MixOptions`."""
        return MixOptions(**{k: getattr(self, k) for k in OPTION_NAMES})

    @property
    def mixed_epochs(self) -> int:
        """How many epochs mix (``mix_until``): the rest of the run trains unmixed."""
        if self.mix_until == 0:
            return 0
        return max(1, math.floor(self.mix_until * self.epochs + 0.5))  # 1: all epochs

    @property
    def in_channels(self) -> int:
        if self.in_chans is not None:
            return self.in_chans
        return 1 if self.data == "fashion_mnist" else 3

    @property
    def run_name(self) -> str:
        return f"{self.name}-{self.method}-seed{self.seed}"


SPECS: dict[str, options.Spec] = options.specs(Recipe)
FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Recipe)}


def allowed_types(key: str) -> tuple[tuple[type, ...], bool]:
    """The types a value of recipe key ``key`` may have, and whether it may be null."""
    return SPECS[key].kinds, SPECS[key].optional


def coerce(key: str, value: Any) -> Any:
    """Check ``value`` for recipe key ``key`` against its declaration (type, choices,
    range; ints widened to float); :class:`ConfigError` naming the key."""
    if key not in SPECS:
        raise ConfigError(f"unknown recipe key {key!r}{suggest(key)}")
    try:
        return SPECS[key].check(value)
    except ArgumentError as e:
        raise ConfigError(str(e)) from None


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
        raise ConfigError(f"cannot read recipe {path}: {first_line(e)}") from None
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
    unused += [k for k in HELPER_KEYS  # helper models the method does not need
               if k in keys and k not in METHODS[method].helpers
               and not (isinstance(keys, Mapping) and keys[k] is None)]
    if unused:
        raise ConfigError(f"method {method} does not use {', '.join(unused)}; drop "
                          f"{'it' if len(unused) == 1 else 'them'} or pick a method that does")


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
    """The checks across keys and against registries (each key's own type, choices and range
    are checked by :func:`coerce`); those that need data or a model come in :mod:`.run`."""
    _check(cfg.method in METHODS,
           f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    _check(0 <= cfg.min_lr <= cfg.lr, f"min_lr must be in [0, lr={cfg.lr}], got {cfg.min_lr}")
    _check(0 <= cfg.warmup_epochs < cfg.epochs or cfg.warmup_epochs == 0,
           f"warmup_epochs ({cfg.warmup_epochs}) must be smaller than epochs ({cfg.epochs})")
    _check(_device_ok(cfg.device), f"device must be auto, cpu or cuda[:N], got {cfg.device!r}")
    from ..data.folder import check_auto_augment

    _check(cfg.aa is None or check_auto_augment(cfg.aa),
           f"aa must be null or a timm auto-augment spec (rand-m9-mstd0.5-inc1, "
           f"augmix-m5-w4-d2, original, v0r, 3a, ...), got {cfg.aa!r}")
    for key, value in cfg.model_kwargs.items():
        hint = (" (YAML needs a space after ':', e.g. '{embed_dim: 96}')" if ":" in str(key)
                else "")
        _check(isinstance(key, str) and key.isidentifier(),
               f"model_kwargs: {key!r} is not a keyword name{hint}")
        _check(value is not None, f"model_kwargs: {key} is null, and timm.create_model "
               "silently ignores null keywords: give a value or drop it")
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
    _check(not (cfg.pretrained and cfg.initial_checkpoint),
           "pretrained and initial_checkpoint both set the initial weights: choose one")
