"""What the target of a mixed sample is.

Pure tensor functions (no images, no models):

* :func:`smooth_one_hot` and :func:`mix_targets` — timm's label-smoothed one-hot mixing,
  ``ỹ = λ·smooth(y_i) + (1-λ)·smooth(y_j)`` with per-sample ``λ (B,)``.
* :func:`attention_lambda` — ``λ_attn = Σ_t m_t·a_t`` over patch tokens (the paper's Eq. 5,
  ``A·↓(M)``, default) or ``Σ(m·a) / Σ(a)`` renormalised over patch tokens (the official
  MixPro and TransMix code).
* :func:`cosine_alpha` — the progressive factor ``α = cos(softmax(z), ỹ_area)`` (Eq. 8).
* :func:`combine_lambda` — ``λ = α·λ_attn + (1-α)·λ_area`` (Eq. 9); TransMix is the same with
  ``α = 1 - ratio``.
* α strategies of Table 10 (:class:`CosineAlpha`, :class:`ConstantAlpha`, :class:`LinearAlpha`,
  :class:`ParabolicAlpha`, :class:`LearnableAlpha`) and :func:`make_alpha`.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``(B,)`` int labels → ``(B, num_classes)`` float32 with ``on = 1-s+s/C``, ``off = s/C``."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return out.scatter_(1, labels.long()[:, None], 1.0 - smoothing + off)


def mix_targets(
    labels: torch.Tensor,
    partner: torch.Tensor,
    lam: torch.Tensor,
    num_classes: int,
    smoothing: float = 0.0,
    partner_lam: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft targets ``λ·smooth(y_i) + (1-λ)·smooth(y_partner[i])``: ``(B, num_classes)``.

    ``partner_lam`` ``(B,)``: the weight of ``y_partner[i]`` instead of ``1-λ`` (TokenMix's
    two activation shares, which need not sum to 1): the targets are then
    ``s/C + (1-s)·(λ·y_i + w·y_partner[i])``, whose mass is ``s + (1-s)(λ + w)``.

    ``labels`` are class indices ``(B,)`` or multi-hot floats ``(B, num_classes)``
    (multi-label); ``smooth(y) = (1-s)·y + s/C`` for both, i.e. ``on = 1-s+s/C``,
    ``off = s/C`` (timm's ``mixup_target`` and ``BinaryCrossEntropy`` values). ``lam`` is
    ``(B,)`` (or broadcastable); gradients through ``lam`` are kept. Index labels are built as
    ``s/C`` everywhere plus ``λ·(1-s)`` scattered onto ``y_i`` and ``(1-λ)·(1-s)`` onto
    ``y_partner[i]`` (two ``(B, 1)`` scatters instead of mixing two ``(B, C)`` one-hots). One
    λ shared by the batch on the CPU (batch-level Mixup/CutMix, no gradient) is scattered as
    two host scalars, computed in numpy float32: the same values without four tensor calls.
    """
    b = labels.shape[0]
    off = smoothing / num_classes
    gap = 1.0 - smoothing  # on - off
    shared = _shared_value(lam) if partner_lam is None and labels.dim() == 1 else None
    if shared is None:
        lam = _column(lam, b)
        other = 1.0 - lam if partner_lam is None else _column(partner_lam, b)
    if labels.dim() == 2:  # multi-hot rows
        y = labels.float()
        return off + gap * (lam * y + other * y.index_select(0, partner))
    idx = labels.long()[:, None]
    out = torch.full((b, num_classes), off, device=labels.device)
    if shared is not None:
        own, g = np.float32(shared), np.float32(gap)
        out.scatter_(1, idx, float(own * g), reduce="add")
        return out.scatter_(1, idx.index_select(0, partner), float((np.float32(1) - own) * g),
                            reduce="add")
    out.scatter_add_(1, idx, lam * gap)  # in place on a fresh tensor: autograd reaches λ
    return out.scatter_add_(1, idx.index_select(0, partner), other * gap)


def _shared_value(lam: torch.Tensor) -> float | None:
    """The one value of a CPU ``λ`` without gradient that is a single element or one element
    broadcast over the batch (stride 0); otherwise None."""
    if lam.device.type != "cpu" or lam.requires_grad or lam.dim() > 1:
        return None
    if lam.numel() == 1:
        return lam.item()
    return float(lam[0]) if lam.dim() == 1 and lam.stride(0) == 0 else None


