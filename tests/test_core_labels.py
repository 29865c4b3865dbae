"""Labels: PAL (Eq. 5, 8, 9), α strategies, TransMix, losses — against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    cls_attention_np,
    cosine_np,
    lam_attn_np,
    lam_attn_paper_np,
    mix_targets_np,
    one_hot_np,
    soft_ce_np,
    softmax_np,
    token_fraction_np,
    token_nearest_np,
)

import mixpro
from mixpro.labels import attention_lambda, cosine_alpha, mix_targets, smooth_one_hot

SETTINGS = settings(max_examples=30, deadline=None)


def test_smooth_one_hot_and_mix_targets_match_numpy_and_timm():
    from timm.data.mixup import mixup_target

    y = torch.tensor([0, 3, 2, 1, 3, 0])
    assert np.allclose(smooth_one_hot(y, 4, 0.1).numpy(), one_hot_np(y.numpy(), 4, 0.1))
    lam = torch.rand(6, generator=torch.Generator().manual_seed(0))
    partner = torch.tensor([5, 2, 1, 0, 4, 3])
    ref = mix_targets_np(y.numpy(), partner.numpy(), lam.numpy(), 4, 0.1)
    assert np.allclose(mix_targets(y, partner, lam, 4, 0.1).numpy(), ref, atol=1e-6)
    # timm's mixup_target pairs with flip(0) and a scalar λ
    flip = torch.arange(5, -1, -1)
    ours = mix_targets(y, flip, torch.full((6,), 0.3), 4, 0.1)
    assert torch.allclose(ours, mixup_target(y, 4, lam=0.3, smoothing=0.1), atol=1e-6)


@SETTINGS
@given(st.integers(2, 6), st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_attention_lambda_matches_loop(b, n, seed):
    """Both forms against numpy: Eq. 5 as written (Σ m·a) and renormalised (Σ m·a / Σ a)."""
    rng = np.random.default_rng(seed)
    a_np = cls_attention_np(b, n, rng)  # cls row of a softmax over cls + patches: Σa < 1
    frac_np = rng.random((b, n))
    a, frac = torch.tensor(a_np, dtype=torch.float32), torch.tensor(frac_np, dtype=torch.float32)
    paper = attention_lambda(a, frac).numpy()  # the default is the paper's form
    assert np.allclose(paper, lam_attn_paper_np(a_np, frac_np), atol=1e-5)
    assert np.array_equal(paper, attention_lambda(a, frac, "paper").numpy())
    renorm = attention_lambda(a, frac, "renormalize").numpy()
    assert np.allclose(renorm, lam_attn_np(a_np, frac_np), atol=1e-5)
    assert np.allclose(renorm * a_np.sum(1), paper, atol=1e-5)
    assert ((paper >= 0) & (paper <= a_np.sum(1) + 1e-6)).all()
    assert ((renorm >= 0) & (renorm <= 1 + 1e-6)).all()
    # renormalised: any scale of the scores; paper: an all-ones mask gives Σa, not 1
    assert np.allclose(attention_lambda(a * 7, frac, "renormalize").numpy(), renorm, atol=1e-5)
    ones = torch.ones(1, n)
    assert np.allclose(attention_lambda(a, ones).numpy(), a_np.sum(1), atol=1e-6)


def test_attention_lambda_checks_norm_and_row_sums():
    a, frac = torch.full((2, 4), 0.3), torch.ones(2, 4)  # rows sum to 1.2
    with pytest.raises(ValueError, match="attention rows must sum to at most 1"):
        attention_lambda(a, frac)
    assert torch.allclose(attention_lambda(a, frac, "renormalize"), torch.ones(2))
    with pytest.raises(ValueError, match="norm"):
        attention_lambda(a, frac, "softmax")
    # all-zero attention: the token-area share, in both forms
    half = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    for norm in ("paper", "renormalize"):
        assert torch.allclose(attention_lambda(torch.zeros(1, 4), half, norm), torch.tensor([.5]))
    with pytest.raises(ValueError, match="attention_norm"):
        mixpro.MixPro(num_classes=3, patch_size=4, attention_norm="sum")


def test_probe_attention_sums_below_one_and_paper_lambda_uses_it_as_is(one_thread):
    """ClsAttention's cls row excludes cls→cls, so Σa < 1: the two forms really differ."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16,
                              patch_size=4, depth=1, embed_dim=16, num_heads=2,
                              num_classes=3).eval()
    probe = mixpro.ClsAttention(model)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    lam = {}
    for norm in ("paper", "renormalize"):
        mixer = mixpro.MixPro(num_classes=3, patch_size=4, mask_scale=1, attention_norm=norm,
                              generator=torch.Generator().manual_seed(1))
        batch = mixer(x, y)
        logits = model(batch.images)
        a = probe.attention.double().numpy()
        assert (a.sum(1) < 1).all()
        batch.targets(logits, probe.attention)
        frac = token_fraction_np(batch.mask.numpy().astype(np.float64), 4, 4)
        ref = (lam_attn_paper_np if norm == "paper" else lam_attn_np)(a, frac)
        assert np.allclose(batch.lam_attn.numpy(), ref, atol=1e-5)
        lam[norm] = batch.lam_attn
    assert not torch.allclose(lam["paper"], lam["renormalize"], atol=1e-3)
    assert mixpro.MixPro(num_classes=3, patch_size=4).relabel.attention_norm == "paper"
    assert mixpro.TransMix(num_classes=3).relabel.attention_norm == "renormalize"


