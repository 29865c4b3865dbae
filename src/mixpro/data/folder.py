"""ImageFolder datasets (ImageNet layout ``root/train/<class>/*.jpg``, ``root/val/<class>/``).

Owns: the class list of a folder tree (timm's reader's ``class_to_idx``, natural sort, is the
single truth; ``val/`` must hold exactly the classes of ``train/``), layout checks that name
the offending folder or file in one line (:class:`~mixpro.data.DatasetError`), timm's
``ImageDataset`` for each split, the transforms from ``timm.data.create_transform``
(:func:`transforms`: RandomResizedCrop, flip, RandAugment / AutoAugment, random erasing; eval
resize + centre crop; :func:`eval_transform`: ``[0, 1]`` for the evaluation app; also used by
:mod:`.timm_formats`), and an unreadable image named in the warning that skips it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageDataset, create_transform
from timm.data.readers.img_extensions import get_img_extensions
from timm.utils.misc import natural_key

from . import DatasetError

_logger = logging.getLogger(__name__)
IMG_EXTENSIONS = tuple(sorted(get_img_extensions(as_set=True)))
_RETRIES = 20


class FolderDataset(ImageDataset):
    """timm's ``ImageDataset`` whose skipped-image warning names the file that failed."""

    def __getitem__(self, index: int):
        for _ in range(_RETRIES):
            path, target = self.reader.samples[index]
            try:
                img = Image.open(path)
                img = img.convert(self.input_img_mode) if self.input_img_mode else img
                break
            except OSError as e:  # unreadable / truncated file: skip it, name it
                _logger.warning("skipped unreadable image %s: %s", path, e)
                index = (index + 1) % len(self.reader)
        else:
            raise DatasetError(f"{_RETRIES} consecutive images could not be read "
                               f"(last: {path})")
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMG_EXTENSIONS


