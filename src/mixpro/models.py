"""Building the timm model a run or a checkpoint describes, and reading its geometry.

Owns: :func:`create_model` (a timm name + keywords → the model, with the input size, channels
and patch size a recipe asks for; ConvNets that take no ``img_size`` get none, and their
``pretrained_cfg['input_size']`` is set to the recipe's instead), the class-attention head a
recipe's ``cls_head`` gives a model (:func:`resolve_cls_head`, :func:`add_cls_head`),
:func:`build_model` (the same from a checkpoint's model description, head included), and the
geometry helpers every app uses (:func:`patch_size`, :func:`image_size`, :func:`in_chans`,
:func:`token_grid`). Nothing here downloads: ``pretrained=True`` loads timm's weights from the
local Hugging Face / torch hub cache only (offline, as with ``HF_HUB_OFFLINE=1``).

A model description (the ``config`` of a checkpoint) is ``{"model": timm name,
"model_kwargs": {...}, "num_classes": K, "cls_head": None | {"mode": "ca" | "ca_swin",
...}}``; ``cls_head`` holds the keywords of :func:`mixpro.with_class_attention` that rebuild
the head (missing: no head, as in checkpoints written before heads existed).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Mapping
from typing import Any

import timm
from torch import nn

from .errors import UserError, first_line
from .heads import ClassAttentionClassifier, needs_class_attention, with_class_attention

# values of the recipe key ``cls_head``
CLS_HEADS = ("auto", "ca", "ca_swin", "none")


class ModelError(UserError):
    """An unknown timm name or keywords the model does not take (``keywords_refused``: the
    model's constructor refused a keyword, a ``TypeError``)."""

    def __init__(self, message: str, *, keywords_refused: bool = False) -> None:
        super().__init__(message)
        self.keywords_refused = keywords_refused



def create_model(
    name: str,
    *,
    num_classes: int,
    img_size: int | None = None,
    in_chans: int | None = None,
    patch_size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    pretrained: bool = False,
    **train_kwargs: float,
) -> tuple[nn.Module, dict[str, Any]]:
    """``timm.create_model(name, pretrained=..., ...)`` with the recipe's geometry.

    Returns the model and the keywords that describe it (what :func:`build_model` needs to
    rebuild it: ``model_kwargs`` plus ``img_size``/``in_chans``/``patch_size`` where the model
    takes them). ``train_kwargs`` (``drop_path_rate``, ``drop_rate``) are used but not recorded.
    ``pretrained``: timm's weights for ``name`` from the local cache, never downloaded (timm
    adapts the input channels and patch/position embeddings, and drops a classifier made for
    another class count: see :func:`pretrained_report`).

    Raises:
        ModelError: unknown name, keywords the model refuses, or (``pretrained``) weights that
            are not cached or do not fit (one line).
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f" (e.g. {', '.join(close)})" if close else ""
        raise ModelError(f"unknown model {name!r}: not a timm model name{hint}")
    kwargs = dict(model_kwargs or {})
    if img_size is not None:
        kwargs["img_size"] = img_size
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if patch_size is not None:
        kwargs["patch_size"] = patch_size
    source = _pretrained_source(name) if pretrained else ""
    try:
        with _hub_offline() if pretrained else contextlib.nullcontext():
            try:
                model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                                          **kwargs, **train_kwargs)
            except TypeError as refused:
                # ConvNets take no img_size / patch_size: without them, or the first error
                plain = {k: v for k, v in kwargs.items() if k not in ("img_size", "patch_size")}
                if plain == kwargs:
                    raise
                try:
                    model = timm.create_model(name, pretrained=pretrained,
                                              num_classes=num_classes, **plain, **train_kwargs)
                except TypeError:
                    raise refused from None
                kwargs = plain
    except OSError:  # huggingface_hub's LocalEntryNotFoundError: not in the cache
        if not pretrained:
            raise
        raise ModelError(
            f"pretrained: timm's weights for {name} ({source}) are not in the local cache; "
            "mixpro train never downloads: fetch them once where there is a network, or give "
            "a local file as initial_checkpoint") from None
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        weights = " and timm's pretrained weights" if pretrained else ""
        raise ModelError(f"cannot build model {name} with {kwargs}{weights}: "
                         f"{_load_error(e)}", keywords_refused=isinstance(e, TypeError)
                         ) from None
    if img_size is not None and "img_size" not in kwargs:
        _set_input_size(model, img_size)
    return model, kwargs


def _load_error(e: BaseException) -> str:
    """The first line of ``e``, with the first offending tensor of a ``load_state_dict``
    error (whose first line only names the model)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[1]}"
    return first_line(e)


