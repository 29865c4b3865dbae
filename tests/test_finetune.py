"""Fine-tuning in ``mixpro train``: initial_checkpoint, pretrained (offline), layer_decay."""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch
from safetensors.torch import save_file
from test_data import make_fashion
from test_train import TINY
from test_train import tiny as train_recipe

from mixpro import checkpoint as ckpt_io
from mixpro import cli
from mixpro.train import run
from mixpro.train.recipe import ConfigError, load_recipe

POOLED = {**TINY, "class_token": False, "global_pool": "avg"}  # gets a class-attention head


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_fashion(tmp_path_factory.mktemp("fm"))


def tiny(data_dir, out, **kw):
    # fused_attn null: timm's attention, as load_model builds it (outputs compared bit for bit)
    return train_recipe(data_dir, out, **{"epochs": 1, "warmup_epochs": 0, "max_steps": 2,
                                          "fused_attn": None, **kw})


@pytest.fixture(scope="module")
def sources(data_dir, tmp_path_factory):
    """Trained checkpoints: ``vit`` (10 classes), ``ca`` (a class-attention head) and
    ``vit8`` (classes 0-7)."""
    root = tmp_path_factory.mktemp("src")
    torch.set_num_threads(1)
    run.train(tiny(data_dir, root / "vit"))
    run.train(tiny(data_dir, root / "ca", model_kwargs=POOLED))
    run.train(tiny(data_dir, root / "vit8", holdout_classes=[8, 9]))
    return root


def _init(data_dir, out, **kw) -> torch.nn.Module:
    return run.unwrap_model(run.prepare(tiny(data_dir, out, **kw)).ctx.model).eval()


def _same(a: dict, b: dict, keys=None) -> bool:
    return all(torch.equal(a[k], b[k]) for k in (keys if keys is not None else a))


def _cli(data_dir, out, capsys, **kw) -> tuple[int, str]:
    over = dict(data_dir=str(data_dir), img_size=16, model_kwargs=TINY, patch_size=4, epochs=1,
                warmup_epochs=0, batch_size=16, output=str(out), max_steps=1, threads=1)
    argv = ["train", "--no-progress"]
    for k, v in {**over, **kw}.items():
        argv += ["--set", f"{k}={json.dumps(v)}"]
    code = cli.main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("name, kw", [("vit", {}), ("ca", {"model_kwargs": POOLED})])
def test_a_mixpro_checkpoint_gives_the_source_model_exactly(data_dir, sources, tmp_path,
                                                            capsys, name, kw):
    path = sources / name / "best.pt"
    source, _ = ckpt_io.load_model(path)
    model = _init(data_dir, tmp_path / "ft", initial_checkpoint=str(path), **kw)
    assert _same(source.state_dict(), model.state_dict())
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    n = len(source.state_dict())
    assert f"initial_checkpoint: loaded {n}/{n} tensors from {path}\n" in capsys.readouterr().out
    assert (name == "ca") == any(k.startswith("backbone.") for k in model.state_dict())
    cfg = (tmp_path / "ft" / "config.yaml").read_text()
    assert f"initial_checkpoint: {path}" in cfg and "pretrained: false" in cfg


def test_a_plain_state_dict_and_safetensors_load_and_resume_ignores_them(data_dir, sources,
                                                                         tmp_path):
    sd = ckpt_io.load_model(sources / "vit" / "best.pt")[0].state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    save_file(sd, tmp_path / "w.safetensors")
    for i, name in enumerate(("w.pth", "w.safetensors")):
        model = _init(data_dir, tmp_path / f"ft{i}", initial_checkpoint=str(tmp_path / name))
        assert _same(sd, model.state_dict())
    cfg = tiny(data_dir, tmp_path / "r", initial_checkpoint=str(tmp_path / "w.pth"))
    run.train(cfg)
    (tmp_path / "w.pth").unlink()  # --resume takes the weights of last.pt, not the file's
    last = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["model"]
    assert _same(last, run.unwrap_model(run.prepare(cfg, resume=True).ctx.model).state_dict())


