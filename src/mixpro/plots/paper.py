"""The paper's image figures, drawn from a model and a few images.

Owns:

* :func:`maskmix_attention_grid` — original pairs, the MaskMix mixed image and the model's
  cls attention on it, titled with λ_area, λ_attn, α and λ (paper Fig. 6).
* :func:`mask_strategies` — box (CutMix), block, random 1× and MaskMix k× masks on the same
  pair at the same τ (paper Fig. 4).
* :func:`transmix_vs_maskmix` — TransMix and MaskMix on the same pair with patch borders and
  the token sources drawn; red tokens hold pixels of both images (paper Fig. 1).

``normalize`` arguments map ``[0, 1]`` images to the model's input (e.g.
:class:`mixpro.data.factory.Normalize`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.colors import ListedColormap
from torch import nn

import mixpro
from mixpro import models
from mixpro.strategies import MASK_STRATEGIES, make_mask_strategy

from ._common import plt, save

__all__ = ["AttentionFigure", "mask_strategies", "maskmix_attention_grid", "transmix_vs_maskmix"]

Normalizer = Callable[[torch.Tensor], torch.Tensor]


# -- helpers for image figures -------------------------------------------------------------


def _show(ax, img: torch.Tensor, title: str = "", fontsize: float = 9) -> None:
    """Show a ``[0, 1]`` image ``(C, H, W)`` (grey for C = 1)."""
    arr = img.detach().cpu().clamp(0, 1)
    if arr.shape[0] == 1:
        ax.imshow(arr[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(arr.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def _grid_lines(ax, size: tuple[int, int], step: tuple[int, int], color="white", lw=0.6):
    h, w = size
    for y in range(0, h + 1, step[0]):
        ax.axhline(y - 0.5, color=color, lw=lw)
    for x in range(0, w + 1, step[1]):
        ax.axvline(x - 0.5, color=color, lw=lw)


def _labels(batch, classes: Sequence[str] | None, i: int) -> str:
    a, b = int(batch.labels[i]), int(batch.labels[batch.partner[i]])
    if classes:
        return f"{classes[a]} + {classes[b]}"
    return f"class {a} + class {b}"


def _lam_title(batch, i: int) -> str:
    parts = [f"λ_area={float(batch.lam_area[i]):.2f}"]
    if batch.lam_attn is not None:
        parts.append(f"λ_attn={float(batch.lam_attn[i]):.2f}")
    if batch.alpha is not None:
        parts.append(f"α={float(batch.alpha[i]):.2f}")
    if batch.lam is not None:
        parts.append(f"λ={float(batch.lam[i]):.2f}")
    return "\n".join([", ".join(parts[:2]), ", ".join(parts[2:])])


def _patch(model: nn.Module, patch_size: int | None) -> int:
    """MaskMix's patch: ``patch_size``, else the model's patch embedding."""
    p = patch_size if patch_size is not None else models.patch_size(model)
    if p is None:
        raise ValueError(f"{type(model).__name__} has no patch embedding: pass patch_size")
    return int(p)


def _token_grid(probe: mixpro.ClsAttention, model: nn.Module,
                images: torch.Tensor) -> tuple[int, int]:
    """The grid of the tokens the cls attention covers, from the probe's latest forward (the
    last stage's grid for a class-attention head, the patch grid for a ViT)."""
    grid = probe.grid or models.token_grid(model, tuple(images.shape[-2:]))
    if grid is None:
        raise ValueError(f"{type(model).__name__}: cannot tell the attention's token grid")
    return int(grid[0]), int(grid[1])


@torch.no_grad()
def _relabel(batch, model: nn.Module, probe, normalize: Normalizer) -> torch.Tensor:
    """Relabel ``batch`` with the model's attention on its normalised images (the probe's map
    must come from the forward on ``batch.images``); the batch keeps its ``[0, 1]`` images."""
    shown = batch.images
    batch.images = normalize(shown)
    try:
        logits = model(batch.images)
        batch.targets(logits, probe.attention)
    finally:
        batch.images = shown
    return probe.attention


@dataclass(frozen=True)
class AttentionFigure:
    """What Fig. 1 and Fig. 6 mix and draw.

    Attributes:
        images: ``(B, C, H, W)`` in [0, 1]; labels: ``(B,)``.
        model: the classifier whose cls attention is read (its probe is attached per figure).
        normalize: images in [0, 1] → the model's input.
        num_classes, classes: the label space and its names (None: ``class k``).
        mask_scale: MaskMix cells of ``mask_scale × patch_size`` px.
        seed: the mixers' generator seed.
        patch_size: MaskMix's unit (None: the model's patch embedding).
    """

    images: torch.Tensor
    labels: torch.Tensor
    model: nn.Module
    normalize: Normalizer
    num_classes: int
    mask_scale: int = 2
    classes: Sequence[str] | None = None
    seed: int = 0
    patch_size: int | None = None


