"""Data reliability: 16-bit images keep their values, symbolic-link loops fail fast."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixpro.data import DatasetError
from mixpro.data.factory import eval_data, training_data
from mixpro.data.folder import scan_classes

W = 16
RAMP = np.round(np.arange(W) * 65535 / (W - 1)).astype(np.uint16)  # 0 .. 65535 across columns
WANT = np.arange(W) / (W - 1)  # the same ramp in [0, 1]


def _ramp16() -> Image.Image:
    img = Image.fromarray(np.tile(RAMP, (W, 1)))
    assert img.mode == "I;16"  # how PIL takes a uint16 array
    return img


def _ramp_png() -> bytes:
    buf = io.BytesIO()
    _ramp16().save(buf, format="PNG")
    return buf.getvalue()


def _ramp_tree(root: Path) -> Path:
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                (root / split / c / f"{i}.png").write_bytes(_ramp_png())
    reopened = Image.open(root / "val" / "a" / "0.png")
    assert reopened.mode in ("I;16", "I")  # a 16-bit grey PNG, as PIL reopens it
    assert np.asarray(reopened).max() == 65535
    return root


def _assert_ramp(x: torch.Tensor, in_chans: int) -> None:
    """``x`` (C, W, W) in [0, 1] follows the ramp in every row and channel."""
    assert x.shape == (in_chans, W, W)
    got = x.double().numpy()
    assert np.abs(got - WANT).max() < 1.5 / 255, got[0, 0]
    assert (np.diff(got, axis=-1) > 0).all()  # strictly increasing across columns
    assert got[..., W // 2].mean() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_16bit_png_folder_trains_and_evaluates_on_its_ramp(tmp_path, in_chans):
    root = _ramp_tree(tmp_path / "d")
    td = training_data(str(root), img_size=W, in_chans=in_chans, crop_pct=1.0)
    x, _ = td.test[0]  # the test split's eval transform: resize (same size), normalise
    mean = torch.tensor(td.mean).view(-1, 1, 1)
    std = torch.tensor(td.std).view(-1, 1, 1)
    _assert_ramp(x * std + mean, in_chans)
    torch.manual_seed(0)
    xt, _ = td.train[0]  # a random crop of the same pixels: never all white
    assert float((xt * std + mean).min()) < 0.9
    ev = eval_data(str(root), img_size=(W, W), in_chans=in_chans)  # mixpro eval's [0, 1]
    _assert_ramp(ev.dataset[0][0], in_chans)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_16bit_png_in_a_tar_keeps_its_ramp(tmp_path, in_chans):
    path = tmp_path / "d.tar"
    png = _ramp_png()
    with tarfile.open(path, "w") as tf:
        for name in ("train/a/0.png", "train/b/0.png", "val/a/0.png", "val/b/0.png"):
            info = tarfile.TarInfo(name)
            info.size = len(png)
            tf.addfile(info, io.BytesIO(png))
    ev = eval_data(str(path), img_size=(W, W), in_chans=in_chans)
    _assert_ramp(ev.dataset[0][0], in_chans)


def test_to_8bit_scales_every_high_bit_depth_mode_and_refuses_what_it_cannot():
    from mixpro.data.folder import to_8bit

    want8 = np.round(WANT * 255)
    for img in (_ramp16(), _ramp16().convert("I"),  # mode I: 32-bit int, 16-bit values
                Image.fromarray(np.tile(RAMP.astype(">u2"), (W, 1))),  # I;16B
                Image.fromarray(np.tile(WANT.astype(np.float32), (W, 1)))):  # F in [0, 1]
        out = to_8bit(img, "x.png")
        assert out.mode == "L", img.mode
        assert np.array_equal(np.asarray(out)[0], want8), img.mode
    grey = Image.new("L", (4, 4), 7)
    assert to_8bit(grey, "g.png") is grey  # 8-bit images are left alone
    too_big = Image.fromarray(np.full((4, 4), 70000, np.int32))  # mode I
    with pytest.raises(DatasetError, match=r"^big\.tif: .*mode I"):
        to_8bit(too_big, "big.tif")
    with pytest.raises(DatasetError, match=r"^f\.tif: .*mode F"):
        to_8bit(Image.fromarray(np.full((4, 4), 3.0, np.float32)), "f.tif")


# ------------------------------------------------------------------ symbolic-link loops
def _tree(root: Path) -> Path:
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            Image.new("L", (8, 8)).save(root / split / c / "0.png")
    return root


def _loop(split: Path, kind: str) -> Path:
    """A link loop of ``kind`` in class folder ``a`` of ``split``; returns the first link."""
    a = split / "a"
    if kind == "two-link":  # x/l -> y, y/l -> x (folders without images)
        (a / "x").mkdir()
        (a / "y").mkdir()
        os.symlink("../y", a / "x" / "l")
        os.symlink("../x", a / "y" / "l")
        return a / "x" / "l"
    if kind == "branching":  # two links to their own folder: 2**40 paths for os.walk
        (a / "sub").mkdir()
        os.symlink(".", a / "sub" / "l1")
        os.symlink(".", a / "sub" / "l2")
        return a / "sub" / "l1"
    if kind == "self":
        os.symlink(".", a / "loop")
        return a / "loop"
    if kind == "classes":  # a/loop -> b, b/loop -> a
        os.symlink("../b", a / "loop")
        os.symlink("../a", split / "b" / "loop")
        return a / "loop"
    if kind == "split":  # the split folder inside itself
        os.symlink(".", split / "loop")
        return split / "loop"
    raise AssertionError(kind)


def _within(seconds: float, fn, *args):
    """``fn(*args)``'s result or exception, or a failure if it runs longer (no hung tests)."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} still running after {seconds} s")
    return out


