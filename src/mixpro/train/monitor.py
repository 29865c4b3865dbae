"""Attention quality during training: is the attention PAL relabels with reliable, and when?

Owns :class:`AttentionMonitor`. At every evaluation it reads the model's cls attention on a
fixed held-out batch (the first ``attention_monitor`` test images, un-augmented), unmixed and
mixed by a copy of the run's mixer drawn with a fixed seed (the same mixes every time, and the
run's own generators untouched), on data whose object is known exactly (Fashion-MNIST: the
pixels > 0; the background is exactly 0, after translation too). It logs, into
``metrics.jsonl`` (keys ``attn_*``):

* ``attn_object_share``, ``attn_chance``, ``attn_pointing``, ``attn_rank_corr``,
  ``attn_cls_share`` on the unmixed images (:mod:`mixpro.evaluate.attention_quality`), and the
  same with ``attn_mixed_`` on the mixed ones;
* the **label error** of each relabelling on the mixed images: the mean absolute distance of
  ``λ_area``, ``λ_attn`` (Eq. 5, ``Σ m·a``) and PAL's ``λ = α·λ_attn + (1−α)·λ_area`` (cosine α
  against the area target, as MixPro) from ``o_i``, the share of the mixed image's object pixels
  that come from sample ``i`` (``Σ w·obj_i / Σ (w·obj_i + (1−w)·obj_j)`` with ``w`` the pixel's
  share from ``i``): ``attn_err_area``, ``attn_err_attn``, ``attn_err_pal``;
* ``attn_alpha`` (mean α on the mixed batch) and, per sample, Spearman's ρ between α and the
  attention's reliability: ``attn_corr_alpha_quality`` (ρ of α and the mixed images' object
  share) and ``attn_corr_alpha_error`` (ρ of α and ``|λ_attn − o_i|``: negative when α is high
  where the attention labels well, as the paper's §3.2 claims). Undefined values are None.

Methods that blend (Mixup) or do not mix are measured on MaskMix masks of the recipe (the
masks PAL relabels in MixPro). The monitor runs the model in eval mode under ``no_grad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

import mixpro
from mixpro.evaluate.attention_quality import attention_quality, object_share, rank_corr
from mixpro.labels import attention_lambda, combine_lambda, cosine_alpha, mix_targets

__all__ = ["AttentionMonitor", "spearman"]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's ρ of two ``(n,)`` vectors (average ranks; NaN if either is constant)."""
    return float(rank_corr(x.double()[None], y.double()[None])[0])


def _mean(v: torch.Tensor) -> float | None:
    ok = ~v.isnan()
    return float(v[ok].mean()) if bool(ok.any()) else None


class AttentionMonitor:
    """Attention quality of ``model`` on a fixed batch (see the module docstring).

    Args:
        images: ``(N, C, H, W)`` the held-out images as the model reads them (normalised).
        labels: ``(N,)`` class indices.
        mean, std: the normalisation, undone to find the object (pixels > 1/510 of 1).
        mixer: the mixer whose mixes are measured (a copy of the run's, with its own
            generator ``generator``, re-seeded with ``seed`` before every measurement).
        num_classes: classes of the model.
        smoothing: label smoothing of the area target α is measured against.
        probe: the run's :class:`~mixpro.ClsAttention` (None: one is attached for the
            measurement and removed after).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, *,
                 mixer: Callable, generator: torch.Generator, seed: int, num_classes: int,
                 smoothing: float, probe: mixpro.ClsAttention | None = None) -> None:
        self.images, self.labels = images, labels
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.raw = images.float() * s + m  # [0, 1]
        self.mixer, self.generator, self.seed = mixer, generator, seed
        self.num_classes, self.smoothing, self.probe = num_classes, smoothing, probe

    @torch.no_grad()
    def _attention(self, model: nn.Module, probe: mixpro.ClsAttention, x: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x).float()
        return logits, probe.attention

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        dev = next(model.parameters()).device
        was = model.training
        model.eval()
        probe = self.probe or mixpro.ClsAttention(model)
        try:
            return self._measure(model, probe, dev)
        finally:
            if self.probe is None:
                probe.remove()
            model.train(was)

    def _measure(self, model: nn.Module, probe: mixpro.ClsAttention, dev: torch.device
                 ) -> dict[str, float]:
        x, y, raw = self.images.to(dev), self.labels.to(dev), self.raw.to(dev)
        _, att = self._attention(model, probe, x)
        grid = mixpro.attention_origin(att).grid
        obj = (raw > 1 / 510).any(1, keepdim=True).float()  # (N, 1, H, W)
        q = attention_quality(att.cpu(), object_share(raw.cpu(), grid, 1 / 510))
        out = {f"attn_{k}": _mean(v) for k, v in q.items()}
        out["attn_cls_share"] = float((1.0 - att.double().sum(1)).mean())
        # mixed: the same draws every time
        self.generator.manual_seed(self.seed)
        batch = self.mixer(x, y)
        logits, matt = self._attention(model, probe, batch.images)
        b, (h, w) = x.shape[0], x.shape[-2:]
        share = batch.token_fraction((h, w)).view(b, 1, h, w)  # per pixel, from sample i
        obj_j = obj.index_select(0, batch.partner)
        from_i, from_j = (share * obj).flatten(1).sum(1), ((1 - share) * obj_j).flatten(1).sum(1)
        total = from_i + from_j
        o_i = torch.where(total > 0, from_i / total.clamp_min(1e-12), batch.lam_area)
        mixed_obj = torch.maximum(share * obj, (1 - share) * obj_j).gt(0).float()
        qm = attention_quality(matt.cpu(), object_share(mixed_obj.cpu(), grid))
        out.update({f"attn_mixed_{k}": _mean(v) for k, v in qm.items()})
        frac = batch.token_fraction(grid)
        lam_attn = attention_lambda(matt, frac, "paper")
        area_t = mix_targets(y, batch.partner, batch.lam_area, self.num_classes, self.smoothing)
        alpha = cosine_alpha(logits, area_t)
        lam_pal = combine_lambda(alpha, lam_attn, batch.lam_area)
        err_attn = (lam_attn - o_i).abs()
        mixed = ~batch.self_paired
        out.update({
            "attn_err_area": float((batch.lam_area - o_i).abs()[mixed].mean()),
            "attn_err_attn": float(err_attn[mixed].mean()),
            "attn_err_pal": float((lam_pal - o_i).abs()[mixed].mean()),
            "attn_alpha": float(alpha[mixed].mean()),
            "attn_corr_alpha_quality": spearman(alpha[mixed].cpu(),
                                                qm["object_share"][mixed.cpu()]),
            "attn_corr_alpha_error": spearman(alpha[mixed].cpu(), err_attn[mixed].cpu()),
        })
        # undefined values (a constant ranking, no mixed sample) are None: JSON has no NaN
        return {k: None if isinstance(v, float) and math.isnan(v) else v
                for k, v in out.items()}
