"""Saliency detectors against OpenCV-contrib, and SaliencyMix's invariants (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import mix_images_np

import mixpro
from mixpro._checks import ArgumentError
from mixpro.masks import sample_beta
from mixpro.saliency import (
    _blur3,
    _grey,
    _two_sum_trunc_255,
    fine_grained_saliency,
    spectral_residual_saliency,
)
from mixpro.saliencymix import SaliencyMix

SETTINGS = settings(max_examples=20, deadline=None)


def _nchw(a: np.ndarray) -> torch.Tensor:
    """``(H, W)`` or ``(H, W, C)`` numpy -> ``(1, C, H, W)`` tensor, same values."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]


def _disc_image(rng: np.random.Generator, shape: tuple[int, ...], noise: int = 0) -> np.ndarray:
    """A flat background with a disc and a smaller disc inside it (plus optional noise)."""
    h, w = shape[:2]
    yy, xx = np.mgrid[:h, :w]
    a = np.zeros(shape, np.int64) + rng.integers(0, 256)
    cy, cx = rng.integers(h), rng.integers(w)
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    tail = shape[2:]
    a[d2 < rng.integers(4, 900)] = rng.integers(0, 256, tail)
    a[d2 < rng.integers(1, 30)] = rng.integers(0, 256, tail)
    if noise:
        a = a + rng.integers(-noise, noise + 1, shape)
    return a.clip(0, 255).astype(np.uint8)


def _opencv_images() -> list[np.ndarray]:
    """Random, structured and smooth uint8 images, grey and 3-channel, of several sizes."""
    import cv2

    rng = np.random.default_rng(0)
    out = []
    for h, w in ((64, 48), (48, 64), (100, 80), (80, 100), (37, 53)):
        for c in ((), (3,)):
            shape = (h, w, *c)
            out.append(rng.integers(0, 256, shape, dtype=np.uint8))
            out.append(_disc_image(rng, shape))
            out.append(_disc_image(rng, shape, noise=12))
            smooth = cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (0, 0), 4)
            out.append(smooth)
    out.append(np.full((20, 30), 77, np.uint8))  # flat: OpenCV's 0/0 gives a zero map
    out += [rng.integers(0, 256, s, dtype=np.uint8) for s in ((1, 1), (1, 9), (7, 1), (2, 3))]
    return out


def _overflow_image() -> np.ndarray:
    """A dark disc holding a small bright dot near a corner of a bright image: a few pixels
    are 'on' at small scales and 'off' at large ones, so the last step exceeds 255."""
    h, w = 142, 79
    yy, xx = np.mgrid[:h, :w]
    a = np.full((h, w), 220, np.uint8)
    d2 = (yy - 139) ** 2 + (xx - 71) ** 2
    a[d2 < 37 ** 2] = 14
    a[d2 < 5 ** 2] = 171
    return a


# ------------------------------------------------------------------------------------------
# The fine-grained detector against OpenCV-contrib
# ------------------------------------------------------------------------------------------


def test_grey_conversion_is_opencvs_bit_exactly():
    import cv2

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (61, 47, 3), dtype=np.uint8)
    ref = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY)
    t = _nchw(a).int()
    assert np.array_equal(_grey(t, "bgr")[0].numpy(), ref)
    # 'rgb' reads the channels the other way round: the proper luma of an RGB image
    assert torch.equal(_grey(t.flip(1), "rgb"), _grey(t, "bgr"))
    assert torch.equal(fine_grained_saliency(t.flip(1)),
                       fine_grained_saliency(t, channel_order="bgr"))


@pytest.mark.parametrize("shape", [(64, 48), (100, 80), (1, 1), (1, 9), (9, 1), (2, 3), (3, 2)])
def test_blur_is_opencvs_gaussian_blur_bit_exactly(shape):
    import cv2

    rng = np.random.default_rng(sum(shape))
    for _ in range(3):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        once = cv2.GaussianBlur(a, (3, 3), 0, 0)
        twice = cv2.GaussianBlur(once, (3, 3), 0, 0)
        g = torch.from_numpy(a).int()[None]
        assert np.array_equal(_blur3(g)[0].numpy(), once)
        assert np.array_equal(_blur3(_blur3(g))[0].numpy(), twice)


