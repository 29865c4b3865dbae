"""ImageFolder datasets (ImageNet layout ``root/train/<class>/*.jpg``, ``root/val/<class>/``).

Owns: the class list of a folder tree (timm's reader's ``class_to_idx``, natural sort, is the
single truth; ``val/`` must hold exactly the classes of ``train/``), layout checks that name
the offending folder or file in one line (:class:`~mixpro.data.DatasetError`), timm's
``ImageDataset`` for each split, the transforms from ``timm.data.create_transform``
(:func:`transforms`: RandomResizedCrop, flip, RandAugment / AutoAugment, random erasing; eval
resize + centre crop; :func:`eval_transform`: ``[0, 1]`` for the evaluation app; also used by
:mod:`.timm_formats`), and an unreadable image named in the warning that skips it.

Every image of every format is decoded by :func:`load_image`: high-bit-depth images are scaled
to 8 bits by :func:`to_8bit` first (PIL's own ``convert`` would clip a 16-bit image to white).
A symbolic-link loop inside a split is a one-line :class:`~mixpro.data.DatasetError` naming the
link (:func:`scan_classes`), found before timm's reader walks the tree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageDataset, create_transform
from timm.data.readers.img_extensions import get_img_extensions
from timm.data.readers.reader_image_folder import ReaderImageFolder
from timm.utils.misc import natural_key

from . import DatasetError

_logger = logging.getLogger(__name__)
IMG_EXTENSIONS = tuple(sorted(get_img_extensions(as_set=True)))
_RETRIES = 20


# interpolation names timm's transforms take ('random': bilinear or bicubic per training
# image; the evaluation resize then uses bilinear, as timm does)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos", "random")


def to_8bit(img: Image.Image, name: str | os.PathLike = "image") -> Image.Image:
    """``img`` as an 8-bit image when it has more bits per pixel; other images unchanged.

    PIL's ``convert("L")``/``convert("RGB")`` clips these modes to 0..255, so nearly every pixel
    of a 16-bit image would become white. Scaled instead (rounded, the ramp preserved):

    * ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit grey, e.g. a 16-bit PNG): ``v * 255 /
      65535``.
    * ``I`` (32-bit signed integers; how PIL opens some 16-bit PNGs and TIFFs): read as 16-bit
      values, the same scaling; a value outside 0..65535 has no such meaning and is refused.
    * ``F`` (32-bit float): values in [0, 1] become ``v * 255``; any other value (or NaN) is
      refused, as its range is unknown.

    The result is mode ``L``. Raises :class:`DatasetError` naming ``name`` (the file) for a
    refused image.
    """
    mode = img.mode
    if mode not in ("I", "F") and not mode.startswith("I;16"):
        return img
    a = np.asarray(img)
    if mode == "F":
        if a.size and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise DatasetError(f"{name}: a mode F (32-bit float) image with values outside "
                               "[0, 1]; save it as 8- or 16-bit, or scaled to [0, 1]")
        return Image.fromarray(np.rint(a.astype(np.float64) * 255).astype(np.uint8))
    if mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
        raise DatasetError(f"{name}: a mode I (32-bit integer) image with values outside "
                           "0..65535; save it as an 8- or 16-bit image")
    v = a.astype(np.uint32)
    return Image.fromarray(((v * 255 + 32767) // 65535).astype(np.uint8))


def load_image(src: Any, name: str | os.PathLike, mode: str | None) -> Image.Image:
    """The image in ``src`` (a path or file object) decoded, scaled to 8 bits
    (:func:`to_8bit`) and converted to ``mode`` (None: left as it is).

    Raises:
        OSError: the file cannot be read or decoded (the caller skips it).
        DatasetError: an image whose mode cannot be converted, naming ``name``.
    """
    img = to_8bit(Image.open(src), name)
    if not mode or img.mode == mode:
        return img
    try:
        return img.convert(mode)
    except ValueError:  # PIL has no conversion between these modes (e.g. LAB -> RGB)
        raise DatasetError(f"{name}: a mode {img.mode} image cannot be converted to "
                           f"{mode}") from None


class FolderDataset(ImageDataset):
    """timm's ``ImageDataset`` (any timm reader: folders, tars, :mod:`.timm_formats`' readers)
    whose images go through :func:`load_image` and whose skipped-image warning names the file
    that failed."""

    def _name(self, index: int) -> str:
        name = str(self.reader.filename(index, absolute=True))
        root = getattr(self.reader, "root", None)  # a tar reader: the archive or its folder
        return f"{root}:{name}" if isinstance(root, str) and root not in name else name

    def __getitem__(self, index: int):
        for _ in range(_RETRIES):
            if isinstance(self.reader, ReaderImageFolder):  # open by path: no file handle
                path, target = self.reader.samples[index]
                src = name = path
            else:
                src, target = self.reader[index][:2]
                name = self._name(index)
            try:
                img = load_image(src, name, self.input_img_mode)
                break
            except OSError as e:  # unreadable / truncated file: skip it, name it
                _logger.warning("skipped unreadable image %s: %s", name, e)
                index = (index + 1) % len(self.reader)
        else:
            raise DatasetError(f"{_RETRIES} consecutive images could not be read "
                               f"(last: {name})")
        if self.transform is not None:
            img = self.transform(img)
        if target is None:  # timm: an unlabelled sample
            target = -1
        elif self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMG_EXTENSIONS


def _dir_id(path: str | os.PathLike) -> tuple[int, int] | None:
    """The identity of the folder at ``path`` (links followed), None if unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _link_of(path: Path, top: Path) -> Path:
    """The deepest symbolic link on ``path`` below ``top`` (``path`` itself if none)."""
    p = path
    while p != top and p.parent != p:
        if p.is_symlink():
            return p
        p = p.parent
    return path


