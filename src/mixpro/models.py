"""Building the timm model a run or a checkpoint describes, and reading its geometry.

Owns: :func:`create_model` (a timm name + keywords → the model, with the input size, channels
and patch size a recipe asks for; ConvNets that take no ``img_size`` get none),
:func:`build_model` (the same from a checkpoint's model description), and the geometry
helpers every app uses (:func:`patch_size`, :func:`image_size`, :func:`in_chans`).
Nothing here downloads: models are built with ``pretrained=False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
from torch import nn

from .errors import UserError


class ModelError(UserError):
    """An unknown timm name or keywords the model does not take."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def create_model(
    name: str,
    *,
    num_classes: int,
    img_size: int | None = None,
    in_chans: int | None = None,
    patch_size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    **train_kwargs: float,
) -> tuple[nn.Module, dict[str, Any]]:
    """``timm.create_model(name, pretrained=False, ...)`` with the recipe's geometry.

    Returns the model and the keywords that describe it (what :func:`build_model` needs to
    rebuild it: ``model_kwargs`` plus ``img_size``/``in_chans``/``patch_size`` where the model
    takes them). ``train_kwargs`` (``drop_path_rate``, ``drop_rate``) are used but not recorded.

    Raises:
        ModelError: unknown name, or keywords the model refuses (one line).
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
    try:
        try:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs,
                                      **train_kwargs)
        except TypeError as e:
            if "img_size" not in str(e) and "patch_size" not in str(e):
                raise
            # ConvNets take no img_size / patch_size
            kwargs = {k: v for k, v in kwargs.items() if k not in ("img_size", "patch_size")}
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs,
                                      **train_kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise ModelError(f"cannot build model {name} with {kwargs}: {_first_line(e)}") from None
    return model, kwargs


def build_model(description: Mapping[str, Any]) -> nn.Module:
    """The model a checkpoint's ``config`` describes: ``{"model": timm name, "model_kwargs":
    {...}, "num_classes": K}`` (``num_classes`` optional), with random weights.

    Raises:
        ModelError: the description names no timm model or does not build.
    """
    arch = description.get("model")
    if not isinstance(arch, str):
        raise ModelError("the model description must name a timm model ('model')")
    kwargs = dict(description.get("model_kwargs") or {})
    if "num_classes" in description:
        kwargs["num_classes"] = int(description["num_classes"])
    try:
        return timm.create_model(arch, pretrained=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - unknown name / bad kwargs from a file
        raise ModelError(f"cannot build {arch}: {_first_line(e)}") from None


def patch_size(model: nn.Module) -> int | None:
    """Side of the model's patch embedding (``patch_embed.patch_size``), None if it has none."""
    ps = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if ps is None:
        return None
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


__all__ = ["ModelError", "build_model", "create_model", "image_size", "in_chans", "patch_size"]
