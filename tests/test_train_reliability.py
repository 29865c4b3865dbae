"""Issue 11's app items: exact step counts, one-line errors, nothing overwritten by surprise,
preemption (SIGTERM/SIGINT) and mid-epoch checkpoints that resume bit for bit."""

from __future__ import annotations

import errno
import signal

import pytest
import torch
from test_data import make_fashion
from test_train import TINY, _strip, tiny

from mixpro import checkpoint as ckpt_io
from mixpro import cli, files
from mixpro.data import fashion_mnist as fm
from mixpro.train import run
from mixpro.train.recipe import ConfigError, TrainError, load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_fashion(tmp_path_factory.mktemp("fm"))


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


# -- item 9: the loop fetches exactly the steps it trains -----------------------------------


def test_epoch_fetches_and_reports_exactly_max_steps(data_dir, tmp_path, monkeypatch):
    fetched = []
    real = fm.FashionMNIST.__getitem__

    def counting(self, idx):
        fetched.append(len(idx))
        return real(self, idx)

    monkeypatch.setattr(fm.FashionMNIST, "__getitem__", counting)
    res = run.train(tiny(data_dir, tmp_path / "r", epochs=1, warmup_epochs=0, max_steps=3))
    assert fetched[0] == 80  # the attention monitor's fixed test images, once, at the start
    train_fetches = fetched[1: fetched.index(64)]  # then the evaluation's batches of 64
    assert train_fetches == [16, 16, 16]
    assert res.metrics[0]["steps"] == 3


# -- item 12: one-line errors ---------------------------------------------------------------