def test_fine_grained_matches_opencv():
    import cv2

    detector = cv2.saliency.StaticSaliencyFineGrained_create()
    worst = 0.0
    for a in [*_opencv_images(), _overflow_image()]:
        ok, ref = detector.computeSaliency(a)
        assert ok and ref.dtype == np.float32
        mine = fine_grained_saliency(_nchw(a), channel_order="bgr", overflow="wrap")
        assert mine.dtype == torch.float32 and mine.shape == (1, *a.shape[:2])
        mine = mine[0].numpy()
        worst = max(worst, float(np.abs(mine - ref).max()))
        # the 8-bit maps are identical (the float maps agree to the last bit, as measured)
        assert np.array_equal(np.rint(mine * 255), np.rint(ref * 255)), a.shape
    assert worst <= 1 / 255


def test_fine_grained_overflow_clamps_where_opencv_wraps():
    import cv2

    a = _overflow_image()
    _, ref = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(a)
    wrap = fine_grained_saliency(_nchw(a), overflow="wrap")[0].numpy()
    clamp = fine_grained_saliency(_nchw(a))[0].numpy()
    assert np.array_equal(wrap, ref)
    over = wrap != clamp
    assert over.sum() > 0  # the image does overflow
    assert np.all(clamp[over] == 1.0) and np.all(wrap[over] < 1.0)
    assert ((clamp >= 0) & (clamp <= 1)).all()


def test_exact_truncation_of_255_q_in_float32():
    """trunc(255·float32(on/max)) with float32 only equals the C++ double product, for every
    on <= max <= 6·255 the detector can meet (all ~1.2 M pairs)."""
    top = np.arange(1, 6 * 255 + 1)
    on = np.arange(0, 6 * 255 + 1)
    m, o = np.meshgrid(top, on)
    keep = o <= m
    q = (o[keep].astype(np.float32) / m[keep].astype(np.float32)).astype(np.float32)
    ref = np.trunc(255.0 * q.astype(np.float64)).astype(np.int64)
    got = _two_sum_trunc_255(torch.from_numpy(q)).numpy()
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("detector", [fine_grained_saliency, spectral_residual_saliency])
def test_batch_equals_one_image_at_a_time(detector):
    rng = np.random.default_rng(3)
    imgs = [_disc_image(rng, (3, 40, 56), noise=20) for _ in range(3)]
    imgs.append(rng.integers(0, 256, (3, 40, 56), dtype=np.uint8))
    x = torch.from_numpy(np.stack(imgs))
    batch = detector(x)
    assert batch.shape == (4, 40, 56) and batch.dtype == torch.float32
    for i in range(4):
        assert torch.equal(batch[i], detector(x[i:i + 1])[0])
    assert torch.equal(detector(x.float()), batch)  # floats holding integers: the same maps
    assert torch.equal(detector(x.float() + 0.3), batch)  # rounded to the nearest integer
    assert ((batch >= 0) & (batch <= 1)).all()
    grey = x[:, :1]
    assert torch.equal(detector(grey)[2], detector(grey[2:3])[0])


def test_detectors_refuse_bad_images():
    for bad in (torch.zeros(2, 2, 8, 8), torch.zeros(8, 8), torch.zeros(1, 3, 0, 4)):
        with pytest.raises(ArgumentError) as e:
            fine_grained_saliency(bad)
        assert e.value.argument == "images"
    with pytest.raises(ArgumentError) as e:
        fine_grained_saliency(torch.zeros(1, 3, 8, 8), channel_order="grb")
    assert e.value.argument == "channel_order"
    with pytest.raises(ArgumentError) as e:
        spectral_residual_saliency(torch.zeros(1, 3, 8, 8), size=1)
    assert e.value.argument == "size"


