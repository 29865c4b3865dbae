"""The attention monitor of ``mixpro train`` (the premise study's item 2): attention quality
and each relabelling's label error at every evaluation, against hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import timm
import torch
from scipy.stats import spearmanr

import mixpro
from mixpro.train.monitor import AttentionMonitor, spearman


def test_spearman_is_scipys():
    g = np.random.default_rng(0)
    x, y = g.random(40), g.random(40)
    y[:10] = x[:10]  # some agreement
    x[5:9] = 0.5  # ties
    assert spearman(torch.tensor(x), torch.tensor(y)) == pytest.approx(
        spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=4, in_chans=1, img_size=16,
                             patch_size=4, embed_dim=16, depth=1, num_heads=2).eval()


def test_label_errors_are_the_distance_to_the_object_share_from_i():
    model = _vit()
    raw = torch.zeros(6, 1, 16, 16)
    for i in range(6):  # each object a box at its own place (background exactly 0)
        r, c = divmod(i, 3)
        raw[i, 0, 2 + 5 * r:9 + 5 * r, 1 + 4 * c:6 + 4 * c] = 0.2 + 0.1 * i
    mean, std = [0.3], [0.4]
    x = (raw - 0.3) / 0.4
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    gen = torch.Generator()
    mixer = mixpro.MaskMix(num_classes=4, patch_size=4, mask_scale=1, mode="elem",
                           generator=gen)
    mon = AttentionMonitor(x, y, mean, std, mixer=mixer, generator=gen, seed=3, num_classes=4,
                           smoothing=0.1)
    out = mon(model)
    gen.manual_seed(3)
    batch = mixer(x, y)  # the monitor's draw, again
    with torch.no_grad():
        probe = mixpro.ClsAttention(model)
        logits = model(batch.images)
        att = probe.attention
        probe.remove()
    keep = batch.mask[:, 0].expand(6, 16, 16).numpy()
    obj = (raw[:, 0] > 0).numpy()
    j = batch.partner.numpy()
    o = np.array([(keep[i] & obj[i]).sum() / ((keep[i] & obj[i]).sum()
                                              + (~keep[i] & obj[j[i]]).sum())
                  for i in range(6)])
    lam_area = batch.lam_area.numpy()
    frac = batch.token_fraction((4, 4)).numpy()
    lam_attn = (att.numpy() * frac).sum(1)
    targets = mixpro.mix_targets(y, batch.partner, batch.lam_area, 4, 0.1)
    alpha = mixpro.cosine_alpha(logits, targets).numpy()
    lam_pal = alpha * lam_attn + (1 - alpha) * lam_area
    mixed = j != np.arange(6)
    assert out["attn_err_area"] == pytest.approx(np.abs(lam_area - o)[mixed].mean(), abs=1e-6)
    assert out["attn_err_attn"] == pytest.approx(np.abs(lam_attn - o)[mixed].mean(), abs=1e-5)
    assert out["attn_err_pal"] == pytest.approx(np.abs(lam_pal - o)[mixed].mean(), abs=1e-5)
    assert out["attn_alpha"] == pytest.approx(alpha[mixed].mean(), abs=1e-6)
    assert out["attn_corr_alpha_error"] == pytest.approx(
        spearmanr(alpha[mixed], np.abs(lam_attn - o)[mixed]).statistic, abs=1e-6)
    # unmixed: the eval metric of the same images
    share = obj.reshape(6, 4, 4, 4, 4).mean((2, 4)).reshape(6, 16) > 0
    with torch.no_grad():
        probe = mixpro.ClsAttention(model)
        model(x)
        clean = probe.attention.double().numpy()
        probe.remove()
    clean = clean / clean.sum(1, keepdims=True)
    assert out["attn_object_share"] == pytest.approx((clean * share).sum(1).mean(), abs=1e-6)
    assert out["attn_chance"] == pytest.approx(share.mean(), abs=1e-9)
    assert not model.training


def test_mixpro_train_logs_the_monitor_without_changing_the_run(tmp_path, one_thread):
    from test_data import make_fashion
    from test_train import tiny

    from mixpro.train import run

    data = make_fashion(tmp_path / "fm", n_train=40, n_test=20)
    runs = {}
    for n in (0, 8):
        runs[n] = run.train(tiny(data, tmp_path / f"r{n}", method="mixpro", epochs=2,
                                 warmup_epochs=0, max_steps=2, attention_monitor=n))
    on = runs[8].metrics
    assert all(r["attn_object_share"] is not None and "attn_err_pal" in r for r in on)
    assert (tmp_path / "r8" / "attention.png").exists()
    assert not (tmp_path / "r0" / "attention.png").exists()
    assert [r["train_loss"] for r in runs[0].metrics] == [r["train_loss"] for r in on]
    assert [r["test_acc"] for r in runs[0].metrics] == [r["test_acc"] for r in on]
    rows = [json.loads(x) for x in (tmp_path / "r8" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["attn_err_area"] == on[-1]["attn_err_area"]