@pytest.mark.parametrize("over, match", [
    ({"lr": float("inf")}, "lr must be a finite number"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"warmup_lr": float("nan")}, "warmup_lr must be a finite number"),
    ({"min_lr": -1}, r"min_lr must be in \[0, lr"),
    ({"ema_decay": 1.0}, r"ema_decay must be in \(0, 1\)"),
    ({"ema_decay": 0}, r"ema_decay must be in \(0, 1\)"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
    ({"checkpoint_every_steps": 0}, "checkpoint_every_steps"),
    ({"mask_strategy": "boxx"}, "mask_strategy must be one of"),
])
def test_bad_values_are_refused_naming_the_key(over, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_recipe(None, over)
    assert "\n" not in str(e.value)


def test_cli_lr_inf_and_nan_exit_2(capsys):
    for text in ("inf", "nan", ".inf"):
        assert cli.main(["train", "--lr", text]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mixpro: error: lr must be a finite number") and \
            err.count("\n") == 1


def test_method_ignoring_a_given_key_is_an_error():
    with pytest.raises(ConfigError, match="method cutmix does not use beta, mask_scale"):
        load_recipe(None, {"method": "cutmix", "mask_scale": 4, "beta": 2.0})
    with pytest.raises(ConfigError, match="method paper|does not use"):
        load_recipe(None, {"method": "none", "alpha": "equal"})
    # paper honours every MaskMix/PAL key it accepts
    cfg = load_recipe(None, {"method": "paper", "beta": 2.0, "mask_mode": "elem",
                             "pairing": "randperm", "rounding": "ceil", "alpha_detach": False,
                             "pal_label_smoothing": 0.0, "mix_prob": 0.5})
    from mixpro.methods import build_mixer

    mixer = build_mixer("paper", cfg.mix_options(), num_classes=10, patch_size=4,
                        generator=torch.Generator())
    mp, mu = mixer.mixers
    assert (mp.mode, mp.pairing, mp.rounding) == ("elem", "randperm", "ceil")
    assert mu.mix_prob == 0.5


@pytest.mark.parametrize("where", ["file", "under_file", "unwritable"])
def test_bad_output_folder_is_one_line(data_dir, tmp_path, where):
    f = tmp_path / "afile"
    f.write_text("x")
    out = {"file": f, "under_file": f / "run", "unwritable": "/proc/mixpro-run"}[where]
    with pytest.raises(ConfigError, match="--output") as e:
        run.train(tiny(data_dir, out))
    assert "\n" not in str(e.value)


def test_disk_full_while_saving_is_one_line_and_leaves_no_tmp(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_io.atomic_save({"a": 1}, path)

    def full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(files.WriteError, match="disk is full"):
        ckpt_io.atomic_save({"a": 2}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert torch.load(path, weights_only=True) == {"a": 1}


def test_divergence_reaches_the_training_diverged_message(data_dir, tmp_path, monkeypatch):
    real = run.models.create_model

    def nan_after_two_steps(*a, **k):
        model, kw = real(*a, **k)
        calls = [0]

        def hook(mod, inp, out):
            calls[0] += 1
            return out * float("nan") if mod.training and calls[0] > 2 else out

        model.register_forward_hook(hook)
        return model, kw

    monkeypatch.setattr(run.models, "create_model", nan_after_two_steps)
    with pytest.raises(TrainError, match="training diverged.*last good checkpoint kept"):
        run.train(tiny(data_dir, tmp_path / "r", method="mixpro"))


def test_figures_on_an_image_folder_checkpoint_need_data(tmp_path, capsys):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
                              img_size=32, patch_size=4, depth=1, embed_dim=16, num_heads=2)
    ck = tmp_path / "m.pt"
    torch.save({"model": model.state_dict(), "config": {
        "model": "vit_tiny_patch16_224", "num_classes": 3,
        "model_kwargs": dict(img_size=32, patch_size=4, depth=1, embed_dim=16, num_heads=2),
        "recipe": {"data": str(tmp_path / "gone")}}}, ck)
    for cmd in (["figures", "--checkpoint", str(ck)], ["eval", str(ck)]):
        assert cli.main([*cmd, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "pass --data" in err and err.count("\n") == 1


# -- item 13: nothing overwritten by surprise ------------------------------------------------


@pytest.mark.parametrize("artefact", ["best.pt", "metrics.jsonl", "config.yaml"])
def test_any_run_artefact_blocks_a_new_run_unless_overwrite(data_dir, tmp_path, artefact):
    out = tmp_path / "r"
    out.mkdir()
    (out / artefact).write_text("old")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=f"already holds a run \\({artefact}\\)"):
        run.train(tiny(data_dir, out, epochs=1, warmup_epochs=0))
    assert (out / artefact).read_text() == "old"
    run.train(tiny(data_dir, out, epochs=1, warmup_epochs=0), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"  # only run files are replaced
    assert (out / "final.json").exists()
    with pytest.raises(ConfigError, match="contradict"):
        run.train(tiny(data_dir, out, epochs=1, warmup_epochs=0), resume=True, overwrite=True)


@pytest.mark.parametrize("key, value", [("lr", 1e-3), ("min_lr", 0.0), ("warmup_epochs", 0),
                                        ("warmup_lr", 1e-4), ("max_steps", 2)])
def test_resume_refuses_changed_schedule_keys(data_dir, tmp_path, key, value):
    out = tmp_path / "r"
    run.train(tiny(data_dir, out, epochs=2))
    with pytest.raises(ckpt_io.CheckpointError, match=f"does not match this run: {key} is"):
        run.train(tiny(data_dir, out, epochs=2, **{key: value}), resume=True)


def test_resume_refuses_another_world_size(data_dir, tmp_path):
    out = tmp_path / "r"
    run.train(tiny(data_dir, out, epochs=2))
    ck = torch.load(out / "last.pt", weights_only=True)
    ck["config"]["world_size"] = 4
    ckpt_io.atomic_save(ck, out / "last.pt")
    with pytest.raises(ckpt_io.CheckpointError, match="global batch 64.*global batch 16"):
        run.train(tiny(data_dir, out, epochs=2), resume=True)


def test_checkpoints_load_weights_only(data_dir, tmp_path):
    out = tmp_path / "r"
    run.train(tiny(data_dir, out, epochs=1, warmup_epochs=0))
    for name in ("last.pt", "best.pt"):
        torch.load(out / name, weights_only=True)  # no pickled numpy / python objects


# -- item 14: preemption and mid-epoch checkpoints --------------------------------------------


def _interrupt_at(monkeypatch, call: int, action):
    """Make the mixer run ``action()`` when it is called for the ``call``-th time (1-based)."""
    real = run.build_mixer

    def build(*a, **k):
        mixer = real(*a, **k)
        inner, calls = mixer.__call__, [0]

        class Wrapped(type(mixer)):
            def __call__(self, images, labels):
                calls[0] += 1
                if calls[0] == call:
                    action()
                return inner(images, labels)

        mixer.__class__ = Wrapped
        return mixer

    monkeypatch.setattr(run, "build_mixer", build)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_step_exact_checkpoint_and_resume_is_bit_exact(data_dir, tmp_path,
                                                                       monkeypatch, sig):
    kw = dict(epochs=3, ema=True, method="mixpro", alpha="learnable")
    full = run.train(tiny(data_dir, tmp_path / "full", **kw))
    _interrupt_at(monkeypatch, 6, lambda: signal.raise_signal(sig))  # epoch 2, step 2
    with pytest.raises(run.Stopped, match=f"stopped by {sig.name} at epoch 2, step 2"):
        run.train(tiny(data_dir, tmp_path / "cut", **kw))
    ck = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["position"]["step"] == 2
    assert signal.getsignal(sig) is not None  # handlers restored
    monkeypatch.undo()
    resumed = run.train(tiny(data_dir, tmp_path / "cut", **kw), resume=True)
    assert _same(full.model, resumed.model)
    assert _strip(full.metrics) == _strip(resumed.metrics)


def test_checkpoint_every_steps_then_kill_resumes_bit_exact(data_dir, tmp_path, monkeypatch):
    kw = dict(epochs=2, method="mixpro", checkpoint_every_steps=3)
    full = run.train(tiny(data_dir, tmp_path / "full", **kw))

    def kill():
        raise KeyboardInterrupt

    _interrupt_at(monkeypatch, 8, kill)  # dies in epoch 2, step 4; last save: global step 6
    with pytest.raises(KeyboardInterrupt):
        run.train(tiny(data_dir, tmp_path / "cut", **kw))
    ck = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["position"]["step"] == 2
    monkeypatch.undo()
    resumed = run.train(tiny(data_dir, tmp_path / "cut", **kw), resume=True)
    assert _same(full.model, resumed.model)
    assert _strip(full.metrics) == _strip(resumed.metrics)


def test_cli_reports_a_stop_in_one_line_with_128_plus_signal(data_dir, tmp_path, monkeypatch,
                                                             capsys):
    _interrupt_at(monkeypatch, 2, lambda: signal.raise_signal(signal.SIGTERM))
    rc = cli.main(["train", "--data-dir", str(data_dir), "--img-size", "16", "--model-kwargs",
                   str(TINY), "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "16",
                   "--max-steps", "4", "--no-progress", "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 128 + signal.SIGTERM
    assert err.startswith("mixpro: stopped by SIGTERM at epoch 1, step 2") and "--resume" in err
