"""The ``mixpro`` command line: default, overrides, one-line errors, the console script."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_data import make_fashion

from mixpro import cli
from mixpro.train import run


@pytest.fixture
def captured(monkeypatch):
    seen = {}

    def fake_train(cfg, resume=False, overwrite=False):
        seen["cfg"], seen["resume"] = cfg, resume
        return run.Result({}, None, [], "x")

    monkeypatch.setattr(run, "train", fake_train)
    return seen


def test_no_arguments_trains_the_embedded_default(captured):
    assert cli.main([]) == 0
    cfg = captured["cfg"]
    assert (cfg.name, cfg.data, cfg.method, cfg.img_size, cfg.mask_scale) == (
        "fashion_mnist", "fashion_mnist", "mixpro", 24, 2)
    assert captured["resume"] is False


def test_flags_and_set_override_the_recipe(captured):
    argv = ["train", "--recipe", "deit_tiny", "--lr", "5e-4", "--no-alpha-detach",
            "--model-kwargs", "{depth: 2}", "--set", "mixup_alpha=0.2", "--resume"]
    assert cli.main(argv) == 0
    cfg = captured["cfg"]
    assert (cfg.model, cfg.lr, cfg.alpha_detach, cfg.model_kwargs, cfg.mixup_alpha) == (
        "deit_tiny_patch16_224", 5e-4, False, {"depth": 2}, 0.2)
    assert captured["resume"] is True


@pytest.mark.parametrize("argv, message", [
    (["train", "--set", "bogus=1"], "unknown recipe key 'bogus'"),
    (["train", "--method", "mixupp"], "unknown method 'mixupp'"),
    (["train", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["compare", "--methods", "none", "foo"], "unknown method 'foo'"),
    # YAML reads '{embed_dim:96}' as a key 'embed_dim:96' with no value, which timm ignores
    (["train", "--model-kwargs", "{embed_dim:96, depth: 2}"],
     "model_kwargs: 'embed_dim:96' is not a keyword name (YAML needs a space after ':'"),
    (["train", "--model-kwargs", "{depth: null}"], "model_kwargs: depth is null"),
])
def test_user_errors_are_one_line_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixpro: error:") and message in err and "\n" not in err


def test_missing_dataset_and_bad_model_from_the_cli(tmp_path, capsys):
    assert cli.main(["train", "--data-dir", str(tmp_path / "none"), "--output",
                     str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "apt-get install -y dataset-fashion-mnist" in err and "\n" not in err
    data = make_fashion(tmp_path / "fm")
    assert cli.main(["train", "--data-dir", str(data), "--model", "resnet18", "--model-kwargs",
                     "{embed_dim: 64}", "--output", str(tmp_path / "r")]) == 2
    assert "unexpected keyword argument 'embed_dim'" in capsys.readouterr().err
    # another --model alone starts from its own defaults (the recipe's ViT kwargs and patch
    # size dropped): a ConvNet has no patch size of its own
    assert cli.main(["train", "--data-dir", str(data), "--model", "resnet18",
                     "--output", str(tmp_path / "r")]) == 2
    assert "resnet18 has no patch embedding: set patch_size" in capsys.readouterr().err
    assert cli.main(["train", "--data-dir", str(data), "--model", "resnet18", "--patch-size", "4",
                     "--img-size", "32", "--output", str(tmp_path / "r")]) == 2
    assert "1x1 attention grid" in capsys.readouterr().err
    assert cli.main(["train", "--data-dir", str(data), "--model", "resnet18", "--model-kwargs",
                     "{}", "--patch-size", "4", "--img-size", "32", "--output",
                     str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()  # cls_head auto: a head, but 32 px give 1 token
    assert "1x1 attention grid" in err and "img_size >= 64" in err and "\n" not in err
    assert cli.main(["train", "--data-dir", str(data), "--model", "resnet18", "--model-kwargs",
                     "{}", "--cls-head", "none", "--patch-size", "4", "--output",
                     str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs cls-token attention and cls_head is none" in err and "Traceback" not in err


def test_console_script_runs_end_to_end(tmp_path):
    data = make_fashion(tmp_path / "fm")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mixpro", "train", "--data-dir", str(data), "--img-size", "16",
           "--model-kwargs", "{embed_dim: 32, depth: 1, num_heads: 2}", "--epochs", "2",
           "--max-steps", "2", "--batch-size", "16", "--no-progress", "--output", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "done: test top-1" in p.stdout
    assert (out / "last.pt").is_file() and (out / "curves.png").is_file()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # same output again
    assert p.returncode == 2 and p.stderr.strip().startswith("mixpro: error:")
    assert "--resume" in p.stderr


def test_every_recipe_key_has_a_flag_with_help(capsys):
    from mixpro.train import recipe as config

    flagged = [k for k, spec in config.SPECS.items() if spec.flag]
    assert set(flagged) == set(config.FIELDS) - {"name"}
    assert all(config.SPECS[k].help for k in config.FIELDS)
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for key in flagged:
        assert "--" + key.replace("_", "-") in out
    assert "partner of sample i" in out
