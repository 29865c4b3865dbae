"""Datasets through timm's readers: tar archives, Hugging Face ``datasets``, webdataset shards.

The recipe's ``data`` takes what ``timm.data.create_dataset`` takes (ImageFolder trees stay with
:mod:`.folder`; :func:`kind` says which module reads a spec). A split (``train_split``,
``val_split``) is found by its name, then, as timm does, by a synonym (train, training |
val, validation, valid, eval, evaluation); ``hfds`` falls back to ``test`` for the evaluation
split.

* ``PATH.tar`` — one tar holding ``<split>/<class>/<image>`` (timm's tar reader: the class is
  the folder an image sits in).
* a folder holding ``<split>.tar`` or a ``<split>/`` folder of tar shards (one tar per class,
  or class folders inside the tars).
* ``hfds/NAME`` — a Hugging Face dataset: a ``save_to_disk`` folder, a local data folder or
  file, or a hub name already in the local cache (``data_dir``: the cache folder). Loaded
  offline: nothing is downloaded. The image is the first ``Image`` feature; the label is the
  ``ClassLabel`` (its names are the classes), or a list of them (multi-label).
* ``wds/FOLDER`` — webdataset shards listed by timm's ``_info.json`` (splits, shard names,
  sizes), or a split given as a shard pattern (``train-{000..009}.tar``); image ``jpg``/``png``/
  ``webp``, label ``cls``; class names from ``_info.json``'s ``classes``, else the label
  numbers. Indexed by one streaming pass, so every sample can be read by index.

Every dataset is timm's ``ImageDataset`` with the transforms of :mod:`.folder` (its
:class:`~.folder.FolderDataset`: images decoded by :func:`~.folder.load_image`, 16-bit images
scaled to 8 bits, a skipped image named) and yields
``(image (C, H, W) float32, target)``: an ``int`` class, or for multi-label data a multi-hot
``(K,)`` float32 vector. Errors are one-line :class:`~mixpro.data.DatasetError` s, also for a
missing optional package (naming the ``pip install 'mixpro[...]'`` extra).
"""

from __future__ import annotations

import importlib
import io
import os
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from timm.data.readers.reader import Reader
from timm.data.readers.reader_image_in_tar import ReaderImageInTar
from torch.utils.data import Dataset

from ..errors import first_line
from . import DatasetError
from .folder import (
    EVAL_SPLITS,
    TRAIN_SPLITS,
    FolderDataset,
    check_same_classes,
    find_split,
    image_mode,
    synonyms,
)

PREFIXES = ("hfds", "wds")
UNSUPPORTED = ("hfids", "tfds", "torch")
WDS_IMAGES = ("jpg", "jpeg", "png", "webp")


def _is_tar(path: Path) -> bool:
    return path.suffix.lower() == ".tar"


def _holds_tars(path: Path) -> bool:
    return (path.is_file() and _is_tar(path)) or (path.is_dir() and any(path.glob("*.tar")))


def kind(spec: str, split: str = "train") -> str:
    """How ``spec`` is read: ``hfds``, ``wds``, ``tar`` (a ``.tar``, or a folder whose ``split``
    is a tar or a folder of tars) or ``folder`` (an ImageFolder tree, :mod:`.folder`)."""
    prefix, sep, _ = spec.partition("/")
    prefix = prefix.lower() if sep else ""
    if prefix in PREFIXES:  # as in timm, the prefix wins over a same-named folder
        return prefix
    if prefix in UNSUPPORTED and not Path(spec).exists():
        raise DatasetError(f"{prefix}/ datasets are not supported: give a folder, a .tar, "
                           "hfds/NAME or wds/FOLDER")
    path = Path(spec)
    if _is_tar(path):
        return "tar"
    found = find_split(path, split) if path.is_dir() else None
    return "tar" if found is not None and _holds_tars(found) else "folder"


def split_name(root: str | os.PathLike, split: str) -> str:
    """The sub-folder of an ImageFolder ``root`` that holds ``split`` (``split`` itself when
    none does, for the error that follows)."""
    found = find_split(root, split)
    return found.name if found is not None and found.is_dir() else split


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional package, else a one-line :class:`DatasetError` naming its extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DatasetError(f"{what} needs the {module} package: pip install "
                           f"'mixpro[{extra}]'") from None


