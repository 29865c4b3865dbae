"""Every dataset the apps use; the apps ask here and never assemble datasets themselves.

* :mod:`.fashion_mnist` — the embedded Fashion-MNIST (idx reader, in-memory batch dataset,
  held-out class split).
* :mod:`.folder` — ImageFolder trees (``train/``, ``val/``) with timm's transforms.
* :mod:`.glyphs` — typeset letters, the far-OOD set for Fashion-MNIST.
* :mod:`.loading` — :class:`~.loading.DatasetLoader`: torch's loader whose workers'
  :class:`DatasetError` stays one line.
* :mod:`.factory` — what the apps call: :func:`training_data` (train + test splits, classes,
  normalisation), :func:`eval_data`, :func:`ood_data`, :class:`Normalize`.

All raise :class:`DatasetError` (a one-line user error) for missing or corrupt data.
"""

from __future__ import annotations

from ..errors import UserError


class DatasetError(UserError):
    """A dataset is missing, unreadable or corrupt (reported as one line by the CLI)."""


__all__ = ["DatasetError"]
