"""Losses for mixed targets, written per sample and then reduced (per-sample λ survives)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Reduction = Literal["mean", "sum", "none"]


def _reduce(per_sample: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def soft_target_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """``Σ_c -t_c·log_softmax(z)_c`` per sample, then reduced (timm's SoftTargetCrossEntropy).

    Args:
        logits: ``(B, C)``.
        targets: ``(B, C)`` soft targets, rows summing to 1.
    """
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(
            f"logits and targets must both be (B, C), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    logp = F.log_softmax(logits.float(), dim=-1)
    return _reduce(-(targets.float() * logp).sum(dim=-1), reduction)


def binary_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Multi-label loss: ``mean_c BCE(sigmoid(z_c), t_c)`` per sample, then reduced.

    With ``reduction='mean'`` this equals timm's ``BinaryCrossEntropy`` on dense targets (and
    ``F.binary_cross_entropy_with_logits``): the mean over samples and classes.

    Args:
        logits: ``(B, C)``.
        targets: ``(B, C)`` per-class probabilities in ``[0, 1]`` (mixed multi-hot rows).
    """
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(
            f"logits and targets must both be (B, C), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    per = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return _reduce(per.mean(dim=-1), reduction)


def lambda_weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    partner_labels: torch.Tensor,
    lam: torch.Tensor,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """The official MixPro PAL loss: ``λ_b·CE(z_b, y_i) + (1-λ_b)·CE(z_b, y_j)`` per sample.

    Hard labels, no smoothing. Equal to :func:`soft_target_cross_entropy` on targets built with
    ``label_smoothing=0``.

    Args:
        logits: ``(B, C)``.
        labels, partner_labels: ``(B,)`` class indices of sample ``i`` and of its partner.
        lam: ``(B,)`` floating weights of ``labels``, each in ``[0, 1]`` (checked: one
            device→host sync).
    """
    if not isinstance(lam, torch.Tensor) or not lam.dtype.is_floating_point:
        raise TypeError(f"lam must be a floating tensor, got {getattr(lam, 'dtype', type(lam))}")
    if lam.shape != labels.shape:
        raise ValueError(
            f"lam must have shape (B,) = {tuple(labels.shape)}, got {tuple(lam.shape)}"
        )
    if bool(((lam < 0) | (lam > 1) | lam.isnan()).any()):
        lo, hi = float(lam.min()), float(lam.max())
        raise ValueError(f"lam must lie in [0, 1] (no NaN), got range [{lo}, {hi}]")
    ce_i = F.cross_entropy(logits.float(), labels, reduction="none")
    ce_j = F.cross_entropy(logits.float(), partner_labels, reduction="none")
    return _reduce(lam * ce_i + (1.0 - lam) * ce_j, reduction)
