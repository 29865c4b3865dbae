"""ImageFolder datasets (ImageNet layout ``root/train/<class>/*.jpg``, ``root/val/<class>/``).

Owns: checking the layout before training (one-line :class:`DatasetError`), building timm's
``ImageDataset`` for both splits, and the transforms from ``timm.data.create_transform``
(RandomResizedCrop, flip, RandAugment / AutoAugment, random erasing; eval resize + centre crop).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageDataset, create_transform

from . import DatasetError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def _classes(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DatasetError(f"ImageFolder split not found: {split_dir} (expected train/ and val/)")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise DatasetError(f"{split_dir} has no class folders")
    for c in classes[:1]:
        if not any(f.suffix.lower() in IMG_EXTENSIONS for f in (split_dir / c).iterdir()):
            raise DatasetError(f"{split_dir / c} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return classes


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
) -> tuple[ImageDataset, ImageDataset, list[str]]:
    """Train and val datasets of ``root`` with timm transforms; items are
    ``(image (in_chans, img_size, img_size) float32, label int)``; also the class names."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    classes = _classes(root / "train")
    val_classes = _classes(root / "val")
    if val_classes != classes:
        raise DatasetError(
            f"{root}: train/ has {len(classes)} classes and val/ {len(val_classes)}; "
            "they must be the same folders"
        )
    size = (in_chans, img_size, img_size)
    train_tf = create_transform(
        size, is_training=True, auto_augment=auto_augment, re_prob=re_prob, hflip=hflip,
        interpolation=interpolation, mean=tuple(mean), std=tuple(std),
    )
    val_tf = create_transform(
        size, is_training=False, interpolation=interpolation, crop_pct=crop_pct,
        mean=tuple(mean), std=tuple(std),
    )
    mode = "L" if in_chans == 1 else "RGB"
    train = ImageDataset(str(root / "train"), transform=train_tf, input_img_mode=mode)
    val = ImageDataset(str(root / "val"), transform=val_tf, input_img_mode=mode)
    if len(train) == 0 or len(val) == 0:
        raise DatasetError(f"{root}: train/ or val/ contains no images")
    return train, val, classes