def test_spectral_residual_close_to_opencv():
    import cv2

    detector = cv2.saliency.StaticSaliencySpectralResidual_create()
    rng = np.random.default_rng(0)
    for h, w in ((64, 48), (100, 80), (120, 160), (224, 224)):
        for noise in (0.0, 10.0):
            yy, xx = np.mgrid[:h, :w]
            cy, cx = rng.integers(10, h - 10), rng.integers(10, w - 10)
            a = np.full((h, w), 90.0)
            a[(abs(yy - cy) < 4) & (abs(xx - cx) < 6)] = 230
            a = (a + rng.normal(0, noise, a.shape)).clip(0, 255).astype(np.uint8)
            for arr in (a, np.repeat(a[..., None], 3, 2)):
                _, ref = detector.computeSaliency(arr)
                mine = spectral_residual_saliency(_nchw(arr), channel_order="bgr")[0].numpy()
                assert mine.shape == ref.shape
                assert np.corrcoef(mine.ravel(), ref.ravel())[0, 1] > 0.99
                pm = np.unravel_index(mine.argmax(), mine.shape)
                pr = np.unravel_index(ref.argmax(), ref.shape)
                assert math.dist(pm, pr) <= 3, (h, w, noise, pm, pr)


# ------------------------------------------------------------------------------------------
# SaliencyMix
# ------------------------------------------------------------------------------------------


def _opencv_peak(x: torch.Tensor) -> tuple[int, int]:
    """Peak (first maximum, row-major) of OpenCV's fine-grained map of one RGB image in [0, 1]
    ``(C, H, W)``, fed as SaliencyMix's detector sees it (0..255, proper luma)."""
    import cv2

    px = np.rint(x.numpy().astype(np.float32) * np.float32(255)).clip(0, 255).astype(np.uint8)
    arr = px[0] if px.shape[0] == 1 else np.ascontiguousarray(px.transpose(1, 2, 0)[..., ::-1])
    _, sal = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(arr)
    return tuple(int(v) for v in np.unravel_index(sal.argmax(), sal.shape))


