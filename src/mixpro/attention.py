"""`ClsAttention`: the head-mean cls→patch attention that drives the classifier, via hooks.

Three ways to read it, chosen per attention class (``reading='auto'``):

* ``'cls_row'`` (exact and cheap): the probe hooks the projections of the attention that feeds
  the classifier and, under ``no_grad``, computes only the query row ``softmax(q·Kᵀ·scale)`` per
  head (O(B·h·N·d)) from the module's own activations of the same forward pass. Fused SDPA stays
  on, no N×N matrix is built and no model code is forked. Used where the attention is exactly
  that: timm's ``Attention`` (ViT/DeiT, distilled and register-token variants, optional
  ``q_norm``/``k_norm``), ``ClassAttn`` (CaiT ``blocks_token_only``, XCiT ``cls_attn_blocks``,
  the heads of :func:`mixpro.with_class_attention`), CA-Swin's class-attention block, and
  ``AttentionPoolLatent`` (ViT ``global_pool='map'``: the latent query's row).
* ``'unfused'`` (generic): switches ``fused_attn`` off on that one module and reads the softmax
  probabilities where timm passes them to ``attn_drop`` (pre-dropout; ``(B, h, N, N)`` for
  self-attention, ``(B, h, 1, N)`` for class attention). Used for blocks whose logits carry
  more than ``q·kᵀ`` (rotary embeddings: ``AttentionRope``, ``EvaAttention``; relative position
  bias: BEiT's ``Attention``). :meth:`ClsAttention.remove` restores ``fused_attn``.

Any other attention class is refused at construction rather than read wrongly. The result is
the pre-dropout attention, averaged over heads, with prefix tokens (cls, dist, registers)
removed: ``(B, N_patches)`` float32, detached. The tensor carries an :class:`AttentionOrigin`
(:func:`attention_origin`): the input tensor and token grid of the forward pass it came from, so
that :meth:`mixpro.MixedBatch.targets` can refuse attention of another forward pass and take its
token grid from the model instead of guessing it.
"""

from __future__ import annotations

import importlib
import typing
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

Reading = Literal["auto", "cls_row", "unfused"]
Grid = tuple[int, int]

_SOURCE_ATTR = "_mixpro_source"


class NoClsAttentionError(ValueError):
    """The model has no cls token (or class-attention query) that drives its classifier.

    ``reason``: what is missing, one clause (apps quote it); ``str(e)`` adds what to do."""

    def __init__(self, reason: str, advice: str = "") -> None:
        super().__init__(f"{reason}{advice}")
        self.reason, self.advice = reason, advice


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
_QKV_EXACT = _timm_classes("timm.layers.attention:Attention", "timm.models.convit:MHSA")
# class attention: the query is the cls token only, separate q and k Linears
_Q_K_EXACT = _timm_classes("timm.models.cait:ClassAttn")
# attention pooling with a learned latent query (ViT global_pool='map')
_LATENT = _timm_classes("timm.layers.attention_pool:AttentionPoolLatent")
# softmax probabilities go through attn_drop on the un-fused path, logits carry rope/rel-pos
_UNFUSED_OK = _timm_classes(
    "timm.layers.attention:AttentionRope", "timm.models.eva:EvaAttention",
    "timm.models.beit:Attention",
)


