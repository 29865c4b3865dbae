"""The paper's Table 2, part 1: FMix, ResizeMix, GridMixup (and their PAL / TransMix labels,
token-aligned variants) and the official presets, each against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mixpro
from mixpro._checks import ArgumentError
from mixpro.fmix import FourierMasks
from mixpro.gridmixup import GridMixupMasks
from mixpro.methods import METHODS, MixOptions, build_mixer
from mixpro.resizemix import ResizeBoxes

SETTINGS = settings(max_examples=20, deadline=None)
TABLE2 = [m for m in METHODS
          if m.split("_")[0] in ("fmix", "resizemix", "gridmixup", "saliencymix")]
CPU = torch.device("cpu")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- FMix ---------------------------------------------------------------------------------------


def _fourier_np(param: np.ndarray, h: int, w: int, decay: float) -> np.ndarray:
    """The FMix low-frequency image from its complex Gaussian ``param (2, h, w//2+1)``,
    plain numpy (the formula of the paper and the official code)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freqs = np.sqrt(fx ** 2 + fy ** 2)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay
    img = np.fft.irfft2((param[0] + 1j * param[1]) * scale, s=(h, w))
    img = img - img.min()
    return img / img.max()


@pytest.mark.parametrize("h,w", [(16, 16), (12, 20), (7, 9)])
def test_fmix_noise_is_the_formula_and_the_mask_its_top_pixels(h, w):
    gen = FourierMasks(decay=3.0)
    noise = gen.noise(1, (h, w), _gen(3))[0].numpy()
    param = torch.randn(1, 2, h, w // 2 + 1, generator=_gen(3), dtype=torch.float64)[0].numpy()
    np.testing.assert_allclose(noise, _fourier_np(param, h, w, 3.0), atol=1e-12)
    for ratio in (0.0, 0.3, 0.5, 0.77, 1.0):
        g = _gen(5)
        mask = gen(torch.tensor([ratio]), (h, w), device=CPU, generator=g).pixel_mask()[0, 0]
        g = _gen(5)
        img = gen.noise(1, (h, w), g)[0].flatten().numpy()
        ceil = float(torch.rand(1, generator=g)) > 0.5
        k = math.ceil(ratio * h * w) if ceil else math.floor(ratio * h * w)
        top = np.zeros(h * w, bool)
        top[np.argsort(-img, kind="stable")[:k]] = True
        assert int(mask.sum()) == k
        assert np.array_equal(mask.flatten().numpy(), top)


def test_fmix_class_equals_the_registered_method():
    x, y = torch.rand(6, 3, 16, 16), torch.arange(6) % 4
    a = mixpro.FMix(num_classes=4, generator=_gen(1))(x, y)
    b = build_mixer("fmix", MixOptions(), num_classes=4, patch_size=1, generator=_gen(1))(x, y)
    assert torch.equal(a.images, b.images) and torch.equal(a.lam_area, b.lam_area)
    assert a.method == b.method == "fmix"


# -- ResizeMix ----------------------------------------------------------------------------------


def _nearest_np(img: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Nearest resize ``(C, H, W) -> (C, oh, ow)`` by torch's rule (src = floor(dst·in/out))."""
    _, h, w = img.shape
    rows = np.minimum(np.floor(np.arange(oh) * (h / oh)).astype(int), h - 1)
    cols = np.minimum(np.floor(np.arange(ow) * (w / ow)).astype(int), w - 1)
    return img[:, rows][:, :, cols]


@SETTINGS
@given(h=st.integers(4, 24), w=st.integers(4, 24), b=st.integers(2, 7),
       seed=st.integers(0, 10_000))
def test_resizemix_box_holds_the_whole_resized_partner(h, w, b, seed):
    x = torch.rand(b, 2, h, w)
    batch = mixpro.ResizeMix(num_classes=3, generator=_gen(seed))(x, torch.arange(b) % 3)
    y0, y1, x0, x1 = batch.source.box
    assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
    keep = batch.mask[0, 0].numpy()
    assert not keep[y0:y1, x0:x1].any() and keep.sum() == h * w - (y1 - y0) * (x1 - x0)
    for i in range(b):
        j = int(batch.partner[i])
        out = batch.images[i].numpy()
        np.testing.assert_array_equal(out[:, y0:y1, x0:x1],
                                      _nearest_np(x[j].numpy(), y1 - y0, x1 - x0))
        np.testing.assert_array_equal(out[:, keep], x[i].numpy()[:, keep])  # not transposed
        want = 1.0 if j == i else 1 - (y1 - y0) * (x1 - x0) / (h * w)
        assert float(batch.lam_area[i]) == pytest.approx(want, abs=1e-6)
    tau_h, tau_w = (y1 - y0) / h, (x1 - x0) / w
    assert max(tau_h, tau_w) <= 0.8 + 1e-9


# -- GridMixup ----------------------------------------------------------------------------------


def _holes_loop(lam, grid, u, n_lo=2, n_hi=6, hole_aspect=1.0, area=(0.5, 1.0), aspect=(0.5, 2.0)):
    """GridMixup's holes by a slow loop over cells (the reference rule, with the crop clamped
    to the image instead of wrapped)."""
    gh, gw = grid
    n = min(n_lo + int(u[0] * (n_hi - n_lo + 1)), n_hi)
    a = area[0] + (area[1] - area[0]) * u[1]
    r = aspect[0] + (aspect[1] - aspect[0]) * u[2]
    width = math.floor(math.sqrt(math.floor(gh * gw * a) / r))
    height = math.floor(width * r)
    width, height = max(1, min(width, gw)), max(1, min(height, gh))
    x0, y0 = int((gw - width) * u[3]), int((gh - height) * u[4])
    cw = max(1, math.ceil(width / n))
    ch = max(1, math.floor(cw * hole_aspect))
    hw = max(1, min(math.floor(cw * math.sqrt(1 - lam)), cw - 1))
    hh = max(1, min(math.floor(ch * math.sqrt(1 - lam)), ch - 1))
    out = np.zeros((gh, gw), bool)
    for cy in range(y0, y0 + height, ch):
        for cx in range(x0, x0 + width, cw):
            out[cy:min(cy + hh, y0 + height), cx:min(cx + hw, x0 + width)] = True
    return out


@SETTINGS
@given(lam=st.floats(0.0, 1.0), h=st.integers(4, 40), w=st.integers(4, 40),
       u=st.lists(st.floats(0.0, 0.999), min_size=5, max_size=5))
def test_gridmixup_holes_match_a_slow_loop(lam, h, w, u):
    got = GridMixupMasks().holes(lam, (h, w), u).numpy()
    assert np.array_equal(got, _holes_loop(lam, (h, w), u))


def test_gridmixup_never_wraps_an_oversized_crop():
    """The reference's 224² case (area ratio 1, aspect 0.5, 4 columns): its crop is 316 px
    wide, its origin x = −46, and its holes wrap to the far border. Ours clamps the crop."""
    holes = GridMixupMasks(n_holes=(4, 4), cut_area=(1.0, 1.0), cut_aspect=(0.5, 0.5)) \
        .holes(0.5, (224, 224), [0.0, 0.0, 0.0, 0.5, 0.5])
    assert np.array_equal(holes.numpy(), _holes_loop(0.5, (224, 224), [0, 0, 0, 0.5, 0.5], 4, 4,
                                                     1.0, (1.0, 1.0), (0.5, 0.5)))
    cols = holes.any(0).nonzero().flatten()
    assert int(cols.min()) == 0  # the first hole at the clamped crop's origin, not at x = 170
    starts = [int(c) for c in cols if c == 0 or not holes.any(0)[c - 1]]
    assert starts == [0, 56, 112, 168]  # one hole per cell of the 4 columns, in order


# -- every Table 2 mask: the contract -----------------------------------------------------------


@SETTINGS
@given(name=st.sampled_from(TABLE2), h=st.sampled_from([8, 16, 24]),
       w=st.sampled_from([8, 16, 32]), b=st.integers(2, 7), seed=st.integers(0, 10_000),
       align=st.booleans())
def test_every_table2_method_keeps_the_contract(name, h, w, b, seed, align):
    mixer = build_mixer(name, MixOptions(token_align=align), num_classes=5, patch_size=4,
                        generator=_gen(seed))
    x, y = torch.rand(b, 3, h, w), torch.arange(b) % 5
    batch = mixer(x, y)
    again = build_mixer(name, MixOptions(token_align=align), num_classes=5, patch_size=4,
                        generator=_gen(seed))(x, y)
    assert torch.equal(batch.images, again.images)  # seeded
    keep = batch.mask.expand(b, 1, h, w)
    own = batch.self_paired
    mean = keep.float().mean((1, 2, 3))
    assert torch.allclose(batch.lam_area, torch.where(own, 1.0, mean), atol=1e-6)
    if not name.startswith("resizemix"):  # one source per pixel, the partner's same pixel
        partner = x[batch.partner]
        assert torch.equal(batch.images, torch.where(keep, x, partner))
    if align:  # whole 4-px tokens
        pm = keep[:, 0].reshape(b, h // 4, 4, w // 4, 4)
        assert torch.equal(pm.all(4).all(2), pm.any(4).any(2))
    attention = torch.softmax(torch.randn(b, (h // 4) * (w // 4) + 1), 1)[:, 1:]
    logits = torch.randn(b, 5, requires_grad=True)
    targets = batch.targets(logits, attention)
    assert torch.allclose(targets.sum(1), torch.ones(b), atol=1e-5)
    if not batch.needs_attention:  # per-sample λ reaches the loss
        batch.loss(logits).backward()
        ref = torch.softmax(logits.detach(), 1) - targets.detach()
        assert torch.allclose(logits.grad, ref / b, atol=1e-6)


def test_attention_labels_on_top_of_every_table2_mask():
    for name in ("fmix", "resizemix", "gridmixup", "saliencymix"):
        pal = build_mixer(f"{name}_pal", MixOptions(), num_classes=5, patch_size=4,
                          generator=_gen())
        tm = build_mixer(f"{name}_transmix", MixOptions(), num_classes=5, patch_size=4,
                         generator=_gen())
        assert pal.needs_attention and tm.needs_attention
        assert tm.relabel.attention_norm == "renormalize"
        b = tm(torch.rand(4, 3, 16, 16), torch.arange(4))
        assert b.method in (f"{name}_transmix", "saliencymix")
        attention = torch.softmax(torch.randn(4, 17), 1)[:, 1:]
        b.targets(torch.randn(4, 5), attention)
        assert torch.allclose(b.lam, 0.5 * b.lam_area + 0.5 * b.lam_attn, atol=1e-6)


def test_official_presets_carry_every_quirk():
    mixer = build_mixer("mixpro_official", MixOptions(), num_classes=5, patch_size=4,
                        generator=_gen())
    mp, mu = mixer.mixers
    assert (mp.mode, mp.pairing, mp.rounding) == ("positions", "randperm", "ceil")
    assert not mp.alpha.detach and mp.relabel.attention_norm == "renormalize"
    assert mp.relabel.smoothing == 0.0 and mp.relabel.alpha_smoothing == mp.label_smoothing
    assert isinstance(mu, mixpro.Mixup) and mixer.p.tolist() == [0.5, 0.5]
    tm = build_mixer("transmix_official", MixOptions(transmix_ratio=0.0), num_classes=5,
                     patch_size=4, generator=_gen())
    assert (tm.ratio, tm.mode, tm.relabel.token_mode, tm.relabel.attention_norm) == (
        0.5, "batch", "nearest", "renormalize")


@pytest.mark.parametrize("make, name", [
    (lambda: FourierMasks(decay=0), "decay"),
    (lambda: ResizeBoxes(scope=(0.9, 0.2)), "scope"),
    (lambda: GridMixupMasks(n_holes=(0, 3)), "n_holes"),
    (lambda: GridMixupMasks(cut_area=(0.5, 2.0)), "cut_area"),
    (lambda: mixpro.FMix(num_classes=3, align=0), "align"),
    (lambda: mixpro.ResizeMix(num_classes=3, beta=-1), "beta"),
])
def test_bad_arguments_name_the_argument(make, name):
    with pytest.raises(ArgumentError, match=f"^{name} ") as e:
        make()
    assert e.value.argument == name


def test_fmix_on_a_size_the_tokens_do_not_tile_is_an_error():
    with pytest.raises(ArgumentError, match="align"):
        mixpro.FMix(num_classes=3, align=5)(torch.rand(2, 1, 16, 16), torch.arange(2))


@pytest.mark.parametrize("method", ["fmix", "resizemix_pal", "gridmixup_transmix", "saliencymix",
                                    "mixpro_official", "transmix_official"])
def test_mixpro_train_runs_each_new_method(method, tmp_path, one_thread):
    from test_data import make_fashion
    from test_train import tiny

    from mixpro.train import run

    data = make_fashion(tmp_path / "fm", n_train=40, n_test=20)
    res = run.train(tiny(data, tmp_path / "r", method=method, epochs=1, warmup_epochs=0,
                         max_steps=1, token_align=True)
                    if method.split("_")[0] in ("fmix", "resizemix", "gridmixup", "saliencymix")
                    else tiny(data, tmp_path / "r", method=method, epochs=1, warmup_epochs=0,
                              max_steps=1))
    assert res.summary["epochs"] == 1 and math.isfinite(res.metrics[0]["train_loss"])


# -- GridMix (Baek et al.): grid + patch-level labels ----------------------------------------


def _vit(k=5):
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=k,
                             img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2)


def test_gridmix_token_targets_are_the_cell_labels():
    model = _vit()
    mixer = mixpro.GridMix(num_classes=5, patch_size=4, mask_scale=1, label_smoothing=0.0,
                           model=model, generator=_gen(2))
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    batch = mixer(x, y)
    targets = mixer.token_targets(batch, (4, 4))  # (B, 16, K)
    cells = batch.mask[:, 0].expand(4, 16, 16).reshape(-1, 4, 4, 4, 4).all(4).all(2)
    for i in range(4):
        j = int(batch.partner[i])
        for t in range(16):
            own = bool(cells[i if cells.shape[0] > 1 else 0].flatten()[t]) or j == i
            want = torch.zeros(5)
            want[int(y[i] if own else y[j])] = 1.0
            assert torch.equal(targets[i, t], want), (i, t)


def test_gridmix_loss_is_area_ce_plus_the_weighted_token_loss_and_trains_the_head():
    model = _vit().train()
    mixer = mixpro.GridMix(num_classes=5, patch_size=4, mask_scale=2, local_weight=0.5,
                           model=model, generator=_gen(3))
    x, y = torch.rand(6, 3, 16, 16), torch.arange(6) % 5
    batch = mixer(x, y)
    logits = model(batch.images)
    loss = batch.loss(logits)
    tokens = mixer.probe.tokens
    token_logits = mixer.token_head(tokens).reshape(-1, 5)
    want_local = torch.nn.functional.cross_entropy(
        token_logits, mixer.token_targets(batch, (4, 4)).reshape(-1, 5))
    want = mixpro.soft_target_cross_entropy(logits, batch.area_targets()) + 0.5 * want_local
    assert torch.allclose(loss, want, atol=1e-6)
    loss.backward()
    assert mixer.token_head.weight.grad is not None and model.patch_embed.proj.weight.grad \
        is not None
    assert mixer.parameters() == list(mixer.token_head.parameters())


def test_gridmix_refuses_a_model_without_patch_tokens_and_a_stale_forward():
    with pytest.raises(ArgumentError, match="^model must be a timm ViT"):
        mixpro.GridMix(num_classes=3, patch_size=4, model=torch.nn.Linear(2, 3))
    mixer = mixpro.GridMix(num_classes=5, patch_size=4, model=_vit(), generator=_gen())
    batch = mixer(torch.rand(2, 3, 16, 16), torch.arange(2))
    with pytest.raises(RuntimeError, match="no patch tokens of this batch"):
        batch.loss(torch.randn(2, 5))


def test_mixpro_train_runs_gridmix_and_checkpoints_its_head(tmp_path, one_thread):
    from test_data import make_fashion
    from test_train import tiny

    from mixpro.train import run

    data = make_fashion(tmp_path / "fm", n_train=40, n_test=20)
    res = run.train(tiny(data, tmp_path / "r", method="gridmix", epochs=1, warmup_epochs=0,
                         max_steps=2))
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert len(ck["mixer"]) == 2 and ck["mixer"][0].shape == (10, 32)  # the token head
    assert math.isfinite(res.metrics[0]["train_loss"])