def test_another_class_count_reinitialises_the_head_only(data_dir, sources, tmp_path, capsys):
    path = sources / "vit8" / "best.pt"
    source = ckpt_io.load_model(path)[0].state_dict()
    model = _init(data_dir, tmp_path / "ft", initial_checkpoint=str(path)).state_dict()
    scratch = _init(data_dir, tmp_path / "scratch").state_dict()  # same seed, no weights
    head = ckpt_io.classifier_keys(timm.create_model("vit_tiny_patch16_224", **TINY))
    assert head == {"head.weight", "head.bias"} and model["head.weight"].shape == (10, 32)
    assert _same(source, model, [k for k in model if k not in head])
    assert _same(scratch, model, head) and not _same(scratch, model, ["blocks.0.norm1.weight"])
    n = len(model)
    assert (f"initial_checkpoint: loaded {n - 2}/{n} tensors from {path}; head re-initialised "
            "for 10 classes (checkpoint has 8)\n") in capsys.readouterr().out


@pytest.mark.parametrize("name, kw, match", [
    ("vit", {"model_kwargs": {**TINY, "depth": 2}},
     r"initial_checkpoint \S+ does not match model vit_tiny_patch16_224: \d+ missing, 0 "
     r"unexpected, 0 mismatched tensors \(e.g. missing blocks.1.norm1.weight, missing "
     r"blocks.1.norm1.bias, missing blocks.1.attn.qkv.weight\)$"),
    ("vit", {"model_kwargs": {**TINY, "embed_dim": 16}},
     r"mismatched tensors \(e.g. cls_token \(1, 1, 32\) vs \(1, 1, 16\), pos_embed"),
    ("ca", {}, r"[1-9]\d* unexpected, \d+ mismatched tensors \(e.g. blocks.0.mlp.fc1.weight "
     r"\(128, 32\) vs \(64, 32\)"),  # a class-attention model (its CA blocks) into a ViT
    (None, {}, r"no checkpoint at \S+nope.pt \(the file does not exist\)"),
])
def test_files_that_do_not_fit_are_one_line_errors(data_dir, sources, tmp_path, capsys, name,
                                                   kw, match):
    path = sources / name / "best.pt" if name else tmp_path / "nope.pt"
    code, err = _cli(data_dir, tmp_path / "ft", capsys, initial_checkpoint=str(path), **kw)
    assert code == 2 and err.startswith("mixpro: error: ") and "\n" not in err
    assert re.search(match, err), err
    assert not (tmp_path / "ft" / "last.pt").exists()