def test_cosine_alpha_matches_numpy():
    z = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    t = torch.softmax(torch.randn(5, 7), 1)
    ref = cosine_np(softmax_np(z.double().numpy()), t.double().numpy())
    assert np.allclose(cosine_alpha(z, t).numpy(), ref, atol=1e-6)


def _pal_reference(batch, logits, attention, k, smoothing, patch, norm="paper",
                   alpha_smoothing=0.0):
    """Eq. 5, 7, 8, 9 from the pixel mask, by slow loops (norm: Eq. 5 as written or the
    official renormalised form; alpha_smoothing: smoothing of α's reference target)."""
    m = batch.mask.numpy().astype(np.float64)
    b = logits.shape[0]
    labels, partner = batch.labels.numpy(), batch.partner.numpy()
    own = partner == np.arange(b)  # a sample paired with itself is unmixed: λ = 1
    frac = np.broadcast_to(token_fraction_np(m, *patch), (b, attention.shape[1]))
    lam_area = np.where(own, 1.0, np.broadcast_to(m.reshape(m.shape[0], -1).mean(1), (b,)))
    lam_attn_fn = lam_attn_paper_np if norm == "paper" else lam_attn_np
    lam_attn = np.where(own, 1.0, lam_attn_fn(attention.double().numpy(), frac))
    area_t = mix_targets_np(labels, partner, lam_area, k, alpha_smoothing)
    alpha = cosine_np(softmax_np(logits.double().numpy()), area_t)
    lam = alpha * lam_attn + (1 - alpha) * lam_area
    return lam_area, lam_attn, alpha, lam, mix_targets_np(labels, partner, lam, k, smoothing)


@SETTINGS
@given(st.sampled_from(["batch", "positions", "elem"]), st.integers(2, 7),
       st.integers(0, 2**31 - 1), st.sampled_from([0.0, 0.1]),
       st.sampled_from([None, "paper", "renormalize"]), st.sampled_from(["default", None, 0.05]))
