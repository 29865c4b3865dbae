"""PatchDrop: the spec's worked examples E1–E4 / P1–P6 and the sweep on a tiny model."""

from __future__ import annotations

import pytest
import timm
import torch

import mixpro
from mixpro.data.factory import Normalize
from mixpro.evaluate import occlusion as O

E1 = torch.tensor([[0.05, 0.20, 0.10, 0.15]])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("lam", "flags", "mass"),
    [(0.3, [0, 1, 0, 0], 0.4), (0.5, [0, 1, 0, 1], 0.7), (0.8, [0, 1, 1, 1], 0.9),
     (1.0, [1, 1, 1, 1], 1.0)],
)
def test_mass_threshold_e1(lam, flags, mass):  # P3
    sel = O.mass_threshold(E1, lam)
    assert sel.int().tolist() == [flags]
    assert float((E1 * sel).sum() / E1.sum()) == pytest.approx(mass)


def test_salient_and_non_salient_drops_e1():
    drop, lam = O.saliency_drop_mask(E1, 0.5, "salient")
    assert lam == 0.5 and drop.nonzero()[:, 1].tolist() == [1, 3]
    drop, lam = O.saliency_drop_mask(E1, 0.5, "non_salient")  # λ = 1 - Q = 0.5
    assert lam == 0.5 and drop.nonzero()[:, 1].tolist() == [0, 2]
    drop, lam = O.saliency_drop_mask(E1, 0.2, "non_salient")  # λ = 0.8: keep {1, 2, 3}
    assert lam == 0.8 and drop.int().tolist() == [[1, 0, 0, 0]]
    drop, _ = O.saliency_drop_mask(E1, 0.0, "non_salient")  # λ = 1: nothing dropped
    assert not drop.any()


def test_mass_threshold_e2_counts():  # P4
    a = torch.arange(1, 197, dtype=torch.float32)[None]
    counts = [11, 21, 33, 45, 58, 73, 89, 109, 135, 196]
    masses = [.1088, .2023, .3077, .4056, .5032, .6050, .7007, .8017, .9021, 1.0]
    for k, (n, mass) in enumerate(zip(counts, masses, strict=True), start=1):
        sel = O.mass_threshold(a, k / 10)[0]
        assert int(sel.sum()) == n
        assert sel.nonzero()[:, 0].tolist() == list(range(196 - n, 196))  # top indices
        assert float(a[0][sel].sum() / a.sum()) == pytest.approx(mass, abs=1e-4)


def test_random_drop_counts_p1():
    assert O.random_drop_counts(196) == [0, 19, 39, 58, 78, 98, 117, 137, 156, 176]
    assert O.random_drop_counts(64) == [k * 64 // 10 for k in range(10)]


def test_random_drop_geometry_p2():
    x = torch.ones(2, 3, 224, 224)
    g = torch.Generator().manual_seed(0)
    drop = O.random_drop_mask(98, 196, 2, per_image=False, generator=g)
    assert drop.shape == (1, 196) and int(drop.sum()) == 98
    out = O.drop_patches(x, drop, (14, 14))
    assert ((out == 0).sum(dim=(2, 3)) == 98 * 256).all()
    blocks = (out[0, 0] == 0).view(14, 16, 14, 16)
    per_block = blocks.sum(dim=(1, 3))
    assert set(per_block.unique().tolist()) <= {0, 256}  # whole aligned 16x16 blocks
    assert torch.equal(per_block.flatten() == 256, drop[0])
    single = torch.zeros(1, 196, dtype=torch.bool)
    single[0, 15] = True  # p = 15 covers rows 16..31, cols 16..31
    one = O.drop_patches(torch.ones(1, 1, 224, 224), single, (14, 14))[0, 0]
    assert (one[16:32, 16:32] == 0).all() and int((one == 0).sum()) == 256


def test_random_drop_per_image_and_seed():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = O.random_drop_mask(10, 64, 5, per_image=True, generator=g1)
    b = O.random_drop_mask(10, 64, 5, per_image=True, generator=g2)
    assert a.shape == (5, 64) and torch.equal(a, b) and (a.sum(1) == 10).all()
    assert not all(torch.equal(a[0], a[i]) for i in range(1, 5))
    with pytest.raises(O.OcclusionError, match="cannot drop 65 of 64"):
        O.random_drop_mask(65, 64, 1)


def test_salient_complement_p5():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 64, generator=g)
    for q in (0.3, 0.6):
        sal, _ = O.saliency_drop_mask(a, q, "salient")
        non, _ = O.saliency_drop_mask(a, 1 - q, "non_salient")  # same λ = q
        assert torch.equal(sal, ~non)  # disjoint, union = all patches
        x = torch.ones(4, 1, 32, 32)
        z1 = O.drop_patches(x, sal, (8, 8)) == 0
        z2 = O.drop_patches(x, non, (8, 8)) == 0
        assert not (z1 & z2).any() and (z1 | z2).all()


