"""Named mask strategies (Tables 7-9): protocol invariants and each one's defining property."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import lam_attn_np, mix_images_np, token_fraction_np, token_nearest_np

import mixpro
from mixpro.masks import BoxMasks, GridMasks, ShuffleMasks
from mixpro.pixels import CellMask, ShuffledMask
from mixpro.strategies import MASK_STRATEGIES, make_mask_strategy

SETTINGS = settings(max_examples=30, deadline=None)
CPU = torch.device("cpu")
SHUFFLES = {"shuffle": "partner", "shuffle_own": "own", "shuffle_both": "both",
            "shuffle_box": "partner"}
NEEDS_HALF_PATCH = {"misaligned", "subpatch"}
CUTS_PATCHES = {"box", "misaligned", "subpatch"}  # the others keep every patch whole


def tiles_np(img: np.ndarray, ph: int, pw: int) -> list[np.ndarray]:
    """(C, H, W) -> its ph×pw tiles in row-major order (slow, plain numpy)."""
    _, h, w = img.shape
    return [img[:, r:r + ph, c:c + pw] for r in range(0, h, ph) for c in range(0, w, pw)]


def as_multiset(tiles: list[np.ndarray]) -> list[bytes]:
    return sorted(t.tobytes() for t in tiles)


def false_box(pm: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounds of the False pixels of a (H, W) mask, checking that they fill a rectangle."""
    ys, xs = np.nonzero(~pm)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    assert not pm[y0:y1, x0:x1].any(), "partner pixels do not form one box"
    return int(y0), int(y1), int(x0), int(x1)


def constant_on_blocks(pm: np.ndarray, bh: int, bw: int) -> bool:
    """Whether a (Bm, 1, H, W) mask is constant on every bh×bw block of a grid from (0, 0)."""
    h, w = pm.shape[-2:]
    for r in range(0, h, bh):
        for c in range(0, w, bw):
            block = pm[:, 0, r:r + bh, c:c + bw].reshape(pm.shape[0], -1)
            if not (block.all(1) | ~block.any(1)).all():
                return False
    return True


@st.composite
def strategy_case(draw, name: str):
    lo = 2 if name in NEEDS_HALF_PATCH else 1
    patch = (draw(st.integers(lo, 4)), draw(st.integers(lo, 4)))
    scale = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    cells = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    size = (patch[0] * scale[0] * cells[0], patch[1] * scale[1] * cells[1])
    batch = draw(st.integers(2, 4))
    per_sample = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return patch, scale, size, batch, per_sample, seed


