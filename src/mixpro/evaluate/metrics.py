"""Robustness metrics as pure functions (numpy / torch in, Python floats out).

Owns the metric definitions of ``docs/evaluation.md`` (spec: ``eval-protocols.md`` §3–4):

* :func:`topk_accuracy` — top-1 / top-5.
* :func:`subset_logits`, :func:`load_index_list` — the K-class logit slice (ImageNet-A/-O style:
  slice *before* argmax and softmax).
* :func:`confidence` — max softmax probability (MSP) in float64.
* :func:`calib_err` — RMS calibration error with equal-count bins (Hendrycks' ``calib_err``,
  reference quirks by default, ``corrected=True`` for the fixed variant).
* :func:`aurra` — area under the response-rate accuracy curve.
* :func:`average_precision`, :func:`auroc`, :func:`ood_scores` — OOD detection with anomalies as
  positives and score ``-MSP`` (AUPRC = non-interpolated average precision, not a trapezoid).

Values are fractions in [0, 1]; reports multiply by 100.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mixpro.errors import UserError

__all__ = [
    "MetricInputError",
    "MetricInputError",
    "aurra",
    "auprc",
    "auroc",
    "average_precision",
    "calib_err",
    "confidence",
    "load_index_list",
    "ood_scores",
    "subset_logits",
    "topk_accuracy",
]

Norm = Literal["2", "1", "infty"]
ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


class MetricInputError(UserError):
    """Inputs a metric cannot be computed on (shape mismatch, too few samples, a class index
    list that does not fit the model, ...): a one-line user error of ``mixpro eval``."""


def _np(x: ArrayLike, name: str, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy() if dtype == np.float64 else x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _pair(conf: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    c = _np(conf, "conf")
    k = _np(correct, "correct")
    if c.shape != k.shape:
        raise MetricInputError(f"conf {c.shape} and correct {k.shape} differ in length")
    if c.size == 0:
        raise MetricInputError("no samples")
    return c, k


# -- classification ------------------------------------------------------------------------


def topk_accuracy(
    logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Top-k accuracy for each ``k`` in ``ks``: ``logits (N, K)``, ``targets (N,)`` → {k: acc}.

    ``k`` larger than ``K`` is clamped to ``K`` (accuracy 1.0).
    """
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise MetricInputError(
            f"logits (N, K) and targets (N,) expected, got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if logits.shape[0] == 0:
        raise MetricInputError("no samples")
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (N, kmax)
    hit = top.eq(targets[:, None].to(top.device))
    return {k: float(hit[:, : min(k, kmax)].any(1).double().mean()) for k in ks}


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """Max softmax probability ``(N,)`` float64 of ``logits (N, K)`` (softmax in float64)."""
    return logits.double().softmax(dim=1).amax(dim=1)


def subset_logits(logits: torch.Tensor, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``logits (N, K)`` → ``(N, len(indices))``: the columns of a class subset, in list order.

    Used before argmax and softmax (ImageNet-A/-O: 1000 → 200). Label ``j`` of the subset
    dataset corresponds to column ``indices[j]``.
    """
    idx = torch.as_tensor(indices, dtype=torch.long).flatten()
    k = logits.shape[-1]
    if idx.numel() == 0:
        raise MetricInputError("the class index list is empty")
    if int(idx.min()) < 0 or int(idx.max()) >= k:
        raise MetricInputError(
            f"class index list has values outside 0..{k - 1} of the model's {k} logits"
        )
    if idx.unique().numel() != idx.numel():
        raise MetricInputError("class index list has repeated indices")
    return logits.index_select(-1, idx.to(logits.device))


def load_index_list(
    path: str | Path, *, num_logits: int, num_labels: int | None = None
) -> list[int]:
    """Read a class index list (ints separated by commas/whitespace, as timm's
    ``imagenet_a_indices.txt``) and check it against the model (``num_logits``) and the dataset
    (``num_labels``: its length must equal the dataset's number of classes)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise MetricInputError(f"cannot read class index list {path}: {e.strerror}") from None
    try:
        idx = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise MetricInputError(f"class index list {path} holds non-integer entries") from None
    if num_labels is not None and len(idx) != num_labels:
        raise MetricInputError(
            f"class index list {path} has {len(idx)} entries but the dataset has "
            f"{num_labels} classes"
        )
    subset_logits(torch.zeros(1, num_logits), idx)  # range / repeat checks
    return idx


# -- calibration ---------------------------------------------------------------------------


def calib_err(
    conf: ArrayLike,
    correct: ArrayLike,
    *,
    p: Norm = "2",
    beta: int = 100,
    corrected: bool = False,
) -> float:
    """Calibration error with equal-count bins (Hendrycks et al. ``calib_err``).

    Samples are sorted by confidence (stable sort), cut into ``K = N // beta`` bins of ``beta``
    consecutive samples (the last bin absorbs the remainder), and per bin
    ``d_b = |mean(conf) - mean(correct)|``. ``p='2'``: ``sqrt(Σ n_b/N · d_b²)`` (RMS, the
    paper's Calib-Error), ``'1'``: ``Σ n_b/N · d_b``, ``'infty'``: ``max d_b``.

    Reference quirk (default, ``corrected=False``): the last, highest-confidence bin is left
    out of the sum while ``N`` still counts it; with a single bin the result is 0.0.
    ``corrected=True`` includes the last bin.

    Args:
        conf: ``(N,)`` confidences (MSP). correct: ``(N,)`` 0/1 flags.
    Raises:
        MetricInputError: ``N < beta`` (the reference crashes), unknown ``p``.
    """
    c, k = _pair(conf, correct)
    if p not in ("1", "2", "infty"):
        raise MetricInputError(f"p must be '1', '2' or 'infty', got {p!r}")
    if isinstance(beta, bool) or not isinstance(beta, int) or beta < 1:
        raise MetricInputError(f"beta must be a positive int, got {beta!r}")
    n = c.size
    if n < beta:
        raise MetricInputError(f"calib_err needs at least beta={beta} samples, got {n}")
    order = np.argsort(c, kind="stable")
    c, k = c[order], k[order]
    starts = list(range(0, (n // beta) * beta, beta))
    bins = [(s, s + beta) for s in starts]
    bins[-1] = (bins[-1][0], n)
    if not corrected:
        bins = bins[:-1]
    total = 0.0
    for lo, hi in bins:
        d = abs(c[lo:hi].mean() - k[lo:hi].mean())
        if p == "2":
            total += (hi - lo) / n * d * d
        elif p == "1":
            total += (hi - lo) / n * d
        else:
            total = max(total, d)
    return float(np.sqrt(total)) if p == "2" else float(total)


def aurra(conf: ArrayLike, correct: ArrayLike) -> float:
    """Area under the response-rate accuracy curve: ``(1/N) Σ_k acc(k)``.

    ``acc(k)`` is the accuracy of the ``k`` most confident samples, ordered by
    ``argsort(conf, kind='stable')[::-1]`` (among equal confidences, later samples first, as
    the reference). Equals ``1 - AURC``. ``conf, correct: (N,)``.
    """
    c, k = _pair(conf, correct)
    order = np.argsort(c, kind="stable")[::-1]
    ks = k[order]
    return float(np.mean(np.cumsum(ks) / np.arange(1, ks.size + 1)))


# -- OOD detection -------------------------------------------------------------------------


def _labels_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _np(labels, "labels")
    s = _np(scores, "scores")
    if y.shape != s.shape:
        raise MetricInputError(f"labels {y.shape} and scores {s.shape} differ in length")
    if not np.isin(y, (0, 1)).all():
        raise MetricInputError("labels must be 0/1")
    if y.sum() == 0 or y.sum() == y.size:
        raise MetricInputError("need both positives and negatives")
    return y, s


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Non-interpolated average precision ``Σ_n (R_n - R_{n-1}) P_n`` over distinct thresholds
    (ties form one threshold); equals ``sklearn.metrics.average_precision_score``.
    ``labels, scores: (N,)``, label 1 = positive, higher score = more positive."""
    y, s = _labels_scores(labels, scores)
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last index of each threshold
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (ties count 1/2), ``labels, scores: (N,)``."""
    y, s = _labels_scores(labels, scores)
    pos, neg = s[y == 1], s[y == 0]
    # Mann-Whitney U with average ranks
    allv = np.r_[pos, neg]
    order = np.argsort(allv, kind="stable")
    ranks = np.empty(allv.size)
    sorted_v = allv[order]
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def ood_scores(
    in_conf: ArrayLike, out_conf: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Hendrycks' convention: anomalies (OOD) are positives, score = ``-MSP``.

    ``in_conf (N_in,)``, ``out_conf (N_out,)`` → ``labels, scores (N_out + N_in,)`` with the
    OOD samples first (label 1).
    """
    i = _np(in_conf, "in_conf")
    o = _np(out_conf, "out_conf")
    labels = np.r_[np.ones(o.size), np.zeros(i.size)]
    return labels, -np.r_[o, i]


def auprc(in_conf: ArrayLike, out_conf: ArrayLike) -> float:
    """ImageNet-O AUPRC: average precision with anomalies positive, score ``-MSP``."""
    return average_precision(*ood_scores(in_conf, out_conf))
