"""``mixpro figures``: the paper's image figures from a checkpoint and a few test images.

Owns the command's options (:class:`FigureOptions`), its checks (one-line
:class:`FigureError`) and :func:`make_figures`: it loads the checkpoint
(:mod:`mixpro.checkpoint`), picks images (:mod:`mixpro.data.factory`) and draws them
(:mod:`mixpro.plots.paper`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

import mixpro
from mixpro import models, options
from mixpro._checks import ArgumentError
from mixpro.checkpoint import load_model
from mixpro.data.factory import (
    EvalData,
    Normalize,
    checkpoint_data,
    checkpoint_stats,
    eval_data,
    holdout_of,
)
from mixpro.errors import UserError
from mixpro.options import SEED_MAX, flag, option
from mixpro.plots.paper import (
    AttentionFigure,
    mask_strategies,
    maskmix_attention_grid,
    transmix_vs_maskmix,
)

FIGURES = ("fig1", "fig4", "fig6")


class FigureError(UserError):
    """A user error of ``mixpro figures``."""


@dataclass(frozen=True)
class FigureOptions:
    """Options of ``mixpro figures`` (the CLI flags, same names), each declared once."""

    checkpoint: str | None = option(None, help="checkpoint for attention maps and λ_attn "
                                    "(needed by fig1, fig6)")
    data: str | None = option(None, help="'fashion-mnist' or an ImageFolder (default: the "
                              "checkpoint's training data, else fashion-mnist)")
    which: tuple[Literal[FIGURES], ...] = option(FIGURES, help="figures to draw")  # type: ignore[valid-type]
    pairs: int = option(5, ge=1, help="pairs shown in fig6")
    mask_scale: int | None = option(None, ge=1, help="MaskMix cell side in patches (default: "
                                    "the checkpoint's, else 2)")
    patch_size: int = option(4, ge=1, help="patch size for fig4 without --checkpoint")
    image_size: int = option(32, ge=1, help="image size for fig4 without --checkpoint")
    seed: int = option(0, ge=0, le=SEED_MAX, help="random seed (0..2**63-1)")
    out: str = option("eval_out", help="output folder")


def check_options(o: FigureOptions) -> None:
    """:class:`FigureError` naming the flag of a value out of range (before any work)."""
    options.check_flags(o, FigureError)


def _check_classes(o: FigureOptions, spec: str, data: EvalData, num_classes: int,
                   config: dict) -> None:
    """The images' labels must be the checkpoint's classes (the figures title them)."""
    n = len(data.classes)
    if n != num_classes:
        raise FigureError(f"--data {spec} has {n} classes but --checkpoint {o.checkpoint} "
                          f"predicts {num_classes}")
    want = config.get("classes")
    if isinstance(want, list) and [str(c) for c in want] != data.classes:
        i = next(i for i, (a, b) in enumerate(zip(map(str, want), data.classes, strict=True))
                 if a != b)
        raise FigureError(f"--data {spec} classes differ from --checkpoint {o.checkpoint}: "
                          f"class {i} is {data.classes[i]!r} in the data, {want[i]!r} in the "
                          "checkpoint")


@dataclass(frozen=True)
class _OnImages:
    """A mask generator for Fig. 4 from a mixer whose mask depends on the images: its draw on
    ``images`` (the figure's pair; the mixer's own λ, flip pairing = the figure's)."""

    mixer: object
    images: torch.Tensor

    labels: torch.Tensor | None = None  # for mixers whose draw reads them (Puzzle-Mix, TokenMix)

    def __call__(self, ratio: torch.Tensor, image_size: tuple[int, int], *,
                 device: torch.device, generator: torch.Generator | None = None):
        x = self.images.to(device)
        if self.labels is None:
            return self.mixer.draw(x).source
        return self.mixer.draw_labelled(x, self.labels.to(device)).source


def _pick(data: EvalData, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of distinct classes where possible, deterministic in ``seed``."""
    def item(i: int) -> tuple[torch.Tensor, int]:
        if data.batched:  # batch-indexed dataset (Fashion-MNIST)
            x, y = data.dataset[[i]]
            return x[0], int(y[0])
        x, y = data.dataset[i]
        return x, int(y)

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.dataset), generator=g)[: 50 * n].tolist()
    picked, seen = [], set()
    for i in order:
        x, y = item(i)
        if y not in seen or len(seen) >= len(data.classes):
            picked.append((x, y))
            seen.add(y)
        if len(picked) == n:
            break
    return torch.stack([x for x, _ in picked]), torch.tensor([y for _, y in picked])


def make_figures(options: FigureOptions) -> list[Path]:
    """Draw the figures ``options.which`` into ``options.out``; returns the files written.

    Raises:
        UserError: bad options, an unreadable checkpoint or missing data (one line).
    """
    o = options
    check_options(o)
    need = [f for f in o.which if f in ("fig1", "fig6")]
    if need and o.checkpoint is None:
        raise FigureError(f"{' and '.join(need)} need --checkpoint (attention maps, λ_attn)")
    model = config = None
    if o.checkpoint is not None:
        model, config = load_model(o.checkpoint)
        if config.get("multi_label"):
            raise FigureError(f"{o.checkpoint} is a multi-label checkpoint: the figures title "
                              "each image with one class (single-label data only)")
        size, chans = models.image_size(model), models.in_chans(model)
        # MaskMix's patch: the model's patch embedding, else (ConvNets) the recipe's patch_size
        patch = models.patch_size(model) or (config.get("recipe") or {}).get("patch_size")
        if patch is None:
            raise FigureError(f"{o.checkpoint}: the figures need a model with a patch embedding "
                              "or a recipe patch_size")
        try:
            mixpro.ClsAttention(model).remove()
        except mixpro.NoClsAttentionError as e:
            raise FigureError(f"{o.checkpoint}: {e.reason}") from None
    else:
        size, chans, patch = (o.image_size, o.image_size), 1, o.patch_size
    cfg = config or {}
    scale = int(o.mask_scale or cfg.get("mask_scale")
                or (cfg.get("recipe") or {}).get("mask_scale") or 2)
    if size[0] % (scale * patch) or size[1] % (scale * patch):
        raise FigureError(f"--mask-scale {scale} × patch {patch} does not tile {size}")
    if model is not None and getattr(model, "token_stride", None) is not None:
        try:  # a class-attention head: MaskMix cells must be whole last-stage tokens
            mixpro.check_mask_geometry(model, patch, scale, size)
        except ArgumentError as e:
            raise FigureError(f"{o.checkpoint}: {e.renamed(flag(e.argument))}"
                              ) from None
    recipe = (config or {}).get("recipe") or {}
    spec = checkpoint_data(o.data, config, o.checkpoint)
    data = eval_data(spec, img_size=size, in_chans=chans, split=recipe.get("val_split"),
                     holdout=holdout_of(recipe))  # a checkpoint's own classes only
    out = Path(o.out)
    if out.exists() and not out.is_dir():
        raise FigureError(f"--out {out} exists and is not a folder")
    if data.multi_label:
        raise FigureError(f"{spec} is multi-label data: the figures title "
                          "each image with one class (single-label data only)")
    if model is not None:
        _check_classes(o, spec, data, int(model.num_classes), config)
    images, labels = _pick(data, max(2 * o.pairs, 2), o.seed)
    written = []
    if model is not None:
        norm = Normalize(*checkpoint_stats(config, chans, getattr(model, "pretrained_cfg", None)))

        def figure(x: torch.Tensor, y: torch.Tensor) -> AttentionFigure:
            return AttentionFigure(x, y, model, norm, num_classes=model.num_classes,
                                   mask_scale=scale, classes=data.classes, seed=o.seed,
                                   patch_size=patch)
    if "fig6" in o.which:
        written.append(maskmix_attention_grid(figure(images, labels),
                                              out / "fig6_maskmix_attention.png"))
    if "fig4" in o.which:
        from mixpro.methods import Context, MixOptions, table2_masks

        table2 = table2_masks(MixOptions(), Context(2, patch, torch.Generator()))
        extra = {f"Table 2: {k}": v for k, v in table2.items()}
        saliency = mixpro.SaliencyMix(num_classes=2, generator=torch.Generator().manual_seed(
            o.seed))  # its box depends on the images: drawn on the figure's pair
        extra["Table 2: saliencymix"] = _OnImages(saliency, images[:2])
        if model is not None and hasattr(model, "num_prefix_tokens"):
            # a ViT checkpoint: Puzzle-Mix's model (its saliency) and TokenMix's teacher
            gen = torch.Generator().manual_seed(o.seed)
            pair = norm(images[:2])
            extra["Table 2: puzzlemix (this model)"] = _OnImages(mixpro.PuzzleMix(
                num_classes=model.num_classes, model=model, patch_size=patch, generator=gen,
                mean=[float(v) for v in norm.mean], std=[float(v) for v in norm.std]),
                pair, labels[:2])
            extra["Table 2: tokenmix (this model as teacher)"] = _OnImages(mixpro.TokenMix(
                num_classes=model.num_classes, teacher=model, patch_size=patch,
                generator=gen), pair, labels[:2])
        written.append(mask_strategies(images[:2], out / "fig4_mask_strategies.png",
                                       patch_size=patch, mask_scale=scale, seed=o.seed,
                                       extra=extra))
    if "fig1" in o.which:
        written.append(transmix_vs_maskmix(figure(images[:2], labels[:2]),
                                           out / "fig1_transmix_vs_maskmix.png"))
    return written


__all__ = ["FIGURES", "FigureError", "FigureOptions", "check_options", "make_figures"]
