"""Multi-label targets: multi-hot rows mixed per sample, smoothed as timm's BCE path, BCE loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import mixpro


def _multi_hot(b=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(b, k, generator=g) < 0.4).float()
    return torch.randn(b, 3, 16, 16, generator=g), y


def _ref_targets(y, partner, lam, smoothing):
    """numpy: λ·smooth(y_i) + (1-λ)·smooth(y_j), smooth(y) = y·(1-s) + s/K."""
    y = np.asarray(y, np.float64)
    k = y.shape[1]
    sm = y * (1 - smoothing) + smoothing / k
    lam = np.asarray(lam, np.float64)[:, None]
    return lam * sm + (1 - lam) * sm[np.asarray(partner)]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), smoothing=st.sampled_from([0.0, 0.1, 0.3]),
       mode=st.sampled_from(["batch", "elem"]))
def test_area_targets_match_numpy(seed, smoothing, mode):
    x, y = _multi_hot(seed=seed)
    g = torch.Generator().manual_seed(seed)
    for mixer in (mixpro.CutMix(num_classes=5, mode=mode, label_smoothing=smoothing, generator=g),
                  mixpro.Mixup(num_classes=5, mode=mode, label_smoothing=smoothing, generator=g),
                  mixpro.MaskMix(num_classes=5, patch_size=4, mask_scale=1,
                                 label_smoothing=smoothing, generator=g)):
        batch = mixer(x, y)
        t = batch.targets(torch.randn(6, 5))
        ref = _ref_targets(y, batch.partner, batch.lam_area, smoothing)
        assert np.allclose(t.numpy(), ref, atol=1e-6)
        assert batch.multi_label
        # a one-hot row equals the index-label targets (the two paths agree)
        assert torch.all((t >= 0) & (t <= 1))


def test_one_hot_rows_equal_index_label_path():
    y_idx = torch.tensor([0, 1, 2, 3, 4, 0])
    y_hot = F.one_hot(y_idx, 5).float()
    for lam in (torch.rand(6), torch.full((6,), 0.3)):
        partner = torch.arange(5, -1, -1)
        a = mixpro.mix_targets(y_idx, partner, lam, 5, 0.1)
        b = mixpro.mix_targets(y_hot, partner, lam, 5, 0.1)
        assert torch.allclose(a, b, atol=1e-6)


def test_pal_alpha_uses_sigmoid_probabilities():
    x, y = _multi_hot(b=6, k=5, seed=1)
    mixer = mixpro.MixPro(num_classes=5, patch_size=4, mask_scale=1, label_smoothing=0.1,
                          generator=torch.Generator().manual_seed(0))
    batch = mixer(x, y)
    logits = torch.randn(6, 5)
    attn = torch.softmax(torch.randn(6, 17), 1)[:, 1:]
    t = batch.targets(logits, attn)
    # independent: α = cos(sigmoid(z), ỹ_area) with ỹ_area un-smoothed (alpha_target_smoothing=0)
    p = torch.sigmoid(logits).double().numpy()
    area = _ref_targets(y, batch.partner, batch.lam_area, 0.0)
    cos = (p * area).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(area, axis=1))
    alpha = np.clip(cos, 0, 1)
    assert np.allclose(batch.alpha.numpy(), alpha, atol=1e-5)
    lam = alpha * batch.lam_attn.double().numpy() + (1 - alpha) * batch.lam_area.double().numpy()
    assert np.allclose(t.numpy(), _ref_targets(y, batch.partner, lam, 0.1), atol=1e-5)


def test_binary_cross_entropy_matches_timm_and_numpy():
    from timm.loss import BinaryCrossEntropy

    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(4, 6, generator=g), torch.rand(4, 6, generator=g)
    ours = mixpro.binary_cross_entropy(z, t)
    assert torch.allclose(ours, BinaryCrossEntropy(smoothing=0.0)(z, t), atol=1e-6)
    zn, tn = z.double().numpy(), t.double().numpy()
    p = 1 / (1 + np.exp(-zn))
    ref = -(tn * np.log(p) + (1 - tn) * np.log(1 - p)).mean(1)
    assert np.allclose(mixpro.binary_cross_entropy(z, t, reduction="none").numpy(), ref,
                       atol=1e-6)


def test_batch_loss_is_bce_for_multi_label():
    x, y = _multi_hot()
    batch = mixpro.CutMix(num_classes=5, generator=torch.Generator().manual_seed(0))(x, y)
    z = torch.randn(6, 5)
    assert torch.allclose(batch.loss(z), mixpro.binary_cross_entropy(z, batch.targets(z)))
    xm, t = batch  # timm's contract holds for multi-label as well
    assert t.shape == (6, 5)


@pytest.mark.parametrize("labels, err, match", [
    (torch.full((6, 5), 1.5), ValueError, r"labels must lie in \[0, 1\]"),
    (torch.full((6, 5), float("nan")), ValueError, r"labels must lie in \[0, 1\]"),
    (torch.ones(6, 5, dtype=torch.int64), ValueError, r"or be a float \(B, num_classes\)"),
    (torch.ones(6, 4), ValueError, r"\(B, num_classes\) = \(6, 5\)"),
    (torch.zeros(6, 1, dtype=torch.int64), ValueError, r"shape \(B,\) = \(6,\) for class indices"),
])
def test_bad_multi_hot_labels_are_named(labels, err, match):
    with pytest.raises(err, match=match):
        mixpro.CutMix(num_classes=5)(torch.randn(6, 3, 16, 16), labels)
