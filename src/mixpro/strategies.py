"""Named mask strategies for the paper's ablations (Fig. 4, Tables 7, 8 and 9).

``MASK_STRATEGIES[name](patch_size, mask_scale)`` builds a :class:`~mixpro.masks.MaskGenerator`
for ``MaskMix(..., strategy=...)`` (area labels) or ``MixPro(..., strategy=...)`` (PAL);
:func:`make_mask_strategy` does the same with a checked name. ``P`` is the ViT's patch size
and ``k`` the mask scale (cells of ``k × P`` pixels):

==============  ===========================================================================
name            generator
==============  ===========================================================================
grid            MaskMix's random grid, ``GridMasks(k·P)`` (Table 7 "random (4× scale)")
box             CutMix's region box, ``BoxMasks()`` (Table 7 "region")
block           BEiT block-wise masking on patches, ``BlockMasks(patch=P)`` (Table 7 "block")
random_patch    random patches, ``GridMasks(P)`` (Table 7 "random")
aligned_box     Table 8 A, CutMix box with edges on patch borders, ``BoxMasks(align=P)``
misaligned      Table 8 B, ``GridMasks(k·P, offset=P//2)``: every cell edge inside a patch
subpatch        Table 8 C, ``GridMasks(P//2)``: cells smaller than a patch
shuffle         Table 9 "random shuffling on the cropped patches": the grid, with the
                partner's patches permuted among the partner's cells
shuffle_own     the grid with sample ``i``'s kept patches permuted among its own cells
shuffle_both    Table 9 "Both": both regions shuffled, each within itself
shuffle_box     a patch-aligned CutMix box whose pasted patches are permuted in the box
==============  ===========================================================================

Table 9 of the paper is garbled in its text ("Baseline / Random shuffling on the cropped
patches / Both" with four numbers 73.2, 69.8, 69.7, 67.3 for "three random patterns"). Its
baseline, 73.2 % for DeiT-T, is Table 7's MaskMix with area labels, so the patterns here are
applied to MaskMix's grid; "cropped patches" are read as the ViT patches cut from the partner
(``shuffle``); the unnamed second pattern is reconstructed as its mirror on the kept patches
(``shuffle_own``) and "Both" as the two together (``shuffle_both``). ``shuffle_box`` is the same
shuffling on a CutMix box, for comparison with the region-based strategies.

``misaligned`` and ``subpatch`` need a patch of at least 2 pixels per side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from . import _checks
from .masks import BlockMasks, BoxMasks, GridMasks, MaskGenerator, ShuffleMasks

Rounding = Literal["floor", "ceil"]
StrategyFactory = Callable[..., MaskGenerator]
Size = int | Sequence[int]


def _pairs(patch_size: Size, mask_scale: Size) -> tuple[tuple[int, int], tuple[int, int]]:
    return _checks.pair(patch_size, "patch_size"), _checks.pair(mask_scale, "mask_scale")


def _half_patch(patch_size: Size, name: str) -> tuple[int, int]:
    ph, pw = _checks.pair(patch_size, "patch_size")
    if min(ph, pw) < 2:
        raise ValueError(
            f"patch_size must be >= 2 pixels per side for the {name!r} strategy, "
            f"got {patch_size!r}"
        )
    return ph // 2, pw // 2


def grid(patch_size: Size, mask_scale: Size, rounding: Rounding = "floor") -> GridMasks:
    """MaskMix: random cells of ``mask_scale × patch_size`` pixels."""
    (ph, pw), (kh, kw) = _pairs(patch_size, mask_scale)
    return GridMasks((kh * ph, kw * pw), rounding=rounding)


def box(patch_size: Size, mask_scale: Size, rounding: Rounding = "floor") -> BoxMasks:
    """CutMix's region box (timm ``rand_bbox``); ``mask_scale``/``rounding`` are unused."""
    _pairs(patch_size, mask_scale)
    return BoxMasks()


def block(patch_size: Size, mask_scale: Size, rounding: Rounding = "floor") -> BlockMasks:
    """BEiT block-wise masking on the patch grid; ``mask_scale``/``rounding`` are unused."""
    (ph, pw), _ = _pairs(patch_size, mask_scale)
    return BlockMasks(patch=(ph, pw))


def random_patch(patch_size: Size, mask_scale: Size, rounding: Rounding = "floor") -> GridMasks:
    """Random cells of exactly one patch (the 1× grid); ``mask_scale`` is unused."""
    (ph, pw), _ = _pairs(patch_size, mask_scale)
    return GridMasks((ph, pw), rounding=rounding)


