"""How reliable is the attention PAL labels with? Attention against a known object mask.

Owns :func:`object_share` (each token's share of object pixels: on Fashion-MNIST the object is
exactly the pixels > 0, the background being 0), :func:`attention_quality` (per image: the
share of cls→patch attention on object tokens, its chance level, whether the most-attended
token is on the object, and the rank correlation of attention with object share) and
:func:`measure` (those over a data set, for any model the probe reads), which ``mixpro eval
--evals attention`` writes to ``eval.json`` as ``attention_quality``.

:func:`measure_blocks` does the same for every block and head of a ViT (which layer localises
the object best?).

Definitions (per image, then averaged over images): with ``a`` the head-mean cls→patch
attention over the ``T`` patch tokens (renormalised to sum to 1 over them: the cls token's own
share is reported apart as ``cls_share``) and ``s_t`` the share of token ``t``'s pixels on the
object, ``object_share = Σ_t a_t·[s_t > 0]``; ``chance = mean_t [s_t > 0]`` (uniform attention);
``pointing = [s_argmax(a) > 0]``; ``rank_corr`` = Spearman's ρ between ``a`` and ``s`` (average
ranks for ties; images where either is constant are left out of the mean).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mixpro import ClsAttention, attention_origin


def object_share(images: torch.Tensor, grid: tuple[int, int], threshold: float = 0.0
                 ) -> torch.Tensor:
    """``(B, gh·gw)``: each token's share of pixels brighter than ``threshold`` in any channel
    (``images (B, C, H, W)`` un-normalised, the background 0)."""
    obj = (images > threshold).any(1, keepdim=True).float()
    return F.adaptive_avg_pool2d(obj, grid).flatten(1)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (0-based) of each row of ``x (B, T)``: ties share the mean of their
    ranks; float64, vectorised (a tie group spans [first, last] of its sorted run)."""
    x = x.double()
    values, order = x.sort(dim=1, stable=True)
    t = x.shape[1]
    idx = torch.arange(t, dtype=torch.float64).expand_as(values)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, idx, 0.0).cummax(1).values
    last = torch.where(ends, idx, float(t)).flip(1).cummin(1).values.flip(1)
    return torch.empty_like(x).scatter_(1, order, (first + last) / 2)