def _walk_class(entry: Path, above: tuple[tuple[int, int], ...]) -> bool:
    """Whether class folder ``entry`` holds images directly, after checking that no folder
    below it holds images and that no link leads back to a folder above (``above``: the
    identities of the split folder and its parents).

    Links are followed (as timm's reader does); a folder reached twice without a loop (two
    links to it) is read once."""
    seen: set[tuple[int, int]] = set()
    stack = [(entry, above)]
    has_images = False
    while stack:
        folder, chain = stack.pop()
        key = _dir_id(folder)
        if key is None:
            continue
        if key in chain:
            back = next((p for p in (*reversed(folder.parents), *folder.absolute().parents)
                         if _dir_id(p) == key), "a folder above it")
            raise DatasetError(f"{_link_of(folder, entry.parent)}: a symbolic-link loop "
                               f"({folder} leads back to {back}); remove the link")
        if key in seen:
            continue
        seen.add(key)
        try:
            with os.scandir(folder) as it:
                items = list(it)
        except OSError:  # unreadable: skipped, as os.walk and timm's reader do
            continue
        dirs, images = [], False
        for item in items:
            try:
                is_dir = item.is_dir()  # follows links; a broken link is no folder
            except OSError:
                is_dir = False
            if is_dir:
                dirs.append(Path(item.path))
            images = images or (not is_dir and _is_image(item.name))
        if images and folder != entry:
            raise DatasetError(f"{folder}: a nested folder with images inside class folder "
                               f"{entry.name!r}; each class must be one flat folder")
        has_images = has_images or images
        below = (*chain, key)
        stack.extend((d, below) for d in sorted(dirs, key=lambda p: natural_key(p.name),
                                                reverse=True))
    return has_images


def scan_classes(split_dir: str | os.PathLike) -> list[str]:
    """Class folder names of one split in timm's (natural) order, after checking the layout:
    every image sits directly in a class folder and every class folder holds images.

    Symbolic links are followed, as timm's reader follows them; a link that leads back to a
    folder it sits in (a loop, on which timm's reader would never finish) is an error in the
    data.

    Raises:
        DatasetError: naming a missing split, an image outside a class folder, a nested folder
            (which timm would read as an extra class), a class folder without images or a
            symbolic-link loop.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetError(f"ImageFolder split not found: {split_dir} (expected train/ and val/)")
    above = tuple(k for k in dict.fromkeys(
        _dir_id(p) for p in (split_dir, *split_dir.absolute().parents)) if k is not None)
    classes = []
    for entry in sorted(split_dir.iterdir(), key=lambda p: natural_key(p.name)):
        if entry.is_file() and _is_image(entry.name):
            raise DatasetError(f"{entry}: an image outside a class folder; move it into "
                               f"{split_dir}/<class>/")
        if not entry.is_dir():
            continue
        if not _walk_class(entry, above):
            raise DatasetError(f"class folder {entry} holds no images "
                               f"({', '.join(IMG_EXTENSIONS)})")
        classes.append(entry.name)
    if not classes:
        raise DatasetError(f"{split_dir} has no class folders")
    return classes


def image_mode(in_chans: int) -> str:
    """The PIL mode images are converted to for ``in_chans`` input channels."""
    return "L" if in_chans == 1 else "RGB"


def _fixed(interpolation: str) -> str:
    """The evaluation resize of ``interpolation`` ('random' is for training images only)."""
    return "bilinear" if interpolation == "random" else interpolation


def check_auto_augment(spec: str) -> bool:
    """Whether timm's transforms take ``spec`` as ``auto_augment`` (``rand-...``,
    ``augmix-...`` or an AutoAugment policy such as ``original``, ``v0r``, ``3a``): the same
    transform timm builds for training, asked to parse it."""
    if not isinstance(spec, str) or not spec:
        return False
    try:
        create_transform((3, 32, 32), is_training=True, auto_augment=spec)
    except (AssertionError, ValueError, KeyError, IndexError, TypeError):
        return False
    return True


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
        size, is_training=False, interpolation=_fixed(interpolation), crop_pct=crop_pct,
        mean=tuple(mean), std=tuple(std),
    )
    return train_tf, val_tf


def eval_transform(img_size: tuple[int, int], in_chans: int, interpolation: str) -> Callable:
    """PIL image → ``[0, 1]`` tensor ``(in_chans, *img_size)`` (resize, no crop, no
    normalisation: the evaluation normalises after occluding). timm's ``normalize=False``
    would give uint8 ``[0, 255]``, hence the identity normalisation."""
    return create_transform(input_size=(in_chans, *img_size), is_training=False,
                            interpolation=_fixed(interpolation), crop_pct=1.0,
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