# -- Fig. 6 --------------------------------------------------------------------------------


def maskmix_attention_grid(f: AttentionFigure, path: str | Path, *, beta: float = 4.0) -> Path:
    """Fig. 6: rows = image i, image j, MaskMix (MixPro) mixed image, cls attention overlay.

    ``images (2n, C, H, W)`` in [0, 1], ``labels (2n,)``; column ``i`` mixes sample ``i`` with
    sample ``2n-1-i``. Titles carry λ_area, λ_attn, α (cosine PAL) and λ of each mixed image.
    τ ~ Beta(``beta``, ``beta``) per pair (4: mostly 0.3–0.7, so both images show). MaskMix
    cells are ``mask_scale × patch_size`` px (default: the model's patch embedding); the
    attention is drawn on the grid it covers (the last stage's for a class-attention head).
    """
    images, labels, model, normalize = f.images, f.labels, f.model, f.normalize
    num_classes, mask_scale, classes, seed = f.num_classes, f.mask_scale, f.classes, f.seed
    n = images.shape[0] // 2
    g = torch.Generator().manual_seed(seed)
    mixer = mixpro.MixPro(num_classes=num_classes, patch_size=_patch(model, f.patch_size),
                          mask_scale=mask_scale, mode="elem", beta=beta, generator=g)
    model.eval()
    with mixpro.ClsAttention(model) as probe:
        batch = mixer(images, labels)
        attn = _relabel(batch, model, probe, normalize)
        gh, gw = _token_grid(probe, model, images)
    h, w = images.shape[-2:]
    fig, axes = plt.subplots(4, n, figsize=(2.6 * n, 11.4), squeeze=False)
    for c in range(n):
        j = int(batch.partner[c])
        _show(axes[0, c], images[c], f"i: {_name(classes, labels[c])}", 10)
        _show(axes[1, c], images[j], f"j: {_name(classes, labels[j])}", 10)
        _show(axes[2, c], batch.images[c], _lam_title(batch, c), 9)
        _show(axes[3, c], batch.images[c])
        amap = attn[c].view(1, 1, gh, gw)
        amap = torch.nn.functional.interpolate(amap, size=(h, w), mode="nearest")[0, 0]
        axes[3, c].imshow(amap.numpy(), cmap="jet", alpha=0.5, interpolation="nearest")
    for r, lab in enumerate(["image i", "image j", "MaskMix", "cls attention"]):
        axes[r, 0].set_ylabel(lab, fontsize=11)
    fig.suptitle(f"MaskMix ({mask_scale}× patch cells, τ ~ Beta({beta:g}, {beta:g})) mixed images "
                 "and the model's cls attention on them", fontsize=12)
    fig.tight_layout()
    return save(fig, path, tight=False)


# -- Fig. 4 --------------------------------------------------------------------------------