class MultiHot:
    """Class indices → multi-hot float32 target ``(num_classes,)``."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def __call__(self, indices: Sequence[int]) -> torch.Tensor:
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        target[torch.as_tensor(list(indices), dtype=torch.long)] = 1.0
        return target


@dataclass
class Splits:
    """Datasets of the splits asked for (same class indices), the class names in label order
    and whether targets are multi-hot ``(K,)`` float32 vectors."""

    datasets: list[Dataset]
    classes: list[str]
    multi_label: bool = False


# ---------------------------------------------------------------------------- tar archives
class TarReader(ReaderImageInTar):
    """timm's tar reader with its cached open tars per process: a loader worker forked after
    the main process read an image must not share (and seek) the parent's file handles."""

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if getattr(self, "_pid", None) != os.getpid():
            self._pid = os.getpid()
            states = [self.tar_state] if self.root_is_tar else list(self.tar_state.values())
            while states:
                state = states.pop()
                state.reset()
                states.extend(state.children.values())
        return super().__getitem__(index)


def _tar_reader(path: Path) -> TarReader:
    if not path.exists():
        raise DatasetError(f"tar dataset not found: {path}")
    try:
        # timm caches the index of a tar over 10 GB next to it: only where it may write
        return TarReader(str(path), cache_tarinfo=None if os.access(path.parent, os.W_OK)
                         else False)
    except AssertionError:
        raise DatasetError(f"{path}: no .tar files in this folder") from None
    except ValueError:  # timm unpacks an empty sample list
        raise DatasetError(f"{path}: no images in the tar(s) (expected <class>/<image>)") from None
    except (OSError, tarfile.TarError) as e:
        raise DatasetError(f"{path}: unreadable tar ({first_line(e)})") from None


def _classes(reader: TarReader, targets: np.ndarray | None = None) -> list[str]:
    names = sorted(reader.class_name_to_idx, key=reader.class_name_to_idx.__getitem__)
    if targets is None:
        return names
    return [names[i] for i in sorted(set(targets.tolist()))]


def _split_of_tar(reader: TarReader, path: Path, split: str) -> TarReader:
    """A copy of ``reader`` keeping the images under ``<split>/<class>/`` inside the tar."""
    parents = [Path(ti.path).parts[-3:-2] for ti in reader.samples[:, 0]]
    for name in synonyms(split):
        keep = np.array([p == (name,) for p in parents])
        if keep.any():
            part = TarReader.__new__(TarReader)
            part.__dict__.update(reader.__dict__)
            part.samples, part.targets = reader.samples[keep], reader.targets[keep]
            return part
    raise DatasetError(f"{path}: no {split}/<class>/ folder inside (a .tar given as data holds "
                       "<split>/<class>/<image>; or give a folder with train.tar and val.tar)")


def _tar_splits(spec: str, splits: Sequence[str]) -> tuple[list[Reader], list[str]]:
    root = Path(spec)
    if _is_tar(root):
        whole = _tar_reader(root)
        readers = [_split_of_tar(whole, root, s) for s in splits]
        found = [_classes(r, r.targets) for r in readers]
        names = list(splits)
    else:
        paths = [find_split(root, s) for s in splits]
        for split, path in zip(splits, paths, strict=True):
            if path is None or not _holds_tars(path):
                raise DatasetError(f"{root}: split {split!r} not found: expected {split}.tar or "
                                   f"a {split}/ folder of .tar shards")
        readers = [_tar_reader(p) for p in paths]
        found = [_classes(r) for r in readers]
        names = [p.name for p in paths]
    for other, name in zip(found[1:], names[1:], strict=True):
        check_same_classes(root, found[0], other, (names[0], name))
    return readers, _classes(readers[0])


