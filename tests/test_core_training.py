"""A tiny timm ViT (random weights) trains a few steps with every method via the 5-line loop."""

from __future__ import annotations

import pytest
import timm
import torch

import mixpro

K = 4


def _mixers():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    return {
        "none": mixpro.NoMix(num_classes=K),
        "mixup": mixpro.Mixup(mixup_alpha=0.8, num_classes=K, generator=g(1)),
        "cutmix": mixpro.CutMix(num_classes=K, generator=g(2)),
        "transmix": mixpro.TransMix(num_classes=K, patch_size=4, generator=g(3)),
        "maskmix": mixpro.MaskMix(num_classes=K, patch_size=4, mask_scale=2, generator=g(4)),
        "mixpro": mixpro.MixPro(num_classes=K, patch_size=4, mask_scale=2, generator=g(5)),
        "mixpro_official": mixpro.MixPro(
            num_classes=K, patch_size=4, mask_scale=2, mode="positions", pairing="randperm",
            rounding="ceil", alpha_detach=False, pal_label_smoothing=0.0, generator=g(6)),
        "learnable": mixpro.MixPro(num_classes=K, patch_size=4, mask_scale=2,
                                   alpha="learnable", generator=g(7)),
        "paper": mixpro.paper_recipe(mixpro.MixPro(num_classes=K, patch_size=4, mask_scale=2,
                                                       generator=g(8))),
    }


@pytest.mark.parametrize("method", list(_mixers()))
def test_tiny_vit_trains_with_every_method(method):
    torch.manual_seed(0)
    mixer = _mixers()[method]
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16,
                              patch_size=4, depth=1, embed_dim=32, num_heads=2, num_classes=K)
    probe = mixpro.ClsAttention(model)
    opt = torch.optim.AdamW(list(model.parameters()) + mixer.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(K, 3, 16, 16, generator=g)
    y = torch.arange(16) % K
    x = protos[y] + 0.3 * torch.randn(16, 3, 16, 16, generator=g)

    def clean_loss():
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(x), y))

    start = clean_loss()
    for step in range(25):
        mixer.set_progress(step / 25)
        batch = mixer(x, y)                                   # the README's five lines
        logits = model(batch.images)
        targets = batch.targets(logits, probe.attention)
        loss = mixpro.soft_target_cross_entropy(logits, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        assert batch.lam is not None and ((batch.lam >= 0) & (batch.lam <= 1)).all()
    assert clean_loss() < 0.7 * start, "the model did not learn"