@pytest.mark.parametrize("kind", ["two-link", "branching", "self", "classes", "split"])
def test_link_loop_is_a_one_line_error_naming_the_link(tmp_path, kind):
    root = _tree(tmp_path / "d")
    link = _loop(root / "train", kind)
    out = _within(10, scan_classes, root / "train")
    err = out.get("error")
    assert isinstance(err, DatasetError), out
    assert str(link) in str(err) and "\n" not in str(err)
    if kind not in ("classes",):  # there the link leads to a class folder with images
        assert "loop" in str(err)


def test_link_loop_in_val_or_eval_folder_fails_fast(tmp_path):
    from mixpro.data.folder import eval_folder, image_folder

    root = _tree(tmp_path / "d")
    link = _loop(root / "val", "branching")
    out = _within(10, lambda: image_folder(root, img_size=8))
    assert isinstance(out.get("error"), DatasetError) and str(link) in str(out["error"])
    out = _within(10, lambda: eval_folder(root, img_size=(8, 8), in_chans=1,
                                          interpolation="bilinear"))
    assert isinstance(out.get("error"), DatasetError) and str(link) in str(out["error"])


def test_links_without_a_loop_are_followed(tmp_path):
    root = _tree(tmp_path / "d")
    a = root / "train" / "a"
    (a / "e").mkdir()  # an image-less folder reached by two links: no loop
    os.symlink("e", a / "d1")
    os.symlink("e", a / "d2")
    os.symlink("../val/b", root / "train" / "c")  # a class folder that is a link
    out = _within(10, scan_classes, root / "train")
    assert out.get("value") == ["a", "b", "c"], out


def test_mixpro_train_on_a_looping_folder_exits_2_in_one_line(tmp_path):
    root = _tree(tmp_path / "d")
    link = _loop(root / "train", "branching")
    cmd = [sys.executable, "-m", "mixpro", "train", "--data", str(root), "--img-size", "16",
           "--epochs", "2", "--max-steps", "1", "--batch-size", "2", "--no-progress",
           "--output", str(tmp_path / "run")]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("mixpro train hangs on a symbolic-link loop")
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip()
    assert err.startswith("mixpro: error:") and "\n" not in err and str(link) in err
