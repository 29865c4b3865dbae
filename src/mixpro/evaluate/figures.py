"""Evaluation and paper figures (PNG, matplotlib Agg), and the ``mixpro figures`` command.

Owns every PNG of the evaluation app:

* :func:`occlusion_curves` — accuracy vs information loss, one panel per PatchDrop mode, one
  line (mean ± std band) per checkpoint (paper Fig. 3).
* :func:`maskmix_attention_grid` — original pairs, the MaskMix mixed image and the model's
  cls attention on it, titled with λ_area, λ_attn, α and λ (paper Fig. 6).
* :func:`mask_strategies` — box (CutMix), block, random 1× and MaskMix k× masks on the same
  pair at the same τ (paper Fig. 4).
* :func:`transmix_vs_maskmix` — TransMix and MaskMix on the same pair with patch borders and
  the token sources drawn; red tokens hold pixels of both images (paper Fig. 1).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from torch import nn  # noqa: E402

import mixpro  # noqa: E402
from mixpro.masks import BlockMasks, BoxMasks, GridMasks  # noqa: E402

from .run import (  # noqa: E402
    CheckpointError,
    DatasetError,
    Normalize,
    build_data,
    image_size,
    in_chans,
    load_checkpoint_model,
    norm_stats,
)

__all__ = [
    "FIGURES",
    "add_arguments",
    "main",
    "mask_strategies",
    "maskmix_attention_grid",
    "occlusion_curves",
    "run",
    "transmix_vs_maskmix",
]

MODE_TITLES = {
    "random": "Random PatchDrop",
    "salient": "Salient (foreground) PatchDrop",
    "non_salient": "Non-salient (background) PatchDrop",
}


# -- occlusion curves ----------------------------------------------------------------------


def occlusion_curves(results: Sequence[dict], path: str | Path, *, title: str = "") -> Path:
    """Fig. 3: one panel per PatchDrop mode; x = information loss (%), y = top-1 (%).

    ``results``: ``mixpro eval`` result dicts with ``name`` and ``occlusion`` (see
    :func:`mixpro.evaluate.occlusion.occlusion_sweep`).
    """
    runs = [r for r in results if "occlusion" in r]
    modes = [m for m in MODE_TITLES if any(m in r["occlusion"]["curves"] for r in runs)]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 4.4), squeeze=False)
    markers = "osD^vP*X"
    for ax, mode in zip(axes[0], modes, strict=True):
        for i, r in enumerate(runs):
            pts = r["occlusion"]["curves"].get(mode)
            if not pts:
                continue
            x = np.array([100 * p["info_loss"] for p in pts])
            y = np.array([100 * p["acc_mean"] for p in pts])
            s = np.array([100 * p["acc_std"] for p in pts])
            line, = ax.plot(x, y, marker=markers[i % len(markers)], ms=5, lw=1.8,
                            label=r["name"])
            if s.any():
                ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(MODE_TITLES[mode], fontsize=12)
        ax.set_xlabel("information loss (%)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_xlim(-2, 102)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize=10,
               frameon=False)
    occ = runs[0]["occlusion"] if runs else {}
    grid = occ.get("grid", ["?", "?"])
    px = occ.get("patch_px", ["?", "?"])
    sub = (f"{grid[0]}×{grid[1]} patches of {px[0]}×{px[1]} px, {occ.get('num_images')} "
           f"images, random: mean ± std of {occ.get('repeats')} draws, saliency: "
           f"{occ.get('saliency', 'own cls attention')}")
    fig.suptitle(f"Robustness to occlusion — {title}\n{sub}" if title else sub, fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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


def _patch(model: nn.Module) -> tuple[int, int]:
    ps = model.patch_embed.patch_size
    return int(ps[0]), int(ps[1])


@torch.no_grad()
def _relabel(batch, model: nn.Module, probe, normalize) -> torch.Tensor:
    logits = model(normalize(batch.images))
    batch.targets(logits, probe.attention)
    return probe.attention


# -- Fig. 6 --------------------------------------------------------------------------------


def maskmix_attention_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    model: nn.Module,
    normalize,
    path: str | Path,
    *,
    num_classes: int,
    mask_scale: int = 2,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    beta: float = 4.0,
) -> Path:
    """Fig. 6: rows = image i, image j, MaskMix (MixPro) mixed image, cls attention overlay.

    ``images (2n, C, H, W)`` in [0, 1], ``labels (2n,)``; column ``i`` mixes sample ``i`` with
    sample ``2n-1-i``. Titles carry λ_area, λ_attn, α (cosine PAL) and λ of each mixed image.
    τ ~ Beta(``beta``, ``beta``) per pair (4: mostly 0.3–0.7, so both images show).
    """
    n = images.shape[0] // 2
    g = torch.Generator().manual_seed(seed)
    mixer = mixpro.MixPro(num_classes=num_classes, patch_size=_patch(model),
                          mask_scale=mask_scale, mode="elem", beta=beta, generator=g)
    model.eval()
    with mixpro.ClsAttention(model) as probe:
        batch = mixer(images, labels)
        attn = _relabel(batch, model, probe, normalize)
    gh, gw = model.patch_embed.grid_size
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
    return _save(fig, path)


# -- Fig. 4 --------------------------------------------------------------------------------


def mask_strategies(
    images: torch.Tensor,
    path: str | Path,
    *,
    patch_size: int,
    mask_scale: int = 2,
    ratio: float = 0.5,
    seed: int = 0,
) -> Path:
    """Fig. 4: the same pair mixed by box, block, random 1× and MaskMix ``k×`` masks at τ.

    ``images (2, C, H, W)`` in [0, 1]. Top row: the mask (white = image i); bottom: the mix.
    """
    strategies = {
        "Region (CutMix box)": BoxMasks(),
        "Block (BEiT)": BlockMasks(patch=patch_size),
        f"Random 1× ({patch_size} px)": GridMasks(patch_size),
        f"MaskMix {mask_scale}× ({mask_scale * patch_size} px)": GridMasks(mask_scale * patch_size),
    }
    size = tuple(images.shape[-2:])
    partner = torch.tensor([1, 0])
    fig, axes = plt.subplots(2, len(strategies) + 2, figsize=(2.7 * (len(strategies) + 2), 6.2))
    _show(axes[0, 0], images[0], "image i", 11)
    _show(axes[0, 1], images[1], "image j", 11)
    axes[1, 0].axis("off")
    axes[1, 1].axis("off")
    for k, (name, strat) in enumerate(strategies.items()):
        g = torch.Generator().manual_seed(seed)
        mask = strat(torch.tensor([ratio]), size, device=torch.device("cpu"), generator=g)
        pm = mask.pixel_mask()[0].float()
        mixed = mask.apply(images, partner)[0]
        _show(axes[0, k + 2], pm, f"{name}\nλ_area={float(mask.lam_area()[0]):.2f}", 10)
        _grid_lines(axes[0, k + 2], size, (patch_size, patch_size), color="tab:gray", lw=0.4)
        _show(axes[1, k + 2], mixed)
        _grid_lines(axes[1, k + 2], size, (patch_size, patch_size), color="tab:gray", lw=0.4)
    fig.suptitle(f"Mask strategies at τ = {ratio} (white = from image i; grid = "
                 f"{patch_size}-px patches)", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


# -- Fig. 1 --------------------------------------------------------------------------------


def transmix_vs_maskmix(
    images: torch.Tensor,
    labels: torch.Tensor,
    model: nn.Module,
    normalize,
    path: str | Path,
    *,
    num_classes: int,
    mask_scale: int = 2,
    classes: Sequence[str] | None = None,
    seed: int = 0,
) -> Path:
    """Fig. 1: TransMix (CutMix box, attention λ) vs MixPro (MaskMix, PAL) on one pair.

    ``images (2, C, H, W)`` in [0, 1]. Top: mixed images with patch borders. Bottom: token
    sources (yellow = image i, blue = image j, red = pixels of both in one token).
    """
    p = _patch(model)
    gh, gw = model.patch_embed.grid_size
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
            _show(axes[0, k + 1], batch.images[0], f"{name}\n{_lam_title(batch, 0)}", 10)
            _grid_lines(axes[0, k + 1], size, p, color="tab:orange", lw=0.6)
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
    return _save(fig, path)


def _name(classes: Sequence[str] | None, label: torch.Tensor) -> str:
    return classes[int(label)] if classes else f"class {int(label)}"


# -- command -------------------------------------------------------------------------------

FIGURES = ("fig1", "fig4", "fig6")


class FigureError(ValueError):
    """A user error of ``mixpro figures``."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mixpro figures``."""
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint for attention maps and λ_attn (needed by fig1, fig6)")
    parser.add_argument("--data", default="fashion-mnist",
                        help="'fashion-mnist' (embedded test split) or an ImageFolder")
    parser.add_argument("--which", nargs="+", choices=FIGURES, default=list(FIGURES))
    parser.add_argument("--pairs", type=int, default=5, help="pairs shown in fig6")
    parser.add_argument("--mask-scale", type=int, default=None,
                        help="MaskMix cell side in patches (default: the checkpoint's, else 2)")
    parser.add_argument("--patch-size", type=int, default=4,
                        help="patch size for fig4 without --checkpoint")
    parser.add_argument("--image-size", type=int, default=32,
                        help="image size for fig4 without --checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="eval_out", help="output folder")


def _pick(data, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def run(args: argparse.Namespace) -> int:
    """``mixpro figures``: returns 0, or 2 after ``mixpro: error: ...`` for bad input."""
    try:
        if args.pairs < 1:
            raise FigureError("--pairs must be >= 1")
        need = [f for f in args.which if f in ("fig1", "fig6")]
        if need and args.checkpoint is None:
            raise FigureError(f"{' and '.join(need)} need --checkpoint (attention maps, λ_attn)")
        model = config = None
        if args.checkpoint is not None:
            model, config = load_checkpoint_model(args.checkpoint)
            size, chans = image_size(model), in_chans(model)
            patch = _patch(model)[0]
            try:
                mixpro.ClsAttention(model).remove()
            except mixpro.NoClsAttentionError as e:
                raise FigureError(f"{args.checkpoint}: {str(e).split(':')[0]}") from None
        else:
            size, chans, patch = (args.image_size, args.image_size), 3, args.patch_size
        cfg = config or {}
        scale = int(args.mask_scale or cfg.get("mask_scale")
                    or (cfg.get("recipe") or {}).get("mask_scale") or 2)
        data = build_data(args.data, size, chans if model is not None else 1, "bilinear")
        if size[0] % (scale * patch) or size[1] % (scale * patch):
            raise FigureError(f"--mask-scale {scale} × patch {patch} does not tile {size}")
    except (FigureError, CheckpointError, DatasetError) as e:
        print(f"mixpro: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    images, labels = _pick(data, max(2 * args.pairs, 2), args.seed)
    written = []
    if "fig6" in args.which:
        norm = Normalize(*norm_stats(config, model))
        written.append(maskmix_attention_grid(
            images, labels, model, norm, out / "fig6_maskmix_attention.png",
            num_classes=model.num_classes, mask_scale=scale, classes=data.classes,
            seed=args.seed))
    if "fig4" in args.which:
        written.append(mask_strategies(images[:2], out / "fig4_mask_strategies.png",
                                       patch_size=patch, mask_scale=scale, seed=args.seed))
    if "fig1" in args.which:
        norm = Normalize(*norm_stats(config, model))
        written.append(transmix_vs_maskmix(
            images[:2], labels[:2], model, norm, out / "fig1_transmix_vs_maskmix.png",
            num_classes=model.num_classes, mask_scale=scale, classes=data.classes,
            seed=args.seed))
    for p in written:
        print(p)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mixpro.evaluate.figures``."""
    parser = argparse.ArgumentParser(prog="mixpro figures", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