def scan_classes(split_dir: str | os.PathLike) -> list[str]:
    """Class folder names of one split in timm's (natural) order, after checking the layout:
    every image sits directly in a class folder and every class folder holds images.

    Raises:
        DatasetError: naming a missing split, an image outside a class folder, a nested folder
            (which timm would read as an extra class) or a class folder without images.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetError(f"ImageFolder split not found: {split_dir} (expected train/ and val/)")
    classes = []
    for entry in sorted(split_dir.iterdir(), key=lambda p: natural_key(p.name)):
        if entry.is_file() and _is_image(entry.name):
            raise DatasetError(f"{entry}: an image outside a class folder; move it into "
                               f"{split_dir}/<class>/")
        if not entry.is_dir():
            continue
        has_images = False
        for root, _dirs, files in os.walk(entry, followlinks=True):
            if Path(root) != entry and any(_is_image(f) for f in files):
                raise DatasetError(f"{root}: a nested folder with images inside class folder "
                                   f"{entry.name!r}; each class must be one flat folder")
            has_images = has_images or (Path(root) == entry and any(_is_image(f) for f in files))
        if not has_images:
            raise DatasetError(f"class folder {entry} holds no images "
                               f"({', '.join(IMG_EXTENSIONS)})")
        classes.append(entry.name)
    if not classes:
        raise DatasetError(f"{split_dir} has no class folders")
    return classes


def image_mode(in_chans: int) -> str:
    """The PIL mode images are converted to for ``in_chans`` input channels."""
    return "L" if in_chans == 1 else "RGB"


def transforms(
    img_size: int,
    in_chans: int,
    *,
    auto_augment: str | None = None,
    re_prob: float = 0.0,
    hflip: float = 0.5,
    interpolation: str = "bicubic",
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> tuple[Callable, Callable]:
    """timm's train and eval transforms: PIL image → normalised ``(in_chans, img_size,
    img_size)`` float32 tensor."""
    size = (in_chans, img_size, img_size)
    train_tf = create_transform(
        size, is_training=True, auto_augment=auto_augment, re_prob=re_prob, hflip=hflip,
        interpolation=interpolation, mean=tuple(mean), std=tuple(std),
    )
    val_tf = create_transform(
        size, is_training=False, interpolation=interpolation, crop_pct=crop_pct,
        mean=tuple(mean), std=tuple(std),
    )
    return train_tf, val_tf


def eval_transform(img_size: tuple[int, int], in_chans: int, interpolation: str) -> Callable:
    """PIL image → ``[0, 1]`` tensor ``(in_chans, *img_size)`` (resize, no crop, no
    normalisation: the evaluation normalises after occluding). timm's ``normalize=False``
    would give uint8 ``[0, 255]``, hence the identity normalisation."""
    return create_transform(input_size=(in_chans, *img_size), is_training=False,
                            interpolation=interpolation, crop_pct=1.0,
                            mean=(0.0,) * in_chans, std=(1.0,) * in_chans)


def check_same_classes(root: str | os.PathLike, classes: list[str], val_classes: list[str],
                       names: tuple[str, str] = ("train", "val")) -> None:
    """:class:`DatasetError` naming a class of one split (``names``) missing in the other."""
    if val_classes == classes:
        return
    train, val = names
    extra = sorted(set(val_classes) - set(classes))
    lacking = sorted(set(classes) - set(val_classes))
    what = (f"{val}/{extra[0]} has no counterpart in {train}/" if extra
            else f"{train}/{lacking[0]} has no counterpart in {val}/")
    raise DatasetError(f"{root}: {train}/ and {val}/ must hold the same class folders: {what}")


def _dataset(split_dir: Path, classes: list[str], transform: Callable,
             in_chans: int) -> FolderDataset:
    class_map = {c: i for i, c in enumerate(classes)}
    ds = FolderDataset(str(split_dir), transform=transform, input_img_mode=image_mode(in_chans),
                       class_map=class_map)
    if ds.reader.class_to_idx != class_map:  # timm and our scan must agree
        raise DatasetError(f"{split_dir}: timm's class list differs from the folders found")
    return ds


def image_folder(
    root: str | os.PathLike,
    *,
    img_size: int,
    in_chans: int = 3,
    splits: tuple[str, str] = ("train", "val"),
    **augment: Any,
) -> tuple[FolderDataset, FolderDataset, list[str]]:
    """Train and val datasets of ``root`` (its sub-folders ``splits``) with timm transforms
    (``augment``: the keywords of :func:`transforms`); items are ``(image (in_chans, img_size,
    img_size) float32, label int)``; also the class names, in label order (timm's natural
    sort: ``c1, c2, c10``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    for name in splits:
        if not (root / name).is_dir():
            raise DatasetError(f"ImageFolder split not found: {root / name} (expected "
                               f"{splits[0]}/ and {splits[1]}/)")
    classes = scan_classes(root / splits[0])
    check_same_classes(root, classes, scan_classes(root / splits[1]), splits)
    train_tf, val_tf = transforms(img_size, in_chans, **augment)
    train = _dataset(root / splits[0], classes, train_tf, in_chans)
    val = _dataset(root / splits[1], classes, val_tf, in_chans)
    return train, val, classes


TRAIN_SPLITS = ("train", "training")  # timm's names for the splits
EVAL_SPLITS = ("val", "validation", "valid", "eval", "evaluation")


def synonyms(split: str) -> list[str]:
    """``split`` then the other names timm accepts for it."""
    for group in (TRAIN_SPLITS, EVAL_SPLITS):
        if split in group:
            return [split] + [s for s in group if s != split]
    return [split]


def find_split(root: str | os.PathLike, split: str) -> Path | None:
    """``root/<split>`` (a folder) or ``root/<split>.tar``, by name then synonyms; None if
    there is neither."""
    for name in synonyms(split):
        for path in (Path(root) / name, Path(root) / f"{name}.tar"):
            if path.exists():
                return path
    return None


def eval_folder(root: str | os.PathLike, *, img_size: tuple[int, int], in_chans: int,
                interpolation: str, split: str = "val") -> tuple[FolderDataset, list[str]]:
    """An evaluation ImageFolder (``root/<class>/<image>``; a training root with ``train/`` and
    ``<split>/`` means its ``<split>/``) as ``[0, 1]`` tensors (:func:`eval_transform`).
    Returns the dataset and its class names."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    train, val = find_split(root, "train"), find_split(root, split)
    if train is not None and train.is_dir() and val is not None and val.is_dir():
        root = val
    classes = scan_classes(root)
    tf = eval_transform(img_size, in_chans, interpolation)
    return _dataset(root, classes, tf, in_chans), classes
