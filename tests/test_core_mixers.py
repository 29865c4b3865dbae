"""Mixup/CutMix (timm semantics), composition, MixedBatch contract and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mixpro


def _batch(b=6, size=(16, 16), k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, *size, generator=g), torch.randint(0, k, (b,), generator=g)


def _attn(b, n, generator=None):
    """A cls→patch attention row as the probe gives it: softmax over cls + n patches, Σ < 1."""
    return torch.softmax(torch.randn(b, n + 1, generator=generator) * 2, 1)[:, 1:]


def test_mixup_batch_blend_matches_formula():
    x, y = _batch()
    mixer = mixpro.Mixup(mixup_alpha=1.0, num_classes=4, generator=torch.Generator().manual_seed(1))
    b = mixer(x, y)
    assert b.method == "mixup" and b.mask is None
    lam = float(b.lam_area[0])
    assert torch.allclose(b.lam_area, torch.full((6,), lam))
    assert torch.allclose(b.images, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert torch.equal(b.partner, torch.arange(5, -1, -1))


def test_cutmix_batch_box_from_partner_and_corrected_lambda():
    x, y = _batch()
    for correct in (True, False):
        mixer = mixpro.CutMix(num_classes=4, correct_lam=correct,
                              generator=torch.Generator().manual_seed(2))
        b = mixer(x, y)
        m = b.mask
        assert b.method == "cutmix" and m.shape == (1, 1, 16, 16)
        assert torch.equal(b.images, torch.where(m, x, x.flip(0)))
        inside = (~m).nonzero()
        assert inside.numel() > 0
        if correct:
            assert torch.allclose(b.lam_area, m.float().mean().expand(6))
        else:  # timm: λ stays the Beta draw
            g = torch.Generator().manual_seed(2)
            torch.rand(2, 1, generator=g)
            lam = mixpro.masks.sample_beta(1.0, 1, generator=g)
            assert torch.allclose(b.lam_area, lam.expand(6))


def test_elem_and_pair_modes():
    x, y = _batch(b=8)
    mixer = mixpro.Mixup(mixup_alpha=1.0, mode="elem", num_classes=4,
                         generator=torch.Generator().manual_seed(0))
    b = mixer(x, y)
    lam = b.lam_area.view(-1, 1, 1, 1)
    assert b.lam_area.unique().numel() == 8
    assert torch.allclose(b.images, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    mixer = mixpro.CutMix(mode="pair", num_classes=4, generator=torch.Generator().manual_seed(0))
    b = mixer(x, y)
    assert torch.allclose(b.lam_area, b.lam_area.flip(0))
    assert torch.equal(b.mask, b.mask.flip(0))
    assert torch.equal(b.images, torch.where(b.mask, x, x.flip(0)))
    # both on, per element: each sample is either a blend or a box
    mixer = mixpro.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode="elem", num_classes=4,
                         generator=torch.Generator().manual_seed(5))
    b = mixer(x, y)
    assert b.method == "mixup+cutmix"
    sel = b.source.use_mask
    assert sel.any() and (~sel).any()
    pm = b.source.mask.pixel_mask()
    boxed = torch.where(pm, x, x.flip(0))
    lam = b.lam_area.view(-1, 1, 1, 1)
    blended = lam * x + (1 - lam) * x.flip(0)
    assert torch.allclose(b.images[sel], boxed[sel])
    assert torch.allclose(b.images[~sel], blended[~sel], atol=1e-6)
    assert torch.allclose(b.lam_area[sel], pm[sel].float().flatten(1).mean(1))


def test_prob_zero_and_disabled_mean_no_mixing():
    x, y = _batch()
    for mixer in (mixpro.Mixup(prob=0.0, num_classes=4), mixpro.CutMix(num_classes=4)):
        if isinstance(mixer, mixpro.CutMix):
            mixer.mixup_enabled = False
        b = mixer(x, y)
        assert b.method == "none" and torch.equal(b.images, x)
        t = b.targets(torch.randn(6, 4))
        assert torch.allclose(t, mixpro.smooth_one_hot(y, 4, 0.1))


def test_cutmix_minmax_forces_alpha_one():
    mixer = mixpro.Mixup(mixup_alpha=0.0, cutmix_alpha=0.3, cutmix_minmax=(0.2, 0.5),
                         num_classes=4)
    assert mixer.cutmix_alpha == 1.0
    b = mixer(*_batch(size=(20, 20)))
    box = (~b.mask[0, 0]).nonzero()
    h = int(box[:, 0].max() - box[:, 0].min() + 1)
    assert 4 <= h < 10


def test_odd_batch_works_for_every_mixer():
    x, y = _batch(b=5)
    mixers = [
        mixpro.Mixup(num_classes=4), mixpro.CutMix(num_classes=4, mode="elem"),
        mixpro.TransMix(num_classes=4), mixpro.MaskMix(num_classes=4, patch_size=4),
        mixpro.MixPro(num_classes=4, patch_size=4, mask_scale=2), mixpro.NoMix(num_classes=4),
    ]
    for m in mixers:
        b = m(x, y)
        assert torch.equal(b.images[2], x[2]), type(m).__name__
        t = b.targets(torch.randn(5, 4), _attn(5, 16))
        assert torch.allclose(t.sum(1), torch.ones(5))


def _self_pair_cases():
    """(name, mixer, batch size): every mixer and mode in which a sample can pair with itself."""
    k = 4
    cases = []
    for mode in ("batch", "pair", "elem"):  # timm modes, odd batch: the middle sample
        cases += [
            (f"mixup-{mode}", mixpro.Mixup(mode=mode, num_classes=k), 5),
            (f"cutmix-{mode}", mixpro.CutMix(mode=mode, num_classes=k), 5),
            (f"mixup+cutmix-{mode}", mixpro.Mixup(cutmix_alpha=1.0, mode=mode, num_classes=k), 5),
            (f"transmix-{mode}", mixpro.TransMix(mode=mode, num_classes=k, patch_size=4), 5),
        ]
    for mode in ("batch", "positions", "elem"):
        for cls in (mixpro.MaskMix, mixpro.MixPro):
            name = f"{cls.__name__}-{mode}"
            cases.append((name + "-flip", cls(num_classes=k, patch_size=4, mask_scale=1,
                                              mode=mode), 5))
            cases.append((name + "-randperm", cls(num_classes=k, patch_size=4, mask_scale=1,
                                                  mode=mode, pairing="randperm"), 6))
    return cases


@pytest.mark.parametrize("name, mixer, b", [pytest.param(*c, id=c[0]) for c in _self_pair_cases()])
def test_self_paired_samples_report_lambda_one(name, mixer, b):
    """A sample paired with itself is unmixed: λ_area = λ_attn = λ = 1, whatever was drawn."""
    x, y = _batch(b=b)
    torch.manual_seed(0)
    mixed, seen = None, 0
    for _ in range(200):  # until the draw mixes the batch and pairs some sample with itself
        mixed = mixer(x, y)
        own = mixed.partner == torch.arange(b)
        if mixed.method != "none" and own.any() and (~own).any():
            seen += 1
            break
    assert seen, name
    t = mixed.targets(torch.randn(b, 4), _attn(b, 16))
    assert torch.equal(mixed.images[own], x[own]), name
    assert (mixed.lam_area[own] == 1).all(), name
    assert (mixed.lam[own] == 1).all(), name
    if mixed.lam_attn is not None:
        assert (mixed.lam_attn[own] == 1).all(), name
    assert (mixed.token_fraction((4, 4))[own] == 1).all(), name
    assert torch.allclose(t[own], mixpro.smooth_one_hot(y[own], 4, 0.1)), name
    # the other samples are untouched by the correction: λ_area is still the mask/blend share
    src = mixed.source.lam_area().expand(b)
    assert torch.equal(mixed.lam_area[~own], src[~own].float()), name


def test_mixed_batch_is_the_same_type_for_every_method():
    x, y = _batch(size=(32, 32))
    attn = _attn(6, 64)
    recipe = mixpro.paper_recipe(mixpro.MixPro(
        num_classes=4, patch_size=4, mask_scale=2, generator=torch.Generator().manual_seed(0)))
    seen = set()
    for _ in range(30):
        b = recipe(x, y)
        assert isinstance(b, mixpro.MixedBatch)
        seen.add(b.method)
        t = b.targets(torch.randn(6, 4), attn)
        assert t.shape == (6, 4) and torch.allclose(t.sum(1), torch.ones(6))
        for v in (b.alpha, b.lam, b.lam_area):
            assert v.shape == (6,)
    assert {"mixpro", "mixup", "cutmix"} <= seen


def test_random_choice_probabilities():
    a = mixpro.NoMix(num_classes=3)
    c = mixpro.CutMix(num_classes=3)
    x, y = _batch(k=3)
    always = mixpro.RandomChoice([a, c], [1.0, 0.0])
    assert all(always(x, y).method == "none" for _ in range(10))
    rc = mixpro.RandomChoice([a, c], [0.25, 0.75], generator=torch.Generator().manual_seed(0))
    hits = sum(rc(x, y).method == "cutmix" for _ in range(400))
    assert 250 < hits < 350
    with pytest.raises(ValueError, match="num_classes"):
        mixpro.RandomChoice([a, mixpro.NoMix(num_classes=4)])
    with pytest.raises(ValueError, match="p must"):
        mixpro.RandomChoice([a, c], [1.0])
    rc.set_progress(0.5)
    assert a.progress == 0.5 and c.progress == 0.5


# ---------------------------------------------------------------------------------------
# bad input: a clear error naming the argument
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("images,labels,err,match", [
    ("x", torch.tensor([0, 1]), TypeError, "images"),
    (torch.randn(2, 3, 8), torch.tensor([0, 1]), ValueError, "images"),
    (torch.randn(1, 3, 8, 8), torch.tensor([0]), ValueError, "at least 2"),
    (torch.randn(0, 3, 8, 8), torch.tensor([], dtype=torch.long), ValueError, "at least 2"),
    (torch.randn(2, 3, 8, 8), torch.tensor([0.0, 1.0]), TypeError, "labels"),
    (torch.randn(2, 3, 8, 8), torch.tensor([0, 4]), ValueError, "num_classes"),
    (torch.randn(2, 3, 8, 8), torch.tensor([-1, 0]), ValueError, "labels"),
    (torch.randn(2, 3, 8, 8), torch.tensor([0, 1, 2]), ValueError, "labels"),
    (torch.randn(2, 3, 8, 8) > 0, torch.tensor([0, 1]), TypeError, "images"),
])
def test_bad_batches(images, labels, err, match):
    for mixer in (mixpro.MaskMix(num_classes=4, patch_size=2, mask_scale=2),
                  mixpro.Mixup(num_classes=4)):
        with pytest.raises(err, match=match):
            mixer(images, labels)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(mask_scale=1.5), TypeError, "mask_scale"),
    (dict(mask_scale=0), ValueError, "mask_scale"),
    (dict(patch_size=(2, 2, 2)), TypeError, "patch_size"),
    (dict(mode="pair"), ValueError, "mode"),
    (dict(beta=0.0), ValueError, "beta"),
    (dict(rounding="round"), ValueError, "rounding"),
    (dict(pairing="shift"), ValueError, "pairing"),
    (dict(num_classes=1), ValueError, "num_classes"),
    (dict(label_smoothing=1.0), ValueError, "label_smoothing"),
    (dict(alpha="sigmoid"), ValueError, "alpha"),
    (dict(mask_scal=2), TypeError, "mask_scal"),
    (dict(generator="seed"), TypeError, "generator"),
])
def test_bad_mixpro_arguments(kwargs, err, match):
    base = dict(num_classes=4, patch_size=4)
    base.update(kwargs)
    with pytest.raises(err, match=match):
        mixpro.MixPro(**base)


def test_mask_grid_must_tile_the_image():
    x, y = _batch(size=(24, 24))
    with pytest.raises(ValueError, match="mask_scale"):
        mixpro.MaskMix(num_classes=4, patch_size=4, mask_scale=4)(x, y)
    with pytest.raises(ValueError, match="patch_size"):
        mixpro.MaskMix(num_classes=4, patch_size=5, mask_scale=1)(x, y)


def test_bad_targets_arguments():
    x, y = _batch(size=(16, 16))
    b = mixpro.MixPro(num_classes=4, patch_size=4, mask_scale=2)(x, y)
    good_attn = _attn(6, 16)
    with pytest.raises(ValueError, match="logits"):
        b.targets(torch.randn(5, 4), good_attn)
    with pytest.raises(ValueError, match="logits"):
        b.targets(torch.randn(6, 5), good_attn)
    with pytest.raises(TypeError, match="logits"):
        b.targets(torch.ones(6, 4, dtype=torch.long), good_attn)
    nan = torch.randn(6, 4)
    nan[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        b.targets(nan, good_attn)
    with pytest.raises(ValueError, match="attention is required"):
        b.targets(torch.randn(6, 4), None)
    with pytest.raises(ValueError, match="attention"):
        b.targets(torch.randn(6, 4), torch.rand(5, 16))
    with pytest.raises(ValueError, match="non-negative"):
        b.targets(torch.randn(6, 4), -good_attn)
    with pytest.raises(ValueError, match="progress"):
        mixpro.MixPro(num_classes=4, patch_size=4).set_progress(1.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(mixup_alpha=0.0, cutmix_alpha=0.0), "nothing to mix"),
    (dict(prob=2.0), "prob"),
    (dict(switch_prob=-0.1), "switch_prob"),
    (dict(mode="batches"), "mode"),
    (dict(mixup_alpha=-1.0), "mixup_alpha"),
    (dict(cutmix_minmax=(0.5, 0.2)), "cutmix_minmax"),
    (dict(cutmix_minmax=(0.3, 0.3)), "cutmix_minmax"),
    (dict(cutmix_minmax=(-0.1, 0.5)), "cutmix_minmax"),
    (dict(cutmix_minmax=(0.2,)), "cutmix_minmax"),
    (dict(cutmix_minmax=(0.2, float("nan"))), "cutmix_minmax"),
])
def test_bad_mixup_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mixpro.Mixup(num_classes=4, **kwargs)


def _timm_minmax_crashes(size, minmax):
    """Whether timm's rand_bbox_minmax raises for this image size (numpy's own checks)."""
    import numpy as np
    from timm.data.mixup import rand_bbox_minmax

    np.random.seed(0)
    try:
        for _ in range(200):
            rand_bbox_minmax((3, size, size), minmax)
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("minmax, size", [
    ((0.0, 0.5), 16), ((0.0, 1.0), 8), ((0.2, 0.8), 20), ((0.5, 1.05), 20),
])
def test_cutmix_minmax_accepted_where_timm_accepts_it(minmax, size):
    """timm draws the box side in [⌊s·min⌋, ⌊s·max⌋) and its corner in [0, s - side]."""
    import numpy as np
    from timm.data.mixup import rand_bbox_minmax

    assert not _timm_minmax_crashes(size, minmax)
    mixer = mixpro.CutMix(cutmix_minmax=minmax, mode="elem", num_classes=4,
                          generator=torch.Generator().manual_seed(0))
    x, y = _batch(b=64, size=(size, size))
    sides, corners = set(), set()
    for _ in range(20):
        box = mixer.boxes.boxes(torch.full((64,), 0.5), (size, size), mixer.generator)
        sides |= set((box[:, 1] - box[:, 0]).tolist())
        corners |= set(zip((box[:, 1] - box[:, 0]).tolist(), box[:, 0].tolist(), strict=True))
        b = mixer(x, y)
        assert torch.allclose(b.lam_area, b.mask.float().flatten(1).mean(1))
    np.random.seed(0)
    t_sides, t_corners = set(), set()
    for _ in range(2000):
        yl, yu, _, _ = rand_bbox_minmax((3, size, size), minmax)
        t_sides.add(int(yu - yl))
        t_corners.add((int(yu - yl), int(yl)))
    assert sides == t_sides  # the same support as timm's randint draws
    assert corners == t_corners  # boxes reach the bottom edge: corner up to s - side


@pytest.mark.parametrize("minmax, size", [((0.2, 0.21), 16), ((0.5, 1.2), 20)])
def test_cutmix_minmax_refused_where_timm_crashes(minmax, size):
    assert _timm_minmax_crashes(size, minmax)
    mixer = mixpro.CutMix(cutmix_minmax=minmax, num_classes=4)
    with pytest.raises(ValueError, match="cutmix_minmax"):
        mixer(*_batch(size=(size, size)))


def test_inputs_are_never_modified():
    x, y = _batch()
    x0, y0 = x.clone(), y.clone()
    for m in (mixpro.Mixup(num_classes=4), mixpro.CutMix(num_classes=4),
              mixpro.MixPro(num_classes=4, patch_size=4, mask_scale=2)):
        b = m(x, y)
        b.targets(torch.randn(6, 4), _attn(6, 16))
        assert torch.equal(x, x0) and torch.equal(y, y0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.uint8])
def test_image_dtypes_are_kept(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 3, 16, 16, generator=g) * 200).to(dtype)
    y = torch.tensor([0, 1, 2, 3])
    for mixer in (mixpro.MaskMix(num_classes=4, patch_size=4, mask_scale=2, mode="elem"),
                  mixpro.CutMix(num_classes=4), mixpro.TransMix(num_classes=4, mixup_alpha=0.0)):
        b = mixer(x, y)
        assert b.images.dtype == dtype
        assert torch.equal(b.images, torch.where(b.mask, x, x[b.partner]))
        assert b.lam_area.dtype == torch.float32
    if dtype.is_floating_point:
        b = mixpro.Mixup(num_classes=4, mode="elem")(x, y)
        assert b.images.dtype == dtype
    else:
        with pytest.raises(TypeError, match="floating"):
            mixpro.Mixup(num_classes=4)(x, y)


@st.composite
def any_mixer_case(draw):
    patch = draw(st.integers(1, 4))
    grid = (draw(st.integers(1, 4)) * 2, draw(st.integers(1, 4)) * 2)
    b = draw(st.integers(2, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["mixup", "cutmix", "transmix", "maskmix", "mixpro", "paper"]))
    mode = draw(st.sampled_from(["batch", "pair", "elem"]))
    return patch, grid, b, seed, kind, mode


def _build(kind, mode, patch, g):
    k = 5
    return {
        "mixup": lambda: mixpro.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode=mode,
                                      num_classes=k, generator=g),
        "cutmix": lambda: mixpro.CutMix(mode=mode, num_classes=k, generator=g),
        "transmix": lambda: mixpro.TransMix(mode=mode, num_classes=k, patch_size=patch,
                                            generator=g),
        "maskmix": lambda: mixpro.MaskMix(num_classes=k, patch_size=patch, mask_scale=2,
                                          mode={"pair": "positions"}.get(mode, mode),
                                          generator=g),
        "mixpro": lambda: mixpro.MixPro(num_classes=k, patch_size=patch, mask_scale=2,
                                        mode={"pair": "positions"}.get(mode, mode),
                                        generator=g),
        "paper": lambda: mixpro.paper_recipe(mixpro.MixPro(num_classes=k, patch_size=patch,
                                                           mask_scale=2, generator=g)),
    }[kind]()


@settings(max_examples=60, deadline=None)
@given(any_mixer_case())
def test_every_mixer_gives_valid_lambdas_and_targets(case):
    patch, grid, b, seed, kind, mode = case
    g = torch.Generator().manual_seed(seed)
    size = (grid[0] * patch, grid[1] * patch)
    x = torch.randn(b, 3, *size, generator=g)
    y = torch.randint(0, 5, (b,), generator=g)
    batch = _build(kind, mode, patch, g)(x, y)
    assert batch.images.shape == x.shape
    logits = torch.randn(b, 5, generator=g)
    attn = _attn(b, grid[0] * grid[1], g)
    t = batch.targets(logits, attn)
    assert t.shape == (b, 5) and torch.allclose(t.sum(1), torch.ones(b), atol=1e-5)
    assert (t >= 0).all()
    for lam in (batch.lam_area, batch.lam, batch.alpha):
        assert lam.shape == (b,) and ((lam >= 0) & (lam <= 1 + 1e-6)).all()
    if batch.mask is not None:  # every pixel comes from i or its partner, as the mask says
        assert torch.equal(batch.images, torch.where(batch.mask, x, x[batch.partner]))


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("alphas", [(1.0, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_params_at_prob_1_equal_the_masked_formula(mode, alphas):
    """At prob 1 the draws skip the per-sample 'active' mask (u < 1 always holds); λ and the
    CutMix choice must equal what the mask would give, from the same generator state."""
    from mixpro.masks import sample_beta
    mixup_alpha, cutmix_alpha = alphas
    n = 1 if mode == "batch" else 16
    for seed in range(20):
        m = mixpro.Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, mode=mode,
                         num_classes=10, generator=torch.Generator().manual_seed(seed))
        lam, use_cut = m._params(n)
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(2, n, generator=g)
        if mixup_alpha > 0 and cutmix_alpha > 0:
            cut = u[0] < 0.5
            lam_ref = torch.where(cut, sample_beta(cutmix_alpha, n, generator=g),
                                  sample_beta(mixup_alpha, n, generator=g))
        else:
            cut = torch.full((n,), cutmix_alpha > 0)
            lam_ref = sample_beta(max(alphas), n, generator=g)
        active = u[1] < 1.0
        assert torch.equal(lam, lam_ref.masked_fill(~active, 1.0))
        assert torch.equal(use_cut, cut & active)