def _column(weights: torch.Tensor, b: int) -> torch.Tensor:
    """``(B,)`` or broadcastable weights as a float32 ``(B, 1)`` column."""
    col = weights.to(torch.float32).reshape(-1, 1)
    return col if col.shape[0] == b else col.expand(b, 1)


AttentionNorm = Literal["paper", "renormalize"]
ATTENTION_NORMS: tuple[str, ...] = ("paper", "renormalize")


def attention_lambda(
    attention: torch.Tensor, fraction: torch.Tensor, norm: AttentionNorm = "paper"
) -> torch.Tensor:
    """Attention share of sample ``i``, float32 ``(B,)``.

    * ``norm='paper'`` (default): ``λ_attn = Σ_t m_t·a_t``, Eq. 5 of the paper
      (``A·↓(M)``, Alg. 1 ``matmul(A, M')``), no renormalisation. With ``a`` the cls row over
      the patch tokens of a softmax taken over cls + patches (:class:`~mixpro.ClsAttention`),
      ``Σa < 1``: the cls→cls mass counts for neither image, so ``λ_attn <= Σa`` and
      ``1 - λ_attn`` (the partner's weight) includes it.
    * ``norm='renormalize'``: ``λ_attn = Σ_t m_t·a_t / Σ_t a_t``, renormalised over the patch
      tokens (the official MixPro and TransMix code); invariant to the scale of ``a``.

    A row of all-zero attention carries no information: both forms then give the token-area
    share ``mean_t m_t``.

    Args:
        attention: ``(B, N)`` non-negative cls→patch attention (head mean); for ``'paper'``
            rows of a softmax (each sums to at most 1, checked with one device→host sync;
            sums up to ``1 + 1e-2`` are tolerated for low-precision maps and λ is clipped
            to 1).
        fraction: ``(B, N)`` or ``(1, N)``: share of each token's pixels from sample ``i``.
        norm: ``'paper'`` or ``'renormalize'``.
    """
    if norm not in ATTENTION_NORMS:
        raise ValueError(f"norm must be one of {list(ATTENTION_NORMS)}, got {norm!r}")
    a = attention.float()
    total = a.sum(1)
    lam = (a * fraction.float()).sum(1)
    if norm == "renormalize":
        lam = lam / total.clamp_min(torch.finfo(torch.float32).tiny)
    else:
        if bool((total > 1.0 + _SUM_TOL).any()):
            raise ValueError(
                f"attention rows must sum to at most 1 for norm='paper' (the cls row of a "
                f"softmax), got a row sum of {float(total.max()):.4g}; use "
                "attention_norm='renormalize' for un-normalised scores"
            )
        lam = lam.clamp(max=1.0)
    return torch.where(total > 0, lam, fraction.float().mean(1).expand_as(lam))


_SUM_TOL = 1e-2


