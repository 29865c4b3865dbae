"""`ClsAttention`: the last block's head-mean cls→patch attention, taken through hooks.

The probe hooks the projections of the model's last attention block and, under ``no_grad``,
computes only the cls row ``softmax(q_cls·Kᵀ·scale)`` per head (O(B·h·N·d)) from the block's
own activations of the same forward pass. Fused SDPA stays on everywhere, no N×N matrix is
built and no model code is forked. The result is the pre-dropout attention, averaged over
heads, with prefix tokens (cls, dist, registers) removed: ``(B, N_patches)`` float32.

Supported (small adapters, tried in order): timm ViT/DeiT (``blocks[-1].attn`` with a fused
``qkv``; distilled and register-token variants), CaiT (``blocks_token_only[-1].attn``) and
XCiT (``cls_attn_blocks[-1].attn``), whose class-attention ``ClassAttn`` has separate ``q``
and ``k`` projections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class NoClsAttentionError(ValueError):
    """The model has no cls token attending to patch tokens in its last block."""


@dataclass(frozen=True)
class _Target:
    """What to hook: ``attn`` module, its layout, and how many prefix tokens precede patches."""

    attn: nn.Module
    layout: str  # "qkv" (fused projection) or "q_k" (separate q and k projections)
    num_prefix_tokens: int


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel / DataParallel / torch.compile wrappers
    for name in ("module", "_orig_mod"):
        inner = getattr(model, name, None)
        if isinstance(inner, nn.Module):
            return _unwrap(inner)
    return model


def _check_token_pool(model: nn.Module) -> None:
    pool = getattr(model, "global_pool", "token")
    if pool != "token":
        raise NoClsAttentionError(
            f"{type(model).__name__} pools with global_pool={pool!r}, not the cls token: "
            "its cls→patch attention does not drive the classifier. Use area labels "
            "(MaskMix, CutMix) or build the model with global_pool='token'."
        )


def _vit(model: nn.Module) -> _Target | None:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or len(blocks) == 0:
        return None
    attn = getattr(blocks[-1], "attn", None)
    qkv = getattr(attn, "qkv", None)
    if not isinstance(qkv, nn.Linear) or not hasattr(attn, "num_heads"):
        return None
    if getattr(model, "cls_token", None) is None:
        raise NoClsAttentionError(
            f"{type(model).__name__} has no cls token (class_token=False): PAL and TransMix "
            "need cls→patch attention. Use area labels (MaskMix, CutMix) instead."
        )
    _check_token_pool(model)
    return _Target(attn, "qkv", int(getattr(model, "num_prefix_tokens", 1)))


def _class_attention(model: nn.Module) -> _Target | None:
    for name in ("blocks_token_only", "cls_attn_blocks"):
        blocks = getattr(model, name, None)
        if isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks) > 0:
            attn = getattr(blocks[-1], "attn", None)
            if all(isinstance(getattr(attn, p, None), nn.Linear) for p in ("q", "k")):
                _check_token_pool(model)
                return _Target(attn, "q_k", 1)
    return None


ADAPTERS: list[Callable[[nn.Module], _Target | None]] = [_class_attention, _vit]


class ClsAttention:
    """Exposes the head-mean cls→patch attention of the model's last attention block.

    Usage::

        probe = ClsAttention(model)
        logits = model(batch.images)
        targets = batch.targets(logits, probe.attention)   # (B, N_patches)

    Args:
        model: a timm ViT/DeiT (incl. distilled, register tokens), CaiT or XCiT, possibly
            wrapped in DDP. Models without a cls token raise :class:`NoClsAttentionError`.

    ``attention`` is from the latest forward pass of the model (train or eval mode), detached,
    float32, pre-dropout; accessing it before any forward raises ``RuntimeError``. Call
    :meth:`remove` (or use the probe as a context manager) to detach the hooks.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        inner = _unwrap(model)
        target = None
        for adapter in ADAPTERS:
            target = adapter(inner)
            if target is not None:
                break
        if target is None:
            raise NoClsAttentionError(
                f"{type(inner).__name__} has no supported cls-attention block (supported: timm "
                "ViT/DeiT, CaiT, XCiT). Models without a cls token (Swin, PVT, ConvNets) can "
                "use MaskMix/CutMix with area labels."
            )
        self.num_prefix_tokens = target.num_prefix_tokens
        self.num_heads = int(target.attn.num_heads)
        self._attn = target.attn
        self._attention: torch.Tensor | None = None
        self._q_cls: torch.Tensor | None = None
        if target.layout == "qkv":
            self._handles = [target.attn.qkv.register_forward_hook(self._on_qkv)]
        else:
            self._handles = [
                target.attn.q.register_forward_hook(self._on_q),
                target.attn.k.register_forward_hook(self._on_k),
            ]

    # -- hooks ---------------------------------------------------------------------------

    def _cls_row(self, q_cls: torch.Tensor, k: torch.Tensor) -> None:
        """``q_cls (B, h, d)`` and ``k (B, h, N, d)`` → head-mean patch attention ``(B, N_p)``."""
        scale = float(getattr(self._attn, "scale", q_cls.shape[-1] ** -0.5))
        with torch.autocast(q_cls.device.type, enabled=False):  # λ is computed in float32
            logits = torch.einsum("bhd,bhnd->bhn", q_cls.float(), k.float()) * scale
            attn = logits.softmax(dim=-1).mean(dim=1)
        self._attention = attn[:, self.num_prefix_tokens:].contiguous()

    @torch.no_grad()
    def _on_qkv(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        attn = self._attn
        b, n, _ = out.shape
        h = self.num_heads
        d = int(getattr(attn, "head_dim", out.shape[-1] // (3 * h)))
        qkv = out.detach().reshape(b, n, 3, h, d)
        q_cls = qkv[:, 0, 0]  # (B, h, d): the cls token is the first token
        k = qkv[:, :, 1].transpose(1, 2)  # (B, h, N, d)
        q_norm = getattr(attn, "q_norm", None)
        k_norm = getattr(attn, "k_norm", None)
        if q_norm is not None:
            q_cls = q_norm(q_cls)
        if k_norm is not None:
            k = k_norm(k)
        self._cls_row(q_cls, k)

    @torch.no_grad()
    def _on_q(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        self._q_cls = out.detach()

    @torch.no_grad()
    def _on_k(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if self._q_cls is None:
            raise RuntimeError("ClsAttention: the k projection ran before q")
        b, n, c = out.shape
        h = self.num_heads
        q_cls = self._q_cls.reshape(b, -1, h, c // h)[:, 0]  # (B, h, d)
        k = out.detach().reshape(b, n, h, c // h).transpose(1, 2)
        self._q_cls = None
        self._cls_row(q_cls, k)

    # -- public --------------------------------------------------------------------------

    @property
    def attention(self) -> torch.Tensor:
        """``(B, N_patches)`` float32, detached: head-mean cls→patch attention, latest forward."""
        if self._attention is None:
            raise RuntimeError("ClsAttention.attention: run a forward pass of the model first")
        return self._attention

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> ClsAttention:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