def _pretrained_source(name: str) -> str:
    """Where timm takes the pretrained weights of ``name`` from (its Hugging Face hub id, else
    its URL, which must be in the torch hub cache); :class:`ModelError` if it has none."""
    try:
        cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name) else None
    except RuntimeError as e:  # e.g. an unknown pretrained tag
        raise ModelError(f"pretrained: {first_line(e)} in {name!r}") from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelError(f"pretrained: timm has no pretrained weights for {name!r}; list those "
                         "that have with timm.list_pretrained()")
    if cfg.hf_hub_id:
        return f"Hugging Face hub {cfg.hf_hub_id}"
    if cfg.file:
        return f"file {cfg.file}"
    from urllib.parse import urlparse

    import torch.hub

    cached = os.path.join(torch.hub.get_dir(), "checkpoints",
                          os.path.basename(urlparse(cfg.url).path))
    if not os.path.isfile(cached):  # timm would download it
        raise ModelError(f"pretrained: timm's weights for {name} ({cfg.url}) are not in the "
                         f"local cache ({cached}); mixpro train never downloads: fetch them "
                         "once where there is a network, or give a local file as "
                         "initial_checkpoint")
    return f"torch hub cache {cached}"


@contextlib.contextmanager
def _hub_offline():
    """Hugging Face hub offline mode (``HF_HUB_OFFLINE=1``) for the duration: weights come from
    the local cache or not at all."""
    import huggingface_hub.constants as hub

    before, env = hub.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    hub.HF_HUB_OFFLINE, os.environ["HF_HUB_OFFLINE"] = True, "1"
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def pretrained_report(model: nn.Module, num_classes: int) -> str:
    """One line on the timm weights a ``pretrained=True`` model was built with, and whether
    its classifier was re-initialised for ``num_classes``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture", "the model")
    tag = f".{cfg['tag']}" if cfg.get("tag") else ""
    then = cfg.get("num_classes")
    head = (f"; head re-initialised for {num_classes} classes (weights have {then})"
            if then and then != num_classes else "")
    return f"pretrained: loaded timm's weights of {name}{tag}{head}"


def _set_input_size(model: nn.Module, img_size: int | tuple[int, int]) -> None:
    """Record the input size of a model that takes no ``img_size`` (ConvNets) in its
    ``pretrained_cfg['input_size']``, where :func:`image_size` (and timm) read it."""
    if getattr(getattr(model, "patch_embed", None), "img_size", None) is not None:
        return
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg["input_size"] = (in_chans(model), int(h), int(w))
    model.pretrained_cfg = cfg
    if hasattr(model, "default_cfg"):
        model.default_cfg = cfg


def is_swin(model: nn.Module) -> bool:
    """A timm Swin Transformer (v1, ``swin_*``): the models CA-Swin (``'ca_swin'``) converts."""
    from timm.models.swin_transformer import SwinTransformer

    return isinstance(model, SwinTransformer)


def resolve_cls_head(model: nn.Module, cls_head: str, *, needs_attention: bool
                     ) -> dict[str, Any] | None:
    """The class-attention head that the recipe key ``cls_head`` gives the plain ``model``:
    ``{"mode": "ca" | "ca_swin"}`` or None (no head).

    ``'auto'``: a head only when the method ``needs_attention`` and the model has no cls
    attention (:func:`mixpro.needs_class_attention`): ``'ca_swin'`` for Swin (v1), ``'ca'``
    for any other model. ``'ca'``/``'ca_swin'``: always. ``'none'``: never.

    Raises:
        ModelError: an unknown ``cls_head``, or ``'ca_swin'`` for a model that is not a Swin.
    """
    if cls_head not in CLS_HEADS:
        raise ModelError(f"cls_head must be one of {', '.join(CLS_HEADS)}, got {cls_head!r}")
    if cls_head == "none":
        return None
    if cls_head == "auto":
        if not (needs_attention and needs_class_attention(model)):
            return None
        cls_head = "ca_swin" if is_swin(model) else "ca"
    if cls_head == "ca_swin" and not is_swin(model):
        raise ModelError(
            f"cls_head ca_swin re-uses the last block of a timm Swin Transformer (swin_*), and "
            f"this model is a {type(model).__name__}: use cls_head ca (a new class-attention "
            "head, any model) or auto")
    return {"mode": cls_head}


def add_cls_head(model: nn.Module, head: Mapping[str, Any] | None
                 ) -> tuple[nn.Module, dict[str, Any] | None]:
    """``model`` with the class-attention head ``head`` describes (``{"mode": ..., **keywords
    of mixpro.with_class_attention}``; None: the model itself).

    Returns the model and the head's full description (``'ca'``: mode, depth, num_heads,
    embed_dim, mlp_ratio, resolved from the built head), what :func:`build_model` rebuilds it
    from. Raises :class:`ModelError` (one line) when the head does not fit the model.
    """
    if not head:
        return model, None
    spec = dict(head)
    mode = spec.pop("mode", None)
    try:
        wrapped = with_class_attention(model, mode=mode, **spec)
    except (TypeError, ValueError) as e:
        raise ModelError(f"cannot add the class-attention head {dict(head)} to "
                         f"{type(model).__name__}: {first_line(e)}") from None
    desc: dict[str, Any] = {"mode": mode, **spec}
    if mode == "ca":
        default_ratio = inspect.signature(with_class_attention).parameters["mlp_ratio"].default
        desc.update(depth=len(wrapped.blocks), num_heads=int(wrapped.blocks[-1].attn.num_heads),
                    embed_dim=int(wrapped.num_features),
                    mlp_ratio=float(spec.get("mlp_ratio", default_ratio)))
    return wrapped, desc


def build_model(description: Mapping[str, Any]) -> nn.Module:
    """The model a checkpoint's ``config`` describes: ``{"model": timm name, "model_kwargs":
    {...}, "num_classes": K, "cls_head": None | {"mode": ..., ...}}`` (``num_classes`` and
    ``cls_head`` optional), with random weights. A model that takes no ``img_size`` gets the
    ``img_size`` of the description's ``recipe`` as its ``pretrained_cfg['input_size']``.

    Raises:
        ModelError: the description names no timm model or does not build.
    """
    arch = description.get("model")
    if not isinstance(arch, str):
        raise ModelError("the model description must name a timm model ('model')")
    kwargs = dict(description.get("model_kwargs") or {})
    if "num_classes" in description:
        kwargs["num_classes"] = int(description["num_classes"])
    head = description.get("cls_head")
    if head is not None and not (isinstance(head, Mapping) and head.get("mode")):
        raise ModelError(f"cls_head of the model description must be null or a mapping with "
                         f"a 'mode', got {head!r}")
    try:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - unknown name / bad kwargs from a file
        raise ModelError(f"cannot build {arch}: {first_line(e)}") from None
    size = (description.get("recipe") or {}).get("img_size")
    if isinstance(size, int) and "img_size" not in kwargs:
        _set_input_size(model, size)
    return add_cls_head(model, head)[0]


def set_fused_attention(model: nn.Module, fused: bool) -> int:
    """Switch timm's fused attention (``scaled_dot_product_attention``) on or off in every
    attention module of ``model`` (those with a boolean ``fused_attn``: timm's ``Attention``
    and its kin, mixpro's class-attention heads). Both ways compute the same softmax
    attention; which is faster depends on the token count and the device. Returns how many
    modules were set."""
    count = 0
    for module in model.modules():
        if isinstance(getattr(module, "fused_attn", None), bool):
            module.fused_attn = bool(fused)
            count += 1
    return count


def patch_size(model: nn.Module) -> int | None:
    """Pixels per token side of the model's patch embedding (``patch_embed.patch_size``; for
    a hybrid ViT, timm's ``HybridEmbed``, times its CNN stem's stride: ``feat_ratio``), None
    if it has none."""
    pe = getattr(model, "patch_embed", None)
    ps = getattr(pe, "patch_size", None)
    if ps is None:
        return None
    ratio = getattr(pe, "feat_ratio", None)
    if callable(ratio):
        try:
            ps = ratio(as_scalar=False)
        except TypeError:  # another signature: keep patch_size
            pass
    return int(ps[0]) if isinstance(ps, tuple | list) else int(ps)


def in_chans(model: nn.Module) -> int:
    """Input channels: ``patch_embed.proj`` of a ViT, else the first conv, else 3."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if proj is not None and hasattr(proj, "in_channels"):
        return int(proj.in_channels)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return 3