def cosine_alpha(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``α = cos(softmax(logits), targets)`` per sample (Eq. 8), in [0, 1]; keeps gradients."""
    p = logits.float().softmax(dim=1)
    return F.cosine_similarity(p, targets.float(), dim=1, eps=1e-12).clamp(0.0, 1.0)


def combine_lambda(
    alpha: torch.Tensor, lam_attn: torch.Tensor, lam_area: torch.Tensor
) -> torch.Tensor:
    """``λ = α·λ_attn + (1-α)·λ_area`` (Eq. 9)."""
    return alpha * lam_attn + (1.0 - alpha) * lam_area


@runtime_checkable
class AlphaStrategy(Protocol):
    """Computes the per-sample progressive factor α ``(B,)``.

    ``needs_attention`` is False only for strategies that give α = 0 (area labels only).
    """

    name: str
    needs_attention: bool

    def __call__(
        self, logits: torch.Tensor, area_targets: torch.Tensor, progress: float
    ) -> torch.Tensor: ...


class CosineAlpha:
    """PAL's α = cos(softmax(z), ỹ_area) per sample (Table 10 "cosine distance", default).

    ``detach=True`` (default) stops gradients through α; ``False`` keeps them (official code).
    """

    name = "cosine"
    needs_attention = True

    def __init__(self, detach: bool = True) -> None:
        self.detach = bool(detach)

    def __call__(
        self, logits: torch.Tensor, area_targets: torch.Tensor, progress: float
    ) -> torch.Tensor:
        alpha = cosine_alpha(logits.detach() if self.detach else logits, area_targets)
        return alpha.detach() if self.detach else alpha

    def __repr__(self) -> str:
        return f"CosineAlpha(detach={self.detach})"


class ConstantAlpha:
    """α = ``value`` for every sample: 0.5 is Table 10's "equal weight", 0 is area only."""

    def __init__(self, value: float, name: str | None = None) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {value}")
        self.value = float(value)
        self.name = name or f"constant({value:g})"
        self.needs_attention = self.value > 0

    def __call__(
        self, logits: torch.Tensor, area_targets: torch.Tensor, progress: float
    ) -> torch.Tensor:
        return torch.full((logits.shape[0],), self.value, device=logits.device)

    def __repr__(self) -> str:
        return f"ConstantAlpha({self.value})"


class _ProgressAlpha:
    power: float = 1.0
    needs_attention = True

    def __call__(
        self, logits: torch.Tensor, area_targets: torch.Tensor, progress: float
    ) -> torch.Tensor:
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be in [0, 1] (t/T), got {progress}")
        return torch.full((logits.shape[0],), progress**self.power, device=logits.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearAlpha(_ProgressAlpha):
    """α = t/T, the training progress set with ``mixer.set_progress`` (Table 10)."""

    name = "linear"
    power = 1.0


class ParabolicAlpha(_ProgressAlpha):
    """α = (t/T)² (Table 10 "parabolic increment")."""

    name = "parabolic"
    power = 2.0


def move_parameter(param: nn.Parameter, device: torch.device | str) -> nn.Parameter:
    """Move ``param`` (and its ``.grad``) to ``device`` in place: the same Parameter object.

    An optimizer (or DDP hook) that already holds ``param`` keeps working: ``param.data`` is
    replaced where the tensor types allow it (CPU ↔ CUDA, as ``nn.Module.to`` does), else the
    tensors are swapped (``torch.utils.swap_tensors``, e.g. for ``'meta'``). Optimizer state
    created before the move (Adam moments) stays where it was: move before the first step.
    """
    device = torch.device(device)
    if param.device == device:
        return param
    grad, param.grad = param.grad, None
    with torch.no_grad():
        moved = param.data.to(device)
        if torch._has_compatible_shallow_copy_type(param, moved):
            param.data = moved
        else:
            torch.utils.swap_tensors(param, nn.Parameter(moved, param.requires_grad))
    if grad is not None:
        param.grad = grad.to(device)
    return param


class LearnableAlpha(nn.Module):
    """α = sigmoid(w), one scalar parameter ``w`` (init 0 → α = 0.5) trained by your optimizer.

    Add ``mixer.parameters()`` to the optimizer; the gradient reaches ``w`` through the targets.
    ``w`` follows the device of the logits on use (moved in place, see
    :func:`move_parameter`), so its gradient lives on the GPU for NCCL all-reduces; call
    ``mixer.to(device)`` before building the optimizer to move it up front.
    """

    name = "learnable"
    needs_attention = True

    def __init__(self, init: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < init < 1.0:
            raise ValueError(f"init must be in (0, 1), got {init}")
        self.logit = nn.Parameter(torch.logit(torch.tensor(float(init))))

    def forward(
        self, logits: torch.Tensor, area_targets: torch.Tensor, progress: float
    ) -> torch.Tensor:
        move_parameter(self.logit, logits.device)
        return self.logit.sigmoid().expand(logits.shape[0])


_ALPHAS = {
    "cosine": CosineAlpha,
    "equal": lambda: ConstantAlpha(0.5, "equal"),
    "linear": LinearAlpha,
    "parabolic": ParabolicAlpha,
    "learnable": LearnableAlpha,
    "none": lambda: ConstantAlpha(0.0, "none"),
}
ALPHA_STRATEGIES = tuple(_ALPHAS)


def make_alpha(spec: str | AlphaStrategy, detach: bool = True) -> AlphaStrategy:
    """An α strategy from its Table 10 name or an object following :class:`AlphaStrategy`."""
    if isinstance(spec, str):
        if spec not in _ALPHAS:
            raise ValueError(f"alpha must be one of {list(_ALPHAS)}, got {spec!r}")
        return CosineAlpha(detach) if spec == "cosine" else _ALPHAS[spec]()
    if not callable(spec) or not hasattr(spec, "needs_attention"):
        raise TypeError(f"alpha must be a strategy name or an AlphaStrategy, got {spec!r}")
    return spec
