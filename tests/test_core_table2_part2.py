"""The paper's Table 2, part 2: Attentive-CutMix, Puzzle-Mix and TokenMix, each against an
independent computation (numpy or a slow loop), plus their helper models' treatment."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import mixpro
from mixpro._checks import ArgumentError
from mixpro.helpers import class_activation_map, feature_map
from mixpro.methods import MixOptions, build_mixer
from mixpro.puzzlemix import (
    MissingExtra,
    cost_matrix,
    graph_cut,
    label_prior,
    mix_energy,
    transport_plan,
)
from mixpro.tokenmix import block_mask

SETTINGS = settings(max_examples=25, deadline=None)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _resnet(k: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=k, in_chans=1, channels=(8, 8, 8, 8))


def _vit(k: int = 5, depth: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=k, in_chans=1, img_size=16,
                             patch_size=4, embed_dim=16, depth=depth, num_heads=2)


# -- Attentive-CutMix ----------------------------------------------------------------------


@pytest.mark.parametrize("top_k,reduce", [(2, "mean"), (5, "last"), (None, "mean")])
def test_attentive_cutmix_keeps_each_images_top_cells(top_k, reduce):
    ext = _resnet().train()
    bn = ext.bn1.running_mean.clone()
    x, y = torch.randn(6, 1, 32, 32), torch.arange(6)
    mixer = mixpro.AttentiveCutMix(num_classes=6, extractor=ext, top_k=top_k, stage=2,
                                   reduce=reduce, label_smoothing=0.0, generator=_gen(1))
    batch = mixer(x, y)
    # independent: the stage-2 map (stride 8: 4x4 cells of 8 px), numpy's stable argsort
    ext.eval()
    with torch.no_grad():
        fmap = ext.forward_intermediates(x, indices=[2], intermediates_only=True)[0].numpy()
    score = fmap.mean(1) if reduce == "mean" else fmap[:, -1]
    assert ext.training is False  # eval was ours, above
    k = batch.lam_area.numpy() * 16
    assert np.allclose(k, np.round(k)) and (k >= 1).all()
    if top_k is not None:
        assert np.all(k == top_k)
    partner = batch.partner.numpy()
    for i in range(6):
        order = np.argsort(-score[i].reshape(-1), kind="stable")
        keep = np.zeros(16, bool)
        keep[order[: int(round(k[i]))]] = True
        cells = np.kron(keep.reshape(4, 4), np.ones((8, 8), bool))
        want = np.where(cells, x[i, 0].numpy(), x[partner[i], 0].numpy())
        assert np.array_equal(batch.images[i, 0].numpy(), want), i
    tgt = batch.targets(torch.randn(6, 6))
    assert torch.allclose(tgt.gather(1, y[:, None])[:, 0], batch.lam_area)
    assert torch.equal(ext.bn1.running_mean, bn)  # its BatchNorm statistics never moved
    assert all(not p.requires_grad for p in ext.parameters())


def test_attentive_cutmix_restores_the_extractor_mode_and_refuses_misaligned_cells():
    ext = _resnet().train()
    mixer = mixpro.AttentiveCutMix(num_classes=5, extractor=ext, stage=2, align=16)
    with pytest.raises(ArgumentError, match="^extractor cells of 8x8 px are not whole 16x16"):
        mixer(torch.randn(2, 1, 32, 32), torch.arange(2))
    assert ext.training
    with pytest.raises(ArgumentError, match="^extractor map of 1x1 cells does not tile|"
                                            "^extractor"):
        mixpro.AttentiveCutMix(num_classes=5, extractor=ext, stage=9)(
            torch.randn(2, 1, 32, 32), torch.arange(2))
    with pytest.raises(ArgumentError, match="^top_k must be an int >= 1"):
        mixpro.AttentiveCutMix(num_classes=5, extractor=ext, top_k=0)
    with pytest.raises(ArgumentError, match="^extractor must be a torch.nn.Module"):
        mixpro.AttentiveCutMix(num_classes=5, extractor="resnet50")


def test_feature_map_of_a_vit_is_its_token_grid():
    vit = _vit().eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        fmap = feature_map(vit, x)
        tokens = vit.forward_features(x)[:, vit.num_prefix_tokens:]
    assert fmap.shape == (2, 16, 4, 4)
    assert torch.equal(fmap[1, :, 2, 3], tokens[1, 2 * 4 + 3])


# -- TokenMix ------------------------------------------------------------------------------


@SETTINGS
@given(st.integers(2, 9), st.integers(2, 9), st.integers(0, 10**6), st.floats(0, 1))
def test_block_mask_is_rectangles_of_at_most_the_target(gh, gw, seed, share):
    count = int(share * gh * gw)
    rng = np.random.default_rng(seed)
    mask = block_mask((gh, gw), count, lambda: list(rng.random(4)))
    assert mask.dtype == torch.bool and mask.shape == (gh, gw)
    assert int(mask.sum()) <= count


def test_block_mask_reaches_the_official_count_on_the_official_grid():
    rng = np.random.default_rng(0)
    counts = [int(block_mask((14, 14), 112, lambda: list(rng.random(4))).sum())
              for _ in range(200)]
    assert np.mean(counts) > 108 and max(counts) == 112  # spec §7.1: 112.0 ± 0.2, min 108


def _cam_loop(teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-location logits by hand: a ViT's head on each patch token, (B, K, gh, gw)."""
    with torch.no_grad():
        tokens = teacher.forward_features(x)[:, teacher.num_prefix_tokens:]
        out = torch.stack([teacher.head(teacher.fc_norm(tokens[:, t]))
                           for t in range(tokens.shape[1])], -1)
    g = int(math.isqrt(tokens.shape[1]))
    return out.reshape(x.shape[0], -1, g, g)