# ----------------------------------------------------------------- Hugging Face datasets
@contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face hub and ``datasets`` in offline mode: the local cache or nothing."""
    import datasets.config as dconfig
    import huggingface_hub.constants as hconst

    flags = [(dconfig, "HF_HUB_OFFLINE"), (dconfig, "HF_DATASETS_OFFLINE"),
             (hconst, "HF_HUB_OFFLINE")]  # read at call time by datasets and the hub client
    old = [getattr(module, name, False) for module, name in flags]
    for module, name in flags:
        setattr(module, name, True)
    try:
        yield
    finally:
        for (module, name), value in zip(flags, old, strict=True):
            setattr(module, name, value)


def _hf_load(name: str, cache_dir: str | None) -> Mapping[str, Any]:
    """The splits of ``hfds/NAME`` by name (a ``save_to_disk`` folder, local data, or the
    local cache), never downloading."""
    where = f"hfds/{name}"
    datasets = require("datasets", "hf", where)
    path = Path(name)
    saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    try:
        with _offline():
            if saved:
                loaded = datasets.load_from_disk(str(path))
            else:
                loaded = datasets.load_dataset(name, cache_dir=cache_dir)
    except Exception as e:  # datasets raises OSError, ValueError, its own errors, ...
        if path.exists():
            raise DatasetError(f"{where}: cannot load ({first_line(e)})") from None
        cache = cache_dir or datasets.config.HF_DATASETS_CACHE
        raise DatasetError(f"{where}: not a local dataset and not in the Hugging Face cache "
                           f"{cache} (mixpro never downloads: load it once with "
                           "datasets.load_dataset, or give a save_to_disk folder)") from None
    return loaded if isinstance(loaded, Mapping) else {"train": loaded}


def _pick_split(available: Mapping[str, Any], split: str, where: str) -> str:
    names = synonyms(split) + (["test"] if split in EVAL_SPLITS else [])
    for name in names:
        if name in available:
            return name
    raise DatasetError(f"{where} has no split {split!r} (splits: {', '.join(available)}); set "
                       "train_split / val_split")


def _leaf(feature: Any) -> Any:
    while hasattr(feature, "feature"):  # Sequence / List wrappers
        feature = feature.feature
    return feature


def _hf_columns(features: Mapping[str, Any], where: str) -> tuple[str, str, list[str], bool]:
    """Image column, label column, class names and whether the label is a list of classes."""
    from datasets import ClassLabel, Image

    image = next((k for k, f in features.items() if isinstance(f, Image)), None)
    labels = sorted((k for k, f in features.items() if isinstance(_leaf(f), ClassLabel)),
                    key=lambda k: k not in ("label", "labels"))
    if image is None or not labels:
        raise DatasetError(f"{where} needs an Image feature and a ClassLabel feature (or a list "
                           f"of ClassLabel), has {dict(features)}")
    feature = features[labels[0]]
    return image, labels[0], list(_leaf(feature).names), not isinstance(feature, ClassLabel)


def _check_labels(ds: Any, key: str, multi: bool, num_classes: int, where: str) -> None:
    import pyarrow.compute as pc

    col = ds.with_format("arrow")[key]
    if multi:
        col = pc.list_flatten(col)
    lo_hi = pc.min_max(col)
    lo, hi = lo_hi["min"].as_py(), lo_hi["max"].as_py()
    if col.null_count or (lo is not None and (lo < 0 or hi >= num_classes)):
        raise DatasetError(f"{where}: labels must be 0..{num_classes - 1}, found "
                           f"{'null' if col.null_count else lo if lo < 0 else hi} (an unlabelled "
                           "split? choose another with val_split)")


class HfReader(Reader):
    """timm reader over a loaded ``datasets.Dataset``: ``(image file object, label)``."""

    def __init__(self, ds: Any, image_key: str, label_key: str) -> None:
        super().__init__()
        from datasets import Image

        self.dataset = ds.cast_column(image_key, Image(decode=False))  # PIL decodes later
        self.image_key, self.label_key = image_key, label_key

    def __getitem__(self, index: int) -> tuple[io.BytesIO, Any]:
        item = self.dataset[index]
        image = item[self.image_key]
        data = image.get("bytes") or Path(image["path"]).read_bytes()
        return io.BytesIO(data), item[self.label_key]

    def __len__(self) -> int:
        return len(self.dataset)

    def _filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        return str(self.dataset[index][self.image_key].get("path") or index)


def _hf_splits(name: str, splits: Sequence[str],
               cache_dir: str | None) -> tuple[list[Reader], list[str], bool]:
    where = f"hfds/{name}"
    available = _hf_load(name, cache_dir)
    chosen = [available[_pick_split(available, s, where)] for s in splits]
    image, label, classes, multi = _hf_columns(chosen[0].features, where)
    for split, ds in zip(splits, chosen, strict=True):
        _check_labels(ds, label, multi, len(classes), f"{where} split {split!r}")
    return [HfReader(ds, image, label) for ds in chosen], classes, multi


# -------------------------------------------------------------------------- webdataset
class WdsReader(Reader):
    """Random access to webdataset shards: ``(image file object, label)``, indexed by one
    streaming pass over the shards (samples without an image or a ``cls`` label, or with a
    negative label, are left out)."""

    def __init__(self, shards: Sequence[str]) -> None:
        super().__init__()
        from webdataset.tariterators import base_plus_ext

        self.shards = list(shards)
        self.samples: list[tuple[int, tarfile.TarInfo]] = []
        self.labels: list[int] = []
        for i, shard in enumerate(self.shards):
            groups: dict[str, dict[str, Any]] = {}
            try:
                with tarfile.open(shard, "r|") as tf:
                    for ti in tf:
                        key, ext = base_plus_ext(ti.name) if ti.isfile() else (None, None)
                        if key is None:
                            continue
                        group, ext = groups.setdefault(key, {}), ext.lower()
                        if ext == "cls":
                            group["cls"] = int(tf.extractfile(ti).read())
                        elif ext in WDS_IMAGES and "image" not in group:
                            group["image"] = ti
            except (OSError, tarfile.TarError, ValueError) as e:
                raise DatasetError(f"{shard}: unreadable webdataset shard "
                                   f"({first_line(e)})") from None
            for group in groups.values():
                if "image" in group and group.get("cls", -1) >= 0:
                    self.samples.append((i, group["image"]))
                    self.labels.append(group["cls"])
        self._open: dict[int, tarfile.TarFile] = {}
        self._pid = os.getpid()

    def __getitem__(self, index: int) -> tuple[io.BytesIO, int]:
        if self._pid != os.getpid():  # a loader worker: open its own files
            self._open, self._pid = {}, os.getpid()
        shard, ti = self.samples[index]
        if shard not in self._open:
            self._open[shard] = tarfile.open(self.shards[shard])
        return io.BytesIO(self._open[shard].extractfile(ti).read()), self.labels[index]

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}

    def _filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        shard, ti = self.samples[index]
        return os.path.basename(ti.name) if basename else f"{self.shards[shard]}:{ti.name}"


def _wds_splits(root: str, splits: Sequence[str]) -> tuple[list[Reader], list[str]]:
    where = f"wds/{root}"
    require("webdataset", "wds", where)
    from timm.data.readers.reader_wds import _load_info, _parse_split_info

    if not Path(root).is_dir():
        raise DatasetError(f"{where}: folder not found")
    info = _load_info(root)
    readers = []
    for split in splits:
        known = info.get("splits") or {}
        name = next((n for n in synonyms(split) if n in known), split)
        try:
            files = _parse_split_info(name, info).filenames
        except (RuntimeError, KeyError, ValueError) as e:
            raise DatasetError(f"{where}: split {split!r} not found ({first_line(e)}); give "
                               "an _info.json or the split as a shard pattern, e.g. "
                               "'train-{000..009}.tar'") from None
        readers.append(WdsReader([os.path.join(root, f) for f in files]))
        if not readers[-1].labels:
            raise DatasetError(f"{where}: split {split!r} has no samples with an image and a "
                               "cls label")
    top = max(max(r.labels) for r in readers) + 1
    classes = [str(c) for c in info.get("classes") or range(top)]
    if top > len(classes):
        raise DatasetError(f"{where}: label {top - 1} but _info.json names {len(classes)} "
                           "classes")
    return readers, classes


# ---------------------------------------------------------------------------------- all
def open_splits(spec: str, splits: Sequence[str], transforms: Sequence[Callable], *,
                in_chans: int, cache_dir: str | None = None) -> Splits:
    """The datasets of ``splits`` of ``spec`` (a tar, ``hfds/``, ``wds/``; see the module
    docstring), each with its transform (PIL image → tensor); ``cache_dir`` is the Hugging
    Face cache for ``hfds/`` hub names. Raises :class:`DatasetError`."""
    multi = False
    how = kind(spec, splits[0])
    if how == "hfds":
        readers, classes, multi = _hf_splits(spec.partition("/")[2], splits, cache_dir)
    elif how == "wds":
        readers, classes = _wds_splits(spec.partition("/")[2], splits)
    elif how == "tar":
        readers, classes = _tar_splits(spec, splits)
    else:
        raise DatasetError(f"{spec} is an ImageFolder tree, read by mixpro.data.folder")
    target_tf = MultiHot(len(classes)) if multi else None
    mode = image_mode(in_chans)
    datasets = [FolderDataset(None, reader=r, input_img_mode=mode, transform=tf,
                              target_transform=target_tf)
                for r, tf in zip(readers, transforms, strict=True)]
    return Splits(datasets, classes, multi)


__all__ = [
    "EVAL_SPLITS",
    "TRAIN_SPLITS",
    "HfReader",
    "MultiHot",
    "Splits",
    "TarReader",
    "WdsReader",
    "find_split",
    "kind",
    "open_splits",
    "require",
    "split_name",
    "synonyms",
]
