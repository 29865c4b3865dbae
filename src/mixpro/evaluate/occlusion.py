"""PatchDrop occlusion (Naseer et al. 2021; spec ``eval-protocols.md`` §2).

Owns the occlusion protocol: the patch grid, random / salient / non-salient drop masks with
DINO's attention-mass threshold, dropping in ``[0, 1]`` pixel space (black, *before*
normalisation) and the accuracy sweep over information-loss levels with seeded repeats.

Grid: the paper's 14×14 grid of 16-px patches generalises to ``g_h × g_w`` patches of
``P_h × P_w`` px (by default the evaluated model's token grid: the grid its cls attention
reads, so that salient drops remove whole attention tokens; for a model with a class-attention
head (Swin, ConvNeXt, ResNet) that is the last stage's grid of 32-px tokens, not the patch
embedding's). Information loss ``Q``:

* ``random``: ``Q = k/10``, ``k = 0..9``; ``n = k·g_h·g_w // 10`` patches drawn uniformly
  without replacement, one draw per batch (reference) or per image.
* ``salient``: ``λ = Q`` for ``Q = 0.1..1.0``; drop the smallest set of highest-attention
  patches holding ≥ λ of the cls→patch attention mass.
* ``non_salient``: ``λ = 1 − Q`` for ``Q = 0.0..0.9``; keep only that set, drop the rest.
  The λ values of both saliency modes are the reference's ``{0.1, …, 1.0}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mixpro import ClsAttention, models
from mixpro.errors import UserError

__all__ = [
    "DROP_MODES",
    "DEFAULT_LEVELS",
    "ClsSaliency",
    "OcclusionError",
    "drop_patches",
    "mass_threshold",
    "model_grid",
    "occlusion_sweep",
    "patch_pixel_mask",
    "pool_attention",
    "random_drop_counts",
    "random_drop_mask",
    "saliency_drop_mask",
]

DropMode = Literal["random", "salient", "non_salient"]
DROP_MODES: tuple[str, ...] = ("random", "salient", "non_salient")
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "random": tuple(k / 10 for k in range(10)),
    "salient": tuple(k / 10 for k in range(1, 11)),
    "non_salient": tuple(k / 10 for k in range(10)),
}


class OcclusionError(UserError):
    """Occlusion settings that do not fit the images or the models (a one-line user error)."""


Grid = tuple[int, int]


def model_grid(model: nn.Module, image_size: Grid | None = None) -> Grid:
    """The grid ``(g_h, g_w)`` of the tokens the model's cls attention reads, at
    ``image_size`` (default the model's input size): ``patch_embed.grid_size`` of a ViT, the
    last stage's grid of a model with a class-attention head
    (:func:`mixpro.with_class_attention`; e.g. 2×2 for a 64-px Swin)."""
    grid = models.token_grid(model, image_size)
    if grid is None:
        raise OcclusionError(
            f"{type(model).__name__} has no patch_embed.grid_size or class-attention token "
            "grid: pass the occlusion grid"
        )
    return grid


# -- masks --------------------------------------------------------------------------------


def random_drop_counts(num_patches: int, levels: Sequence[float] = DEFAULT_LEVELS["random"]
                       ) -> list[int]:
    """Patches dropped per level: ``floor(Q·N)`` computed as ``k·N // 10`` for ``Q = k/10``
    (reference: ``[0, 19, 39, …, 176]`` for ``N = 196``)."""
    return [math.floor(q * num_patches + 1e-9) for q in levels]


def random_drop_mask(
    n_drop: int,
    num_patches: int,
    batch: int,
    *,
    per_image: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Bool ``(B|1, N)``, True = dropped: ``n_drop`` patches uniformly without replacement;
    one draw shared by the batch (``per_image=False``, reference) or one per image."""
    if not 0 <= n_drop <= num_patches:
        raise OcclusionError(f"cannot drop {n_drop} of {num_patches} patches")
    rows = batch if per_image else 1
    gen_dev = generator.device if generator is not None else device
    perm = torch.rand(rows, num_patches, generator=generator, device=gen_dev).argsort(dim=1)
    dropped = torch.zeros(rows, num_patches, dtype=torch.bool, device=gen_dev)
    dropped.scatter_(1, perm[:, :n_drop], True)
    return dropped.to(device)


def mass_threshold(attention: torch.Tensor, lam: float) -> torch.Tensor:
    """DINO's mass rule: bool ``(B, N)`` selecting, per row of ``attention (B, N)``, the
    smallest set of highest-attention patches whose normalised mass is ≥ ``lam``.

    Reference procedure: sort ascending, normalise by the sum, cumulative sum, select where
    ``cum > 1 - lam``, undo the sort (float64; ties in stable order).
    """
    if attention.ndim != 2:
        raise OcclusionError(f"attention must be (B, N), got {tuple(attention.shape)}")
    if not 0.0 <= lam <= 1.0:
        raise OcclusionError(f"lambda must be in [0, 1], got {lam}")
    a = attention.double()
    val, idx = torch.sort(a, dim=1, stable=True)
    cum = (val / val.sum(dim=1, keepdim=True)).cumsum(dim=1)
    sel_sorted = cum > 1.0 - lam
    return torch.zeros_like(sel_sorted).scatter(1, idx, sel_sorted)


def _lambda(mode: str, info_loss: float) -> float:
    return round(info_loss if mode == "salient" else 1.0 - info_loss, 12)


def saliency_drop_mask(
    attention: torch.Tensor, info_loss: float, mode: DropMode
) -> tuple[torch.Tensor, float]:
    """Bool ``(B, N)`` True = dropped, and the λ used: ``salient`` drops the mass-λ set with
    λ = Q; ``non_salient`` keeps only it, with λ = 1 − Q."""
    if mode not in ("salient", "non_salient"):
        raise OcclusionError(f"saliency mode must be 'salient' or 'non_salient', got {mode!r}")
    lam = _lambda(mode, info_loss)
    selected = mass_threshold(attention, lam)
    return (selected if mode == "salient" else ~selected), lam


def patch_pixel_mask(dropped: torch.Tensor, grid: Grid, image_size: Grid) -> torch.Tensor:
    """Patch flags ``(B|1, g_h·g_w)`` (row-major) → bool pixel mask ``(B|1, 1, H, W)``
    (nearest upsampling by the patch size ``H/g_h × W/g_w``)."""
    gh, gw = grid
    h, w = image_size
    if h % gh or w % gw:
        raise OcclusionError(f"a {gh}x{gw} patch grid does not tile {h}x{w} images")
    if dropped.ndim != 2 or dropped.shape[1] != gh * gw:
        raise OcclusionError(
            f"patch flags must be (B, {gh * gw}) for a {gh}x{gw} grid, got {tuple(dropped.shape)}"
        )
    cells = dropped.view(-1, 1, gh, gw)
    return cells.repeat_interleave(h // gh, dim=2).repeat_interleave(w // gw, dim=3)


def drop_patches(images: torch.Tensor, dropped: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Set dropped patches to 0 (black) in ``[0, 1]`` pixel space: ``x ⊙ (1 − M)``.

    ``images (B, C, H, W)`` un-normalised; ``dropped (B|1, g_h·g_w)`` bool. Normalise after.
    """
    mask = patch_pixel_mask(dropped.to(images.device), grid, tuple(images.shape[-2:]))
    return images.masked_fill(mask, 0.0)


def pool_attention(attention: torch.Tensor, src: Grid, dst: Grid) -> torch.Tensor:
    """Sum-pool cls attention ``(B, src_h·src_w)`` to the occlusion grid ``(B, dst_h·dst_w)``;
    ``src`` must be an integer multiple of ``dst``."""
    if tuple(src) == tuple(dst):
        return attention
    (sh, sw), (dh, dw) = src, dst
    if sh % dh or sw % dw:
        raise OcclusionError(
            f"the saliency model's {sh}x{sw} token grid is not a multiple of the {dh}x{dw} "
            "occlusion grid"
        )
    a = attention.view(-1, dh, sh // dh, dw, sw // dw)
    return a.sum(dim=(2, 4)).flatten(1)


# -- saliency source -----------------------------------------------------------------------


class ClsSaliency:
    """Saliency from a timm model's cls→patch attention (head mean of the last block, through
    :class:`mixpro.ClsAttention`), on the clean image normalised with ``normalize``.

    The reference uses DINO ViT-S/16 head 1 only; any checkpoint with a cls token or a
    class-attention head (:func:`mixpro.with_class_attention`) works here (the evaluated model
    itself by default); :attr:`grid` is the grid the attention covers (:func:`model_grid`).
    Raises :class:`mixpro.NoClsAttentionError` for models without either.
    """

    def __init__(
        self, model: nn.Module, normalize: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        self.model = model
        self.probe = ClsAttention(model)
        self.normalize = normalize
        self.grid = model_grid(model)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images (B, C, H, W)`` in [0, 1] → (logits ``(B, K)``, attention ``(B, N)``)."""
        logits = self.model(self.normalize(images))
        seen = self.probe.grid
        if seen is not None and tuple(seen) != tuple(self.grid):
            raise OcclusionError(
                f"images {tuple(images.shape[-2:])} give the saliency model a {seen[0]}x"
                f"{seen[1]} attention grid, not its {self.grid[0]}x{self.grid[1]} one"
            )
        return logits, self.probe.attention


# -- sweep --------------------------------------------------------------------------------


@dataclass
class _Acc:
    correct: float = 0.0
    frac: float = 0.0
    mass: float = 0.0


def occlusion_sweep(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    modes: Sequence[str] = DROP_MODES,
    levels: dict[str, Sequence[float]] | None = None,
    grid: Grid | None = None,
    repeats: int = 3,
    per_image: bool = False,
    seed: int = 0,
    saliency: ClsSaliency | None = None,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Top-1 accuracy of ``model`` under PatchDrop for every mode and level.

    Args:
        batches: ``(images (B, C, H, W) in [0, 1], labels (B,))``, un-normalised.
        normalize: maps ``[0, 1]`` images to the model's input (applied after dropping).
        modes: subset of ``random``, ``salient``, ``non_salient``.
        levels: information-loss levels per mode (default :data:`DEFAULT_LEVELS`).
        grid: occlusion grid; default the model's token grid.
        repeats: random draws repeated ``R`` times (seeds ``seed .. seed+R-1``; ``acc_std`` is
            the sample std over the R runs); saliency modes are deterministic and run once.
        saliency: source for the saliency modes; default the evaluated model's own cls
            attention (raises :class:`mixpro.NoClsAttentionError` without a cls token).
        on_batch: called with the batch size after each batch (progress bars).

    Returns:
        ``{"grid", "patch_px", "num_images", "repeats", "per_image", "seed",
        "curves": {mode: [{"info_loss", "acc_mean", "acc_std", "acc_runs", "frac_dropped",
        ("n_drop" | "lambda", "mass_dropped")}, …]}}``, accuracies as fractions.
    """
    unknown = [m for m in modes if m not in DROP_MODES]
    if unknown:
        raise OcclusionError(f"unknown occlusion mode(s) {unknown}; choose from {DROP_MODES}")
    if repeats < 1:
        raise OcclusionError(f"repeats must be >= 1, got {repeats}")
    levels = {m: tuple((levels or {}).get(m, DEFAULT_LEVELS[m])) for m in modes}
    grid = tuple(grid) if grid is not None else model_grid(model)
    n_patches = grid[0] * grid[1]
    salient_modes = [m for m in modes if m != "random"]
    if salient_modes and saliency is None:
        saliency = ClsSaliency(model, normalize)
    counts = {m: random_drop_counts(n_patches, levels[m]) for m in modes}
    runs = {m: repeats if m == "random" else 1 for m in modes}
    acc = {m: [[_Acc() for _ in range(runs[m])] for _ in levels[m]] for m in modes}
    gens = [torch.Generator().manual_seed(seed + r) for r in range(repeats)]
    model.eval()
    total = 0
    image_size: Grid | None = None
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        b = labels.shape[0]
        image_size = tuple(images.shape[-2:])
        attn = None
        if salient_modes:
            _, attn = saliency(images)
            attn = pool_attention(attn, saliency.grid, grid)
        with torch.no_grad():
            for m in modes:
                for li, q in enumerate(levels[m]):
                    for r in range(runs[m]):
                        if m == "random":
                            dropped = random_drop_mask(
                                counts[m][li], n_patches, b, per_image=per_image,
                                generator=gens[r], device=images.device,
                            )
                        else:
                            dropped, _ = saliency_drop_mask(attn, q, m)
                        x = drop_patches(images, dropped, grid)
                        pred = model(normalize(x)).argmax(dim=1)
                        cell = acc[m][li][r]
                        cell.correct += float((pred == labels).sum())
                        cell.frac += float(dropped.double().mean(1).expand(b).sum())
                        if attn is not None and m != "random":
                            a = attn.double()
                            mass = (a * dropped).sum(1) / a.sum(1)
                            cell.mass += float(mass.sum())
        total += b
        if on_batch is not None:
            on_batch(b)
    if total == 0 or image_size is None:
        raise OcclusionError("the occlusion sweep got no images")
    curves: dict[str, list[dict]] = {}
    for m in modes:
        rows = []
        for li, q in enumerate(levels[m]):
            cells = acc[m][li]
            accs = torch.tensor([c.correct / total for c in cells], dtype=torch.float64)
            row = {
                "info_loss": q,
                "acc_mean": float(accs.mean()),
                "acc_std": float(accs.std()) if len(cells) > 1 else 0.0,
                "acc_runs": accs.tolist(),
                "frac_dropped": cells[0].frac / total,
            }
            if m == "random":
                row["n_drop"] = counts[m][li]
            else:
                row["lambda"] = _lambda(m, q)
                row["mass_dropped"] = cells[0].mass / total
            rows.append(row)
        curves[m] = rows
    return {
        "grid": list(grid),
        "patch_px": [image_size[0] // grid[0], image_size[1] // grid[1]],
        "num_images": total,
        "repeats": repeats,
        "per_image": per_image,
        "seed": seed,
        "curves": curves,
    }