@pytest.mark.parametrize("lam,activation", [("sampled", "relu"), ("fixed", "raw")])
def test_tokenmix_label_weights_are_the_teachers_activation_shares(lam, activation):
    teacher = _vit().train()
    x, y = torch.randn(6, 1, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    mixer = mixpro.TokenMix(num_classes=5, teacher=teacher, patch_size=4, lam=lam,
                            activation=activation, label_smoothing=0.1, generator=_gen(3))
    batch = mixer(x, y)
    assert teacher.training and batch.objective == "bce"
    cam = _cam_loop(teacher.eval(), x)
    a = cam[torch.arange(6), y].reshape(6, 16)
    a = a.clamp_min(0) / a.clamp_min(0).sum(1, keepdim=True) if activation == "relu" \
        else a / (a.sum(1, keepdim=True) + 1e-8)
    keep = batch.token_fraction((4, 4))  # 1 where the token is the image's own
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    if lam == "fixed":
        assert int((1 - keep[0]).sum()) <= 16 // 2 + round(14 * 16 / 196)
    j = batch.partner
    w_own = (a * keep).sum(1)
    w_partner = (a[j] * (1 - keep)).sum(1)
    got_own, got_partner = batch.label_weights
    assert torch.allclose(got_own, w_own, atol=1e-5)
    assert torch.allclose(got_partner, w_partner, atol=1e-5)
    logits = torch.randn(6, 5)
    want = torch.full((6, 5), 0.1 / 5)
    for i in range(6):
        want[i, y[i]] += 0.9 * w_own[i]
        want[i, y[j[i]]] += 0.9 * w_partner[i]
    assert torch.allclose(batch.targets(logits), want, atol=1e-5)
    assert torch.allclose(batch.loss(logits),
                          F.binary_cross_entropy_with_logits(logits, want), atol=1e-5)
    assert torch.allclose(batch.lam, w_own)


def test_tokenmix_cnn_teacher_map_is_its_classifier_as_a_1x1_conv_and_is_resampled():
    cnn = _resnet().eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        cam = class_activation_map(cnn, x)
        feats = cnn.forward_features(x)
    want = torch.einsum("bchw,kc->bkhw", feats, cnn.fc.weight) + cnn.fc.bias.view(1, -1, 1, 1)
    assert cam.shape == (2, 5, 2, 2) and torch.allclose(cam, want, atol=1e-5)
    mixer = mixpro.TokenMix(num_classes=5, teacher=cnn, patch_size=16, generator=_gen())
    act = mixer.activations(x, torch.tensor([1, 2]), (4, 4))
    assert act.shape == (2, 16) and torch.allclose(act.sum(1), torch.ones(2))


def test_tokenmix_refuses_multi_label_and_a_teacher_of_other_classes():
    mixer = mixpro.TokenMix(num_classes=5, teacher=_vit(k=3), patch_size=4, generator=_gen())
    with pytest.raises(ArgumentError, match="^teacher predicts 3 classes, the mixer 5"):
        mixer(torch.randn(2, 1, 16, 16), torch.arange(2))
    with pytest.raises(ArgumentError, match="^labels must be class indices"):
        mixer(torch.randn(2, 1, 16, 16), torch.zeros(2, 5))
    with pytest.raises(ArgumentError, match="^lam must be one of"):
        mixpro.TokenMix(num_classes=5, teacher=_vit(), patch_size=4, lam="half")


# -- Puzzle-Mix ----------------------------------------------------------------------------


def _energy(labels, unary, pairwise, cost_v, cost_h):
    n = unary.shape[0]
    lab = np.asarray(labels).reshape(n, n)
    e = sum(int(unary[r, c, lab[r, c]]) for r in range(n) for c in range(n))
    e += sum(cost_v[r, c] * pairwise[lab[r, c], lab[r + 1, c]]
             for r in range(n - 1) for c in range(n))
    e += sum(cost_h[r, c] * pairwise[lab[r, c], lab[r, c + 1]]
             for r in range(n) for c in range(n - 1))
    return float(e)


@pytest.mark.parametrize("seed", range(6))
def test_graph_cut_finds_the_minimum_energy_on_a_2x2_grid(seed):
    rng = np.random.default_rng(seed)
    u_own, u_partner = rng.random((2, 2)).astype(np.float32), rng.random((2, 2)).astype(
        np.float32)
    u_own, u_partner = u_own / u_own.sum(), u_partner / u_partner.sum()
    ev, eh = (rng.random((1, 2)) * 0.05).astype(np.float32), (rng.random((2, 1)) * 0.05
                                                               ).astype(np.float32)
    lam0, beta_n, eta = float(rng.uniform(0.1, 0.9)), 1.2 / 2 / 16, 0.2
    mask = graph_cut(u_own, u_partner, ev, eh, lam0, beta_n, eta, 3)
    # the same integer energy, minimised by enumerating all 3^4 labelings
    large = 1000 * 4
    prior = eta * label_prior(lam0, 3) / 4
    unary = (large * np.stack([(1 - t) * u_partner + t * u_own + prior[i]
                               for i, t in enumerate((0.0, 0.5, 1.0))], -1)).astype(np.int32)
    pw = np.array([[(i - j) ** 2 / 4 for j in range(3)] for i in range(3)])
    cv, ch = (large * (ev + beta_n)).astype(np.int32), (large * (eh + beta_n)).astype(np.int32)
    best = min(_energy(lab, unary, pw, cv, ch) for lab in itertools.product(range(3), repeat=4))
    got = np.round((1 - mask) * 2).astype(int)
    assert np.allclose(mask, 1 - got / 2)
    assert _energy(got.reshape(-1), unary, pw, cv, ch) == pytest.approx(best, abs=1)


def _transport_loop(region: np.ndarray, sal: np.ndarray, eps: float) -> np.ndarray:
    """The official greedy transport for one image, with explicit loops."""
    n = region.shape[0]
    cells = [(r, c) for r in range(n) for c in range(n)]
    d = np.array([[((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) / (n - 1) ** 2 for b in cells]
                  for a in cells], dtype=np.float32)
    z = region.reshape(-1).astype(np.float32)
    cost = eps * d - sal.reshape(-1, 1).astype(np.float32) * z[None, :]
    win = np.zeros_like(cost)
    for _ in range(n):
        plan = np.zeros_like(cost)
        for i in range(n * n):
            plan[i, int(np.argmin(cost[i]))] = 1
        win = np.zeros_like(cost)
        for j in range(n * n):
            col = plan[:, j] * cost[:, j]
            i = int(np.argmin(col))
            win[i, j] = plan[i, j]
        cost = cost + (plan - win)
    return win


@pytest.mark.parametrize("n,seed", [(2, 0), (4, 1), (4, 2), (8, 3)])
def test_transport_plan_is_the_official_greedy_assignment(n, seed):
    g = _gen(seed)
    region = torch.rand(3, n, n, generator=g) > 0.5
    sal = torch.rand(3, n, n, generator=g)
    sal = sal / sal.flatten(1).sum(1).view(3, 1, 1)
    got = transport_plan(region, sal, 0.8)
    for b in range(3):
        assert np.array_equal(got[b].numpy(), _transport_loop(region[b].numpy(),
                                                              sal[b].numpy(), 0.8)), b
    assert cost_matrix(n, torch.device("cpu")) is cost_matrix(n, torch.device("cpu"))


def test_puzzlemix_mixes_by_its_masks_and_per_sample_lambda_reaches_the_loss():
    model = _vit(depth=1).train()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    mixer = mixpro.PuzzleMix(num_classes=5, model=model, patch_size=4, transport=False,
                             label_smoothing=0.0, generator=_gen(5))
    batch = mixer(x, y)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    w = batch.source.weight
    n = w.shape[-1]
    assert n in (2, 4) and set(w.unique().tolist()) <= {0.0, 0.5, 1.0}
    m = np.kron(w.numpy(), np.ones((16 // n, 16 // n)))[:, None]
    want = m * x.numpy() + (1 - m) * x[batch.partner].numpy()
    assert np.allclose(batch.images.numpy(), want, atol=1e-6)
    assert torch.allclose(batch.lam_area, w.flatten(1).mean(1))
    logits = torch.randn(4, 5)
    lam = batch.lam_area
    want_loss = (lam * F.cross_entropy(logits, y, reduction="none") + (1 - lam)
                 * F.cross_entropy(logits, y[batch.partner], reduction="none")).mean()
    assert torch.allclose(batch.loss(logits), want_loss, atol=1e-5)


def test_puzzlemix_saliency_is_the_input_gradient_in_eval_mode():
    model = _vit(depth=1)
    model.train()
    x, y = torch.rand(3, 1, 16, 16), torch.tensor([0, 1, 2])
    sal, loss = mixpro.puzzlemix.input_saliency(model, x, y)
    assert loss is None and model.training
    model.eval()
    xv = x.clone().requires_grad_(True)
    F.cross_entropy(model(xv), y).backward()
    assert torch.allclose(sal, xv.grad.pow(2).mean(1).sqrt(), atol=1e-7)


def test_puzzlemix_transport_moves_whole_cells_and_clean_lam_adds_the_clean_loss():
    model = _vit(depth=1).train()
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    mixer = mixpro.PuzzleMix(num_classes=5, model=model, blocks=(4,), clean_lam=1.0,
                             generator=_gen(7))
    batch = mixer(x, y)
    src = batch.source
    cells = x.reshape(4, 1, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(4, 16, -1)
    for b in range(4):
        plan = src.plan_own[b]
        assert (plan.sum(1) <= 1).all() and (plan.sum(0) <= 1).all()
        kept = (src.weight[b].reshape(-1) > 0)
        assert bool(plan.sum(0)[kept].eq(1).all())  # every kept cell is filled
    mixed = batch.images.reshape(4, 1, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(4, 16, -1)
    for b in range(4):
        for j in range(16):
            wj = float(src.weight[b].reshape(-1)[j])
            if wj == 1.0:
                i = int(src.plan_own[b][:, j].argmax())
                assert torch.allclose(mixed[b, j], cells[b, i]), (b, j)
    logits = model(batch.images)
    area = mixpro.soft_target_cross_entropy(logits, batch.area_targets())
    assert batch.auxiliary is not None
    clean = batch.auxiliary(batch)
    assert clean.requires_grad and float(batch.loss(logits).detach()) == pytest.approx(
        float((area + clean).detach()), abs=1e-5)


def test_puzzlemix_without_gco_is_a_one_line_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gco", None)
    with pytest.raises(MissingExtra, match=r"^puzzlemix needs .*mixpro\[puzzlemix\]'$"):
        mixpro.PuzzleMix(num_classes=5, model=_vit())


def test_puzzlemix_energy_unaries_are_normalised_block_saliencies():
    g = _gen(1)
    sal, px = torch.rand(3, 16, 16, generator=g), torch.rand(3, 1, 16, 16, generator=g)
    partner = torch.tensor([2, 1, 0])
    *_, s_own, s_partner, beta_n = mix_energy(sal, px, partner, 4, smooth_beta=1.2,
                                              gamma=0.5, neigh_size=4)
    pooled = sal.reshape(3, 4, 4, 4, 4).mean((2, 4))
    assert torch.allclose(s_own, pooled / pooled.sum((1, 2), keepdim=True), atol=1e-6)
    assert torch.equal(s_partner, s_own[partner]) and beta_n == pytest.approx(1.2 / 64)


def test_puzzlemix_default_blocks_are_whole_tokens():
    mixer = mixpro.PuzzleMix(num_classes=5, model=_vit(), patch_size=4)
    assert mixer.block_choices((32, 32)) == (2, 4, 8)
    assert mixer.block_choices((56, 56)) == (2, 7, 14)
    official = mixpro.PuzzleMix(num_classes=5, model=_vit(), blocks=(2, 4, 8, 16))
    with pytest.raises(ArgumentError, match="^blocks"):
        official.block_choices((24, 24))


# -- the registry and the training app -----------------------------------------------------


def test_registered_methods_build_the_classes_with_their_helpers():
    o = MixOptions(attentive_top_k=3, tokenmix_lam="fixed", puzzlemix_blocks="official")
    ext, teacher, model = _resnet(), _vit(), _vit()
    a = build_mixer("attentive_cutmix", o, num_classes=5, patch_size=4, generator=_gen(),
                    extractor=ext)
    t = build_mixer("tokenmix", o, num_classes=5, patch_size=4, generator=_gen(),
                    teacher=teacher)
    p = build_mixer("puzzlemix", o, num_classes=5, patch_size=4, generator=_gen(), model=model)
    assert isinstance(a, mixpro.AttentiveCutMix) and a.top_k == 3 and a.extractor is ext
    assert isinstance(t, mixpro.TokenMix) and t.lam == "fixed" and t.teacher is teacher
    assert isinstance(p, mixpro.PuzzleMix) and p.blocks == (2, 4, 8, 16) and p.model is model
    with pytest.raises(ArgumentError, match="^teacher is needed by this method"):
        build_mixer("tokenmix", o, num_classes=5, patch_size=4, generator=_gen())


@pytest.fixture(scope="module")
def helper_runs(tmp_path_factory):
    """A tiny data set and two finished runs on it: a ViT (teacher) and a ResNet (extractor)."""
    from test_data import make_fashion
    from test_train import tiny

    from mixpro.train import run

    root = tmp_path_factory.mktemp("helpers")
    torch.set_num_threads(1)
    data = make_fashion(root / "fm", n_train=40, n_test=20)
    run.train(tiny(data, root / "vit", method="none", epochs=1, warmup_epochs=0, max_steps=1))
    run.train(tiny(data, root / "cnn", method="none", epochs=1, warmup_epochs=0, max_steps=1,
                   model="resnet18", model_kwargs={"channels": [8, 8, 8, 8]}, patch_size=None))
    return root, data


@pytest.mark.parametrize("method", ["attentive_cutmix", "puzzlemix", "tokenmix"])
def test_mixpro_train_runs_each_part2_method_with_its_helper(method, helper_runs, one_thread,
                                                             capsys):
    from test_train import tiny

    from mixpro.train import run

    root, data = helper_runs
    keys = {"attentive_cutmix": {"extractor": str(root / "cnn" / "last.pt"),
                                 "attentive_stage": 1, "attentive_top_k": 2},
            "tokenmix": {"teacher": str(root / "vit" / "last.pt")}}.get(method, {})
    res = run.train(tiny(data, root / f"r-{method}", method=method, epochs=1, warmup_epochs=0,
                         max_steps=2, **keys))
    assert math.isfinite(res.metrics[0]["train_loss"])
    if keys:
        role = next(iter(keys))
        assert f"{role}: " in capsys.readouterr().out  # where the helper came from


def test_helper_keys_give_one_line_errors(helper_runs, tmp_path, capsys):
    from mixpro.cli import main

    root, data = helper_runs
    common = ["train", "--data-dir", str(data), "--img-size", "16", "--epochs", "1",
              "--warmup-epochs", "0", "--max-steps", "1", "--batch-size", "4", "--threads",
              "1", "--model-kwargs", "{embed_dim: 16, depth: 1, num_heads: 2}", "--no-progress",
              "--output", str(tmp_path / "o")]
    cases = [
        (["--method", "tokenmix"], "method tokenmix needs a teacher: set teacher"),
        (["--method", "attentive_cutmix"], "needs an extractor"),
        (["--method", "cutmix", "--set", f"extractor={root / 'cnn' / 'last.pt'}"],
         "method cutmix does not use extractor"),
        (["--method", "tokenmix", "--set", f"teacher={tmp_path / 'none.pt'}"],
         "teacher: no such file"),
        (["--method", "tokenmix", "--set", f"teacher=vit_tiny_patch16_224@{tmp_path}/x.pt"],
         "teacher: "),
        (["--method", "attentive_cutmix", "--set", f"extractor={root / 'cnn' / 'last.pt'}"],
         "attentive_top_k 6 keeps all 1 cells"),  # a ResNet's last stage at 16 px: 1x1
    ]
    for extra, text in cases:
        assert main([*common, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("mixpro: error: ") and "\n" not in err and text in err, err


def test_a_state_dict_helper_is_name_at_path(helper_runs, tmp_path):
    from safetensors.torch import save_file

    from mixpro.checkpoint import load_helper

    root, _ = helper_runs
    ck = torch.load(root / "vit" / "last.pt", weights_only=True)
    save_file({k: v.contiguous() for k, v in ck["model"].items()}, tmp_path / "w.safetensors")
    kw = dict(ck["config"]["model_kwargs"])
    with pytest.raises(mixpro.checkpoint.CheckpointError, match="^teacher"):
        load_helper(f"vit_tiny_patch16_224@{tmp_path / 'w.safetensors'}", "teacher")
    model, report = load_helper(str(root / "vit" / "last.pt"), "teacher", num_classes=10)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert report.startswith("teacher: vit_tiny_patch16_224 from the mixpro checkpoint")
    with pytest.raises(mixpro.checkpoint.CheckpointError, match="predicts 10 classes"):
        load_helper(str(root / "vit" / "last.pt"), "teacher", num_classes=7)
    assert kw  # the checkpoint describes its own model; a bare file needs NAME@PATH
