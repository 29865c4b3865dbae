"""Helper models of a mixer: Attentive-CutMix's extractor, TokenMix's teacher, Puzzle-Mix's own
model. Owns how they are run (:func:`evaluating`: eval mode for the duration, then the mode
they had; :func:`frozen`: no parameter ever gets a gradient) and how their maps are read
(:func:`feature_map`: a stage's ``(B, C, h, w)`` map of any timm model;
:func:`class_activation_map`: per-location class logits ``(B, K, h, w)``).

A helper is given to the mixer at construction and moved to the images' device on first use;
it is never in the optimizer, gets no probe hooks, and (extractor, teacher) runs under
``no_grad``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .attention import unwrap_model

__all__ = ["class_activation_map", "evaluating", "feature_map", "frozen"]


def frozen(model: nn.Module | None, name: str) -> nn.Module:
    """``model`` with ``requires_grad`` off for every parameter (a helper that must never
    learn); a clear error naming ``name`` if it is not a module."""
    if not isinstance(model, nn.Module):
        raise _checks.ArgumentTypeError(
            name, f"must be a torch.nn.Module (e.g. a timm model), got {type(model).__name__}")
    return model.requires_grad_(False)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the duration, then back in the mode it had (its BatchNorm
    statistics never move: OpenMixup's Attentive-CutMix never sets its ResNet to eval)."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` (moved once, in place, when its parameters are elsewhere)."""
    p = next(iter(model.parameters()), None)
    if p is not None and p.device != device:
        model.to(device)
    return model


def _tokens_to_map(inner: nn.Module, tokens: torch.Tensor, image_size: tuple[int, int],
                   name: str) -> torch.Tensor:
    """A ViT's ``(B, P+N, D)`` output tokens as the ``(B, D, gh, gw)`` map of its patches."""
    prefix = int(getattr(inner, "num_prefix_tokens", 0))
    pe = getattr(inner, "patch_embed", None)
    feat = getattr(pe, "dynamic_feat_size", None)
    if callable(feat):
        gh, gw = (int(v) for v in feat(tuple(image_size)))
    else:
        grid = getattr(pe, "grid_size", None)
        if grid is None:
            raise _checks.ArgumentError(
                name, f"gives tokens {tuple(tokens.shape)} without a patch grid "
                      f"({type(inner).__name__} has no patch_embed.grid_size)")
        gh, gw = int(grid[0]), int(grid[1])
    patches = tokens[:, prefix:]
    if patches.shape[1] != gh * gw:
        raise _checks.ArgumentError(
            name, f"gives {patches.shape[1]} patch tokens, not its {gh}x{gw} grid")
    return patches.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)


def feature_map(model: nn.Module, images: torch.Tensor, *, stage: int = -1,
                name: str = "extractor") -> torch.Tensor:
    """The ``(B, C, h, w)`` feature map of ``model`` on ``images`` (run as it is: callers use
    :func:`evaluating` and ``no_grad``).

    ``stage=-1``: the last stage (``forward_features``; a ViT's output tokens as their patch
    grid). ``stage >= 0``: that entry of timm's ``forward_intermediates`` (ResNets: 0 is the
    stem, 1-4 the four stages; ViTs: the blocks).
    """
    inner = unwrap_model(model)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    if stage >= 0:
        if not hasattr(inner, "forward_intermediates"):
            raise _checks.ArgumentError(
                name, f"({type(inner).__name__}) has no forward_intermediates for stage {stage}")
        try:
            out = inner.forward_intermediates(images, indices=[stage], intermediates_only=True)
        except (AssertionError, IndexError, ValueError) as e:
            raise _checks.ArgumentError(
                name, f"({type(inner).__name__}) has no stage {stage}: {e}") from None
        out = out[0]
    else:
        if not hasattr(inner, "forward_features"):
            raise _checks.ArgumentError(
                name, f"must be a timm model with forward_features, got {type(inner).__name__}")
        out = inner.forward_features(images)
    if out.dim() == 3:
        out = _tokens_to_map(inner, out, size, name)
    if out.dim() != 4:
        raise _checks.ArgumentError(
            name, f"gives features of shape {tuple(out.shape)}, not a (B, C, h, w) map")
    return out


def class_activation_map(model: nn.Module, images: torch.Tensor, *, name: str = "teacher"
                         ) -> torch.Tensor:
    """Per-location class logits ``(B, K, h, w)`` of a classifier on ``images``: a CNN's
    linear classifier applied as a 1×1 convolution over its last map (``forward_features``),
    a ViT's ``fc_norm`` + ``head`` applied to each patch token (TokenMix's teacher maps, as
    TokenLabeling computes them from its NFNet). CNNs whose head is more than a global pool
    and a Linear layer (e.g. ConvNeXt's pre-logits norm) are read without that extra part."""
    inner = unwrap_model(model)
    head = inner.get_classifier() if hasattr(inner, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        raise _checks.ArgumentError(
            name, f"must be a timm classifier whose get_classifier() is a Linear layer, got "
                  f"{type(inner).__name__} with {type(head).__name__}")
    feats = inner.forward_features(images)
    if feats.dim() == 3:  # ViT tokens: the head on every patch token
        fc_norm = getattr(inner, "fc_norm", None)
        tokens = fc_norm(feats) if isinstance(fc_norm, nn.Module) else feats
        grid = _tokens_to_map(inner, tokens, (int(images.shape[-2]), int(images.shape[-1])),
                              name)
        out = torch.einsum("bdhw,kd->bkhw", grid, head.weight)
        return out if head.bias is None else out + head.bias.view(1, -1, 1, 1)
    if feats.dim() != 4 or feats.shape[1] != head.in_features:
        raise _checks.ArgumentError(
            name, f"gives features {tuple(feats.shape)} that its classifier "
                  f"({head.in_features} inputs) cannot read per location")
    return F.conv2d(feats, head.weight[:, :, None, None], head.bias)
