"""``mixpro train`` on models without a cls token: the recipe's ``cls_head`` adds a
class-attention head (CA-Swin for Swin, a CaiT head otherwise), the checkpoint describes it,
resume compares the resolved head, and ``mixpro eval`` / ``figures`` read the last-stage grid."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from test_compare import sweep
from test_data import make_fashion
from test_train import kill_in_epoch_2

from mixpro import checkpoint as ckpt_io
from mixpro import models
from mixpro.cli import main
from mixpro.evaluate.occlusion import model_grid
from mixpro.train import run
from mixpro.train.recipe import ConfigError, load_recipe

SWIN = "swin_tiny_patch4_window7_224"
SWIN_KW = {"window_size": 2, "depths": [1, 1, 1, 1], "embed_dim": 24, "num_heads": [1, 1, 1, 1]}
CONVNEXT = "convnext_atto"
CONVNEXT_KW = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_fashion(tmp_path_factory.mktemp("fm"))


def recipe(data_dir, out, **kw):
    """64-px images: the stride-32 last stage gives a 2×2 attention grid."""
    over = dict(data_dir=str(data_dir), img_size=64, model=SWIN, model_kwargs=SWIN_KW,
                method="mixpro", mask_scale=8, epochs=2, warmup_epochs=1, batch_size=16,
                eval_batch_size=80, progress=False, output=str(out), max_steps=2, threads=1,
                ema=True, patch_size=4, mix_until=1.0)
    over.update(kw)  # None: leave the key out (e.g. mask_scale for TransMix)
    return load_recipe(None, {k: v for k, v in over.items() if v is not None})


@pytest.fixture(scope="module")
def swin_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("swin") / "run"
    return run.train(recipe(data_dir, out))


def _state(path):
    ck = torch.load(path, weights_only=True)
    return ck["model"], ck["ema"]


def test_swin_mixpro_gets_ca_swin_automatically_and_resumes_exactly(
        data_dir, swin_run, tmp_path, monkeypatch):
    ck = torch.load(swin_run.out / "last.pt", weights_only=True)
    assert ck["config"]["cls_head"] == {"mode": "ca_swin"}
    assert ck["config"]["recipe"]["cls_head"] == "auto"
    assert swin_run.model.mode == "ca_swin" and swin_run.metrics[-1]["alpha_mean"] is not None
    assert "test_acc_ema" in swin_run.metrics[-1]
    kill_in_epoch_2(recipe(data_dir, tmp_path / "cut"), monkeypatch)
    # an explicit ca_swin is the head auto resolved to: the resume is accepted
    run.train(recipe(data_dir, tmp_path / "cut", cls_head="ca_swin"), resume=True)
    (a, ema_a), (b, ema_b) = _state(swin_run.out / "last.pt"), _state(tmp_path / "cut" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_resume_compares_the_resolved_head(data_dir, swin_run, tmp_path):
    last = swin_run.out / "last.pt"
    with pytest.raises(ckpt_io.CheckpointError,
                       match="cls_head gives the ca_swin head in the checkpoint and the ca head"):
        run.train(recipe(data_dir, swin_run.out, cls_head="ca"), resume=True)
    ck = torch.load(last, weights_only=True)
    del ck["config"]["cls_head"]  # a checkpoint from before cls_head: no head
    old = tmp_path / "old" / "last.pt"
    old.parent.mkdir()
    torch.save(ck, old)
    with pytest.raises(ckpt_io.CheckpointError, match="no class-attention head in the checkpoint"):
        run.train(recipe(data_dir, old.parent), resume=True)


def test_checkpoint_rebuilds_the_head_with_the_same_logits(swin_run):
    model, _ = ckpt_io.load_model(swin_run.out / "last.pt")
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), swin_run.model.eval()(x), atol=1e-6)
    assert models.patch_size(model) == 4 and models.image_size(model) == (64, 64)
    assert model_grid(model) == models.token_grid(model) == (2, 2)


def test_convnext_transmix_gets_a_ca_head_and_eval_loads_it(data_dir, tmp_path):
    res = run.train(recipe(data_dir, tmp_path / "cn", model=CONVNEXT, model_kwargs=CONVNEXT_KW,
                           method="transmix", mask_scale=None, epochs=1, warmup_epochs=0,
                           ema=False))
    ck = torch.load(tmp_path / "cn" / "last.pt", weights_only=True)
    assert ck["config"]["cls_head"] == {"mode": "ca", "depth": 1, "num_heads": 1,
                                        "embed_dim": 32, "mlp_ratio": 4.0}
    model, _ = ckpt_io.load_model(tmp_path / "cn" / "last.pt")
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), res.model.eval()(x), atol=1e-6)
    # a ConvNet takes no img_size: the recipe's is its input size (not timm's 224)
    assert models.image_size(model) == (64, 64) and model_grid(model) == (2, 2)
    # an area-label method keeps the model plain under auto
    run.train(recipe(data_dir, tmp_path / "plain", model=CONVNEXT, model_kwargs=CONVNEXT_KW,
                     method="maskmix", epochs=1, warmup_epochs=0, ema=False))
    assert torch.load(tmp_path / "plain" / "last.pt", weights_only=True)["config"][
        "cls_head"] is None


def test_eval_and_figures_read_the_last_stage_grid(swin_run, data_dir, tmp_path, capsys):
    ckpt = str(swin_run.out / "last.pt")
    assert main(["eval", ckpt, "--data-dir", str(data_dir), "--evals", "clean", "occlusion",
                 "--occlusion-images", "16", "--repeats", "1", "--calib-bin", "10",
                 "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    occ = json.loads((tmp_path / "e" / "eval.json").read_text())["results"][0]["occlusion"]
    assert occ["grid"] == [2, 2] and occ["patch_px"] == [32, 32]  # the attention's tokens
    assert set(occ["curves"]) == {"random", "salient", "non_salient"}
    assert main(["figures", "--checkpoint", ckpt, "--data", "fashion-mnist", "--pairs", "2",
                 "--out", str(tmp_path / "f")]) == 0
    assert len(list((tmp_path / "f").glob("fig*.png"))) == 3
    capsys.readouterr()
    assert main(["figures", "--checkpoint", ckpt, "--mask-scale", "2", "--which", "fig6",
                 "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--mask-scale" in err and "values that fit: [8, 16]" in err and "\n" not in err


def _bad(data_dir, tmp_path, **kw):
    with pytest.raises(ConfigError) as e:
        run.train(recipe(data_dir, tmp_path / "bad", **kw))
    assert "\n" not in str(e.value) and not (tmp_path / "bad" / "last.pt").exists()
    return str(e.value)


def test_user_mistakes_are_one_line(data_dir, tmp_path):
    err = _bad(data_dir, tmp_path, cls_head="none")
    assert "needs cls-token attention and cls_head is none" in err and "cls_head auto" in err
    err = _bad(data_dir, tmp_path, mask_scale=2)
    assert "mask_scale" in err and "values that fit: [8, 16]" in err
    assert "32-px attention tokens" in err
    err = _bad(data_dir, tmp_path, img_size=32)
    assert "1x1 attention grid" in err and "img_size >= 64" in err
    err = _bad(data_dir, tmp_path, model=CONVNEXT, model_kwargs=CONVNEXT_KW, cls_head="ca_swin")
    assert "cls_head ca_swin" in err and "ConvNeXt" in err
    # another model without patch_size: the model's own, and a ConvNet has none
    err = _bad(data_dir, tmp_path, model=CONVNEXT, model_kwargs=CONVNEXT_KW, method="transmix",
               mask_scale=None, patch_size=None)
    assert "has no patch embedding: set patch_size" in err
    with pytest.raises(ConfigError, match="cls_head must be one of auto, ca, ca_swin, none"):
        load_recipe(None, {"cls_head": "yes"})


def test_resolve_cls_head():
    swin = timm.create_model(SWIN, pretrained=False, num_classes=3, img_size=64, **SWIN_KW)
    cn = timm.create_model(CONVNEXT, pretrained=False, num_classes=3, **CONVNEXT_KW)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
                            img_size=32, patch_size=8, depth=1, embed_dim=16, num_heads=2)
    resolve = models.resolve_cls_head
    assert resolve(swin, "auto", needs_attention=True) == {"mode": "ca_swin"}
    assert resolve(cn, "auto", needs_attention=True) == {"mode": "ca"}
    assert resolve(vit, "auto", needs_attention=True) is None  # it has a cls token
    assert resolve(swin, "auto", needs_attention=False) is None
    assert resolve(swin, "none", needs_attention=True) is None
    assert resolve(vit, "ca", needs_attention=False) == {"mode": "ca"}
    with pytest.raises(models.ModelError, match="cls_head ca_swin"):
        resolve(cn, "ca_swin", needs_attention=True)


@pytest.mark.parametrize("name, kw, head", [(SWIN, SWIN_KW, "ca_swin"),
                                            (CONVNEXT, CONVNEXT_KW, "ca")])
def test_bench_step_times_models_with_a_head(name, kw, head, one_thread):
    from mixpro import bench

    step = bench.bench_step(model_name=name, img_size=64, batch=4, num_classes=5,
                            device=torch.device("cpu"), repeats=1, warmup=0, amp=False,
                            model_kwargs=kw)
    assert step["cls_head"] == head and step["patch"] == 4 and step["mask_scale"] == 8
    variants = [r["variant"] for r in step["rows"]]
    assert len(variants) == 11 and "saliencymix" in variants  # + puzzlemix; no gridmix,
    assert "puzzlemix (saliency + graph cuts)" in variants  # no tokenmix: no patch tokens
    assert 0 < step["probe_hook_share_of_step"] < 1
    env = bench.environment(torch.device("cpu"))
    md = bench.to_markdown({"command": "t", "environment": env, "mix": [], "step": step})
    assert f"cls_head {head}" in md


def test_compare_gives_every_method_the_same_architecture(data_dir, tmp_path):
    """cls_head auto in a sweep with an attention method: none and maskmix get CA-Swin too."""

    over = dict(data_dir=str(data_dir), img_size=64, model=SWIN, model_kwargs=SWIN_KW,
                mask_scale=8, epochs=1, warmup_epochs=0, batch_size=16, eval_batch_size=80,
                progress=False, max_steps=1, threads=1)
    sweep(None, methods=["none", "maskmix", "mixpro"], seeds=[0], output=tmp_path / "s",
          overrides=over)
    heads = {m: torch.load(tmp_path / "s" / f"{m}-seed0" / "last.pt",
                           weights_only=True)["config"]["cls_head"]
             for m in ("none", "maskmix", "mixpro")}
    assert heads == {m: {"mode": "ca_swin"} for m in heads}
    # an area-label-only sweep keeps the plain model
    over.pop("mask_scale")
    sweep(None, methods=["none"], seeds=[0], output=tmp_path / "t", overrides=over)
    ck = torch.load(tmp_path / "t" / "none-seed0" / "last.pt", weights_only=True)
    assert ck["config"]["cls_head"] is None


def test_transmix_aligned_boxes_sit_on_the_heads_tokens(data_dir, tmp_path):
    """Table 8 A on a hierarchical model: box edges on the 32-px attention tokens, not on the
    4-px stem patches; the EMA copy carries no probe hooks."""
    p = run.prepare(recipe(data_dir, tmp_path / "r", method="transmix_aligned",
                           mask_scale=None))
    mixer = p.ctx.mixer
    assert p.model.token_stride == 32
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        batch = mixer(torch.randn(4, 1, 64, 64, generator=g), torch.randint(0, 10, (4,)))
        if batch.mask is None:
            continue
        m = batch.mask[0, 0].float()
        rows = (m.diff(dim=0) != 0).any(1).nonzero().flatten() + 1
        cols = (m.diff(dim=1) != 0).any(0).nonzero().flatten() + 1
        assert all(int(v) % 32 == 0 for v in torch.cat([rows, cols]))
    hooks = sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks)
                for mod in p.ctx.ema.module.modules())
    assert hooks == 0


def test_another_model_on_the_command_line_drops_the_recipes_model_kwargs_and_patch_size():
    other = load_recipe(None, {"model": SWIN})
    assert (other.model_kwargs, other.patch_size) == ({}, None)  # the model's own
    given = load_recipe(None, {"model": SWIN, "model_kwargs": SWIN_KW, "patch_size": 4})
    assert (given.model_kwargs, given.patch_size) == (SWIN_KW, 4)
    same = load_recipe(None, {"model": "vit_tiny_patch16_224"})
    default = load_recipe(None)
    assert (same.model_kwargs, same.patch_size) == (default.model_kwargs, default.patch_size)
    assert same.model_kwargs["embed_dim"] == 64 and same.patch_size == 4


def test_compare_keeps_an_older_sweeps_per_method_heads_resumable(data_dir, tmp_path, capsys):
    """A sweep folder whose runs were made with cls_head auto per method (before the sweep-wide
    rule) keeps that rule, so its interrupted runs still resume."""

    over = dict(data_dir=str(data_dir), img_size=64, model=SWIN, model_kwargs=SWIN_KW,
                epochs=2, warmup_epochs=0, batch_size=16, eval_batch_size=80, progress=False,
                max_steps=1, threads=1)
    run.train(load_recipe(None, {**over, "method": "none", "mask_scale": 8,
                                 "output": str(tmp_path / "s" / "none-seed0")},
                          check_ignored=False))
    (tmp_path / "s" / "none-seed0" / "final.json").unlink()  # interrupted: resumes
    sweep(None, methods=["none", "mixpro"], seeds=[0], output=tmp_path / "s",
          overrides={**over, "mask_scale": 8})
    assert "keeping that for this sweep" in capsys.readouterr().err
    none = torch.load(tmp_path / "s" / "none-seed0" / "last.pt", weights_only=True)
    assert none["config"]["cls_head"] is None and none["epoch"] == 2


def test_a_hybrid_vit_s_patch_is_its_pixel_stride():
    """timm's hybrid ViTs (a CNN stem before the patch embedding): MaskMix cells and the token
    grid are in pixels of the input, patch × the stem's stride."""
    import timm

    model = timm.create_model("vit_tiny_r_s16_p8_224", img_size=24, patch_size=1, in_chans=1,
                              num_classes=10, embed_dim=32, depth=1, num_heads=2)
    assert models.patch_size(model) == 4 and models.token_grid(model, (24, 24)) == (6, 6)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10)
    assert models.patch_size(vit) == 8 and models.token_grid(vit) == (4, 4)
