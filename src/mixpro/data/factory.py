"""What the apps ask for: training splits, evaluation splits, OOD sets, normalisation.

Owns the mapping from a data *spec* (``"fashion_mnist"`` / ``"fashion-mnist"``, an
ImageFolder path (:mod:`.folder`), or what else ``timm.data.create_dataset`` takes: a ``.tar``,
a folder of tars, ``hfds/NAME``, ``wds/FOLDER`` (:mod:`.timm_formats`)) to datasets, and the
normalisation statistics of each source:

* :func:`training_data` — train and test splits with their augmentation, class names, mean/std,
  whether the datasets are batch-indexed (``ds[list_of_indices]`` → a whole batch) and whether
  targets are multi-hot (multi-label Hugging Face data).
* :func:`eval_data` — the evaluation split as ``[0, 1]`` images (normalised later by
  :class:`Normalize`, after occlusion).
* :func:`ood_data` — ``heldout`` (the classes a checkpoint was trained without), ``glyphs``
  (typeset letters) or an ImageFolder whose labels are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset, Subset

from . import DatasetError
from . import fashion_mnist as fmnist
from . import timm_formats as formats
from .folder import eval_folder, eval_transform, image_folder, transforms
from .glyphs import glyph_images

FASHION_MNIST = ("fashion_mnist", "fashion-mnist")  # the recipe's and the eval CLI's spelling


def is_fashion_mnist(spec: str) -> bool:
    """Whether ``spec`` names the embedded Fashion-MNIST (else it is a folder path)."""
    return spec in FASHION_MNIST


def data_here(spec: str) -> bool:
    """Whether the data ``spec`` names can be here: Fashion-MNIST, ``hfds/`` and ``wds/`` names
    (checked when loaded), else an existing path."""
    return is_fashion_mnist(spec) or formats.kind(spec) in formats.PREFIXES or Path(spec).exists()


def checkpoint_data(given: str | None, config: Mapping[str, Any] | None,
                    checkpoint: str | os.PathLike) -> str:
    """The data to evaluate or draw a checkpoint on: ``given`` (``--data``), else the data it
    was trained on (its recipe's ``data``; an ImageFolder or tar must still be here), with
    the embedded Fashion-MNIST as ``fashion-mnist``.

    Raises:
        DatasetError: the training data is not here (pass ``--data``).
    """
    if given is not None:
        return given
    trained_on = str(((config or {}).get("recipe") or {}).get("data", "fashion-mnist"))
    if is_fashion_mnist(trained_on):
        return "fashion-mnist"
    if not data_here(trained_on):
        raise DatasetError(f"checkpoint {checkpoint} was trained on the data {trained_on}, "
                           "which is not here; pass --data with its location")
    return trained_on


def stats(spec: str, in_chans: int) -> tuple[list[float], list[float]]:
    """Normalisation mean and std per channel: Fashion-MNIST's own, else ImageNet's (averaged
    to one value per channel for grey inputs)."""
    if is_fashion_mnist(spec):
        return list(fmnist.MEAN) * in_chans, list(fmnist.STD) * in_chans
    mean, std = list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
    if in_chans == 1:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    return mean, std


@dataclass
class TrainingData:
    """The train and test splits of a run, with what the checkpoint records about them."""

    train: Dataset
    test: Dataset
    classes: list[str]
    mean: list[float]
    std: list[float]
    batched: bool  # ``ds[list_of_indices]`` returns a whole batch (in-memory Fashion-MNIST)
    multi_label: bool = False  # targets are multi-hot (K,) float32 vectors, not class indices
    zero_background: bool = False  # the background is exactly 0 (Fashion-MNIST): the object
    # of every image, mixed or not, is known exactly (pixels > 0)


def training_data(
    spec: str,
    *,
    img_size: int,
    in_chans: int,
    data_dir: str | None = None,
    translate: int = 0,
    hflip: float = 0.5,
    auto_augment: str | None = None,
    re_prob: float = 0.0,
    interpolation: str = "bicubic",
    crop_pct: float = 0.875,
    train_subset: int | None = None,
    subset_seed: int = 0,
    holdout_classes: Sequence[int] = (),
    train_split: str = "train",
    val_split: str = "val",
) -> TrainingData:
    """Train and test splits of ``spec``: Fashion-MNIST, an ImageFolder root, a ``.tar``, a
    folder of tars, ``hfds/NAME`` or ``wds/FOLDER`` (splits ``train_split`` and ``val_split``,
    or their synonyms; ``data_dir``: the Hugging Face cache for ``hfds/``). Items are ``(image
    (in_chans, img_size, img_size) float32, target)``; the target is a class index, or a
    multi-hot ``(K,)`` float32 vector when ``multi_label``.

    ``train_subset`` keeps a fixed random subset (by ``subset_seed``, the same for every method
    and seed) of the training images; ``holdout_classes`` (Fashion-MNIST only) are left out of
    both splits. Raises :class:`DatasetError`.
    """
    mean, std = stats(spec, in_chans)
    if is_fashion_mnist(spec):
        train, test = fmnist.fashion_mnist(
            data_dir, img_size=img_size, in_chans=in_chans, translate=translate, hflip=hflip,
            train_subset=train_subset, subset_seed=subset_seed, holdout_classes=holdout_classes)
        kept, _ = fmnist.class_split(holdout_classes)
        return TrainingData(train, test, [fmnist.CLASSES[c] for c in kept], mean, std, True,
                            zero_background=True)
    if holdout_classes:
        raise DatasetError("holdout_classes works with Fashion-MNIST only (for an ImageFolder, "
                           "leave the classes out of its train/ and val/ folders)")
    aug = dict(auto_augment=auto_augment, re_prob=re_prob, hflip=hflip,
               interpolation=interpolation, crop_pct=crop_pct, mean=mean, std=std)
    multi = False
    if formats.kind(spec, train_split) == "folder":
        splits = (formats.split_name(spec, train_split), formats.split_name(spec, val_split))
        train, test, classes = image_folder(spec, img_size=img_size, in_chans=in_chans,
                                            splits=splits, **aug)
    else:
        parts = formats.open_splits(spec, (train_split, val_split),
                                    transforms(img_size, in_chans, **aug), in_chans=in_chans,
                                    cache_dir=data_dir)
        (train, test), classes, multi = parts.datasets, parts.classes, parts.multi_label
    if train_subset is not None:
        n = len(train)
        if not 0 < train_subset <= n:
            raise DatasetError(f"train_subset must be in 1..{n} (training images), "
                               f"got {train_subset}")
        g = torch.Generator().manual_seed(subset_seed)
        train = Subset(train, torch.randperm(n, generator=g)[:train_subset].tolist())
    return TrainingData(train, test, classes, mean, std, False, multi)


@dataclass
class EvalData:
    """A dataset of ``([0,1] image (C, H, W), label)`` with its class names (the label is a
    multi-hot ``(K,)`` float32 vector when ``multi_label``)."""

    dataset: Dataset
    classes: list[str]
    name: str
    batched: bool = False  # ``dataset[list_of_indices]`` returns a whole batch
    multi_label: bool = False

    def __len__(self) -> int:
        return len(self.dataset)


def _fmnist(images: torch.Tensor, labels: torch.Tensor, img_size: tuple[int, int],
            in_chans: int) -> Dataset:
    """The training app's Fashion-MNIST pipeline (pad 28→32, resize, grey→C) in ``[0, 1]``."""
    if img_size[0] != img_size[1]:
        raise DatasetError(f"Fashion-MNIST needs a square model input, got {img_size}")
    return fmnist.FashionMNIST(images, labels, img_size=img_size[0], in_chans=in_chans,
                               mean=(0.0,), std=(1.0,))


def fashion_mnist_test(img_size: tuple[int, int], in_chans: int, data_dir: str | None = None,
                       classes: Sequence[int] | None = None) -> EvalData:
    """The Fashion-MNIST test split (10,000 images); with ``classes`` (indices) only their
    images, labels renumbered in that order."""
    images, labels = fmnist.load_split(fmnist.resolve_root(data_dir), "test")
    names, name = list(fmnist.CLASSES), "fashion-mnist test"
    if classes is not None and list(classes) != list(range(len(names))):
        images, labels = fmnist.select_classes(images, labels, classes)
        names = [names[c] for c in classes]
        name = f"fashion-mnist test ({len(names)} classes)"
    return EvalData(_fmnist(images, labels, img_size, in_chans), names, name, batched=True)


def eval_data(spec: str, *, img_size: tuple[int, int], in_chans: int,
              interpolation: str = "bilinear", data_dir: str | None = None,
              holdout: Sequence[int] = (), split: str | None = None) -> EvalData:
    """``fashion-mnist`` (the test split, less the ``holdout`` classes a checkpoint was trained
    without), an ImageFolder path (its ``val/`` if it has ``train/`` and ``val/``), or a
    ``.tar``, folder of tars, ``hfds/NAME``, ``wds/FOLDER``: their ``split`` (default ``val``
    or a synonym, see :mod:`.timm_formats`)."""
    if is_fashion_mnist(spec):
        kept, _ = fmnist.class_split(holdout)
        return fashion_mnist_test(img_size, in_chans, data_dir, kept)
    split = split or "val"
    if formats.kind(spec, split) == "folder":
        ds, classes = eval_folder(spec, img_size=img_size, in_chans=in_chans,
                                  interpolation=interpolation,
                                  split=formats.split_name(spec, split))
        return EvalData(ds, classes, f"folder {spec}")
    parts = formats.open_splits(spec, (split,), (eval_transform(img_size, in_chans,
                                                                interpolation),),
                                in_chans=in_chans, cache_dir=data_dir)
    return EvalData(parts.datasets[0], parts.classes, f"{spec} ({split})",
                    multi_label=parts.multi_label)


def ood_data(spec: str, data_spec: str, *, img_size: tuple[int, int], in_chans: int,
             interpolation: str = "bilinear", data_dir: str | None = None,
             holdout: Sequence[int] = ()) -> EvalData | None:
    """``none``; ``heldout``: the Fashion-MNIST test images of the classes the checkpoint was
    trained without (real near-OOD images); ``glyphs``: typeset letters (far-OOD); or an
    ImageFolder whose labels are ignored. ``auto`` = ``heldout`` for Fashion-MNIST checkpoints
    trained with ``holdout_classes``, else ``glyphs`` for Fashion-MNIST, else ``none``."""
    if spec == "auto":
        spec = "none" if not is_fashion_mnist(data_spec) else "heldout" if holdout else "glyphs"
    if spec == "none":
        return None
    if spec == "heldout":
        if not is_fashion_mnist(data_spec) or not holdout:
            raise DatasetError("--ood heldout needs --data fashion-mnist and a checkpoint "
                               "trained with holdout_classes")
        _, held = fmnist.class_split(holdout)
        data = fashion_mnist_test(img_size, in_chans, data_dir, held)
        data.name = "fashion-mnist held-out classes: " + ", ".join(data.classes)
        data.classes = []
        return data
    if spec == "glyphs":
        imgs = torch.from_numpy(glyph_images())
        ds = _fmnist(imgs, torch.zeros(len(imgs), dtype=torch.long), img_size, in_chans)
        return EvalData(ds, [], "glyphs (notMNIST-style letters, matplotlib fonts)",
                        batched=True)
    ds, _ = eval_folder(spec, img_size=img_size, in_chans=in_chans, interpolation=interpolation)
    return EvalData(ds, [], f"folder {spec}")


def holdout_of(recipe: dict[str, Any]) -> list[int]:
    """Fashion-MNIST classes a run's recipe held out of training (``[]`` if none)."""
    if not is_fashion_mnist(str(recipe.get("data"))):
        return []
    return list(recipe.get("holdout_classes") or [])


class Normalize:
    """``(x - mean) / std`` per channel, for ``[0, 1]`` images ``(B, C, H, W)``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def checkpoint_stats(config: dict[str, Any], chans: int,
                     pretrained_cfg: dict[str, Any] | None = None
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean/std of a checkpoint: its config's ``mean``/``std``, else the model's timm
    ``pretrained_cfg`` (averaged to one value per channel when the channel count differs)."""
    cfg = pretrained_cfg or {}
    mean = config.get("mean", cfg.get("mean", (0.5,) * chans))
    std = config.get("std", cfg.get("std", (0.5,) * chans))
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != chans:  # e.g. a 1-channel model with timm's 3-channel defaults
        mean, std = (sum(mean) / len(mean),) * chans, (sum(std) / len(std),) * chans
    return mean, std


__all__ = [
    "EvalData",
    "Normalize",
    "TrainingData",
    "checkpoint_data",
    "checkpoint_stats",
    "data_here",
    "eval_data",
    "fashion_mnist_test",
    "holdout_of",
    "is_fashion_mnist",
    "ood_data",
    "stats",
    "training_data",
]