def token_grid(model: nn.Module, image_size: tuple[int, int] | None = None
               ) -> tuple[int, int] | None:
    """The grid ``(gh, gw)`` of the tokens the model's cls attention reads, for
    ``image_size`` (default :func:`image_size`): a class-attention head's last-stage grid
    (``token_grid``), else ``patch_embed.grid_size`` (ViTs); None if the model has neither."""
    if isinstance(model, ClassAttentionClassifier):
        return model.token_grid(image_size or _image_size(model))
    pe = getattr(model, "patch_embed", None)
    if image_size is not None:
        feat = getattr(pe, "dynamic_feat_size", None)
        if callable(feat):
            gh, gw = feat(tuple(image_size))
            return int(gh), int(gw)
    grid = getattr(pe, "grid_size", None)
    return None if grid is None else (int(grid[0]), int(grid[1]))


def image_size(model: nn.Module) -> tuple[int, int]:
    """Input ``(H, W)``: ``patch_embed.img_size`` of a ViT, else the timm ``pretrained_cfg``'s
    ``input_size``, else 224²."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None:
        return int(size[0]), int(size[1])
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return int(cfg["input_size"][1]), int(cfg["input_size"][2])
    return (224, 224)


_image_size = image_size


__all__ = ["CLS_HEADS", "ModelError", "add_cls_head", "build_model", "create_model",
           "image_size", "in_chans", "is_swin", "patch_size", "resolve_cls_head", "token_grid"]