def test_a_file_without_a_state_dict_is_one_line(data_dir, tmp_path, capsys):
    torch.save([1, 2], tmp_path / "list.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    for name, match in (("list.pt", "holds no state dict"), ("bad.safetensors", "corrupt")):
        code, err = _cli(data_dir, tmp_path / "ft", capsys,
                         initial_checkpoint=str(tmp_path / name))
        assert code == 2 and match in err and "\n" not in err


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face / torch hub cache, offline: nothing can be downloaded."""
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_pretrained_offline_without_cache_is_one_line(data_dir, tmp_path, capsys, hub_cache):
    for model, match in (
            ("test_vit.r160_in1k", "timm's weights for test_vit.r160_in1k (Hugging Face hub "
                                   "timm/test_vit.r160_in1k) are not in the local cache"),
            ("resnet18.tv_in1k", "are not in the local cache"),  # a torch hub URL
            ("vit_base_patch16_18x2_224", "timm has no pretrained weights")):
        code, err = _cli(data_dir, tmp_path / "ft", capsys, model=model, model_kwargs={},
                         pretrained=True)
        assert code == 2 and err.startswith("mixpro: error: pretrained: ") and match in err
        assert "\n" not in err


def test_pretrained_loads_timm_weights_from_the_local_cache(data_dir, tmp_path, capsys,
                                                            hub_cache):
    snapshot = hub_cache / "models--timm--test_vit.r160_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (hub_cache / "models--timm--test_vit.r160_in1k" / "refs").mkdir()
    (hub_cache / "models--timm--test_vit.r160_in1k" / "refs" / "main").write_text("0" * 40)
    source = timm.create_model("test_vit").state_dict()  # 1000 classes, 3 x 160 x 160
    save_file(source, snapshot / "model.safetensors")
    model = _init(data_dir, tmp_path / "ft", model="test_vit", model_kwargs={}, pretrained=True)
    sd = model.state_dict()
    assert _same(source, sd, ["blocks.0.attn.qkv.weight", "norm.weight"])
    assert sd["head.weight"].shape == (10, 64) and sd["patch_embed.proj.weight"].shape[1] == 1
    assert ("pretrained: loaded timm's weights of test_vit.r160_in1k; head re-initialised for "
            "10 classes (weights have 1000)") in capsys.readouterr().out


def test_layer_decay_is_checked_and_scales_the_groups(data_dir, tmp_path, capsys):
    for bad in (0, 1.5, -0.5):
        with pytest.raises(ConfigError, match=r"layer_decay must be in \(0, 1\] or null"):
            load_recipe(None, {"layer_decay": bad})
    code, err = _cli(data_dir, tmp_path / "x", capsys, layer_decay=2)
    assert code == 2 and err == "mixpro: error: layer_decay must be in (0, 1] or null, got 2.0"
    with pytest.raises(ConfigError, match="choose one"):
        load_recipe(None, {"pretrained": True, "initial_checkpoint": "w.pth"})
    optimizer = run.prepare(tiny(data_dir, tmp_path / "ld", layer_decay=0.5)).ctx.optimizer
    scales = [g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    assert scales[0] == 1.0 and min(scales) == 0.5 ** 2  # embeddings, 1 block, head
    assert load_recipe("finetune").layer_decay == 0.75


@pytest.mark.parametrize("mode", ["ca", "ca_swin"])
def test_plain_timm_weights_load_into_the_backbone_of_a_class_attention_model(tmp_path, mode):
    """A plain timm state dict (no class-attention head) fine-tunes a model that gets one:
    the backbone takes every weight but the plain classifier, the head starts fresh."""
    from mixpro import models

    name, kw = ("swin_tiny_patch4_window7_224",
                {"img_size": 64, "window_size": 2, "depths": [1, 1, 1, 1], "embed_dim": 24,
                 "num_heads": [1, 1, 1, 1]})
    torch.manual_seed(0)
    plain = timm.create_model(name, num_classes=8, **kw)
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    torch.manual_seed(1)
    fresh, _ = models.create_model(name, num_classes=10, model_kwargs=kw)
    model, _ = models.add_cls_head(fresh, {"mode": mode})
    report = ckpt_io.load_initial_weights(model, tmp_path / "plain.pth", name)
    assert "head re-initialised" in report
    got = model.backbone.state_dict()
    clf = plain.pretrained_cfg["classifier"]
    shared = [k for k in plain.state_dict() if not k.startswith(clf + ".") and k in got]
    assert len(shared) > 10 and _same(plain.state_dict(), got, shared)


def test_an_unknown_pretrained_tag_is_one_line():
    from mixpro import models

    with pytest.raises(models.ModelError, match="Invalid pretrained tag"):
        models.create_model("vit_tiny_patch16_224.bogus", num_classes=2, pretrained=True)


def test_the_finetune_recipe_refuses_to_start_from_random_weights(data_dir, sources, tmp_path,
                                                                  capsys):
    argv = ["train", "--recipe", "finetune", "--data-dir", str(data_dir), "--img-size", "16",
            "--model-kwargs", json.dumps(TINY), "--max-steps", "1", "--threads", "1",
            "--no-progress", "--output", str(tmp_path / "ft")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixpro: error: recipe finetune fine-tunes") and "\n" not in err
    assert "--initial-checkpoint" in err and not (tmp_path / "ft" / "last.pt").exists()
    # with weights it starts; a resumed run needs them no more
    out = tmp_path / "lib"
    run.train(tiny(data_dir, out, fine_tune=True, initial_checkpoint=str(sources / "vit" /
                                                                          "last.pt")))
    with pytest.raises(ConfigError, match="no initial weights"):
        run.prepare(tiny(data_dir, out, fine_tune=True), overwrite=True)
    assert run.prepare(tiny(data_dir, out, fine_tune=True), resume=True).start_epoch == 1
