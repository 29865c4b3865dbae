"""``mixpro eval``: end to end on tiny random-weight checkpoints, and one-line user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from mixpro.checkpoint import load_model
from mixpro.cli import main
from mixpro.evaluate import run as R

KW = dict(img_size=32, patch_size=4, in_chans=1, depth=1, embed_dim=16, num_heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _ckpt(path, seed=0, num_classes=10, arch="vit_tiny_patch16_224", kwargs=KW, **extra):
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    config = {"model": arch, "model_kwargs": kwargs, "num_classes": num_classes, **extra}
    torch.save({"model": model.state_dict(), "config": config}, path)
    return path


def _folder(root, classes, n=3, size=20, mode="L"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size, size) if mode == "L" else (size, size, 3))
            Image.fromarray(arr.astype(np.uint8), mode=mode).save(root / c / f"{i}.png")
    return root


def _run(argv):
    return main(["eval", *argv])


def test_load_checkpoint_roundtrip(tmp_path):
    path = _ckpt(tmp_path / "a.pt", seed=3)
    model, config = load_model(path)
    torch.manual_seed(3)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **KW)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model(x), ref.eval()(x))
    assert config["num_classes"] == 10 and not model.training
    # a `mixpro train` last.pt also holds numpy / python RNG states
    ck = torch.load(path, weights_only=True)
    ck["rng"] = {"numpy": np.random.get_state(), "python": __import__("random").getstate()}
    torch.save(ck, tmp_path / "last.pt")
    again, _ = load_model(tmp_path / "last.pt")
    assert torch.equal(again(x), ref(x))


def test_eval_two_checkpoints_fashion_mnist(tmp_path, capsys):
    a, b = _ckpt(tmp_path / "cutmix.pt", 0), _ckpt(tmp_path / "mixpro.pt", 1)
    out = tmp_path / "out"
    rc = _run([str(a), str(b), "--limit", "200", "--occlusion-images", "40", "--repeats", "2",
               "--out", str(out), "--no-progress", "--batch-size", "100"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| cutmix" in text and "| mixpro" in text and "Calib-Err" in text
    data = json.loads((out / "eval.json").read_text())
    assert [r["name"] for r in data["results"]] == ["cutmix", "mixpro"]
    for r in data["results"]:
        c, o, occ = r["clean"], r["ood"], r["occlusion"]
        assert 0 <= c["top1"] <= c["top5"] <= 1 and 0 <= c["aurra"] <= 1
        assert r["num_images"] == 200
        assert o["num_ood"] == 1092 and o["num_in"] == 200 and "glyphs" in o["dataset"]
        assert o["chance_auprc"] == pytest.approx(1092 / 1292)
        assert 0 < o["auprc"] <= 1 and 0 <= o["auroc"] <= 1
        assert occ["grid"] == [8, 8] and occ["num_images"] == 40
        assert set(occ["curves"]) == {"random", "salient", "non_salient"}
        assert [p["n_drop"] for p in occ["curves"]["random"]] == [0, 6, 12, 19, 25, 32, 38, 44,
                                                                    51, 57]
        # no drop = clean accuracy of the same first 40 images: all levels are probabilities
        assert all(0 <= p["acc_mean"] <= 1 for p in occ["curves"]["salient"])
    # different weights give different numbers: the table is not a constant
    assert data["results"][0]["clean"] != data["results"][1]["clean"]
    png = out / "occlusion.png"
    assert png.stat().st_size > 20_000 and data["files"]["occlusion_png"] == str(png)


def test_held_out_classes_are_the_default_ood_set(tmp_path, capsys):
    from mixpro.data.fashion_mnist import CLASSES

    kept = [c for i, c in enumerate(CLASSES) if i not in (0, 8)]
    ck = _ckpt(tmp_path / "h.pt", num_classes=8, classes=kept,
               recipe={"data": "fashion_mnist", "holdout_classes": [8, 0]})
    out = tmp_path / "out"
    assert _run([str(ck), "--evals", "clean", "ood", "--out", str(out), "--no-progress",
                 "--batch-size", "500"]) == 0
    r = json.loads((out / "eval.json").read_text())["results"][0]
    assert r["num_images"] == 8000  # the real test split less the two held-out classes
    o = r["ood"]
    assert o["num_ood"] == 2000 and o["num_in"] == 8000
    assert o["dataset"] == "fashion-mnist held-out classes: T-shirt/top, Bag"
    assert o["chance_auprc"] == pytest.approx(0.2)
    # a checkpoint trained on every class has no held-out set to use
    _error([str(_ckpt(tmp_path / "all.pt")), "--ood", "heldout", "--out", str(out / "x")],
           capsys, "--ood heldout needs")


def test_eval_image_folder_valid_labels_and_ood_folder(tmp_path, capsys):
    data = _folder(tmp_path / "data", ["c0", "c1", "c2"], n=40, size=24)
    ood = _folder(tmp_path / "ood", ["x"], n=10, size=24)
    ck = _ckpt(tmp_path / "m.pt", num_classes=5, classes=None)
    idx = tmp_path / "idx.txt"
    idx.write_text("4, 0, 2")
    rc = _run([str(ck), "--data", str(data), "--ood", str(ood), "--valid-labels", str(idx),
               "--evals", "clean", "ood", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 0
    res = json.loads((tmp_path / "o" / "eval.json").read_text())["results"][0]
    assert res["num_images"] == 120 and res["ood"]["num_ood"] == 10
    assert "occlusion" not in res and not (tmp_path / "o" / "occlusion.png").exists()


def _error(argv, capsys, match):
    rc = _run(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("mixpro: error: ") and err.count("\n") == 1, err
    assert match in err, err
    return err


def test_user_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "never"
    good = _ckpt(tmp_path / "good.pt")
    common = ["--out", str(out), "--no-progress"]
    # checkpoint that does not match its model
    bad = tmp_path / "bad.pt"
    sd = torch.load(good, weights_only=True)
    sd["config"]["model_kwargs"] = dict(KW, embed_dim=32)
    torch.save(sd, bad)
    _error([str(bad), *common], capsys, "does not match model vit_tiny_patch16_224")
    _error([str(tmp_path / "nope.pt"), *common], capsys, "does not exist")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    _error([str(tmp_path / "junk.pt"), *common], capsys, "cannot read checkpoint")
    # dataset with other classes than the checkpoint
    data = _folder(tmp_path / "data", ["a", "b", "c"])
    _error([str(good), "--data", str(data), *common], capsys, "has 3 classes but checkpoint")
    named = _ckpt(tmp_path / "named.pt", num_classes=3, classes=["a", "b", "zebra"])
    _error([str(named), "--data", str(data), *common], capsys, "class 2 is 'c' in the data")
    # index list of the wrong length
    idx = tmp_path / "idx.txt"
    idx.write_text("1 2")
    _error([str(good), "--data", str(data), "--valid-labels", str(idx), *common], capsys,
           "has 2 entries but the dataset has 3 classes")
    # salient dropping with a model without cls attention
    gap = _ckpt(tmp_path / "gap.pt", kwargs=dict(KW, class_token=False, global_pool="avg"))
    _error([str(gap), "--evals", "occlusion", *common], capsys,
           "salient PatchDrop needs cls attention")
    _error([str(good), "--limit", "50", *common], capsys, "calibration needs at least")
    assert not out.exists()  # errors come before any work


def test_random_only_occlusion_works_without_cls_token(tmp_path):
    gap = _ckpt(tmp_path / "gap.pt", kwargs=dict(KW, class_token=False, global_pool="avg"))
    rc = _run([str(gap), "--evals", "occlusion", "--occlusion-modes", "random",
               "--occlusion-images", "20", "--repeats", "1", "--out", str(tmp_path / "o"),
               "--no-progress"])
    assert rc == 0


def test_format_table_columns():
    res = [{"name": "m", "clean": {"top1": 0.5, "top5": 0.9, "calib_err": 0.1, "aurra": 0.6},
            "ood": {"auprc": 0.25, "auroc": 0.7},
            "occlusion": {"curves": {"random": [{"info_loss": 0.5, "acc_mean": 0.4,
                                                 "acc_std": 0.01}]}}}]
    table = R.format_table(res).splitlines()
    assert table[0].split("|")[1:-1][-1].strip() == "random@50%"
    cells = [c.strip() for c in table[2].split("|")[1:-1]]
    assert cells == ["m", "50.00", "90.00", "10.00", "60.00", "25.00", "70.00", "40.00±1.00"]


def test_saliency_weights_of_another_model_load_through_the_checkpoint_reader(tmp_path):
    """--saliency with --saliency-model: a DINO-style file (weights under 'teacher', with a
    'backbone.' prefix) is read by mixpro.checkpoint.read_state_dict; a bad file is one line."""
    import timm
    import torch

    from mixpro.checkpoint import CheckpointError
    from mixpro.evaluate.run import load_saliency_model

    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in src.state_dict().items()}},
               tmp_path / "dino.pth")
    model = load_saliency_model(str(tmp_path / "dino.pth"), "vit_tiny_patch16_224", 32)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in src.state_dict().items())
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_saliency_model(str(tmp_path / "bad.pth"), "vit_tiny_patch16_224", 32)
