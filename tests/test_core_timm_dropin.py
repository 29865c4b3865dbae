"""``x, y = mixer(x, y)``: mixpro's mixers as a literal drop-in for ``timm.data.Mixup``."""

from __future__ import annotations

import pytest
import torch
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

import mixpro


def _batch(b=8, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, k, (b,), generator=g)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_timm_train_loop_contract(mode):
    """timm's train.py loop, verbatim in its use of the mixer, with our class in its place."""
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32,
                              depth=1, num_heads=2, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mixup_fn = mixpro.Mixup(  # timm train.py's keywords
        mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=None, prob=1.0, switch_prob=0.5,
        mode=mode, label_smoothing=0.1, num_classes=10)
    train_loss_fn = SoftTargetCrossEntropy()
    for b in (8, 7):  # timm asserts an even batch; ours also takes odd ones
        input, target = _batch(b)
        x0 = input.clone()
        input, target = mixup_fn(input, target)
        assert input.shape == x0.shape and target.shape == (b, 10)
        assert torch.allclose(target.sum(1), torch.ones(b))
        output = model(input)
        loss = train_loss_fn(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)


def test_unpacked_mixup_equals_timm_formula():
    x, y = _batch()
    mixer = mixpro.Mixup(mixup_alpha=1.0, num_classes=10,
                         generator=torch.Generator().manual_seed(3))
    batch = mixer(x, y)
    xm, t = batch  # the same object unpacks
    lam = float(batch.lam_area[0])
    assert torch.allclose(xm, x * lam + x.flip(0) * (1 - lam), atol=1e-6)
    assert torch.allclose(t, mixup_target(y, 10, lam=lam, smoothing=0.1), atol=1e-6)


@pytest.mark.parametrize("mode", ["pair", "elem"])
def test_unpacked_per_sample_cutmix_equals_timm_target(mode):
    x, y = _batch()
    mixer = mixpro.CutMix(num_classes=10, mode=mode, generator=torch.Generator().manual_seed(4))
    batch = mixer(x, y)
    xm, t = batch
    lam = batch.lam_area[:, None]  # timm's per-sample λ, (B, 1)
    assert torch.allclose(t, mixup_target(y, 10, lam=lam, smoothing=0.1), atol=1e-6)
    m = batch.mask.float()
    assert torch.allclose(m.mean((1, 2, 3)), batch.lam_area, atol=1e-6)
    assert torch.equal(xm, torch.where(batch.mask, x, x.flip(0)))


@pytest.mark.parametrize("make", [
    lambda: mixpro.MixPro(num_classes=10, patch_size=4),
    lambda: mixpro.TransMix(num_classes=10, patch_size=4),
    lambda: mixpro.paper_recipe(mixpro.MixPro(num_classes=10, patch_size=4), maskmix_prob=0.5),
])
def test_attention_mixers_refuse_unpacking_on_every_batch(make):
    mixer = make()
    for seed in range(6):  # paper_recipe: Mixup batches are refused as well, not only MixPro's
        x, y = _batch(seed=seed)
        batch = mixer(x, y)
        with pytest.raises(TypeError, match=r"batch.targets\(logits, attention\)"):
            x2, y2 = batch


def test_area_labelled_mixers_unpack():
    x, y = _batch()
    for mixer in (mixpro.NoMix(num_classes=10), mixpro.MaskMix(num_classes=10, patch_size=4),
                  mixpro.MixPro(num_classes=10, patch_size=4, alpha="none")):
        xm, t = mixer(x, y)
        assert xm.shape == x.shape and torch.allclose(t.sum(1), torch.ones(8))
