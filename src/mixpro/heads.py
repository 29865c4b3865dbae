"""Class-attention heads: PAL and TransMix on timm backbones without a cls token.

:func:`with_class_attention` gives any timm model whose last features form a token grid (Swin,
PVT-v2, ConvNeXt, ResNet, ViTs with ``global_pool='avg'`` or ``class_token=False``...) a cls
token that reads the last feature map through class attention, so that
:class:`mixpro.ClsAttention` reads its cls→token attention ``(B, N)`` exactly, in the same
forward pass, with fused SDPA left on.

* ``mode='ca'`` (any such model): the model's classifier is removed; its last feature map
  (``forward_intermediates``, final norm applied, NCHW) is flattened to ``N = gh·gw`` tokens;
  a cls token ``c₀ = mean(tokens) + cls_token`` (``cls_token`` a learned offset, zero at
  initialisation, so the head starts as global-average pooling) is updated by ``depth`` timm
  CaiT blocks (``LayerScaleBlockClassAttn``: the cls query attends over cls and grid tokens,
  tokens are not updated), then LayerNorm and a linear classifier.
* ``mode='ca_swin'`` (the paper's CA-Swin, timm ``swin_*``): the last Swin block becomes a
  class-attention block built from *its own* weights (``norm1``; ``attn.qkv`` split into q, k, v;
  ``attn.proj``; ``norm2``; ``mlp``): no parameter is added or removed, and the block keeps its
  state-dict keys, so a plain Swin checkpoint loads into ``model.backbone``. The cls token is
  the mean of the block's input tokens (no parameter; the paper only says "without parameter
  overhead"). The block returns the updated cls token as a 1×1 map, which Swin's own final norm
  and average-pool head turn into logits. The window attention's relative-position table has no
  meaning for a cls query: it is kept (frozen, ``requires_grad=False``) only so that the
  parameter count and the keys stay the original's.

Geometry: the attention grid is the last stage's (stride ``token_stride``, 32 for
Swin/PVT-v2/ConvNeXt/ResNet). ``patch_size`` of MaskMix/MixPro keeps meaning the model's patch
embedding and ``mask_scale`` counts those patches; :func:`check_mask_geometry` says whether a
mask cell is a whole number of attention tokens.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from . import _checks
from .attention import NoClsAttentionError, _find_target, _is_compiled, unwrap_model

Mode = Literal["ca", "ca_swin"]

__all__ = [
    "ClassAttentionClassifier",
    "SwinClassAttentionBlock",
    "check_mask_geometry",
    "needs_class_attention",
    "with_class_attention",
]


class FeatureTokens(nn.Module):
    """A feature map ``(B, C, H, W)`` (``fmt='NCHW'``) or ``(B, H, W, C)`` (``'NHWC'``) as
    tokens ``(B, H·W, C)``, row-major. Parameter-free; the probe reads the grid off its input."""

    def __init__(self, fmt: Literal["NCHW", "NHWC"]) -> None:
        super().__init__()
        self.fmt = fmt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2) if self.fmt == "NCHW" else x.flatten(1, 2)

    def extra_repr(self) -> str:
        return f"fmt={self.fmt!r}"


class SwinClassAttentionBlock(nn.Module):
    """CA-Swin's last block: a Swin block's own weights used as one class-attention block.

    ``x (B, H, W, C)`` → tokens ``t (B, N, C)``, ``c = mean(t)``, ``u = norm1([c; t])``,
    ``q, k, v = split(attn.qkv(u))``, ``c ← c + drop_path1(attn.proj(softmax(q_c·Kᵀ·s)·V))``,
    ``c ← c + drop_path2(mlp(norm2(c)))`` → ``(B, 1, 1, C)``. Honours ``attn.fused_attn``
    (SDPA) and ``attn.attn_drop`` as timm's attention does. Submodule names are the Swin
    block's, so its state-dict keys are unchanged.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.norm1 = block.norm1
        self.attn = block.attn
        self.drop_path1 = block.drop_path1
        self.norm2 = block.norm2
        self.mlp = block.mlp
        self.drop_path2 = block.drop_path2
        self.to_tokens = FeatureTokens("NHWC")
        table = getattr(self.attn, "relative_position_bias_table", None)
        if isinstance(table, nn.Parameter):
            table.requires_grad_(False)  # unused by a cls query; kept for keys and count

    def set_input_size(self, *args: object, **kwargs: object) -> None:
        """Nothing depends on the input size (called by ``SwinTransformer.set_input_size``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn
        tokens = self.to_tokens(x)
        cls = tokens.mean(dim=1, keepdim=True)
        u = self.norm1(torch.cat((cls, tokens), dim=1))
        b, n, _ = u.shape
        q, k, v = attn.qkv(u).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q = q[:, :, :1]  # (B, h, 1, d): the cls query only
        if attn.fused_attn:
            o = F.scaled_dot_product_attention(
                q, k, v, dropout_p=attn.attn_drop.p if self.training else 0.0)
        else:
            a = (q * attn.scale) @ k.transpose(-2, -1)
            o = attn.attn_drop(a.softmax(dim=-1)) @ v
        o = attn.proj_drop(attn.proj(o.transpose(1, 2).reshape(b, 1, -1)))
        cls = cls + self.drop_path1(o)
        cls = cls + self.drop_path2(self.mlp(self.norm2(cls)))
        return cls.reshape(b, 1, 1, -1)


def _trunc_normal_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ClassAttentionClassifier(nn.Module):
    """A timm backbone plus a class-attention cls token (build it with
    :func:`with_class_attention`). ``forward(x (B, C, H, W)) -> logits (B, num_classes)``.

    Attributes:
        backbone: the timm model (classifier removed for ``'ca'``; last block replaced for
            ``'ca_swin'``).
        mode: ``'ca'`` or ``'ca_swin'``.
        num_classes, num_features: classes and the cls token's width.
        token_stride: pixels per attention token along each side (the last stage's reduction).
        grid_size: the attention grid at the backbone's input size.
        pretrained_cfg: the backbone's, with ``classifier`` pointing at this model's head.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mode: Mode,
        *,
        num_classes: int,
        depth: int,
        num_heads: int | None,
        embed_dim: int | None,
        mlp_ratio: float,
        init_values: float,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        info = getattr(backbone, "feature_info", None)
        stride = info[-1]["reduction"] if info else None
        if not isinstance(stride, int) or stride < 1:
            raise TypeError(
                f"model: {type(backbone).__name__} has no feature_info with the last stage's "
                "reduction; with_class_attention needs a timm model"
            )
        self.mode = mode
        self.token_stride = stride
        self.num_classes = num_classes
        cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
        if mode == "ca_swin":
            self._build_ca_swin(backbone, num_classes)
            cfg["classifier"] = "backbone." + str(cfg.get("classifier", "head.fc"))
        else:
            self._build_ca(backbone, num_classes, depth, num_heads, embed_dim, mlp_ratio,
                           init_values, drop_path_rate)
            cfg["classifier"] = "head"
        cfg["num_classes"] = num_classes
        self.pretrained_cfg = cfg

    # -- construction ----------------------------------------------------------------------

    def _build_ca_swin(self, backbone: nn.Module, num_classes: int) -> None:
        swin = _timm_class("timm.models.swin_transformer", "SwinTransformer")
        block_cls = _timm_class("timm.models.swin_transformer", "SwinTransformerBlock")
        if swin is None or not isinstance(backbone, swin):
            raise TypeError(
                f"model: mode='ca_swin' needs a timm SwinTransformer (swin_*), got "
                f"{type(backbone).__name__}; mode='ca' adds a class-attention head to any "
                "timm model"
            )
        blocks = backbone.layers[-1].blocks
        if not isinstance(blocks[-1], block_cls):
            raise TypeError(
                f"model: the last Swin block is {type(blocks[-1]).__name__}, not a "
                "SwinTransformerBlock (already converted?)"
            )
        if backbone.num_classes != num_classes or not getattr(backbone, "global_pool", "avg"):
            backbone.reset_classifier(num_classes, global_pool="avg")  # pools the 1×1 cls map
        self.num_features = int(backbone.num_features)
        blocks[-1] = SwinClassAttentionBlock(blocks[-1])
        self.backbone = backbone

    def _build_ca(
        self, backbone: nn.Module, num_classes: int, depth: int, num_heads: int | None,
        embed_dim: int | None, mlp_ratio: float, init_values: float, drop_path_rate: float,
    ) -> None:
        if not (_accepts(getattr(backbone, "forward_intermediates", None),
                         ("indices", "norm", "output_fmt", "intermediates_only"))
                and callable(getattr(backbone, "prune_intermediate_layers", None))):
            raise TypeError(
                f"model: {type(backbone).__name__} has no forward_intermediates(indices, norm, "
                "output_fmt, intermediates_only) / prune_intermediate_layers (timm >= 1.0 "
                "models have them)"
            )
        cait = _timm_class("timm.models.cait", "LayerScaleBlockClassAttn")
        width = int(backbone.feature_info[-1]["num_chs"])
        heads_default = _native_heads(backbone)
        backbone.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)
        dim = min(width, 768) if embed_dim is None else embed_dim
        heads = num_heads if num_heads is not None else _default_heads(dim, heads_default)
        if dim % heads:
            raise ValueError(f"num_heads {heads} does not divide the head width {dim}")
        self.backbone = backbone
        self.num_features = dim
        self.to_tokens = FeatureTokens("NCHW")
        self.proj = nn.Identity() if dim == width else nn.Linear(width, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            cait(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=p,
                 init_values=init_values)
            for p in dpr
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for m in (self.proj, self.blocks, self.norm, self.head):
            m.apply(_trunc_normal_init)

    # -- forward ---------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` → the final cls token ``(B, num_features)`` (normalised)."""
        if self.mode == "ca_swin":
            return self.backbone.forward_features(x).flatten(1)
        feat = self.backbone.forward_intermediates(
            x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True)[-1]
        tokens = self.proj(self.to_tokens(feat))
        cls = self.cls_token + tokens.mean(dim=1, keepdim=True)
        for blk in self.blocks:
            cls = blk(tokens, cls)
        return self.norm(cls[:, 0])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Cls features ``(B, num_features)`` → logits ``(B, num_classes)``."""
        if self.mode == "ca_swin":
            return self.backbone.forward_head(x[:, None, None, :], pre_logits=pre_logits)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "ca_swin":
            return self.backbone(x)
        return self.forward_head(self.forward_features(x))

    # -- what the probe and the apps need ----------------------------------------------------

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter grouping (layer-wise lr decay): the backbone's own groups, then
        this model's class-attention parts (``cls_token``, ``proj``, ``blocks``, ``norm``,
        ``head``) as the last group, next to the classifier."""
        inner = getattr(self.backbone, "group_matcher", None)
        matcher = inner(coarse=coarse) if callable(inner) else {"stem": r"^$", "blocks": []}

        def under(pattern: str) -> str:
            return r"^backbone\.(?:" + pattern.replace("^", "") + ")"

        out: dict[str, Any] = {}
        for key, value in matcher.items():
            if isinstance(value, str):
                out[key] = under(value)
            else:
                out[key] = [(under(p), order) for p, order in value]
        if self.mode == "ca":
            blocks = out.get("blocks", [])
            blocks = [(blocks, None)] if isinstance(blocks, str) else list(blocks)
            out["blocks"] = blocks + [(r"^(?:cls_token|proj|blocks|norm|head)", (1_000_000,))]
        return out

    def class_attention_parts(self) -> tuple[nn.Module, str, FeatureTokens]:
        """(attention module, exact layout for :class:`~mixpro.ClsAttention`, the tokens module
        whose input reveals the grid)."""
        if self.mode == "ca_swin":
            blk = self.backbone.layers[-1].blocks[-1]
            return blk.attn, "qkv", blk.to_tokens
        return self.blocks[-1].attn, "q_k", self.to_tokens

    def token_grid(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """The attention grid ``(gh, gw)`` for images of ``image_size`` (multiples of
        :attr:`token_stride`)."""
        h, w = _checks.pair(image_size, "image_size")
        s = self.token_stride
        if h % s or w % s:
            raise ValueError(
                f"image_size {(h, w)} is not a multiple of the token stride {s}: the last "
                "feature map does not tile the image"
            )
        return h // s, w // s

    @property
    def grid_size(self) -> tuple[int, int]:
        """The attention grid at the backbone's configured input size."""
        pe = getattr(self.backbone, "patch_embed", None)
        size = getattr(pe, "img_size", None) or (
            self.pretrained_cfg.get("input_size") or (3, 224, 224))[-2:]
        return self.token_grid(tuple(int(v) for v in size))

    @property
    def patch_embed(self) -> nn.Module:
        pe = getattr(self.backbone, "patch_embed", None)
        if not isinstance(pe, nn.Module):
            raise AttributeError(f"{type(self.backbone).__name__} has no patch_embed")
        return pe

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    @property
    def feature_info(self) -> list[dict]:
        return self.backbone.feature_info

    def get_classifier(self) -> nn.Module:
        return self.backbone.get_classifier() if self.mode == "ca_swin" else self.head

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay by timm's optimizer factory."""
        nwd = getattr(self.backbone, "no_weight_decay", None)
        names = {"backbone." + n for n in (nwd() if callable(nwd) else ())}
        return names if self.mode == "ca_swin" else names | {"cls_token"}


def _timm_class(module: str, name: str) -> type | None:
    import importlib

    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _accepts(fn: object, names: tuple[str, ...]) -> bool:
    """``fn`` is callable with these keyword arguments."""
    if not callable(fn):
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return var_kw or all(n in params for n in names)


def _native_heads(model: nn.Module) -> int | None:
    """The head count of the model's last attention layer, if it has one."""
    heads = None
    for m in model.modules():
        n = getattr(m, "num_heads", None)
        if isinstance(n, int) and n > 0 and hasattr(m, "fused_attn"):
            heads = n
    return heads


def _default_heads(dim: int, native: int | None) -> int:
    """The model's own last-stage head count where it divides ``dim``, else the largest head
    count with heads of >= 32 channels (at least 1)."""
    if native is not None and dim % native == 0:
        return native
    best = 1
    for h in range(1, dim // 32 + 1):
        if dim % h == 0:
            best = h
    return best


def with_class_attention(
    model: nn.Module,
    *,
    mode: Mode = "ca",
    depth: int = 1,
    num_heads: int | None = None,
    embed_dim: int | None = None,
    mlp_ratio: float = 4.0,
    init_values: float = 1e-4,
    drop_path_rate: float = 0.0,
    num_classes: int | None = None,
) -> ClassAttentionClassifier:
    """Give a timm model a cls token read through class attention (see the module docstring).

    The model is modified in place and becomes ``.backbone`` of the result. The construction is
    deterministic in structure: the same call on a fresh timm model of the same configuration
    gives a model whose ``load_state_dict`` accepts this one's ``state_dict``.

    Args:
        model: a timm model whose last features form a token grid: Swin, PVT-v2, ConvNeXt,
            ResNet, ViTs (any ``global_pool``/``class_token``), most timm models with
            ``forward_intermediates``.
        mode: ``'ca'`` (a CaiT class-attention head, any such model) or ``'ca_swin'`` (the
            paper's CA-Swin: the last Swin block re-used as the class-attention block, no
            parameter added).
        depth: class-attention blocks (``'ca'``; CaiT uses 2).
        num_heads: heads of those blocks (``'ca'``); default: the model's last attention's
            head count if it divides the width, else heads of >= 32 channels.
        embed_dim: width of the head (``'ca'``); default the feature width capped at 768
            (ResNet-50's 2048 channels: +50 M parameters uncapped, +8.7 M at 768). When it
            differs from the feature width, a Linear projects the features first.
        mlp_ratio, init_values, drop_path_rate: of the CaiT blocks (``'ca'``; LayerScale init
            ``init_values``, stochastic depth rising linearly to ``drop_path_rate``).
        num_classes: default the model's ``num_classes`` (required when that is 0).

    Returns:
        a :class:`ClassAttentionClassifier` that :class:`mixpro.ClsAttention` reads exactly.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, ClassAttentionClassifier):
        raise TypeError("model already has a class-attention head")
    if _is_compiled(model) or unwrap_model(model) is not model:
        raise TypeError(
            f"model: pass the plain timm model, not a {type(model).__name__} wrapper; add the "
            "head first, then wrap (DDP) or compile"
        )
    mode = _checks.choice(mode, "mode", ("ca", "ca_swin"))
    depth = _checks_int(depth, "depth")
    if num_heads is not None:
        num_heads = _checks_int(num_heads, "num_heads")
    if embed_dim is not None:
        embed_dim = _checks_int(embed_dim, "embed_dim")
    mlp_ratio = _checks.positive(mlp_ratio, "mlp_ratio")
    init_values = _checks.positive(init_values, "init_values")
    drop_path_rate = _checks.probability(drop_path_rate, "drop_path_rate")
    if mode == "ca_swin":
        given = {k: v for k, v, d in (
            ("depth", depth, 1), ("num_heads", num_heads, None), ("embed_dim", embed_dim, None),
            ("mlp_ratio", mlp_ratio, 4.0), ("init_values", init_values, 1e-4),
            ("drop_path_rate", drop_path_rate, 0.0)) if v != d}
        if given:
            raise ValueError(
                f"mode='ca_swin' re-uses the last Swin block as it is: {sorted(given)} do not "
                "apply (use mode='ca' for a new head)"
            )
    classes = getattr(model, "num_classes", 0) if num_classes is None else num_classes
    if not classes:
        raise ValueError("num_classes: the model has num_classes=0; pass num_classes=")
    classes = _checks.num_classes(classes)
    return ClassAttentionClassifier(
        model, mode, num_classes=classes, depth=depth, num_heads=num_heads,
        embed_dim=embed_dim, mlp_ratio=mlp_ratio, init_values=init_values,
        drop_path_rate=drop_path_rate,
    )


def _checks_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def needs_class_attention(model: nn.Module) -> bool:
    """True when :class:`mixpro.ClsAttention` refuses ``model``: it has no cls→patch attention
    that drives its classifier, so PAL/TransMix need :func:`with_class_attention` first."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inner = getattr(model, "_orig_mod", model) if _is_compiled(model) else model
    try:
        _find_target(unwrap_model(inner), "auto")
    except NoClsAttentionError:
        return True
    return False


def check_mask_geometry(
    model_or_stride: nn.Module | int | tuple[int, int],
    patch_size: int | tuple[int, int],
    mask_scale: int | tuple[int, int],
    image_size: int | tuple[int, int],
) -> tuple[int, int]:
    """Check that MaskMix cells of ``mask_scale × patch_size`` px are whole attention tokens.

    Args:
        model_or_stride: the model (its ``token_stride`` or ``feature_info[-1]['reduction']``)
            or the token stride in pixels.
        patch_size: the model's patch embedding (4 for Swin), as given to MaskMix/MixPro.
        mask_scale: the cell side in patches.
        image_size: ``H`` or ``(H, W)``.

    Returns:
        the attention grid ``(gh, gw)``.

    Raises:
        ArgumentError (a ``ValueError``) whose ``argument`` is ``mask_scale`` (the message
        lists the values that fit) when a cell is not a whole number of tokens or the cells
        do not tile the image, ``image_size`` when the tokens do not tile it.
    """
    stride = _stride_of(model_or_stride)
    ph, pw = _checks.pair(patch_size, "patch_size")
    kh, kw = _checks.pair(mask_scale, "mask_scale")
    h, w = _checks.pair(image_size, "image_size")
    sh, sw = stride
    if h % sh or w % sw:
        raise _checks.ArgumentError(
            "image_size", f"{(h, w)} is not a multiple of the token stride {stride}: the "
            "attention grid does not tile the image")

    def fits(k: int, p: int, s: int, size: int) -> bool:
        return (k * p) % s == 0 and size % (k * p) == 0

    if not (fits(kh, ph, sh, h) and fits(kw, pw, sw, w)):
        ok = [k for k in range(1, max(h // ph, w // pw) + 1)
              if fits(k, ph, sh, h) and fits(k, pw, sw, w)]
        raise _checks.ArgumentError(
            "mask_scale", f"{(kh, kw)} × patch_size {(ph, pw)} = cells of "
            f"{(kh * ph, kw * pw)} px: not a whole number of the model's {stride}-px attention "
            f"tokens tiling {(h, w)}; mask_scale values that fit: {ok or 'none'}")
    return h // sh, w // sw


def _stride_of(model_or_stride: nn.Module | int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(model_or_stride, nn.Module):
        model = model_or_stride
        stride = getattr(model, "token_stride", None)
        if stride is None:
            info = getattr(unwrap_model(getattr(model, "_orig_mod", model)), "feature_info", None)
            stride = info[-1].get("reduction") if info else None
        if stride is None:
            raise TypeError(
                f"model_or_stride: {type(model).__name__} has no token_stride or feature_info; "
                "pass the token stride in pixels"
            )
        model_or_stride = stride
    return _checks.pair(model_or_stride, "model_or_stride")