def test_pal_targets_match_reference(mode, b, seed, smoothing, norm, alpha_s):
    g = torch.Generator().manual_seed(seed)
    k, patch = 6, (2, 4)
    kw = {} if norm is None else {"attention_norm": norm}
    if alpha_s != "default":
        kw["alpha_target_smoothing"] = alpha_s
    mixer = mixpro.MixPro(num_classes=k, patch_size=patch, mask_scale=(2, 1), mode=mode,
                          label_smoothing=smoothing, generator=g, **kw)
    x = torch.randn(b, 3, 12, 16, generator=g)
    y = torch.randint(0, k, (b,), generator=g)
    batch = mixer(x, y)
    logits = torch.randn(b, k, generator=g) * 3
    attention = torch.tensor(cls_attention_np(b, 6 * 4, np.random.default_rng(seed)),
                             dtype=torch.float32)
    t = batch.targets(logits, attention)
    # defaults: Eq. 5 un-renormalised; α against ỹ of one-hot labels (Eq. 7, 8)
    a_s = {"default": 0.0, None: smoothing}.get(alpha_s, alpha_s)
    lam_area, lam_attn, alpha, lam, ref_t = _pal_reference(
        batch, logits, attention, k, smoothing, patch, norm or "paper", a_s)
    assert np.allclose(batch.lam_area.numpy(), lam_area, atol=1e-6)
    assert np.allclose(batch.lam_attn.numpy(), lam_attn, atol=1e-5)
    assert np.allclose(batch.alpha.numpy(), alpha, atol=1e-5)
    assert np.allclose(batch.lam.numpy(), lam, atol=1e-5)
    assert np.allclose(t.numpy(), ref_t, atol=1e-5)
    assert torch.allclose(t.sum(1), torch.ones(b), atol=1e-5)
    assert ((batch.lam >= 0) & (batch.lam <= 1)).all()
    for v in (batch.alpha, batch.lam_attn, batch.lam):
        assert v.shape == (b,) and v.dtype == torch.float32