@pytest.mark.parametrize("name", sorted(MASK_STRATEGIES))
@SETTINGS
@given(data=st.data())
def test_strategy_invariants(name, data):
    (ph, pw), (kh, kw), (h, w), b, per_sample, seed = data.draw(strategy_case(name))
    gen = make_mask_strategy(name, patch_size=(ph, pw), mask_scale=(kh, kw))
    assert isinstance(gen, mixpro.masks.MaskGenerator)
    bm = b if per_sample else 1
    ratio = torch.rand(bm, generator=torch.Generator().manual_seed(seed))
    src = gen(ratio, (h, w), device=CPU, generator=torch.Generator().manual_seed(seed + 1))
    pm = src.pixel_mask()
    assert pm.dtype == torch.bool and tuple(pm.shape) == (bm, 1, h, w)
    pm_np = pm.numpy()
    # λ_area is exactly the mask mean
    assert np.allclose(src.lam_area().numpy(), pm_np.reshape(bm, -1).mean(1), atol=1e-6)
    # token fractions against the slow loops, on the patch grid
    frac = src.token_fraction((h // ph, w // pw), "area").numpy()
    assert np.allclose(frac, token_fraction_np(pm_np.astype(np.float64), ph, pw), atol=1e-6)
    near = src.token_fraction((h // ph, w // pw), "nearest").numpy()
    assert np.array_equal(near, token_nearest_np(pm_np.astype(np.float64), h // ph, w // pw))
    if name not in CUTS_PATCHES:  # every patch from one sample
        assert np.all((frac == 0) | (frac == 1)), name
    # pixels from exactly one source
    x = torch.randn(b, 2, h, w, generator=torch.Generator().manual_seed(seed + 2))
    x_before = x.clone()
    partner = torch.randperm(b, generator=torch.Generator().manual_seed(seed + 3))
    out = src.apply(x, partner)
    assert torch.equal(x, x_before), "input modified"
    if name in SHUFFLES:
        check_shuffled(src, SHUFFLES[name], x.numpy(), partner.numpy(), out.numpy())
    else:
        ref = mix_images_np(x.numpy(), pm_np.astype(np.int64), partner.numpy())
        assert np.array_equal(out.numpy(), ref), name
    check_defining_property(name, src, ratio, (ph, pw), (kh, kw), (h, w))


def check_shuffled(src, scope, x, partner, out):
    """Each region of the mixed image is a permutation of its source's patches there."""
    assert isinstance(src, ShuffledMask)
    ph, pw = src.tile
    keep = src.keep.numpy()
    pm = src.pixel_mask().numpy()
    for i in range(x.shape[0]):
        k = keep[i if keep.shape[0] > 1 else 0]
        # keep per tile is the pixel mask on that tile
        assert np.array_equal(k, [t.all() for t in tiles_np(pm[min(i, len(pm) - 1)], ph, pw)])
        got = tiles_np(out[i], ph, pw)
        own, other = tiles_np(x[i], ph, pw), tiles_np(x[partner[i]], ph, pw)
        for region, source, shuffled in ((k, own, scope in ("own", "both")),
                                         (~k, other, scope in ("partner", "both"))):
            pos = np.flatnonzero(region)
            assert as_multiset([got[t] for t in pos]) == as_multiset([source[t] for t in pos])
            if not shuffled:  # the other region is untouched
                assert all(np.array_equal(got[t], source[t]) for t in pos)
    # and the mixed image equals a slow gather by source_tile
    idx = src.source_tile.numpy()
    for i in range(x.shape[0]):
        row = i if idx.shape[0] > 1 else 0
        own, other = tiles_np(x[i], ph, pw), tiles_np(x[partner[i]], ph, pw)
        got = tiles_np(out[i], ph, pw)
        for t in range(len(got)):
            want = (own if keep[row, t] else other)[idx[row, t]]
            assert np.array_equal(got[t], want)


def check_defining_property(name, src, ratio, patch, scale, size):
    (ph, pw), (kh, kw), (h, w) = patch, scale, size
    mask = src.mask if isinstance(src, ShuffledMask) else src
    pm = mask.pixel_mask().numpy()
    n_tokens = (h // ph) * (w // pw)
    if name in ("grid", "shuffle", "shuffle_own", "shuffle_both"):
        assert constant_on_blocks(pm, kh * ph, kw * pw)
        s = (h // (kh * ph)) * (w // (kw * pw))
        for b in range(len(ratio)):
            assert int(mask.cells[b].sum()) == math.floor(float(ratio[b]) * s)
    elif name == "random_patch":
        assert mask.row_edges == tuple(range(0, h + 1, ph))
        assert mask.col_edges == tuple(range(0, w + 1, pw))
        for b in range(len(ratio)):
            assert int(mask.cells[b].sum()) == math.floor(float(ratio[b]) * n_tokens)
    elif name == "block":
        assert constant_on_blocks(pm, ph, pw)
        for b in range(len(ratio)):
            assert int(mask.cells[b].sum()) <= math.floor(float(ratio[b]) * n_tokens)
    elif name in ("box", "aligned_box", "shuffle_box"):
        for b in range(pm.shape[0]):
            bounds = false_box(pm[b, 0])
            if name != "box" and bounds is not None:
                y0, y1, x0, x1 = bounds
                assert y0 % ph == 0 and y1 % ph == 0 and x0 % pw == 0 and x1 % pw == 0
    elif name == "misaligned":
        assert mask.row_edges[1] - mask.row_edges[0] <= kh * ph
        assert all(e % ph for e in mask.row_edges[1:-1]), "a row edge on a patch border"
        assert all(e % pw for e in mask.col_edges[1:-1]), "a column edge on a patch border"
        assert all(b - a == kh * ph for a, b in zip(mask.row_edges[1:-2], mask.row_edges[2:-1],
                                                     strict=True))
    elif name == "subpatch":
        assert all(b - a <= ph // 2 for a, b in zip(mask.row_edges, mask.row_edges[1:],
                                                     strict=False))
        assert all(b - a <= pw // 2 for a, b in zip(mask.col_edges, mask.col_edges[1:],
                                                     strict=False))
        assert ph // 2 < ph and pw // 2 < pw
        assert any(e % ph for e in mask.row_edges[1:-1]) or len(mask.row_edges) == 2
    else:  # pragma: no cover - a new registry entry needs its property here
        raise AssertionError(f"no defining property tested for {name!r}")


def test_registry_covers_the_paper():
    assert set(MASK_STRATEGIES) >= {
        "grid", "box", "block", "random_patch", "aligned_box", "misaligned", "subpatch",
        "shuffle", "shuffle_own", "shuffle_both", "shuffle_box",
    }
    assert make_mask_strategy("grid", patch_size=16, mask_scale=2) == GridMasks((32, 32))
    assert make_mask_strategy("misaligned", patch_size=16, mask_scale=4) == GridMasks(
        (64, 64), offset=(8, 8))
    assert make_mask_strategy("subpatch", patch_size=16) == GridMasks((8, 8))
    assert make_mask_strategy("random_patch", patch_size=(8, 16)) == GridMasks((8, 16))
    assert make_mask_strategy("aligned_box", patch_size=16) == BoxMasks(align=(16, 16))
    assert make_mask_strategy("box", patch_size=16) == BoxMasks()
    assert make_mask_strategy("grid", patch_size=4, mask_scale=2, rounding="ceil") == GridMasks(
        (8, 8), rounding="ceil")
    # the registry's factories take plain ints too
    assert MASK_STRATEGIES["block"](4, 2) == mixpro.masks.BlockMasks(patch=(4, 4))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "cutmix", "patch_size": 4}, "strategy must be one of"),
    ({"name": "grid", "patch_size": 0}, "patch_size"),
    ({"name": "grid", "patch_size": 4, "mask_scale": 0}, "mask_scale"),
    ({"name": "grid", "patch_size": 4, "rounding": "round"}, "rounding"),
    ({"name": "misaligned", "patch_size": 1}, "patch_size must be >= 2"),
    ({"name": "subpatch", "patch_size": (4, 1)}, "patch_size must be >= 2"),
])
def test_bad_arguments(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        make_mask_strategy(name, **kwargs)


def test_shuffle_validation():
    with pytest.raises(ValueError, match="scope"):
        ShuffleMasks(GridMasks(4), 2, scope="all")
    with pytest.raises(TypeError, match="base"):
        ShuffleMasks(object(), 2)
    with pytest.raises(ValueError, match="tile"):
        ShuffleMasks(GridMasks(4), 0)
    with pytest.raises(ValueError, match="tile"):  # 3-px tiles do not tile 8 px
        ShuffleMasks(GridMasks(4), 3)(torch.tensor([0.5]), (8, 8), device=CPU)
    with pytest.raises(ValueError, match="tile borders"):  # 3-px cells cut 2-px tiles
        ShuffleMasks(GridMasks(3), 2)(torch.tensor([0.5]), (12, 12), device=CPU,
                                      generator=torch.Generator().manual_seed(0))
    nested = ShuffleMasks(ShuffleMasks(GridMasks(4), 2), 2)
    with pytest.raises(TypeError, match="CellMask"):
        nested(torch.tensor([0.5]), (8, 8), device=CPU)
    mask = GridMasks(4)(torch.tensor([0.5]), (8, 8), device=CPU)
    with pytest.raises(ValueError, match="source_tile"):
        ShuffledMask(mask, (2, 2), torch.ones(1, 16, dtype=torch.bool), torch.zeros(1, 15))
    with pytest.raises(ValueError, match="keep"):
        ShuffledMask(mask, (2, 2), torch.ones(1, 16), torch.zeros(1, 16))


def test_shuffle_really_moves_patches_and_is_per_mask_row():
    gen = make_mask_strategy("shuffle_both", patch_size=2, mask_scale=2)
    ratio = torch.full((3,), 0.5)
    src = gen(ratio, (16, 16), device=CPU, generator=torch.Generator().manual_seed(0))
    ident = torch.arange(64)
    assert all(not torch.equal(src.source_tile[b], ident) for b in range(3))
    assert not torch.equal(src.source_tile[0], src.source_tile[1])
    # one row for a batch-shared mask: the same permutation for every sample
    shared = gen(ratio[:1], (16, 16), device=CPU, generator=torch.Generator().manual_seed(0))
    assert shared.source_tile.shape == (1, 64)
    x = torch.randn(4, 1, 16, 16)
    out = shared.apply(x, torch.tensor([3, 2, 1, 0]))
    assert out.shape == x.shape
    # seeded: the same draw twice
    again = gen(ratio, (16, 16), device=CPU, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.source_tile, src.source_tile)


def test_box_misaligned_and_subpatch_cut_patches_others_do_not():
    x = torch.randn(6, 3, 32, 32)
    y = torch.arange(6)
    for name in sorted(MASK_STRATEGIES):
        gen = make_mask_strategy(name, patch_size=4, mask_scale=2)
        cut = False
        for seed in range(3):
            mixer = mixpro.MaskMix(num_classes=6, patch_size=4, strategy=gen, mode="elem",
                                   generator=torch.Generator().manual_seed(seed))
            frac = mixer(x, y).token_fraction((8, 8))
            cut |= bool(((frac > 0) & (frac < 1)).any())
        assert cut == (name in CUTS_PATCHES), name


@pytest.mark.parametrize("name", sorted(MASK_STRATEGIES))
@pytest.mark.parametrize("mode", ["batch", "positions", "elem"])
def test_every_strategy_through_maskmix_and_mixpro(name, mode):
    """Area labels (MaskMix) and PAL (MixPro) with each strategy: λ's are exact."""
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3])
    gen = make_mask_strategy(name, patch_size=4, mask_scale=2)
    area = mixpro.MaskMix(num_classes=4, patch_size=4, strategy=gen, mode=mode,
                          generator=torch.Generator().manual_seed(5))(x, y)
    m = area.mask
    assert torch.allclose(area.lam_area, m.float().flatten(1).mean(1).expand(4), atol=1e-6)
    t = area.targets(torch.randn(4, 4))
    assert torch.allclose(t.sum(1), torch.ones(4), atol=1e-6)
    pal = mixpro.MixPro(num_classes=4, patch_size=4, strategy=gen, mode=mode,
                        generator=torch.Generator().manual_seed(5))(x, y)
    assert torch.equal(pal.images, area.images)
    attn = torch.rand(4, 16, generator=torch.Generator().manual_seed(1))
    attn = attn / attn.sum(1, keepdim=True)  # a softmax row: Eq. 5 and the renormalised form agree
    t = pal.targets(torch.randn(4, 4), attn)
    frac = token_fraction_np(np.broadcast_to(m.numpy(), (4, 1, 16, 16)).astype(np.float64), 4, 4)
    assert np.allclose(pal.lam_attn.numpy(), lam_attn_np(attn.numpy().astype(np.float64), frac),
                       atol=1e-5)
    assert torch.allclose(t.sum(1), torch.ones(4), atol=1e-6)


def test_shuffled_integer_images_keep_dtype():
    gen = make_mask_strategy("shuffle", patch_size=(2, 4), mask_scale=(2, 1))
    x = torch.randint(0, 255, (2, 3, 8, 12), dtype=torch.uint8)
    src = gen(torch.tensor([0.5]), (8, 12), device=CPU)
    out = src.apply(x, torch.tensor([1, 0]))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert isinstance(src.mask, CellMask)