def test_black_before_normalisation_p6():
    x = torch.rand(1, 3, 32, 32)
    drop = torch.ones(1, 64, dtype=torch.bool)
    norm = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    out = norm(O.drop_patches(x, drop, (8, 8)))
    expected = torch.tensor([-2.11790, -2.03571, -1.80444])
    assert torch.allclose(out[0, :, 0, 0], expected, atol=1e-5)


def test_pool_attention():
    a = torch.arange(16, dtype=torch.float32).view(1, 16)
    pooled = O.pool_attention(a, (4, 4), (2, 2))
    assert pooled.tolist() == [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7, 8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]
    with pytest.raises(O.OcclusionError, match="not a multiple"):
        O.pool_attention(torch.zeros(1, 9), (3, 3), (2, 2))


def _tiny(**kw):
    torch.manual_seed(0)
    args = dict(img_size=16, patch_size=4, in_chans=1, depth=1, embed_dim=16, num_heads=2,
                num_classes=3)
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


def _batches(n=2, b=6):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(b, 1, 16, 16, generator=g), torch.randint(0, 3, (b,), generator=g))
            for _ in range(n)]


def test_sweep_structure_and_determinism():
    model = _tiny()
    norm = Normalize((0.5,), (0.5,))
    kw = dict(normalize=norm, repeats=2, seed=5)
    r1 = O.occlusion_sweep(model, _batches(), **kw)
    r2 = O.occlusion_sweep(model, _batches(), **kw)
    assert r1 == r2
    assert r1["grid"] == [4, 4] and r1["patch_px"] == [4, 4] and r1["num_images"] == 12
    rnd, sal, non = (r1["curves"][m] for m in O.DROP_MODES)
    assert [p["n_drop"] for p in rnd] == O.random_drop_counts(16)
    assert all(len(p["acc_runs"]) == 2 for p in rnd)
    assert [p["lambda"] for p in sal] == [k / 10 for k in range(1, 11)]
    assert [p["lambda"] for p in non] == [round(1 - k / 10, 12) for k in range(10)]
    assert sal[-1]["frac_dropped"] == 1.0 and non[0]["frac_dropped"] == 0.0
    assert all(p["mass_dropped"] >= p["lambda"] - 1e-9 for p in sal)
    # level 0 of random and non-salient λ=1 drop nothing: both equal clean accuracy
    with torch.no_grad():
        clean = sum(int((model(norm(x)).argmax(1) == y).sum()) for x, y in _batches()) / 12
    assert rnd[0]["acc_mean"] == non[0]["acc_mean"] == pytest.approx(clean)


def test_sweep_salient_needs_cls_attention():
    model = _tiny(class_token=False, global_pool="avg")
    with pytest.raises(mixpro.NoClsAttentionError):
        O.occlusion_sweep(model, _batches(1), normalize=Normalize((0.5,), (0.5,)),
                          modes=["salient"])
    r = O.occlusion_sweep(model, _batches(1), normalize=Normalize((0.5,), (0.5,)),
                          modes=["random"], repeats=1)
    assert list(r["curves"]) == ["random"]
    with pytest.raises(O.OcclusionError, match="unknown occlusion mode"):
        O.occlusion_sweep(model, _batches(1), normalize=Normalize((0.5,), (0.5,)),
                          modes=["everything"])