def _setup(alpha, **kw):
    g = torch.Generator().manual_seed(0)
    mixer = mixpro.MixPro(num_classes=4, patch_size=2, mask_scale=2, alpha=alpha,
                          generator=g, **kw)
    x = torch.randn(4, 1, 8, 8, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    attn = torch.softmax(torch.randn(4, 17, generator=g) * 2, 1)[:, 1:]  # cls row, Σ < 1
    return mixer, x, y, torch.randn(4, 4, generator=g), attn


@pytest.mark.parametrize("name,progress,expect", [
    ("equal", 0.3, 0.5), ("linear", 0.3, 0.3), ("parabolic", 0.3, 0.09), ("none", 0.7, 0.0),
])
def test_alpha_strategies(name, progress, expect):
    mixer, x, y, logits, attn = _setup(name)
    mixer.set_progress(progress)
    batch = mixer(x, y)
    batch.targets(logits, attn if name != "none" else None)
    assert torch.allclose(batch.alpha, torch.full((4,), expect))
    if name == "none":
        assert batch.lam_attn is None and torch.equal(batch.lam, batch.lam_area)
        assert not mixer.needs_attention
    else:
        lam = expect * batch.lam_attn + (1 - expect) * batch.lam_area
        assert torch.allclose(batch.lam, lam)


def test_learnable_alpha_gets_gradient_from_the_loss():
    mixer, x, y, logits, attn = _setup("learnable")
    params = mixer.parameters()
    assert len(params) == 1
    opt = torch.optim.SGD(params, lr=1.0)
    batch = mixer(x, y)
    assert torch.allclose(batch.targets(logits, attn).sum(1), torch.ones(4))
    loss = mixpro.soft_target_cross_entropy(logits, batch.targets(logits, attn))
    loss.backward()
    assert params[0].grad is not None and params[0].grad.abs() > 0
    before = float(params[0].detach())
    opt.step()
    assert float(params[0].detach()) != before


def test_learnable_alpha_follows_the_logits_device_keeping_the_parameter():
    """NCCL all-reduces gradients on the GPU: w must live where the logits are, and the
    optimizer that already holds w must keep working (same Parameter object)."""
    alpha = mixpro.labels.LearnableAlpha()
    w = alpha.logit
    opt = torch.optim.SGD([w], lr=1.0)
    w.grad = torch.ones(())
    meta = torch.device("meta")  # stands for a CUDA device on this CPU-only machine
    out = alpha(torch.empty(3, 4, device=meta), torch.empty(3, 4, device=meta), 0.0)
    assert out.device == meta and out.shape == (3,)
    assert alpha.logit is w and w.device == meta and isinstance(w, torch.nn.Parameter)
    assert w.requires_grad and w.grad.device == meta
    assert opt.param_groups[0]["params"][0] is w
    # on the logits' own device nothing moves, and w trains through the optimizer as before
    alpha = mixpro.labels.LearnableAlpha()
    w = alpha.logit
    opt = torch.optim.SGD([w], lr=1.0)
    alpha(torch.randn(2, 4), torch.rand(2, 4), 0.0).sum().backward()
    assert alpha.logit is w and torch.allclose(w.grad, torch.tensor(0.5))  # d/dw 2·σ(w), w=0
    opt.step()
    assert float(w.detach()) == -0.5


def test_mixer_to_moves_learnable_parameters_in_place():
    mixer = mixpro.MixPro(num_classes=4, patch_size=2, mask_scale=2, alpha="learnable")
    (w,) = mixer.parameters()
    recipe = mixpro.RandomChoice([mixer, mixpro.NoMix(num_classes=4)])
    assert recipe.to("meta") is recipe
    assert mixer.parameters()[0] is w and w.device.type == "meta"
    assert mixer.to(torch.device("meta")) is mixer and mixer.parameters()[0] is w
    assert mixpro.NoMix(num_classes=4).to("meta").parameters() == []


def _independent_pal_loss(logits, batch, attn, k, smoothing, detach):
    """PAL loss in plain torch ops (no mixpro functions), for gradient comparisons (defaults:
    λ_attn = Σ m·a, α against the un-smoothed area target)."""
    frac = torch.nn.functional.avg_pool2d(batch.mask.float(), 2).flatten(1)
    frac = frac.expand(logits.shape[0], -1)
    lam_attn = (attn * frac).sum(1)
    lam_area = batch.mask.float().flatten(1).mean(1).expand(logits.shape[0])
    eye = torch.eye(k)
    y = eye[batch.labels] * (1 - smoothing) + smoothing / k
    yp = y[batch.partner]
    area_t = lam_area[:, None] * eye[batch.labels] + (1 - lam_area[:, None]) * eye[batch.partner]
    p = torch.softmax(logits if not detach else logits.detach(), 1)
    alpha = (p * area_t).sum(1) / (p.norm(dim=1) * area_t.norm(dim=1))
    lam = alpha * lam_attn + (1 - alpha) * lam_area
    t = lam[:, None] * y + (1 - lam[:, None]) * yp
    return -(t * torch.log_softmax(logits, 1)).sum(1).mean()


@pytest.mark.parametrize("detach", [True, False])
def test_alpha_detach_gradient(detach):
    mixer, x, y, logits, attn = _setup("cosine", alpha_detach=detach)
    batch = mixer(x, y)
    z1 = logits.clone().requires_grad_(True)
    batch.loss(z1, attn).backward()
    z2 = logits.clone().requires_grad_(True)
    _independent_pal_loss(z2, batch, attn, 4, 0.1, detach).backward()
    assert torch.allclose(z1.grad, z2.grad, atol=1e-6)
    # the two settings really give different gradients
    z3 = logits.clone().requires_grad_(True)
    _independent_pal_loss(z3, batch, attn, 4, 0.1, not detach).backward()
    assert not torch.allclose(z1.grad, z3.grad, atol=1e-6)


def test_per_sample_lambda_survives_into_the_loss():
    """OpenMixup's bug: a mean-reduced loss times λ collapses λ to its batch mean."""
    mixer, x, y, logits, attn = _setup("cosine")
    mixer.mode = "elem"
    batch = mixer(x, y)
    z = logits.clone().requires_grad_(True)
    t = batch.targets(z, attn)
    assert batch.lam.unique().numel() > 1
    mixpro.soft_target_cross_entropy(z, t).backward()
    # ∂L/∂z_b = (softmax(z_b) − t_b) / B with each sample's own λ_b
    expect = (torch.softmax(logits, 1) - t.detach()) / 4
    assert torch.allclose(z.grad, expect, atol=1e-6)
    # a batch-mean λ would give another gradient
    lam_mean = batch.lam.mean().expand(4)
    t_mean = mix_targets(batch.labels, batch.partner, lam_mean, 4, 0.1)
    assert not torch.allclose(z.grad, (torch.softmax(logits, 1) - t_mean) / 4, atol=1e-4)
    # and the loss value equals the numpy soft CE on per-sample targets
    loss = mixpro.soft_target_cross_entropy(logits, t.detach())
    assert np.isclose(float(loss), soft_ce_np(logits.double().numpy(), t.double().numpy()))


def test_official_pal_loss_equals_soft_ce_without_smoothing():
    mixer, x, y, logits, attn = _setup("cosine", pal_label_smoothing=0.0)
    batch = mixer(x, y)
    t = batch.targets(logits, attn)
    hard = mixpro.lambda_weighted_cross_entropy(logits, batch.labels,
                                                batch.labels[batch.partner], batch.lam)
    assert torch.allclose(hard, mixpro.soft_target_cross_entropy(logits, t), atol=1e-6)
    ce = torch.nn.functional.cross_entropy
    per = [float(batch.lam[i]) * float(ce(logits[i:i + 1], y[i:i + 1]))
           + (1 - float(batch.lam[i])) * float(ce(logits[i:i + 1], y[batch.partner][i:i + 1]))
           for i in range(4)]
    assert np.isclose(float(hard), np.mean(per), atol=1e-6)


def test_lambda_weighted_cross_entropy_refuses_lambda_outside_unit_interval():
    logits = torch.randn(3, 4)
    y, yj = torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0])
    mixpro.lambda_weighted_cross_entropy(logits, y, yj, torch.tensor([0.0, 0.5, 1.0]))
    for bad in ([1.5, 0.5, 0.5], [0.5, -0.1, 0.5], [0.5, float("nan"), 0.5]):
        with pytest.raises(ValueError, match="lam"):
            mixpro.lambda_weighted_cross_entropy(logits, y, yj, torch.tensor(bad))
    with pytest.raises(TypeError, match="lam"):
        mixpro.lambda_weighted_cross_entropy(logits, y, yj, torch.tensor([0, 1, 1]))