def aligned_box(patch_size: Size, mask_scale: Size, rounding: Rounding = "floor") -> BoxMasks:
    """Table 8 A: a CutMix box with its edges snapped to patch borders."""
    (ph, pw), _ = _pairs(patch_size, mask_scale)
    return BoxMasks(align=(ph, pw))


def misaligned(patch_size: Size, mask_scale: Size, rounding: Rounding = "floor") -> GridMasks:
    """Table 8 B: the MaskMix grid shifted by half a patch, so no cell edge is a patch border."""
    (ph, pw), (kh, kw) = _pairs(patch_size, mask_scale)
    oy, ox = _half_patch(patch_size, "misaligned")
    return GridMasks((kh * ph, kw * pw), offset=(oy, ox), rounding=rounding)


def subpatch(patch_size: Size, mask_scale: Size, rounding: Rounding = "floor") -> GridMasks:
    """Table 8 C: random cells of half a patch per side; ``mask_scale`` is unused."""
    _pairs(patch_size, mask_scale)
    return GridMasks(_half_patch(patch_size, "subpatch"), rounding=rounding)


def _shuffled(scope: Literal["partner", "own", "both"]) -> StrategyFactory:
    def factory(patch_size: Size, mask_scale: Size, rounding: Rounding = "floor") -> ShuffleMasks:
        (ph, pw), _ = _pairs(patch_size, mask_scale)
        return ShuffleMasks(grid(patch_size, mask_scale, rounding), tile=(ph, pw), scope=scope)

    factory.__doc__ = f"Table 9: the MaskMix grid with the {scope!r} patches shuffled."
    return factory


def shuffle_box(patch_size: Size, mask_scale: Size, rounding: Rounding = "floor") -> ShuffleMasks:
    """A patch-aligned CutMix box whose pasted partner patches are permuted inside the box."""
    (ph, pw), _ = _pairs(patch_size, mask_scale)
    return ShuffleMasks(BoxMasks(align=(ph, pw)), tile=(ph, pw), scope="partner")


@dataclass(frozen=True)
class Strategy:
    """A named mask strategy: ``build(patch_size, mask_scale, rounding)`` and the title the
    figures give it (``{k}``: the mask scale). Calling it builds the generator."""

    build: StrategyFactory
    title: str

    def __call__(self, patch_size: Size, mask_scale: Size,
                 rounding: Rounding = "floor") -> MaskGenerator:
        return self.build(patch_size, mask_scale, rounding)


MASK_STRATEGIES: Mapping[str, Strategy] = MappingProxyType({
    "grid": Strategy(grid, "MaskMix {k}× (grid)"),
    "box": Strategy(box, "Region (CutMix box)"),
    "block": Strategy(block, "Block (BEiT)"),
    "random_patch": Strategy(random_patch, "Random 1× (random_patch)"),
    "aligned_box": Strategy(aligned_box, "Table 8 A: aligned box"),
    "misaligned": Strategy(misaligned, "Table 8 B: misaligned"),
    "subpatch": Strategy(subpatch, "Table 8 C: sub-patch"),
    "shuffle": Strategy(_shuffled("partner"), "Table 9: shuffle j's patches"),
    "shuffle_own": Strategy(_shuffled("own"), "Table 9: shuffle i's patches"),
    "shuffle_both": Strategy(_shuffled("both"), "Table 9: shuffle both"),
    "shuffle_box": Strategy(shuffle_box, "shuffled aligned box"),
})
"""Strategy name → :class:`Strategy` (``(patch_size, mask_scale, rounding='floor') ->
MaskGenerator``, and its figure title)."""


def make_mask_strategy(
    name: str,
    *,
    patch_size: Size,
    mask_scale: Size = 2,
    rounding: Rounding = "floor",
) -> MaskGenerator:
    """The generator of strategy ``name`` (a key of :data:`MASK_STRATEGIES`).

    ``rounding`` (``'floor'``: paper, ``'ceil'``: official code) applies to the grid-based
    strategies; box and block strategies ignore it.
    """
    if not isinstance(name, str) or name not in MASK_STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(MASK_STRATEGIES)}, got {name!r}")
    _checks.choice(rounding, "rounding", ("floor", "ceil"))
    return MASK_STRATEGIES[name](patch_size, mask_scale, rounding)
