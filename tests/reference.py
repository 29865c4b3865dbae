"""Independent reference computations (numpy, slow loops) for the core tests.

Nothing here imports mixpro: these are the formulas of the paper written the plain way.
"""

from __future__ import annotations

import numpy as np


def one_hot_np(labels: np.ndarray, k: int, smoothing: float) -> np.ndarray:
    out = np.full((len(labels), k), smoothing / k, dtype=np.float64)
    for i, y in enumerate(labels):
        out[i, y] = 1.0 - smoothing + smoothing / k
    return out


def mix_targets_np(labels, partner, lam, k, smoothing):
    y = one_hot_np(labels, k, smoothing)
    out = np.zeros_like(y)
    for i in range(len(labels)):
        out[i] = lam[i] * y[i] + (1 - lam[i]) * y[partner[i]]
    return out


def mix_images_np(x: np.ndarray, mask: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """x (B,C,H,W); mask (B|1,1,H,W) int64 0/1 pixel mask (the official code's way)."""
    m = np.broadcast_to(mask.astype(np.int64), (x.shape[0], 1, *x.shape[2:]))
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = m[i] * x[i] + (1 - m[i]) * x[partner[i]]
    return out


def token_fraction_np(mask: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """Exact share of each token's pixels with mask 1: (Bm, Nh*Nw) by a slow loop."""
    bm, _, h, w = mask.shape
    nh, nw = h // ph, w // pw
    out = np.zeros((bm, nh * nw))
    for b in range(bm):
        for r in range(nh):
            for c in range(nw):
                out[b, r * nw + c] = mask[b, 0, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw].mean()
    return out


def token_nearest_np(mask: np.ndarray, nh: int, nw: int) -> np.ndarray:
    """Nearest down-sampling as nn.Upsample(size=(nh, nw)): pixel floor(t*H/nh)."""
    bm, _, h, w = mask.shape
    out = np.zeros((bm, nh * nw))
    for b in range(bm):
        for r in range(nh):
            for c in range(nw):
                y, x = int(np.floor(r * h / nh)), int(np.floor(c * w / nw))
                out[b, r * nw + c] = mask[b, 0, y, x]
    return out


def lam_attn_np(attn: np.ndarray, frac: np.ndarray) -> np.ndarray:
    frac = np.broadcast_to(frac, attn.shape)
    out = np.zeros(attn.shape[0])
    for i in range(attn.shape[0]):
        w_i = sum(attn[i, t] * frac[i, t] for t in range(attn.shape[1]))
        w_j = sum(attn[i, t] * (1 - frac[i, t]) for t in range(attn.shape[1]))
        out[i] = w_i / (w_i + w_j)
    return out


def softmax_np(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cosine_np(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([p[i] @ y[i] / (np.linalg.norm(p[i]) * np.linalg.norm(y[i]))
                     for i in range(len(p))])


def soft_ce_np(z: np.ndarray, t: np.ndarray) -> float:
    logp = np.log(softmax_np(z))
    return float(np.mean([-(t[i] * logp[i]).sum() for i in range(len(z))]))


def lam_attn_paper_np(attn: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Eq. 5 of the paper as written: λ_attn = A·↓(M) = Σ_t a_t·m_t, no renormalisation."""
    frac = np.broadcast_to(frac, attn.shape)
    return np.array([sum(attn[i, t] * frac[i, t] for t in range(attn.shape[1]))
                     for i in range(attn.shape[0])])


def cls_attention_np(b: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Cls→patch rows of a softmax over cls + n patches, head mean of 2 heads: (b, n), Σ < 1."""
    z = rng.normal(size=(b, 2, n + 1)) * 2
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p[:, :, 1:].mean(1)