def mask_strategies(
    images: torch.Tensor,
    path: str | Path,
    *,
    patch_size: int,
    mask_scale: int = 2,
    ratio: float = 0.5,
    seed: int = 0,
    names: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Fig. 4, extended to every ablation strategy (:data:`mixpro.strategies.MASK_STRATEGIES`,
    or ``names``) and the generators of ``extra`` (title → mask generator: the Table 2 masks,
    :func:`mixpro.methods.table2_masks`): the same pair mixed by each at τ = ``ratio``.

    ``images (2, C, H, W)`` in [0, 1]. Per strategy: the pixel source (white = image i; for the
    shuffles a tile may come from another position of its image; grey = a blended cell) above
    the mixed image.
    """
    names = list(names or MASK_STRATEGIES)
    gens = {MASK_STRATEGIES[n].title.format(k=mask_scale):
            make_mask_strategy(n, patch_size=patch_size, mask_scale=mask_scale) for n in names}
    gens.update(extra or {})
    size = tuple(images.shape[-2:])
    partner = torch.tensor([1, 0])
    cols = min(6, len(gens) + 1)
    rows = -(-(len(gens) + 1) // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(2.6 * cols, 5.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    _show(axes[0, 0], images[0], "image i", 11)
    _show(axes[1, 0], images[1], "image j", 11)
    for n, (title, strat) in enumerate(gens.items(), start=1):
        r, c = 2 * (n // cols), n % cols
        g = torch.Generator().manual_seed(seed)
        mask = strat(torch.tensor([ratio]), size, device=torch.device("cpu"), generator=g)
        shown = mask.pixel_mask()  # bool; a soft mask (Puzzle-Mix's ½ cells): its shares
        shown = shown[0].float() if shown is not None else \
            mask.token_fraction(size)[0].view(1, *size)
        _show(axes[r, c], shown, f"{title}\nλ_area={float(mask.lam_area()[0]):.2f}", 9)
        _show(axes[r + 1, c], mask.apply(images, partner)[0])
        for ax in (axes[r, c], axes[r + 1, c]):
            ax.axis("on")
            _grid_lines(ax, size, (patch_size, patch_size), color="tab:gray", lw=0.4)
    fig.suptitle(f"Mask strategies at τ = {ratio} (white = from image i; grid = "
                 f"{patch_size}-px patches, MaskMix cells {mask_scale * patch_size} px)",
                 fontsize=12)
    fig.tight_layout()
    return save(fig, path, tight=False)


# -- Fig. 1 --------------------------------------------------------------------------------


def transmix_vs_maskmix(f: AttentionFigure, path: str | Path) -> Path:
    """Fig. 1: TransMix (CutMix box, attention λ) vs MixPro (MaskMix, PAL) on one pair.

    ``images (2, C, H, W)`` in [0, 1]. Top: mixed images with the borders of the tokens the
    cls attention reads (a ViT's patches; the last stage's cells for a class-attention head).
    Bottom: token sources (yellow = image i, blue = image j, red = pixels of both in one
    token). MaskMix cells are ``mask_scale × patch_size`` px (default: the model's patch).
    """
    images, labels, model, normalize = f.images, f.labels, f.model, f.normalize
    num_classes, mask_scale, classes, seed = f.num_classes, f.mask_scale, f.classes, f.seed
    p = _patch(model, f.patch_size)
    size = tuple(images.shape[-2:])
    mixers = {
        "TransMix (CutMix box)": mixpro.TransMix(
            mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=num_classes, patch_size=p,
            generator=torch.Generator().manual_seed(seed)),
        f"MixPro (MaskMix {mask_scale}×)": mixpro.MixPro(
            num_classes=num_classes, patch_size=p, mask_scale=mask_scale,
            generator=torch.Generator().manual_seed(seed)),
    }
    cmap = ListedColormap(["#3b6fd1", "#e0262b", "#f2c81b"])  # j, both, i
    fig, axes = plt.subplots(2, 3, figsize=(9.6, 8.6))
    _show(axes[0, 0], images[0], f"image i: {_name(classes, labels[0])}", 11)
    _show(axes[1, 0], images[1], f"image j: {_name(classes, labels[1])}", 11)
    model.eval()
    with mixpro.ClsAttention(model) as probe:
        for k, (name, mixer) in enumerate(mixers.items()):
            batch = mixer(images, labels)
            _relabel(batch, model, probe, normalize)
            gh, gw = _token_grid(probe, model, images)
            _show(axes[0, k + 1], batch.images[0], f"{name}\n{_lam_title(batch, 0)}", 10)
            _grid_lines(axes[0, k + 1], size, (size[0] // gh, size[1] // gw),
                        color="tab:orange", lw=0.6)
            frac = batch.token_fraction((gh, gw))[0].view(gh, gw)
            src = torch.where(frac >= 1 - 1e-6, 2, torch.where(frac <= 1e-6, 0, 1))
            mixed_tokens = int((src == 1).sum())
            axes[1, k + 1].imshow(src.numpy(), cmap=cmap, vmin=0, vmax=2,
                                  interpolation="nearest")
            _grid_lines(axes[1, k + 1], (gh, gw), (1, 1), color="white", lw=0.8)
            axes[1, k + 1].set_xticks([])
            axes[1, k + 1].set_yticks([])
            axes[1, k + 1].set_title(
                f"token sources: {mixed_tokens} of {gh * gw} tokens mix both", fontsize=10)
    fig.suptitle("TransMix vs MixPro on the same pair (yellow = i, blue = j, red = both)",
                 fontsize=12)
    fig.tight_layout()
    return save(fig, path, tight=False)


def _name(classes: Sequence[str] | None, label: torch.Tensor) -> str:
    return classes[int(label)] if classes else f"class {int(label)}"