def test_alpha_is_measured_against_one_hot_area_target_by_default():
    """Eq. 8 against ỹ of Eq. 7 (one-hot labels); None = label_smoothing (official code)."""
    for ats, smooth in (("default", 0.0), (None, 0.1), (0.0, 0.0), (0.2, 0.2)):
        if ats == "default":
            mixer, x, y, logits, attn = _setup("cosine")
            assert mixer.relabel.alpha_smoothing == 0.0
        else:
            mixer, x, y, logits, attn = _setup("cosine", alpha_target_smoothing=ats)
        batch = mixer(x, y)
        batch.targets(logits, attn)
        area_t = mix_targets_np(y.numpy(), batch.partner.numpy(), batch.lam_area.numpy(), 4,
                                smooth)
        ref = cosine_np(softmax_np(logits.double().numpy()), area_t)
        assert np.allclose(batch.alpha.numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("token_mode", ["nearest", "area"])
@pytest.mark.parametrize("mode", ["batch", "elem", "pair"])
def test_transmix_targets_match_reference(token_mode, mode):
    k, b = 5, 6
    mixer = mixpro.TransMix(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=k, mode=mode,
                            token_mode=token_mode, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(b, 3, 20, 20, generator=g)
    y = torch.randint(0, k, (b,), generator=g)
    batch = mixer(x, y)
    assert batch.method == "transmix"
    logits = torch.randn(b, k, generator=g)
    attn = torch.rand(b, 25, generator=g)
    t = batch.targets(logits, attn)
    m = batch.mask.numpy().astype(np.float64)
    frac = token_nearest_np(m, 5, 5) if token_mode == "nearest" else token_fraction_np(m, 4, 4)
    lam_attn = lam_attn_np(attn.double().numpy(), np.broadcast_to(frac, (b, 25)))
    lam_area = np.broadcast_to(m.reshape(m.shape[0], -1).mean(1), (b,))
    lam = 0.5 * lam_area + 0.5 * lam_attn
    assert np.allclose(batch.lam.numpy(), lam, atol=1e-5)
    assert np.allclose(t.numpy(), mix_targets_np(y.numpy(), batch.partner.numpy(), lam, k, 0.1),
                       atol=1e-5)
    assert torch.allclose(batch.alpha, torch.full((b,), 0.5))


def test_transmix_attention_norm_paper_option():
    """TransMix keeps the released renormalised λ_attn by default; 'paper' is Σ m·a."""
    k, b = 5, 6
    g = torch.Generator().manual_seed(4)
    x = torch.randn(b, 3, 20, 20, generator=g)
    y = torch.randint(0, k, (b,), generator=g)
    attn = torch.tensor(cls_attention_np(b, 25, np.random.default_rng(0)), dtype=torch.float32)
    for norm, ref_fn in (("paper", lam_attn_paper_np), ("renormalize", lam_attn_np)):
        mixer = mixpro.TransMix(mixup_alpha=0.0, num_classes=k, attention_norm=norm,
                                generator=torch.Generator().manual_seed(3))
        batch = mixer(x, y)
        batch.targets(torch.randn(b, k, generator=g), attn)
        m = batch.mask.numpy().astype(np.float64)
        frac = np.broadcast_to(token_nearest_np(m, 5, 5), (b, 25))
        assert np.allclose(batch.lam_attn.numpy(), ref_fn(attn.double().numpy(), frac),
                           atol=1e-5)


def test_transmix_keeps_area_labels_on_mixup_batches():
    mixer = mixpro.TransMix(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.0, num_classes=3,
                            generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 3, 8, 8)
    batch = mixer(x, torch.tensor([0, 1, 2, 0]))
    assert batch.method == "mixup" and batch.mask is None and not batch.needs_attention
    batch.targets(torch.randn(4, 3), None)
    assert batch.lam_attn is None and torch.equal(batch.lam, batch.lam_area)


def test_transmix_ratio_one_is_cutmix_and_ratio_zero_is_pure_attention():
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0])
    attn = torch.rand(4, 16)
    for ratio in (0.0, 1.0):
        mixer = mixpro.TransMix(mixup_alpha=0.0, num_classes=3, ratio=ratio,
                                generator=torch.Generator().manual_seed(0))
        batch = mixer(x, y)
        batch.targets(torch.randn(4, 3), attn)
        expect = batch.lam_attn if ratio == 0.0 else batch.lam_area
        assert torch.allclose(batch.lam, expect)


