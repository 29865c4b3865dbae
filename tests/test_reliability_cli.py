"""One-line errors naming the argument (exit 2) instead of tracebacks or silently accepted
values: figures' classes, recipe values, bench --output / --img-size, devices, seeds."""

from __future__ import annotations

import pytest
import torch
from test_data import make_fashion
from test_eval_run import _ckpt, _folder

from mixpro import bench
from mixpro.cli import main
from mixpro.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

SEED_MAX = 2**63 - 1


def _error(argv, capsys, *names):
    """``mixpro argv`` exits 2 with one line ``mixpro: error: ...`` naming each of ``names``."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("mixpro: error: ") and err.count("\n") == 1, err
    for name in names:
        assert name in err, err
    return err


@pytest.fixture
def tiny_train(tmp_path):
    """Flags of a train run that finishes in seconds (should a bad value be accepted)."""
    data = make_fashion(tmp_path / "fm", n_train=40, n_test=20)
    return ["--data-dir", str(data), "--img-size", "16", "--epochs", "2", "--max-steps", "1",
            "--batch-size", "4", "--eval-batch-size", "20", "--threads", "1",
            "--model-kwargs", "{embed_dim: 16, depth: 1, num_heads: 2}", "--no-progress",
            "--output", str(tmp_path / "run")]


# ------------------------------------------------------------------- 12.1 figures' classes
def test_figures_refuses_data_whose_classes_differ_from_the_checkpoint(tmp_path, capsys):
    ck = _ckpt(tmp_path / "m.pt")  # 10 classes
    common = ["--which", "fig6", "--pairs", "2", "--out", str(tmp_path / "o")]
    many = _folder(tmp_path / "many", [f"k{i}" for i in range(12)], n=2)
    _error(["figures", "--checkpoint", str(ck), "--data", str(many), *common], capsys,
           "--data", "12 classes", "--checkpoint", "10")
    few = _folder(tmp_path / "few", ["a", "b", "c"], n=2)
    _error(["figures", "--checkpoint", str(ck), "--data", str(few), *common], capsys,
           "--data", "3 classes")
    named = _ckpt(tmp_path / "named.pt", num_classes=3, classes=["a", "b", "zebra"])
    _error(["figures", "--checkpoint", str(named), "--data", str(few), *common], capsys,
           "--data", "'c'", "'zebra'")
    from mixpro.evaluate.figures import FigureError, FigureOptions, make_figures

    with pytest.raises(FigureError, match="--data"):
        make_figures(FigureOptions(checkpoint=str(ck), data=str(few), which=("fig6",),
                                   out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()
    same = _ckpt(tmp_path / "same.pt", num_classes=3, classes=["a", "b", "c"])
    assert main(["figures", "--checkpoint", str(same), "--data", str(few), *common]) == 0


def test_figures_of_a_held_out_fashion_checkpoint_use_its_kept_classes(tmp_path):
    from mixpro.data.fashion_mnist import CLASSES

    kept = [c for i, c in enumerate(CLASSES) if i not in (0, 8)]
    ck = _ckpt(tmp_path / "h.pt", num_classes=8, classes=kept,
               recipe={"data": "fashion_mnist", "holdout_classes": [8, 0]})
    assert main(["figures", "--checkpoint", str(ck), "--which", "fig6", "--pairs", "2",
                 "--out", str(tmp_path / "o")]) == 0


# ---------------------------------------------------------------------- 12.2 recipe values
@pytest.mark.parametrize("flags, names", [
    (["--interpolation", "foo"], ["interpolation", "'foo'"]),
    (["--aa", "garbage"], ["aa", "'garbage'"]),
    (["--translate", "-1"], ["translate", "-1"]),
    (["--translate", "32"], ["translate", "32"]),
    (["--device", "cudafoo"], ["device", "'cudafoo'"]),
])
@pytest.mark.parametrize("data", ["folder", "fashion_mnist"])
def test_bad_recipe_values_are_one_line(tmp_path, capsys, tiny_train, flags, names, data):
    extra = []
    if data == "folder":
        root = tmp_path / "imgs"
        for split in ("train", "val"):
            _folder(root / split, ["a", "b"], n=4, size=16, mode="RGB")
        extra = ["--data", str(root)]
    _error(["train", *tiny_train, *extra, *flags], capsys, *names)


def test_every_accepted_interpolation_and_auto_augment_builds_its_transforms():
    from mixpro.data.folder import INTERPOLATIONS, eval_transform, transforms
    from mixpro.train.recipe import ConfigError, load_recipe

    assert set(INTERPOLATIONS) >= {"nearest", "bilinear", "bicubic", "box", "hamming",
                                   "lanczos", "random"}
    for aa in (None, "rand-m9-mstd0.5-inc1", "augmix-m5-w4-d2", "original", "v0r", "3a"):
        for interp in INTERPOLATIONS:
            cfg = load_recipe(None, {"interpolation": interp, "aa": aa, "translate": 4})
            train_tf, val_tf = transforms(16, 3, auto_augment=cfg.aa,
                                          interpolation=cfg.interpolation)
            assert train_tf is not None and val_tf is not None
    for interp in INTERPOLATIONS:
        eval_transform((16, 16), 3, interp)
    for bad in ("rand-m9-foo9", "augmix-x9", "v9", "", 3):
        with pytest.raises(ConfigError, match="aa"):
            load_recipe(None, {"aa": bad})


# --------------------------------------------------------------------- 12.3 bench --output
def test_bench_output_that_is_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "bench_mix", lambda **kw: pytest.fail("benchmark ran"))
    monkeypatch.setattr(bench, "bench_step", lambda **kw: pytest.fail("benchmark ran"))
    afile = tmp_path / "results"
    afile.write_text("not a folder")
    for out in (afile, afile / "sub"):
        _error(["bench", "--device", "cpu", "--skip-step", "--output", str(out)], capsys,
               "--output", str(out))
        with pytest.raises(UserError, match="--output"):
            bench.BenchOptions(output=str(out))


# ------------------------------------------------------------------------- 12.4 --device
def test_eval_device_without_cuda_or_unparseable_is_one_line(tmp_path, capsys, monkeypatch):
    from mixpro.evaluate.run import EvalError, EvalOptions, evaluate_checkpoints

    ck = str(_ckpt(tmp_path / "m.pt"))
    common = ["--out", str(tmp_path / "o"), "--no-progress"]
    _error(["eval", ck, "--device", "foo", *common], capsys, "--device", "'foo'")
    _error(["eval", ck, "--device", "cpu:x", *common], capsys, "--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _error(["eval", ck, "--device", "cuda", *common], capsys, "--device cuda", "CUDA")
    _error(["eval", ck, "--device", "cuda:1", *common], capsys, "--device cuda:1")
    with pytest.raises(EvalError, match="--device"):
        evaluate_checkpoints([ck], EvalOptions(device="cuda", out=str(tmp_path / "o")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # one GPU, index 3 asked
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _error(["eval", ck, "--device", "cuda:3", *common], capsys, "--device cuda:3", "1")
    with pytest.raises(EvalError, match="interpolation"):
        evaluate_checkpoints([ck], EvalOptions(device="cpu", interpolation="foo",
                                               out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- 12.5 --seed
@pytest.mark.parametrize("seed", [str(2**64), str(SEED_MAX + 1), "-1"])
def test_seed_out_of_range_is_one_line(tmp_path, capsys, tiny_train, seed):
    _error(["train", *tiny_train, "--seed", seed], capsys, "seed", seed)
    _error(["train", *tiny_train, "--subset-seed", seed], capsys, "subset_seed", seed)
    ck = str(_ckpt(tmp_path / "m.pt"))
    _error(["eval", ck, "--seed", seed, "--evals", "clean", "--limit", "20", "--calib-bin", "5",
            "--out", str(tmp_path / "o"), "--no-progress"], capsys, "--seed", seed)
    _error(["figures", "--which", "fig4", "--seed", seed, "--out", str(tmp_path / "f")],
           capsys, "--seed", seed)
    from mixpro.evaluate.figures import FigureError, FigureOptions, make_figures

    with pytest.raises(FigureError, match="--seed"):
        make_figures(FigureOptions(which=("fig4",), seed=int(seed), out=str(tmp_path / "f")))


def test_the_largest_seed_trains_evaluates_and_draws(tmp_path, tiny_train):
    seed = str(SEED_MAX)
    assert main(["train", *tiny_train, "--seed", seed, "--subset-seed", seed,
                 "--train-subset", "20"]) == 0
    ck = str(_ckpt(tmp_path / "m.pt"))
    assert main(["eval", ck, "--seed", seed, "--evals", "clean", "occlusion", "--limit", "20",
                 "--calib-bin", "5", "--occlusion-images", "8", "--repeats", "2",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert main(["figures", "--which", "fig4", "--seed", seed, "--out",
                 str(tmp_path / "f")]) == 0


# --------------------------------------------------------------- 12.6 figures / bench sizes
@pytest.mark.parametrize("flag", ["--patch-size", "--image-size", "--mask-scale", "--pairs"])
def test_figures_sizes_out_of_range_are_one_line(tmp_path, capsys, flag):
    _error(["figures", "--which", "fig4", flag, "0", "--out", str(tmp_path / "f")], capsys,
           flag)
    from mixpro.evaluate.figures import FigureError, FigureOptions, make_figures

    with pytest.raises(FigureError, match=flag):
        make_figures(FigureOptions(which=("fig4",), out=str(tmp_path / "f"),
                                   **{flag[2:].replace("-", "_"): 0}))
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("size", ["7", "24"])
def test_bench_image_size_that_does_not_fit_the_model_is_one_line(tmp_path, capsys,
                                                                  monkeypatch, size):
    monkeypatch.setattr(bench, "bench_mix", lambda **kw: pytest.fail("mix section ran"))
    _error(["bench", "--device", "cpu", "--img-size", size, "--repeats", "1", "--warmup", "0",
            "--batch", "2", "--output", str(tmp_path / "b")], capsys, "--img-size", size,
           "16")
    with pytest.raises(UserError, match="--img-size"):
        bench.run(bench.BenchOptions(device="cpu", img_size=int(size), skip_mix=True,
                                     repeats=1, warmup=0, batch=2, output=str(tmp_path / "b")))
    assert not (tmp_path / "b").exists()
