"""Training data for the apps: the embedded Fashion-MNIST (idx files) and ImageFolder trees.

* :mod:`mixpro.data.fashion_mnist` — idx reader and an in-memory, batch-indexed dataset.
* :mod:`mixpro.data.folder` — ImageFolder (``train/``, ``val/``) with timm's transforms.

Both raise :class:`DatasetError` (a one-line user error) for missing or corrupt data.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset is missing, unreadable or corrupt (reported as one line by the CLI)."""


__all__ = ["DatasetError"]