def attention_quality(attention: torch.Tensor, share: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image ``(B,)``: ``object_share``, ``chance``, ``pointing``, ``rank_corr`` (NaN where
    undefined) of patch ``attention (B, T)`` (any non-negative scale) against the tokens'
    object ``share (B, T)``."""
    a = attention.double()
    a = a / a.sum(1, keepdim=True).clamp_min(1e-300)
    on = share > 0
    return {
        "object_share": (a * on).sum(1),
        "chance": on.double().mean(1),
        "pointing": on.gather(1, a.argmax(1, keepdim=True))[:, 0].double(),
        "rank_corr": rank_corr(a, share),
    }


def rank_corr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman's ρ of each row of ``x`` and ``y`` ``(B, T)``: ``(B,)`` float64 (average ranks
    for ties; NaN where either row is constant)."""
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(1, keepdim=True), ry - ry.mean(1, keepdim=True)
    denom = (rx.square().sum(1) * ry.square().sum(1)).sqrt()
    return torch.where(denom > 0, (rx * ry).sum(1) / denom.clamp_min(1e-300), torch.nan)


@torch.no_grad()
def measure(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            normalize: Callable[[torch.Tensor], torch.Tensor], device: str | torch.device,
            on_batch: Callable[[int], None] = lambda n: None) -> dict[str, float]:
    """:func:`attention_quality` averaged over the images of ``batches`` (un-normalised
    ``[0, 1]`` images; ``normalize`` is the model's input normalisation), on the model's own
    cls attention (:class:`~mixpro.ClsAttention`; the model in eval mode); plus ``cls_share``
    (the attention the cls row keeps on the cls/prefix tokens) and ``num_images``."""
    was = model.training
    model.eval()
    probe = ClsAttention(model)
    parts: dict[str, list[torch.Tensor]] = {}
    try:
        for x, _ in batches:
            x = x.to(device)
            model(normalize(x))
            att = probe.attention
            grid = attention_origin(att).grid
            q = attention_quality(att.cpu(), object_share(x.cpu(), grid))
            q["cls_share"] = (1.0 - att.double().sum(1)).cpu()
            for k, v in q.items():
                parts.setdefault(k, []).append(v)
            on_batch(x.shape[0])
    finally:
        probe.remove()
        model.train(was)
    cat = {k: torch.cat(v) for k, v in parts.items()}
    out = {k: float(v[~v.isnan()].mean()) if (~v.isnan()).any() else float("nan")
           for k, v in cat.items()}
    out["num_images"] = int(cat["chance"].shape[0])
    out["rank_corr_images"] = int((~cat["rank_corr"].isnan()).sum())
    return out


def block_attentions(model: nn.Module, images: torch.Tensor) -> torch.Tensor | None:
    """Every block's cls→patch attention of a timm ViT on ``images``: ``(L, H, B, T)`` (blocks,
    heads, images, patch tokens), each row the softmax over all tokens restricted to the
    patches (computed from the block's own ``qkv``, ``q_norm``/``k_norm`` and scale, as timm's
    ``Attention``); None for models without such blocks. Runs one forward."""
    blocks = getattr(model, "blocks", None)
    prefix = getattr(model, "num_prefix_tokens", None)
    if blocks is None or prefix is None or not all(
            hasattr(getattr(b, "attn", None), "qkv") for b in blocks):
        return None
    rows: list[torch.Tensor] = []

    def hook(attn: nn.Module, args: tuple) -> None:
        x = args[0]
        b, n, _ = x.shape
        h = attn.num_heads
        qkv = attn.qkv(x).reshape(b, n, 3, h, -1).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        a = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(-1)[:, :, 0]
        rows.append(a[:, :, prefix:].permute(1, 0, 2))  # (H, B, T)

    handles = [b.attn.register_forward_pre_hook(hook) for b in blocks]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(rows)


@torch.no_grad()
def measure_blocks(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   normalize: Callable[[torch.Tensor], torch.Tensor],
                   device: str | torch.device) -> list[dict] | None:
    """:func:`attention_quality` of every block's cls attention (head mean, and each head) of
    a timm ViT, averaged over the images of ``batches``: ``[{"block", "object_share",
    "pointing", "rank_corr", "heads": [{...}, ...]}, ...]`` (None: not a plain ViT). Which
    layer or head localises the object best (the premise study's question (c))."""
    was = model.training
    model.eval()
    parts: dict[tuple[int, int], dict[str, list[torch.Tensor]]] = {}
    try:
        for x, _ in batches:
            x = x.to(device)
            rows = block_attentions(model, normalize(x))
            if rows is None:
                return None
            n_tok = rows.shape[-1]
            g = int(round(n_tok ** 0.5))
            share = object_share(x.cpu(), (g, n_tok // g))
            for layer in range(rows.shape[0]):
                for head in range(-1, rows.shape[1]):
                    att = rows[layer].mean(0) if head < 0 else rows[layer, head]
                    q = attention_quality(att.cpu(), share)
                    for k, v in q.items():
                        parts.setdefault((layer, head), {}).setdefault(k, []).append(v)
    finally:
        model.train(was)

    def avg(d: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        out = {}
        for k in ("object_share", "chance", "pointing", "rank_corr"):
            v = torch.cat(d[k])
            out[k] = float(v[~v.isnan()].mean()) if (~v.isnan()).any() else float("nan")
        return out

    layers = sorted({layer for layer, _ in parts})
    heads = sorted({h for _, h in parts if h >= 0})
    return [{"block": layer, **avg(parts[layer, -1]),
             "heads": [{"head": h, **avg(parts[layer, h])} for h in heads]} for layer in layers]


__all__ = ["attention_quality", "block_attentions", "measure", "measure_blocks",
           "object_share", "rank_corr"]