def _partner_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of the False region of a bool ``(H, W)`` mask, checked to be one
    rectangle; None if the mask is all True."""
    ys, xs = np.nonzero(~mask)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    assert not mask[y0:y1, x0:x1].any() and (~mask).sum() == (y1 - y0) * (x1 - x0)
    return int(y0), int(y1), int(x0), int(x1)


def _reference_lam(seed: int, n: int, b: int, pairing: str, beta: float) -> torch.Tensor:
    """λ as the mixer draws it: the partner permutation (randperm) first, then Beta(β, β)."""
    g = torch.Generator().manual_seed(seed)
    if pairing == "randperm":
        torch.randperm(b, generator=g)
    return sample_beta(beta, n, generator=g)


def _check_batch(batch, x: torch.Tensor, masks: np.ndarray) -> None:
    """Mixed images from exactly one source per pixel, λ = mask mean, targets sum to 1."""
    b = x.shape[0]
    part = batch.partner.numpy()
    ref = mix_images_np(x.numpy(), masks.astype(np.int64), part)
    assert np.array_equal(batch.images.numpy(), ref)
    full = np.broadcast_to(masks, (b, *masks.shape[1:]))
    xs, xp = x.numpy(), x.numpy()[part]
    from_i = batch.images.numpy() == xs
    from_j = batch.images.numpy() == xp
    assert np.all(from_i | from_j)
    assert np.all(np.where(full, from_i, from_j))
    own = part == np.arange(b)
    mean = full.reshape(b, -1).mean(1)
    assert np.allclose(batch.lam_area.numpy(), np.where(own, 1.0, mean), atol=1e-6)
    t = batch.area_targets()
    assert torch.allclose(t.sum(1), torch.ones(b), atol=1e-5)


@st.composite
def pixel_case(draw):
    h, w = draw(st.integers(4, 36)), draw(st.integers(4, 36))
    b = draw(st.integers(2, 6))
    c = draw(st.sampled_from([1, 3]))
    pairing = draw(st.sampled_from(["flip", "randperm"]))
    beta = draw(st.sampled_from([0.3, 1.0, 2.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return h, w, b, c, pairing, beta, seed


@SETTINGS
@given(pixel_case(), st.sampled_from(["sample", "batch"]))
def test_saliencymix_boxes(case, scope):
    h, w, b, c, pairing, beta, seed = case
    x = torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed + 1))
    y = torch.randint(0, 4, (b,))
    mixer = SaliencyMix(num_classes=4, beta=beta, scope=scope, pairing=pairing,
                        generator=torch.Generator().manual_seed(seed))
    x_before = x.clone()
    batch = mixer(x, y)
    assert torch.equal(x, x_before), "input modified"
    assert batch.method == "saliencymix"
    m = batch.mask.numpy()[:, 0]
    assert m.dtype == bool and m.shape == ((b if scope == "sample" else 1), h, w)
    _check_batch(batch, x, m[:, None])
    part = batch.partner.numpy()
    n = m.shape[0]
    lam = _reference_lam(seed, n, b, pairing, beta).double()
    for k in range(n):
        peak = _opencv_peak(x[part[k]])  # scope batch: the first partner's peak
        cut = math.sqrt(min(max(1.0 - float(lam[k]), 0.0), 1.0))
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = peak
        expect = (min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h),
                  min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w))
        box = _partner_box(m[k])
        if box is None:
            assert (expect[1] - expect[0]) * (expect[3] - expect[2]) == 0
            continue
        assert box == expect
        assert box[0] <= cy < box[1] and box[2] <= cx < box[3]  # the box holds the peak


@st.composite
def aligned_case(draw):
    ah, aw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    th, tw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    b = draw(st.integers(2, 5))
    scope = draw(st.sampled_from(["sample", "batch"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return (ah, aw), (th, tw), b, scope, seed


@SETTINGS
@given(aligned_case())
def test_saliencymix_aligned_boxes(case):
    (ah, aw), (th, tw), b, scope, seed = case
    h, w = ah * th, aw * tw
    x = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed + 1))
    y = torch.randint(0, 3, (b,))
    align = ah if ah == aw else (ah, aw)
    mixer = SaliencyMix(num_classes=3, scope=scope, align=align,
                        generator=torch.Generator().manual_seed(seed))
    batch = mixer(x, y)
    m = batch.mask.numpy()[:, 0]
    _check_batch(batch, x, m[:, None])
    part = batch.partner.numpy()
    lam = _reference_lam(seed, m.shape[0], b, "flip", 1.0).double()
    own = part == np.arange(b)
    for k in range(m.shape[0]):
        cut = math.sqrt(min(max(1.0 - float(lam[k]), 0.0), 1.0))
        nh, nw = round(th * cut), round(tw * cut)
        box = _partner_box(m[k])
        if box is None:
            assert nh * nw == 0
            continue
        y0, y1, x0, x1 = box
        assert y0 % ah == 0 and y1 % ah == 0 and x0 % aw == 0 and x1 % aw == 0
        assert ((y1 - y0) // ah, (x1 - x0) // aw) == (nh, nw)
        cy, cx = _opencv_peak(x[part[k]])
        assert y0 <= cy < y1 and x0 <= cx < x1  # the peak's token is in the box
        if scope == "sample" and not own[k]:
            assert math.isclose(float(batch.lam_area[k]), 1 - nh * nw / (th * tw),
                                abs_tol=1e-6)
    if scope == "batch":
        expect = 1 - (~m[0]).sum() / (ah * aw) / (th * tw)
        assert np.allclose(batch.lam_area.numpy(), np.where(own, 1.0, expect), atol=1e-6)


def test_scope_batch_is_one_box_from_the_first_partner():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 3, 24, 32, generator=g)
    mixer = SaliencyMix(num_classes=3, scope="batch", pairing="randperm",
                        generator=torch.Generator().manual_seed(2))
    batch = mixer(x, torch.zeros(6, dtype=torch.long))
    assert batch.mask.shape == (1, 1, 24, 32)
    box = _partner_box(batch.mask[0, 0].numpy())
    cy, cx = _opencv_peak(x[int(batch.partner[0])])
    assert box is not None and box[0] <= cy < box[1] and box[2] <= cx < box[3]
    lam = batch.lam_area[batch.partner != torch.arange(6)]
    assert (lam == lam[0]).all()


def test_spectral_residual_detector_centres_on_its_peak():
    x = torch.rand(4, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    mixer = SaliencyMix(num_classes=3, detector="spectral_residual",
                        generator=torch.Generator().manual_seed(1))
    batch = mixer(x, torch.zeros(4, dtype=torch.long))
    sal = spectral_residual_saliency(x * 255)
    for k in range(4):
        j = int(batch.partner[k])
        peak = divmod(int(sal[j].flatten().argmax()), 48)
        box = _partner_box(batch.mask[k, 0].numpy())
        if box is not None:
            assert box[0] <= peak[0] < box[1] and box[2] <= peak[1] < box[3]


def test_mean_std_and_uint8_images_give_the_same_boxes():
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    x = raw.float() / 255
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    y = torch.zeros(4, dtype=torch.long)
    masks = []
    for images, kw in ((x, {}), (xn, {"mean": mean, "std": std}), (raw, {})):
        mixer = SaliencyMix(num_classes=3, generator=torch.Generator().manual_seed(7), **kw)
        masks.append(mixer(images, y).mask)
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])


def test_seeded_determinism_and_prob():
    x = torch.rand(5, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(5) % 3
    runs = []
    for _ in range(2):
        mixer = SaliencyMix(num_classes=3, pairing="randperm", beta=0.5,
                            generator=torch.Generator().manual_seed(11))
        runs.append([mixer(x, y) for _ in range(3)])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.lam_area, b.lam_area)
        assert torch.equal(a.partner, b.partner)
    never = SaliencyMix(num_classes=3, prob=0.0, generator=torch.Generator().manual_seed(0))
    batch = never(x, y)
    assert batch.method == "none" and torch.equal(batch.images, x)
    assert torch.equal(batch.lam_area, torch.ones(5))
    half = SaliencyMix(num_classes=3, prob=0.5, generator=torch.Generator().manual_seed(0))
    methods = {half(x, y).method for _ in range(20)}
    assert methods == {"none", "saliencymix"}


def test_per_sample_lambda_reaches_the_loss():
    x = torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    mixer = SaliencyMix(num_classes=5, label_smoothing=0.1,
                        generator=torch.Generator().manual_seed(4))
    batch = mixer(x, y)
    assert len(set(batch.lam_area.tolist())) > 2  # per-sample λ
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(5), requires_grad=True)
    loss = batch.loss(logits)
    (grad,) = torch.autograd.grad(loss, logits)
    targets = mixpro.mix_targets(y, batch.partner, batch.lam_area, 5, 0.1)
    manual = mixpro.soft_target_cross_entropy(logits, targets)
    (grad_manual,) = torch.autograd.grad(manual, logits)
    assert torch.allclose(loss, manual) and torch.allclose(grad, grad_manual)
    expect = (torch.softmax(logits.detach(), 1) - targets) / 6  # each row: its own λ
    assert torch.allclose(grad, expect, atol=1e-6)


@pytest.mark.parametrize(("kwargs", "argument"), [
    ({"beta": 0.0}, "beta"),
    ({"beta": -1.0}, "beta"),
    ({"prob": 1.5}, "prob"),
    ({"scope": "x"}, "scope"),
    ({"detector": "x"}, "detector"),
    ({"align": 0}, "align"),
    ({"mean": (0.5, 0.5), "std": (0.2, 0.2)}, "mean"),
    ({"mean": (0.5,) * 3, "std": (0.2, 0.2)}, "std"),
    ({"mean": (0.5,) * 3, "std": (0.0,) * 3}, "std"),
    ({"mean": (123.7, 116.3, 103.5), "std": (0.2,) * 3}, "mean"),
    ({"mean": (0.5,) * 3}, "std"),
    ({"pairing": "x"}, "pairing"),
])
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ArgumentError) as e:
        SaliencyMix(num_classes=3, **kwargs)
    assert e.value.argument == argument


def test_bad_images_for_the_mixer():
    y = torch.zeros(2, dtype=torch.long)
    cases = [
        (SaliencyMix(num_classes=3, align=8), torch.rand(2, 3, 20, 24), "align"),
        (SaliencyMix(num_classes=3, mean=(0.5,) * 3, std=(0.2,) * 3), torch.rand(2, 1, 8, 8),
         "mean"),
        (SaliencyMix(num_classes=3, mean=(0.5,), std=(0.2,)),
         torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "mean"),
        (SaliencyMix(num_classes=3), torch.rand(2, 2, 8, 8), "images"),
    ]
    for mixer, images, argument in cases:
        with pytest.raises(ArgumentError) as e:
            mixer(images, y)
        assert e.value.argument == argument