# -- where an attention map came from ----------------------------------------------------------


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` are the same data: one tensor or views with identical layout."""
    return a is b or (
        a.device == b.device and a.dtype == b.dtype and a.shape == b.shape
        and a.stride() == b.stride() and a.data_ptr() == b.data_ptr()
    )


@dataclass(frozen=True, eq=False)
class AttentionOrigin:
    """The forward pass an attention tensor belongs to.

    Attributes:
        forward: the probe's count of model forward passes (1 for the first).
        inputs: weak references to that pass's model input (the wrapper's, e.g. DDP, and the
            model's own; usually one tensor).
        shapes: the shapes of those inputs, for messages.
        grid: ``(gh, gw)`` token grid of that pass (``gh·gw = N``), or None when the model
            does not reveal it.
    """

    forward: int
    inputs: tuple[weakref.ref, ...]
    shapes: tuple[tuple[int, ...], ...]
    grid: Grid | None

    def came_from(self, images: torch.Tensor) -> bool:
        """Whether ``images`` (still alive) was the model input of that forward pass."""
        for ref in self.inputs:
            x = ref()
            if x is not None and _same_view(x, images):
                return True
        return False

    def describe(self) -> str:
        shapes = " / ".join(str(s) for s in self.shapes) or "unknown"
        return f"forward pass #{self.forward} (model input of shape {shapes})"


def attention_origin(attention: torch.Tensor) -> AttentionOrigin | None:
    """The :class:`AttentionOrigin` a :class:`ClsAttention` map carries, or None.

    Only the tensor returned by :attr:`ClsAttention.attention` carries it: a copy made from it
    (``.clone()``, ``.to(...)``, arithmetic) does not.
    """
    src = getattr(attention, _SOURCE_ATTR, None)
    return src if isinstance(src, AttentionOrigin) else None


# -- what to hook --------------------------------------------------------------------------------


GridReader = Callable[[nn.Module, tuple, Any], "Grid | None"]


def _patch_embed_grid(module: nn.Module, inputs: tuple, out: Any) -> Grid | None:
    """Token grid from a patch embedding's forward: XCiT returns it, timm's ``PatchEmbed``
    computes it from the image size (``dynamic_feat_size``)."""
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple | list):
        return int(out[1][0]), int(out[1][1])
    x = inputs[0] if inputs else None
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    size = (int(x.shape[-2]), int(x.shape[-1]))
    feat = getattr(module, "dynamic_feat_size", None)
    if callable(feat):
        gh, gw = feat(size)
        return int(gh), int(gw)
    return None


def _feature_map_grid(module: nn.Module, inputs: tuple, out: Any) -> Grid | None:
    """Token grid from the input of a feature-map → tokens module (``fmt`` NCHW or NHWC)."""
    x = inputs[0]
    h, w = (x.shape[2], x.shape[3]) if module.fmt == "NCHW" else (x.shape[1], x.shape[2])
    return int(h), int(w)


@dataclass(frozen=True)
class _Target:
    """What to hook.

    ``layout``: ``'qkv'`` (fused projection, the query token is the first), ``'q_k'`` (separate
    q and k projections, class attention), ``'latent'`` (``AttentionPoolLatent``: q of the
    latent, fused ``kv``) or ``'probs'`` (un-fused softmax read at ``attn_drop``).
    ``num_prefix_tokens``: keys before the patch tokens (removed from the result).
    ``grid_module``/``read_grid``: a module whose forward reveals the token grid.
    """

    attn: nn.Module
    layout: str
    num_prefix_tokens: int
    grid_module: nn.Module | None = None
    read_grid: GridReader | None = None


def _is_compiled(model: nn.Module) -> bool:
    dynamo = importlib.import_module("torch._dynamo.eval_frame")
    return isinstance(model, dynamo.OptimizedModule)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel; compiled models are refused."""
    if _is_compiled(model):
        raise TypeError(
            "model is a torch.compile'd module (OptimizedModule): hooks attached after "
            "compiling are not run by the compiled graph. Attach the probe to the plain model "
            "first, then compile: probe = mixpro.ClsAttention(model); model = "
            "torch.compile(model)"
        )
    inner = getattr(model, "module", None)  # DDP, DataParallel, timm's ModelEma
    return unwrap_model(inner) if isinstance(inner, nn.Module) else model


def _check_token_pool(model: nn.Module) -> None:
    pool = getattr(model, "global_pool", "token")
    if pool != "token":
        raise NoClsAttentionError(
            f"{type(model).__name__} pools with global_pool={pool!r}, not the cls token",
            ": its cls→patch attention does not drive the classifier. Use area labels "
            "(MaskMix, CutMix), build the model with global_pool='token' (or 'map'), or give "
            "it a class-attention head: mixpro.with_class_attention(model)."
        )


def _layout(attn: nn.Module, exact: str | None, reading: Reading) -> str:
    """How to read ``attn`` under ``reading``; a clear error when it cannot be read exactly."""
    kind = type(attn).__name__
    can_unfuse = hasattr(attn, "fused_attn") and isinstance(
        getattr(attn, "attn_drop", None), nn.Module
    )
    if reading == "unfused":
        if not can_unfuse:
            raise NoClsAttentionError(
                f"reading='unfused' needs an attention module with `fused_attn` and `attn_drop` "
                f"(timm's convention); {kind} has not"
            )
        return "probs"
    if exact is not None:
        return exact
    if reading == "auto" and isinstance(attn, _UNFUSED_OK) and can_unfuse:
        return "probs"
    supported = ", ".join(c.__name__ for c in _QKV_EXACT + _Q_K_EXACT + _LATENT)
    hint = (" (reading='auto' reads it un-fused)" if isinstance(attn, _UNFUSED_OK) else
            "; if it passes softmax probabilities to attn_drop, reading='unfused' reads them")
    raise NoClsAttentionError(
        f"the last attention block is {kind}, whose cls row is not softmax(q·kᵀ·scale) of its "
        f"projections: reading={reading!r} cannot read it exactly",
        f" (exact: {supported}){hint}"
    )


def _patch_grid(model: nn.Module) -> tuple[nn.Module | None, GridReader | None]:
    pe = getattr(model, "patch_embed", None)
    return (pe, _patch_embed_grid) if isinstance(pe, nn.Module) else (None, None)


def _latent(model: nn.Module, reading: Reading) -> _Target | None:
    """ViT with ``global_pool='map'``: the latent query of ``attn_pool`` drives the classifier."""
    pool = getattr(model, "attn_pool", None)
    if getattr(model, "global_pool", None) != "map" or not isinstance(pool, _LATENT):
        return None
    if reading == "unfused":
        raise NoClsAttentionError(
            "reading='unfused' cannot read AttentionPoolLatent (it has no attn_drop)",
            "; reading='auto' reads its latent query's row exactly"
        )
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    include = bool(getattr(model, "pool_include_prefix", False))
    return _Target(pool, "latent", prefix if include else 0, *_patch_grid(model))


def _vit(model: nn.Module, reading: Reading) -> _Target | None:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or len(blocks) == 0:
        return None
    attn = getattr(blocks[-1], "attn", None)
    if not isinstance(attn, nn.Module) or not hasattr(attn, "num_heads"):
        return None
    if getattr(model, "cls_token", None) is None:
        raise NoClsAttentionError(
            f"{type(model).__name__} has no cls token (class_token=False)",
            ": PAL and TransMix need cls→patch attention. Use area labels (MaskMix, CutMix) or "
            "give it a "
            "class-attention head: mixpro.with_class_attention(model)."
        )
    _check_token_pool(model)
    exact = (
        "qkv" if type(attn) in _QKV_EXACT and isinstance(getattr(attn, "qkv", None), nn.Linear)
        else None
    )
    return _Target(attn, _layout(attn, exact, reading),
                   int(getattr(model, "num_prefix_tokens", 1)), *_patch_grid(model))


def _class_attention(model: nn.Module, reading: Reading) -> _Target | None:
    for name in ("blocks_token_only", "cls_attn_blocks"):
        blocks = getattr(model, name, None)
        if isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks) > 0:
            attn = getattr(blocks[-1], "attn", None)
            if not isinstance(attn, nn.Module):
                return None
            _check_token_pool(model)
            exact = "q_k" if type(attn) in _Q_K_EXACT else None
            return _Target(attn, _layout(attn, exact, reading), 1, *_patch_grid(model))
    return None


def _head(model: nn.Module, reading: Reading) -> _Target | None:
    """Models that declare their class attention: ``model.class_attention_parts()`` returns
    (attention module, exact layout ``'qkv'``/``'q_k'``, a module whose input is the feature map
    in its ``fmt``, ``'NCHW'`` or ``'NHWC'``) -- :func:`mixpro.with_class_attention`'s models."""
    parts = getattr(model, "class_attention_parts", None)
    if not callable(parts):
        return None
    attn, exact, tokens = parts()
    return _Target(attn, _layout(attn, exact, reading), 1, tokens, _feature_map_grid)


def _other_block(model: nn.Module, target: _Target, block: int, reading: Reading) -> _Target:
    """The cls row of ``blocks[block]`` of a plain ViT instead of the last block's (a study of
    which layer localises the object: not the attention that drives the classifier)."""
    blocks = getattr(model, "blocks", None)
    if isinstance(block, bool) or not isinstance(block, int):
        raise TypeError(f"block must be an int, got {type(block).__name__}")
    plain = (isinstance(blocks, nn.Sequential | nn.ModuleList) and target.layout in ("qkv", "probs")
             and getattr(model, "cls_token", None) is not None
             and target.attn is getattr(blocks[-1], "attn", None))
    if not plain:
        raise NoClsAttentionError(
            f"block={block} selects a block of a plain timm ViT; {type(model).__name__} reads "
            "its class attention elsewhere", " (use block=-1)")
    if not -len(blocks) <= block < len(blocks):
        raise ValueError(f"block must be in [-{len(blocks)}, {len(blocks) - 1}], got {block}")
    attn = blocks[block].attn
    exact = "qkv" if type(attn) in _QKV_EXACT and isinstance(
        getattr(attn, "qkv", None), nn.Linear) else None
    return _Target(attn, _layout(attn, exact, reading), target.num_prefix_tokens,
                   target.grid_module, target.read_grid)


ADAPTERS: list[Callable[[nn.Module, Reading], _Target | None]] = [
    _head, _latent, _class_attention, _vit,
]


def _find_target(inner: nn.Module, reading: Reading) -> _Target:
    for adapter in ADAPTERS:
        target = adapter(inner, reading)
        if target is not None:
            return target
    raise NoClsAttentionError(
        f"{type(inner).__name__} has no supported cls-attention block",
        " (supported: timm ViT/DeiT, CaiT, XCiT, BEiT/EVA with a cls token, ViTs with "
        "global_pool='map', and models from mixpro.with_class_attention). Give it a "
        "class-attention head with "
        "mixpro.with_class_attention(model) (Swin, PVT-v2, ConvNeXt, ResNet, pooled ViTs), or "
        "use MaskMix/CutMix with area labels."
    )


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor):
            return v
    return None


class ClsAttention:
    """Exposes the head-mean cls→patch attention that drives the model's classifier.

    Usage::

        probe = ClsAttention(model)
        logits = model(batch.images)
        targets = batch.targets(logits, probe.attention)   # (B, N_patches)

    Args:
        model: a timm ViT/DeiT (incl. distilled, register tokens, rope), CaiT, XCiT, a
            BEiT/EVA built with ``global_pool='token'``, a ViT with ``global_pool='map'``
            (the latent query of ``AttentionPoolLatent``), or a model from
            :func:`mixpro.with_class_attention` (Swin, CA-Swin, PVT-v2, ConvNeXt, ResNet,
            pooled ViTs), possibly wrapped in DDP. Attach the probe *before* ``torch.compile``
            (a compiled module raises ``TypeError``). Other models raise
            :class:`NoClsAttentionError`.
        reading: ``'auto'`` (exact row where the block allows it, else un-fused; see the
            module docstring), ``'cls_row'`` (exact row only; error otherwise) or
            ``'unfused'`` (read the block's softmax un-fused, for any timm attention with
            ``attn_drop``).
        block: which block of a plain timm ViT to read (-1, default: the last, the paper's
            and the one that drives the classifier; another index reads that block's cls row,
            for studies of which layer localises the object).

    ``attention`` is from the latest forward pass of the model (train or eval mode), detached,
    float32, pre-dropout; reading it before a forward, or after a forward in which the hooked
    block did not run, raises ``RuntimeError`` (never a stale value). It carries the identity
    of its forward pass (:func:`attention_origin`), which ``MixedBatch.targets`` checks. Call
    :meth:`remove` (or use the probe as a context manager) to detach the hooks.
    """

    def __init__(self, model: nn.Module, reading: Reading = "auto", block: int = -1) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if reading not in typing.get_args(Reading):
            raise ValueError(f"reading must be 'auto', 'cls_row' or 'unfused', got {reading!r}")
        inner = unwrap_model(model)
        target = _find_target(inner, reading)
        if block != -1:
            target = _other_block(inner, target, block, reading)
        self.block = block
        self.layout = target.layout  # what is read: 'qkv', 'q_k', 'probs' or 'latent'
        self.num_prefix_tokens = target.num_prefix_tokens
        self.num_heads = int(target.attn.num_heads)
        self._attn = target.attn
        self._read_grid = target.read_grid
        self._attention: torch.Tensor | None = None
        self._q: torch.Tensor | None = None
        self._grid: Grid | None = None
        self._forwards = 0
        self._outer_input: weakref.ref | None = None
        self._inputs: tuple[weakref.ref, ...] = ()
        self._shapes: tuple[tuple[int, ...], ...] = ()
        self._fused_before: bool | None = None
        self._handles: list = []
        try:
            if model is not inner:  # the tensor the caller passed (DDP passes it through)
                self._handles.append(
                    model.register_forward_pre_hook(self._on_outer_forward, with_kwargs=True))
            # a new forward of the model clears the previous result (no stale attention)
            self._handles.append(
                inner.register_forward_pre_hook(self._on_model_forward, with_kwargs=True))
            if target.grid_module is not None:
                self._handles.append(target.grid_module.register_forward_hook(self._on_grid))
            attn = target.attn
            if target.layout == "qkv":
                self._handles.append(attn.qkv.register_forward_hook(self._on_qkv))
            elif target.layout == "q_k":
                self._handles += [attn.q.register_forward_hook(self._on_q),
                                  attn.k.register_forward_hook(self._on_k)]
            elif target.layout == "latent":
                self._handles += [attn.q.register_forward_hook(self._on_q),
                                  attn.kv.register_forward_hook(self._on_kv)]
            else:
                self._handles.append(attn.attn_drop.register_forward_hook(self._on_probs))
                self._fused_before = bool(attn.fused_attn)
                attn.fused_attn = False
        except BaseException:
            self.remove()
            raise

    # -- hooks ---------------------------------------------------------------------------

    def _store(self, rows: torch.Tensor) -> None:
        """``rows (B, h, L, N_keys)`` softmax rows → head-mean patch attention ``(B, N_p)``.

        ``L`` query rows (1 except for multi-latent pooling) are averaged, as the pooling is.
        """
        attn = rows.float().mean(dim=(1, 2))
        self._attention = attn[:, self.num_prefix_tokens:].contiguous()

    def _rows(self, q: torch.Tensor, k: torch.Tensor) -> None:
        """``q (B, h, L, d)`` and ``k (B, h, N, d)`` → softmax rows, stored."""
        scale = float(getattr(self._attn, "scale", q.shape[-1] ** -0.5))
        with torch.autocast(q.device.type, enabled=False):  # λ is computed in float32
            logits = torch.einsum("bhld,bhnd->bhln", q.float(), k.float()) * scale
            self._store(logits.softmax(dim=-1))

    def _cls_row(self, q_cls: torch.Tensor, k: torch.Tensor) -> None:
        """``q_cls (B, h, d)`` and ``k (B, h, N, d)`` → head-mean patch attention ``(B, N_p)``."""
        self._rows(q_cls.unsqueeze(2), k)

    @torch.no_grad()
    def _on_qkv(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        attn = self._attn
        b, n, _ = out.shape
        h = self.num_heads
        qkv = out.detach().reshape(b, n, 3, h, -1)
        q_cls = qkv[:, 0, 0]  # (B, h, d): the cls token is the first token
        k = qkv[:, :, 1].transpose(1, 2)  # (B, h, N, d)
        q_norm = getattr(attn, "q_norm", None)
        k_norm = getattr(attn, "k_norm", None)
        if q_norm is not None:
            q_cls = q_norm(q_cls)
        if k_norm is not None:
            k = k_norm(k)
        self._cls_row(q_cls, k)

    def _on_outer_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = _first_tensor(args, kwargs)
        self._outer_input = None if x is None else weakref.ref(x)

    def _on_model_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._attention = None
        self._grid = None
        self._q = None
        self._forwards += 1
        x = _first_tensor(args, kwargs)
        refs = [] if x is None else [weakref.ref(x)]
        if self._outer_input is not None:
            refs.insert(0, self._outer_input)
            self._outer_input = None
        self._inputs = tuple(refs)
        self._shapes = tuple(tuple(r().shape) for r in refs if r() is not None)

    def _on_grid(self, module: nn.Module, inputs: tuple, out: Any) -> None:
        assert self._read_grid is not None
        self._grid = self._read_grid(module, inputs, out)

    def _fail(self, message: str) -> None:
        """Detach the probe (restoring ``fused_attn``) and raise: a wrong read is never kept."""
        self.remove()
        raise RuntimeError(message + "; the probe has been removed")

    @torch.no_grad()
    def _on_probs(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        probs = inputs[0]
        if probs.dim() != 4 or probs.shape[1] != self.num_heads or (
            probs.shape[2] not in (1, probs.shape[3])
        ):
            self._fail(
                f"ClsAttention(reading='unfused'): {type(self._attn).__name__}.attn_drop got "
                f"{tuple(probs.shape)}, not softmax probabilities (B, {self.num_heads}, N, N) "
                f"or class-attention rows (B, {self.num_heads}, 1, N)"
            )
        self._store(probs.detach()[:, :, :1])  # row 0: the cls token's

    @torch.no_grad()
    def _on_q(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        self._q = out.detach()

    @torch.no_grad()
    def _on_k(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if self._q is None:
            self._fail("ClsAttention: the k projection ran before q")
        b, n, c = out.shape
        h = self.num_heads
        q_cls = self._q.reshape(b, -1, h, c // h)[:, 0]  # (B, h, d)
        k = out.detach().reshape(b, n, h, c // h).transpose(1, 2)
        self._q = None
        self._cls_row(q_cls, k)

    @torch.no_grad()
    def _on_kv(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        """``AttentionPoolLatent``: latent q ``(B, L, E)`` (hooked before), kv ``(B, N, 2E)``."""
        if self._q is None:
            self._fail("ClsAttention: AttentionPoolLatent's kv projection ran before q")
        pool = self._attn
        b, n, _ = out.shape
        h, d = self.num_heads, int(pool.head_dim)
        q = self._q.reshape(b, -1, h, d).transpose(1, 2)  # (B, h, L, d)
        k = out.detach().reshape(b, n, 2, h, d)[:, :, 0].transpose(1, 2)  # (B, h, N, d)
        q, k = pool.q_norm(q), pool.k_norm(k)
        if getattr(pool, "pool", "token") == "token":
            q = q[:, :, :1]  # only the first latent reaches the classifier
        self._q = None
        self._rows(q, k)

    # -- public --------------------------------------------------------------------------

    @property
    def attention(self) -> torch.Tensor:
        """``(B, N_patches)`` float32, detached: head-mean cls→patch attention, latest forward.

        The tensor carries its :class:`AttentionOrigin` (:func:`attention_origin`).
        """
        if self._attention is None:
            if self._forwards:
                raise RuntimeError(
                    "ClsAttention.attention: the hooked attention block "
                    f"({type(self._attn).__name__}) did not run in the latest forward pass"
                )
            raise RuntimeError("ClsAttention.attention: run a forward pass of the model first")
        attn = self._attention
        if attention_origin(attn) is None:
            grid = self._grid
            if grid is not None and grid[0] * grid[1] != attn.shape[1]:
                grid = None  # the grid did not come from these tokens: let targets() check
            setattr(attn, _SOURCE_ATTR, AttentionOrigin(
                self._forwards, self._inputs, self._shapes, grid))
        return attn

    @property
    def grid(self) -> Grid | None:
        """``(gh, gw)`` token grid of the latest forward pass (None if the model hides it)."""
        if not self._forwards:
            raise RuntimeError("ClsAttention.grid: run a forward pass of the model first")
        return self._grid

    def attention_of(self, images: torch.Tensor) -> torch.Tensor:
        """:attr:`attention`, after checking that ``images`` was the latest forward's input.

        Raises ``ValueError`` when the latest forward ran on another tensor.
        """
        attn = self.attention
        src = attention_origin(attn)
        assert src is not None
        if not src.came_from(images):
            raise ValueError(
                f"images: the probe's attention comes from {src.describe()}, not from these "
                f"images {tuple(images.shape)}; run model(images) last"
            )
        return attn

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

