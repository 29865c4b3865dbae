"""ImageFolder datasets (ImageNet layout ``root/train/<class>/*.jpg``, ``root/val/<class>/``).

Owns: the class list of a folder tree (timm's reader's ``class_to_idx``, natural sort, is the
single truth; ``val/`` must hold exactly the classes of ``train/``), layout checks that name
the offending folder or file in one line (:class:`~mixpro.data.DatasetError`), timm's
``ImageDataset`` for each split with the transforms from ``timm.data.create_transform``
(RandomResizedCrop, flip, RandAugment / AutoAugment, random erasing; eval resize + centre crop),
and an unreadable image named in the warning that skips it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

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


def _dataset(split_dir: Path, classes: list[str], transform: Callable,
             in_chans: int) -> FolderDataset:
    mode = "L" if in_chans == 1 else "RGB"
    class_map = {c: i for i, c in enumerate(classes)}
    ds = FolderDataset(str(split_dir), transform=transform, input_img_mode=mode,
                       class_map=class_map)
    if ds.reader.class_to_idx != class_map:  # timm and our scan must agree
        raise DatasetError(f"{split_dir}: timm's class list differs from the folders found")
    return ds


def image_folder(
    root: str | os.PathLike,
    *,
    img_size: int,
    in_chans: int = 3,
    auto_augment: str | None = None,
    re_prob: float = 0.0,
    hflip: float = 0.5,
    interpolation: str = "bicubic",
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> tuple[FolderDataset, FolderDataset, list[str]]:
    """Train and val datasets of ``root`` with timm transforms; items are
    ``(image (in_chans, img_size, img_size) float32, label int)``; also the class names, in
    label order (timm's natural sort: ``c1, c2, c10``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    classes = scan_classes(root / "train")
    val_classes = scan_classes(root / "val")
    if val_classes != classes:
        extra = sorted(set(val_classes) - set(classes))
        lacking = sorted(set(classes) - set(val_classes))
        what = (f"val/{extra[0]} has no counterpart in train/" if extra
                else f"train/{lacking[0]} has no counterpart in val/")
        raise DatasetError(f"{root}: train/ and val/ must hold the same class folders: {what}")
    size = (in_chans, img_size, img_size)
    train_tf = create_transform(
        size, is_training=True, auto_augment=auto_augment, re_prob=re_prob, hflip=hflip,
        interpolation=interpolation, mean=tuple(mean), std=tuple(std),
    )
    val_tf = create_transform(
        size, is_training=False, interpolation=interpolation, crop_pct=crop_pct,
        mean=tuple(mean), std=tuple(std),
    )
    train = _dataset(root / "train", classes, train_tf, in_chans)
    val = _dataset(root / "val", classes, val_tf, in_chans)
    return train, val, classes


def eval_folder(root: str | os.PathLike, *, img_size: tuple[int, int], in_chans: int,
                interpolation: str) -> tuple[FolderDataset, list[str]]:
    """An evaluation ImageFolder (``root/<class>/<image>``; a training root with ``train/`` and
    ``val/`` means its ``val/``) as ``[0, 1]`` tensors (resize, no crop, no normalisation: the
    evaluation normalises after occluding). Returns the dataset and its class names."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if (root / "train").is_dir() and (root / "val").is_dir():
        root = root / "val"
    classes = scan_classes(root)
    tf = create_transform(input_size=(in_chans, *img_size), is_training=False,
                          interpolation=interpolation, crop_pct=1.0, normalize=False)
    return _dataset(root, classes, tf, in_chans), classes
