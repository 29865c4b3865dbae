"""Fashion-MNIST from the original idx files, offline.

Owns: reading idx files (gzipped or raw), locating the dataset (``--data-dir``, the
``MIXPRO_FASHION_MNIST`` environment variable, then Debian's ``dataset-fashion-mnist`` path
``/usr/share/datasets/fashion-mnist``), splitting classes into trained and held-out ones (the
held-out ones are a real near-OOD set for ``mixpro eval``), and :class:`FashionMNIST`, an
in-memory dataset indexed by a *list* of indices that returns a whole batch ``(B, C, S, S)``
float32 at once (padding 28→32 with zeros, optional random translation and horizontal flip,
normalisation).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import DatasetError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "MIXPRO_FASHION_MNIST"
INSTALL_HINT = (
    "install it with `apt-get install -y dataset-fashion-mnist`, or point --data-dir / "
    f"${ENV_VAR} at a folder with the idx files"
)
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MEAN, STD = (0.2860,), (0.3530,)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def resolve_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$MIXPRO_FASHION_MNIST``, else the Debian package's folder."""
    return Path(data_dir or os.environ.get(ENV_VAR) or DEFAULT_ROOT)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (``.gz`` or raw) of unsigned bytes: uint8 array of the stored shape.

    Raises:
        DatasetError: unreadable file, wrong magic, or a size that does not match the header.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise DatasetError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated (incomplete header)")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DatasetError(
            f"{path} is corrupt: header says {dims} ({expected} bytes), file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetError(f"Fashion-MNIST not found: no {stem}[.gz] in {root}; {INSTALL_HINT}")


def load_split(root: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 ``(N, 28, 28)`` and labels int64 ``(N,)`` of ``split`` ('train'|'test')."""
    root = Path(root)
    img_stem, lbl_stem = FILES[split]
    images = read_idx(_find(root, img_stem))
    labels = read_idx(_find(root, lbl_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(
            f"Fashion-MNIST {split} in {root} is corrupt: images {images.shape}, "
            f"labels {labels.shape}"
        )
    if labels.size and labels.max() >= len(CLASSES):
        raise DatasetError(f"Fashion-MNIST {split} in {root} has labels >= {len(CLASSES)}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def class_split(holdout: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """Class indices ``(kept, held_out)``; ``holdout`` must name 1..8 distinct classes of 0..9.

    Raises:
        DatasetError: an index outside 0..9, a repeated one, or fewer than 2 kept classes.
    """
    held = list(holdout)
    bad = [c for c in held
           if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(CLASSES)]
    if bad or len(set(held)) != len(held):
        raise DatasetError(
            f"holdout_classes must be distinct Fashion-MNIST class indices in 0..{len(CLASSES) - 1}"
            f", got {list(holdout)}"
        )
    kept = [c for c in range(len(CLASSES)) if c not in held]
    if len(kept) < 2:
        raise DatasetError(f"holdout_classes {list(holdout)} leaves fewer than 2 classes to train")
    return kept, sorted(held)


def select_classes(
    images: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of ``classes`` with labels renumbered to their position in ``classes``."""
    lut = torch.full((len(CLASSES),), -1, dtype=torch.long)
    lut[torch.as_tensor(list(classes), dtype=torch.long)] = torch.arange(len(classes))
    new = lut[labels]
    keep = new >= 0
    return images[keep], new[keep]


class FashionMNIST:
    """In-memory Fashion-MNIST; ``ds[indices]`` returns a batch.

    Args:
        images: uint8 ``(N, 28, 28)``; labels: int64 ``(N,)``.
        img_size: output side; 28×28 is zero-padded to 32×32, then resized if different.
        in_chans: 1, or 3 (grey replicated).
        translate: random shift of up to this many pixels (training augmentation; 0 = off).
        hflip: probability of a horizontal flip (training augmentation).

    ``ds[list_of_indices]`` → ``(images (B, in_chans, S, S) float32 normalised, labels (B,))``.
    Augmentation draws from :attr:`generator` (seed it per epoch for reproducibility).
    """

    classes = CLASSES

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        img_size: int = 32,
        in_chans: int = 1,
        translate: int = 0,
        hflip: float = 0.0,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
    ) -> None:
        self.images = F.pad(images, (2, 2, 2, 2))  # (N, 32, 32) uint8, zero = background
        self.labels = labels
        self.img_size = int(img_size)
        self.in_chans = int(in_chans)
        self.translate = int(translate)
        self.hflip = float(hflip)
        self.mean = torch.tensor(mean, dtype=torch.float32).mean()
        self.std = torch.tensor(std, dtype=torch.float32).mean()
        self.generator = torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(
        self, indices: Sequence[int] | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx].float().div_(255.0)  # (B, 32, 32)
        b, g = len(idx), self.generator
        if self.translate > 0:
            t = self.translate
            xp = F.pad(x, (t, t, t, t))
            oy, ox = (torch.randint(0, 2 * t + 1, (2, b), generator=g))
            ar = torch.arange(32)
            rows = (oy[:, None] + ar)[:, :, None]
            cols = (ox[:, None] + ar)[:, None, :]
            x = xp[torch.arange(b)[:, None, None], rows, cols]
        if self.hflip > 0:
            flip = torch.rand(b, generator=g) < self.hflip
            x = torch.where(flip[:, None, None], x.flip(-1), x)
        x = x.unsqueeze(1)
        if self.img_size != 32:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                              align_corners=False)
        x = (x - self.mean) / self.std
        if self.in_chans != 1:
            x = x.expand(-1, self.in_chans, -1, -1).contiguous()
        return x, self.labels[idx]


def fashion_mnist(
    data_dir: str | os.PathLike | None,
    *,
    img_size: int,
    in_chans: int,
    translate: int,
    hflip: float,
    train_subset: int | None = None,
    subset_seed: int = 0,
    holdout_classes: Sequence[int] = (),
) -> tuple[FashionMNIST, FashionMNIST]:
    """Train and test datasets; ``train_subset`` keeps a fixed random subset (by
    ``subset_seed``, the same for every method and seed) of the training images.
    ``holdout_classes`` are left out of both (labels renumbered over the kept classes, in
    order; see :func:`class_split`)."""
    kept, _ = class_split(holdout_classes)
    root = resolve_root(data_dir)
    if not root.is_dir():
        raise DatasetError(f"Fashion-MNIST not found: {root} does not exist; {INSTALL_HINT}")
    xtr, ytr = load_split(root, "train")
    xte, yte = load_split(root, "test")
    if len(kept) < len(CLASSES):
        xtr, ytr = select_classes(xtr, ytr, kept)
        xte, yte = select_classes(xte, yte, kept)
    if train_subset is not None:
        if not 0 < train_subset <= len(ytr):
            raise DatasetError(f"train_subset must be in 1..{len(ytr)} (training images of the "
                               f"kept classes), got {train_subset}")
        keep = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(subset_seed))
        keep = keep[:train_subset].sort().values
        xtr, ytr = xtr[keep], ytr[keep]
    train = FashionMNIST(xtr, ytr, img_size=img_size, in_chans=in_chans, translate=translate,
                         hflip=hflip)
    test = FashionMNIST(xte, yte, img_size=img_size, in_chans=in_chans)
    return train, test
