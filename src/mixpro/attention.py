"""`ClsAttention`: the last block's head-mean cls→patch attention, taken through hooks.

Two ways to read it, chosen per attention class (``method='auto'``):

* ``'cls_row'`` (exact and cheap): the probe hooks the projections of the model's last attention
  block and, under ``no_grad``, computes only the cls row ``softmax(q_cls·Kᵀ·scale)`` per head
  (O(B·h·N·d)) from the block's own activations of the same forward pass. Fused SDPA stays on,
  no N×N matrix is built and no model code is forked. Used for blocks whose attention is exactly
  that: timm's ``Attention`` (ViT/DeiT, distilled and register-token variants, optional
  ``q_norm``/``k_norm``) and ``ClassAttn`` (CaiT ``blocks_token_only``, XCiT
  ``cls_attn_blocks``).
* ``'unfused'`` (generic): switches ``fused_attn`` off on the last attention module only and
  reads the softmax probabilities where timm passes them to ``attn_drop`` (pre-dropout). Used
  for blocks whose logits carry more than ``q·kᵀ`` (rotary embeddings: ``AttentionRope``,
  ``EvaAttention``; relative position bias: BEiT's ``Attention``); builds one ``(B, h, N, N)``
  matrix for that block. :meth:`ClsAttention.remove` restores ``fused_attn``.

Any other attention class is refused at construction rather than read wrongly. The result is
the pre-dropout attention, averaged over heads, with prefix tokens (cls, dist, registers)
removed: ``(B, N_patches)`` float32, detached.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Method = Literal["auto", "cls_row", "unfused"]


class NoClsAttentionError(ValueError):
    """The model has no cls token attending to patch tokens in its last block."""


def _timm_classes(*paths: str) -> tuple[type, ...]:
    """Classes named ``module:Name`` that exist in the installed timm (others are skipped)."""
    found = []
    for path in paths:
        mod, name = path.split(":")
        try:
            cls = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            cls = None
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


# attention = softmax(q·kᵀ·scale) exactly, from a fused qkv Linear (+ optional q/k norm)
_QKV_EXACT = _timm_classes("timm.layers.attention:Attention")
# class attention: the query is the cls token only, separate q and k Linears
_Q_K_EXACT = _timm_classes("timm.models.cait:ClassAttn")
# softmax probabilities go through attn_drop on the un-fused path, logits carry rope/rel-pos
_UNFUSED_OK = _timm_classes(
    "timm.layers.attention:AttentionRope", "timm.models.eva:EvaAttention",
    "timm.models.beit:Attention",
)


@dataclass(frozen=True)
class _Target:
    """What to hook: ``attn`` module, how it is read, and how many prefix tokens precede patches.

    ``layout``: ``'qkv'`` (fused projection), ``'q_k'`` (separate q and k projections) or
    ``'probs'`` (un-fused softmax read at ``attn_drop``).
    """

    attn: nn.Module
    layout: str
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


def _layout(attn: nn.Module, exact: str | None, method: Method) -> str:
    """How to read ``attn`` under ``method``; a clear error when it cannot be read exactly."""
    kind = type(attn).__name__
    can_unfuse = hasattr(attn, "fused_attn") and isinstance(
        getattr(attn, "attn_drop", None), nn.Module
    )
    if method == "unfused":
        if not can_unfuse:
            raise NoClsAttentionError(
                f"method='unfused' needs an attention module with `fused_attn` and `attn_drop` "
                f"(timm's convention); {kind} has not"
            )
        return "probs"
    if exact is not None:
        return exact
    if method == "auto" and isinstance(attn, _UNFUSED_OK) and can_unfuse:
        return "probs"
    supported = ", ".join(c.__name__ for c in _QKV_EXACT + _Q_K_EXACT)
    hint = (" (method='auto' reads it un-fused)" if isinstance(attn, _UNFUSED_OK) else
            "; if it passes softmax probabilities to attn_drop, method='unfused' reads them")
    raise NoClsAttentionError(
        f"the last attention block is {kind}, whose cls row is not softmax(q·kᵀ·scale) of its "
        f"projections: method={method!r} cannot read it exactly (exact: {supported}){hint}"
    )


def _vit(model: nn.Module, method: Method) -> _Target | None:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or len(blocks) == 0:
        return None
    attn = getattr(blocks[-1], "attn", None)
    if not isinstance(attn, nn.Module) or not hasattr(attn, "num_heads"):
        return None
    if getattr(model, "cls_token", None) is None:
        raise NoClsAttentionError(
            f"{type(model).__name__} has no cls token (class_token=False): PAL and TransMix "
            "need cls→patch attention. Use area labels (MaskMix, CutMix) instead."
        )
    _check_token_pool(model)
    exact = (
        "qkv" if type(attn) in _QKV_EXACT and isinstance(getattr(attn, "qkv", None), nn.Linear)
        else None
    )
    return _Target(attn, _layout(attn, exact, method),
                   int(getattr(model, "num_prefix_tokens", 1)))


def _class_attention(model: nn.Module, method: Method) -> _Target | None:
    for name in ("blocks_token_only", "cls_attn_blocks"):
        blocks = getattr(model, name, None)
        if isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks) > 0:
            attn = getattr(blocks[-1], "attn", None)
            if not isinstance(attn, nn.Module):
                return None
            _check_token_pool(model)
            exact = "q_k" if type(attn) in _Q_K_EXACT else None
            return _Target(attn, _layout(attn, exact, method), 1)
    return None


ADAPTERS: list[Callable[[nn.Module, Method], _Target | None]] = [_class_attention, _vit]


class ClsAttention:
    """Exposes the head-mean cls→patch attention of the model's last attention block.

    Usage::

        probe = ClsAttention(model)
        logits = model(batch.images)
        targets = batch.targets(logits, probe.attention)   # (B, N_patches)

    Args:
        model: a timm ViT/DeiT (incl. distilled, register tokens, rope), CaiT, XCiT, or a
            BEiT/EVA built with ``global_pool='token'``, possibly wrapped in DDP or
            ``torch.compile``. Models without a cls token raise :class:`NoClsAttentionError`.
        method: ``'auto'`` (exact cls row where the block allows it, else un-fused; see the
            module docstring), ``'cls_row'`` (exact cls row only; error otherwise) or
            ``'unfused'`` (read the last block's softmax un-fused, for any timm attention).

    ``attention`` is from the latest forward pass of the model (train or eval mode), detached,
    float32, pre-dropout; reading it before a forward, or after a forward in which the hooked
    block did not run, raises ``RuntimeError`` (never a stale value). Call :meth:`remove` (or
    use the probe as a context manager) to detach the hooks.
    """

    def __init__(self, model: nn.Module, method: Method = "auto") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if method not in ("auto", "cls_row", "unfused"):
            raise ValueError(f"method must be 'auto', 'cls_row' or 'unfused', got {method!r}")
        inner = _unwrap(model)
        target = None
        for adapter in ADAPTERS:
            target = adapter(inner, method)
            if target is not None:
                break
        if target is None:
            raise NoClsAttentionError(
                f"{type(inner).__name__} has no supported cls-attention block (supported: timm "
                "ViT/DeiT, CaiT, XCiT, BEiT/EVA with a cls token). Models without a cls token "
                "(Swin, PVT, ConvNets) can use MaskMix/CutMix with area labels."
            )
        self.method = target.layout
        self.num_prefix_tokens = target.num_prefix_tokens
        self.num_heads = int(target.attn.num_heads)
        self._attn = target.attn
        self._attention: torch.Tensor | None = None
        self._q_cls: torch.Tensor | None = None
        self._forwards = 0
        self._fused_before: bool | None = None
        # a new forward of the model clears the previous result (no stale attention)
        self._handles = [inner.register_forward_pre_hook(self._on_model_forward)]
        if target.layout == "qkv":
            self._handles.append(target.attn.qkv.register_forward_hook(self._on_qkv))
        elif target.layout == "q_k":
            self._handles += [
                target.attn.q.register_forward_hook(self._on_q),
                target.attn.k.register_forward_hook(self._on_k),
            ]
        else:
            self._fused_before = bool(target.attn.fused_attn)
            target.attn.fused_attn = False
            self._handles.append(target.attn.attn_drop.register_forward_hook(self._on_probs))

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

    def _on_model_forward(self, module: nn.Module, inputs: tuple) -> None:
        self._attention = None
        self._forwards += 1

    @torch.no_grad()
    def _on_probs(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        probs = inputs[0]
        if probs.dim() != 4 or probs.shape[1] != self.num_heads or (
            probs.shape[2] != probs.shape[3]
        ):
            raise RuntimeError(
                f"ClsAttention(method='unfused'): {type(self._attn).__name__}.attn_drop got "
                f"{tuple(probs.shape)}, not softmax probabilities (B, {self.num_heads}, N, N)"
            )
        row = probs.detach()[:, :, 0, self.num_prefix_tokens:].float()
        self._attention = row.mean(dim=1).contiguous()

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
            if self._forwards:
                raise RuntimeError(
                    "ClsAttention.attention: the hooked attention block "
                    f"({type(self._attn).__name__}) did not run in the latest forward pass"
                )
            raise RuntimeError("ClsAttention.attention: run a forward pass of the model first")
        return self._attention

    def remove(self) -> None:
        """Remove the hooks (and restore ``fused_attn`` where the probe switched it off)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._fused_before is not None:
            self._attn.fused_attn = self._fused_before
            self._fused_before = None

    def __enter__(self) -> ClsAttention:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
