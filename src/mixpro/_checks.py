"""Argument validation shared by the core: one clear error that names the argument.

Owns :class:`ArgumentError` (a ``ValueError`` whose ``argument`` attribute names the argument,
so that an app maps it to its own name, a recipe key or a flag, without editing the text) and
the checks that raise it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class ArgumentError(ValueError):
    """A bad argument of a core function or class: ``argument`` names it, ``problem`` says
    what is wrong with it; ``str(e)`` is ``f"{argument} {problem}"``."""

    def __init__(self, argument: str, problem: str) -> None:
        super().__init__(f"{argument} {problem}")
        self.argument, self.problem = argument, problem

    def renamed(self, name: str) -> str:
        """The message with the argument called ``name`` (an app's key or flag)."""
        return f"{name} {self.problem}"


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong type (also a ``TypeError``)."""


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``16 -> (16, 16)``; ``(14, 16)`` stays; anything else is a clear error."""
    if isinstance(value, bool):
        raise ArgumentTypeError(name, "must be an int or a pair of ints, got bool")
    if isinstance(value, int):
        out = (value, value)
    elif isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        out = (int(value[0]), int(value[1]))
    else:
        raise ArgumentTypeError(name, f"must be an int or a pair of ints, got {value!r}")
    if min(out) < 1:
        raise ArgumentError(name, f"must be >= 1, got {value!r}")
    return out


def positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(name, f"must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ArgumentError(name, f"must be a finite number > 0, got {value!r}")
    return float(value)


def probability(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(name, f"must be a number, got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ArgumentError(name, f"must be in [0, 1], got {value!r}")
    return float(value)


def choice(value: str, name: str, options: Sequence[str]) -> str:
    if value not in options:
        raise ArgumentError(name, f"must be one of {list(options)}, got {value!r}")
    return value


def num_classes(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError("num_classes", f"must be an int, got {type(value).__name__}")
    if value < 2:
        raise ArgumentError("num_classes", f"must be >= 2, got {value}")
    return value


def smoothing(value: float, name: str = "label_smoothing") -> float:
    value = probability(value, name)
    if value == 1.0:
        raise ArgumentError(name, "must be < 1, got 1.0")
    return value


def images_and_labels(images: torch.Tensor, labels: torch.Tensor, n_classes: int) -> None:
    """Check a batch ``images (B, C, H, W)`` and ``labels (B,)`` before mixing."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.bool or images.is_complex():
        raise TypeError(f"images must be a real floating or integer tensor, got {images.dtype}")
    b = images.shape[0]
    if b < 2:
        raise ValueError(f"images must hold a batch of at least 2 samples to mix, got B={b}")
    if labels.dim() == 2 and not labels.dtype.is_floating_point:
        raise ValueError(f"labels must have shape (B,) = ({b},) for class indices (or be a float "
                         f"(B, num_classes) multi-hot tensor), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if labels.dim() == 2:  # multi-label: multi-hot (or soft) rows
        if tuple(labels.shape) != (b, n_classes):
            raise ValueError(
                f"multi-label labels must have shape (B, num_classes) = ({b}, {n_classes}), "
                f"got {tuple(labels.shape)}")
        if not labels.dtype.is_floating_point:
            raise TypeError(f"multi-label labels must be a floating tensor, got {labels.dtype}")
    elif labels.dim() != 1 or labels.shape[0] != b:
        raise ValueError(
            f"labels must have shape (B,) = ({b},) (class indices) or (B, num_classes) "
            f"(multi-hot) matching images, got {tuple(labels.shape)}"
        )
    elif labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor of class indices, got {labels.dtype}")
    if labels.device != images.device:
        raise ValueError(f"labels are on {labels.device} but images are on {images.device}")
    if labels.device.type == "cpu":  # on accelerators the range is checked in targets()
        label_range(labels, n_classes)


def _bad_labels(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Bool scalar tensor: some label lies outside ``[0, n_classes)`` (indices) or outside
    ``[0, 1]`` / is NaN (multi-hot rows)."""
    if labels.dim() == 2:
        return ((labels < 0) | (labels > 1) | labels.isnan()).any()
    return (labels < 0).any() | (labels >= n_classes).any()


def label_range(labels: torch.Tensor, n_classes: int) -> None:
    if labels.dim() == 2:
        if bool(_bad_labels(labels, n_classes)):
            lo, hi = float(labels.min()), float(labels.max())
            raise ValueError(f"multi-label labels must lie in [0, 1] (no NaN), got range "
                             f"[{lo}, {hi}]")
        return
    lo, hi = (int(v) for v in torch.aminmax(labels))
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"labels must lie in [0, num_classes={n_classes}), got range [{lo}, {hi}]")


def values(
    logits: torch.Tensor, labels: torch.Tensor, n_classes: int, attention: torch.Tensor | None
) -> None:
    """Value checks of one training step with a single device→host sync.

    NaN/Inf logits, labels outside ``[0, n_classes)`` (only for accelerator tensors: CPU labels
    were checked when mixing) and negative or non-finite attention.
    """
    flags = [~torch.isfinite(logits).all()]
    check_labels = labels.device.type != "cpu"
    if check_labels:
        flags.append(_bad_labels(labels, n_classes))
    if attention is not None:
        flags.append(~torch.isfinite(attention).all() | (attention < 0).any())
    bad = torch.stack([f.to(logits.device) for f in flags]).tolist()
    if bad[0]:
        raise ValueError("logits contain NaN or Inf")
    if check_labels and bad[1]:
        label_range(labels, n_classes)
    if attention is not None and bad[-1]:
        raise ValueError("attention must be finite and non-negative")


def logits(value: torch.Tensor, batch: int, n_classes: int) -> None:
    """Type and shape of ``logits (B, K)`` (values: :func:`values`)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"logits must be a floating tensor, got {value.dtype}")
    if tuple(value.shape) != (batch, n_classes):
        raise ValueError(
            f"logits must have shape (B, num_classes) = ({batch}, {n_classes}), "
            f"got {tuple(value.shape)}"
        )


def attention(value: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Presence, type and shape of ``attention (B, N)`` (values: :func:`values`)."""
    if value is None:
        raise ValueError(
            "attention is required for this method: pass the probe's attention "
            "(ClsAttention(model).attention) of the same forward pass"
        )
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"attention must be a torch.Tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"attention must be a floating tensor, got {value.dtype}")
    if value.dim() != 2 or value.shape[0] != batch:
        raise ValueError(
            f"attention must have shape (B, N_patches) with B={batch}, got {tuple(value.shape)}"
        )
    return value


def channel_stats(value: Sequence[float] | None, name: str) -> tuple[float, ...] | None:
    """``mean``/``std`` as a tuple of 1 or 3 finite floats on the 0..1 scale (or None)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ArgumentTypeError(
            name, f"must be a sequence of numbers or None, got {type(value).__name__}")
    if len(value) not in (1, 3):
        raise ArgumentError(
            name, f"must hold 1 or 3 values (one per channel), got {len(value)}: {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ArgumentError(name, f"must hold finite numbers, got {value!r}")
        out.append(float(v))
    if name == "std" and min(out) <= 0:
        raise ArgumentError(name, f"must hold numbers > 0, got {value!r}")
    if max(abs(v) for v in out) > 1:
        raise ArgumentError(
            name, f"must be on the 0..1 pixel scale (e.g. timm's IMAGENET_DEFAULT_MEAN / _STD), "
                  f"got {value!r}")
    return tuple(out)