def test_token_grid_inference_and_mismatch():
    mixer = mixpro.TransMix(mixup_alpha=0.0, num_classes=3)
    batch = mixer(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    batch.targets(torch.randn(2, 3), torch.rand(2, 16))  # 4x4 inferred
    with pytest.raises(ValueError, match="infer the token grid"):
        batch.targets(torch.randn(2, 3), torch.rand(2, 15))
    mixer = mixpro.MixPro(num_classes=3, patch_size=4, mask_scale=1)
    batch = mixer(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="patch tokens"):
        batch.targets(torch.randn(2, 3), torch.rand(2, 64))


@settings(max_examples=60, deadline=None)
@given(b=st.integers(2, 12), k=st.integers(2, 9), lam=st.floats(0.0, 1.0, width=32),
       smoothing=st.sampled_from([0.0, 0.1, 0.3]), seed=st.integers(0, 2**16))
def test_mix_targets_of_one_shared_lambda_equal_the_per_sample_path(b, k, lam, smoothing, seed):
    """A λ shared by the batch (one element, 0-dim or broadcast) takes the host-scalar path;
    its targets must be bit-identical to those of the same λ stored per sample."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (b,), generator=g)
    partner = torch.randperm(b, generator=g)
    per_sample = mixpro.labels.mix_targets(labels, partner, torch.full((b,), lam), k, smoothing)
    for shared in (torch.tensor(lam), torch.tensor([lam]), torch.tensor([lam]).expand(b)):
        got = mixpro.labels.mix_targets(labels, partner, shared, k, smoothing)
        assert torch.equal(got, per_sample)
