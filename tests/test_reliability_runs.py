"""Reliability round 3 (issue 19), the run side: no code from a checkpoint, one writer per
output folder, resume that checks the classes and repeats the RNG exactly, preemption that
loses nothing, sweeps that never report stale runs nor get stuck, disk-full in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_data import make_fashion
from test_train import _strip, kill_in_epoch_2, tiny
from test_train_reliability import _interrupt_at, _same

from mixpro import checkpoint as ckpt_io
from mixpro import files
from mixpro.cli import main
from mixpro.train import run
from mixpro.train.recipe import TrainError, load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_fashion(tmp_path_factory.mktemp("fm"))


# -- item 1: no checkpoint runs code --------------------------------------------------------


class _Payload:
    """Unpickling it runs ``touch <marker>`` (what a crafted checkpoint does)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile(path, marker, like=None):
    """A checkpoint-shaped file (``like``'s keys, else a bare model/config) that also
    pickles the payload."""
    ck = dict(torch.load(like, weights_only=True)) if like else {"model": {}, "config": {}}
    ck["extra"] = _Payload(marker)
    torch.save(ck, path)
    return path


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished tiny run (its last.pt is the template of the hostile files)."""
    out = tmp_path_factory.mktemp("done") / "r"
    run.train(tiny(data_dir, out, epochs=1, warmup_epochs=0, max_steps=2))
    return out


def test_no_path_runs_code_from_a_checkpoint(finished, data_dir, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = _hostile(tmp_path / "evil.pt", marker, like=finished / "last.pt")
    base = ["--data-dir", str(data_dir), "--img-size", "16", "--patch-size", "4",
            "--model-kwargs", "{embed_dim: 32, depth: 1, num_heads: 2, mlp_ratio: 2.0}",
            "--epochs", "1", "--warmup-epochs", "0", "--max-steps", "2", "--batch-size", "16",
            "--threads", "1", "--no-progress"]
    folder = tmp_path / "resume_folder"
    folder.mkdir()
    _hostile(folder / "last.pt", marker, like=finished / "last.pt")
    sweep = tmp_path / "sweep"
    (sweep / "none-seed0").mkdir(parents=True)
    _hostile(sweep / "none-seed0" / "last.pt", marker, like=finished / "last.pt")
    from mixpro.cli import build_parser, recipe_overrides
    from mixpro.train import compare as cmp

    cmp_argv = ["compare", "--recipe", "fashion_mnist", *base, "--methods", "none",
                "--seeds", "0", "--output-dir", str(sweep)]
    planned = cmp.plan("fashion_mnist", methods=["none"], seeds=[0], output=sweep,
                       overrides=recipe_overrides(build_parser().parse_args(cmp_argv)))
    (sweep / "none-seed0" / "config.yaml").write_text(
        yaml.safe_dump(next(iter(planned.configs.values())).to_dict()))  # the planned run
    calls = {
        "eval": ["eval", str(evil), "--data-dir", str(data_dir), "--evals", "clean",
                 "--out", str(tmp_path / "ev"), "--no-progress"],
        "eval --saliency": ["eval", str(finished / "best.pt"), "--saliency", str(evil),
                            "--data-dir", str(data_dir), "--evals", "occlusion",
                            "--out", str(tmp_path / "ev2"), "--no-progress"],
        "figures --checkpoint": ["figures", "--checkpoint", str(evil), "--which", "fig1",
                                 "--out", str(tmp_path / "fig")],
        "train --resume PATH": ["train", *base, "--output", str(tmp_path / "t1"),
                                "--resume", str(evil)],
        "train --resume (folder)": ["train", *base, "--output", str(folder), "--resume"],
        "train --initial-checkpoint": ["train", *base, "--output", str(tmp_path / "t2"),
                                       "--initial-checkpoint", str(evil)],
        "compare (run folder)": cmp_argv,
    }
    for what, argv in calls.items():
        rc = main(argv)
        err = capsys.readouterr().err
        assert not marker.exists(), f"{what} ran the checkpoint's code"
        assert rc == 2, what
        last = err.strip().splitlines()[-1]
        assert last.startswith("mixpro: error:") and "Traceback" not in err, (what, err)
        assert "posix.system" in last and "never unpickles" in last, (what, err)


def test_version_1_checkpoints_still_load_without_the_full_unpickler(finished, tmp_path):
    import numpy as np

    ck = torch.load(finished / "last.pt", weights_only=True)
    ck["version"] = 1
    ck["rng"]["numpy"] = np.random.get_state()  # version 1 pickled numpy's own tuple
    torch.save(ck, tmp_path / "v1.pt")
    read = ckpt_io.read(tmp_path / "v1.pt", training=True)
    assert read["rng"]["numpy"][1].dtype == np.uint32
    ckpt_io.set_rng_state(read["rng"])


# -- item 2: one writer per output folder ----------------------------------------------------


def test_a_second_writer_is_refused_before_any_work(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "r"
    live = files.FolderLock(out).acquire()  # another live process's run, as far as flock goes
    read = []
    monkeypatch.setattr(run, "datasets", lambda cfg: read.append(cfg) or 1 / 0)
    try:
        with pytest.raises(files.FolderLocked, match=f"{out} is in use by another mixpro "
                                                     f"process \\(pid {os.getpid()}"):
            run.train(tiny(data_dir, out))
    finally:
        live.release()
    assert not read and sorted(p.name for p in out.iterdir()) == [files.LOCK_NAME]


def test_a_refused_run_leaves_no_folder_and_a_finished_run_frees_its_lock(data_dir, tmp_path):
    out = tmp_path / "new"
    with pytest.raises(TrainError, match="mask_scale"):
        run.train(tiny(data_dir, out, mask_scale=3))
    assert not out.exists()  # the folder the lock made is gone with the refusal
    run.train(tiny(data_dir, out, epochs=1, warmup_epochs=0))
    assert files.lock_holder(out) is None
    run.train(tiny(data_dir, out, epochs=2), overwrite=True)  # the same process, again


def test_two_trainings_started_together_into_one_output(data_dir, tmp_path):
    out = tmp_path / "r"
    argv = [sys.executable, "-m", "mixpro", "train", "--data-dir", str(data_dir),
            "--img-size", "16", "--patch-size", "4", "--model-kwargs",
            "{embed_dim: 32, depth: 1, num_heads: 2, mlp_ratio: 2.0}", "--epochs", "3",
            "--warmup-epochs", "0", "--batch-size", "16", "--threads", "1", "--no-progress",
            "--output", str(out)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    done = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in done)
    assert codes == [0, 2], done
    _, _, err = next(d for d in done if d[0] == 2)
    last = err.strip().splitlines()[-1]
    assert last.startswith("mixpro: error:") and "Traceback" not in err
    assert "in use by another mixpro process" in last or "already holds a run" in last
    ck = torch.load(out / "last.pt", weights_only=True)
    final = json.loads((out / "final.json").read_text())
    assert ck["epoch"] == 3 and final["epochs"] == 3
    assert [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] == \
        ck["metrics"]


def test_concurrent_atomic_writes_of_one_file_use_their_own_temp_files(tmp_path):
    path = tmp_path / "last.pt"
    seen = []

    def outer(f):
        f.write(b"outer")
        seen.extend(p.name for p in tmp_path.iterdir())
        files.atomic_write_bytes(b"inner", path)  # a second writer, in the middle

    files.atomic_write(path, outer)
    assert path.read_bytes() == b"outer"  # neither clobbered the other's temp file
    assert len(seen) == 1 and seen[0].startswith("last.pt.") and seen[0].endswith(".tmp") \
        and seen[0] != "last.pt.tmp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# -- item 14: stale temp files of a killed writer --------------------------------------------


def test_a_killed_writers_temp_files_go_when_the_next_run_takes_the_folder(data_dir, tmp_path):
    out = tmp_path / "r"
    run.train(tiny(data_dir, out, epochs=1, warmup_epochs=0))
    for name in ("last.pt.tmp", "last.pt.k2j4x9.tmp", "metrics.jsonl.abc.tmp"):
        (out / name).write_bytes(b"half")
    (out / "notes.tmp").write_text("mine")
    run.train(tiny(data_dir, out, epochs=1, warmup_epochs=0), resume=True)
    assert not list(out.glob("*.pt*.tmp")) and not list(out.glob("metrics.jsonl.*"))
    assert (out / "notes.tmp").read_text() == "mine"


# -- item 4: resume checks the classes ---------------------------------------------------------


def test_resume_refuses_renamed_classes(tmp_path):
    from test_data import _png_tree

    root = _png_tree(tmp_path / "imgs", classes=("a", "b", "c"), n=4)
    over = dict(data=str(root), img_size=16, epochs=2, warmup_epochs=0, batch_size=4,
                progress=False, threads=1, method="cutmix", max_steps=1,
                model_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2},
                output=str(tmp_path / "r"))
    kill_in_epoch_2(load_recipe(None, over), pytest.MonkeyPatch())
    for split in ("train", "val"):
        (root / split / "a").rename(root / split / "d")  # same count, labels permuted
    with pytest.raises(ckpt_io.CheckpointError,
                       match="label 0 is 'a' in the checkpoint and 'b' now \\(3 labels differ"):
        run.train(load_recipe(None, over), resume=True)
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["config"]["classes"] == \
        ["a", "b", "c"]


# -- items 5 and 6: resume is bit-exact with drop path, nothing is lost at an epoch's end ------


DROP = dict(epochs=3, method="mixpro", drop_path=0.2, drop_rate=0.1)


@pytest.fixture(scope="module")
def full_drop(data_dir, tmp_path_factory):
    return run.train(tiny(data_dir, tmp_path_factory.mktemp("full") / "r", **DROP))


def _resumed_equals(full, data_dir, out, **kw):
    resumed = run.train(tiny(data_dir, out, **{**DROP, **kw}), resume=True)
    assert _same(full.model, resumed.model)
    assert _strip(full.metrics) == _strip(resumed.metrics)


def test_sigterm_mid_epoch_with_drop_path_resumes_bit_exact(full_drop, data_dir, tmp_path,
                                                            monkeypatch):
    _interrupt_at(monkeypatch, 6, lambda: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(run.Stopped, match="epoch 2, step 2"):
        run.train(tiny(data_dir, tmp_path / "cut", **DROP))
    monkeypatch.undo()
    _resumed_equals(full_drop, data_dir, tmp_path / "cut")


def test_checkpoint_every_steps_with_drop_path_resumes_bit_exact(full_drop, data_dir, tmp_path,
                                                                 monkeypatch):
    def die():
        raise KeyboardInterrupt

    _interrupt_at(monkeypatch, 7, die)  # last save: global step 5 (epoch 2, step 1)
    with pytest.raises(KeyboardInterrupt):
        run.train(tiny(data_dir, tmp_path / "cut", checkpoint_every_steps=5, **DROP))
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["position"]["step"] == 1
    monkeypatch.undo()
    _resumed_equals(full_drop, data_dir, tmp_path / "cut", checkpoint_every_steps=5)


def test_sigkill_with_drop_path_resumes_bit_exact(full_drop, data_dir, tmp_path):
    out = tmp_path / "cut"
    over = {**DROP, "checkpoint_every_steps": 1}
    script = (
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import torch\n"
        "from test_train import tiny\n"
        "from mixpro.train import run\n"
        "real = run.train_one_epoch\n"
        "def once(ctx, loader, epoch, state, after):\n"
        "    def killing(st):\n"
        "        stop = after(st)\n"
        "        if epoch == 1 and st.step == 3:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "        return stop\n"
        "    return real(ctx, loader, epoch, state, killing)\n"
        "run.train_one_epoch = once\n"
        "torch.set_num_threads(1)\n"
        f"run.train(tiny({str(data_dir)!r}, {str(out)!r}, **{over!r}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ck = torch.load(out / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["position"]["step"]) == (1, 3)
    _resumed_equals(full_drop, data_dir, out, checkpoint_every_steps=1)


def test_sigterm_in_an_epochs_last_step_keeps_the_epoch(full_drop, data_dir, tmp_path,
                                                        monkeypatch):
    _interrupt_at(monkeypatch, 8, lambda: signal.raise_signal(signal.SIGTERM))  # epoch 2, step 4
    with pytest.raises(run.Stopped, match="epoch 2, step 4"):
        run.train(tiny(data_dir, tmp_path / "cut", **DROP))
    ck = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["position"]["step"]) == (1, 4)  # all of epoch 2's steps kept
    monkeypatch.undo()
    _resumed_equals(full_drop, data_dir, tmp_path / "cut")


def test_sigterm_during_evaluation_saves_without_waiting_for_it(full_drop, data_dir, tmp_path,
                                                               monkeypatch):
    real = run.evaluate
    batches = []

    def signalled(model, loader, info, *a, stop=None, **k):
        def counting():
            batches.append(1)
            return stop()

        if len(ckpt_metrics(tmp_path / "cut")) == 1:  # epoch 2's evaluation
            signal.raise_signal(signal.SIGTERM)
        return real(model, loader, info, *a, stop=counting, **k)

    monkeypatch.setattr(run, "evaluate", signalled)
    with pytest.raises(run.Stopped, match="epoch 2, step 4"):
        run.train(tiny(data_dir, tmp_path / "cut", **DROP))
    assert batches[-1] == 1 and len(batches) == 2 + 1  # epoch 1: 2 batches; epoch 2: 1
    ck = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["position"]["step"]) == (1, 4)
    monkeypatch.undo()
    _resumed_equals(full_drop, data_dir, tmp_path / "cut")


def ckpt_metrics(out: Path) -> list:
    path = out / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


# -- items 3, 8 and 13: sweeps reuse only the planned runs, restart killed ones, check first ----


def _sweep_over(data_dir, **kw):
    return {**dict(data_dir=str(data_dir), img_size=16, patch_size=4, epochs=1,
                   warmup_epochs=0, batch_size=16, eval_batch_size=64, progress=False,
                   max_steps=2, threads=1,
                   model_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}),
            **kw}


def test_compare_refuses_a_finished_run_of_another_recipe(data_dir, tmp_path, capsys):
    from mixpro.train import compare as cmp

    out = tmp_path / "s"
    first = cmp.compare(cmp.plan(None, methods=["none", "cutmix"], seeds=[0], output=out,
                                 overrides=_sweep_over(data_dir)))
    again = cmp.compare(cmp.plan(None, methods=["none", "cutmix"], seeds=[0], output=out,
                                 overrides=_sweep_over(data_dir, threads=2)))  # not the run
    assert [r["mean"] for r in again] == [r["mean"] for r in first]
    before = (out / "results.md").read_text()
    with pytest.raises(cmp.StaleRun, match=r"none-seed0 holds a run of another recipe \(epochs "
                                           r"1 there, 2 now; lr 0.004 there, 0.1 now\) \(and 1 "
                                           r"more runs\): pass --rerun"):
        cmp.compare(cmp.plan(None, methods=["none", "cutmix"], seeds=[0], output=out,
                             overrides=_sweep_over(data_dir, epochs=2, lr=0.1)))
    assert (out / "results.md").read_text() == before  # nothing trained, nothing rewritten
    rows = cmp.compare(cmp.plan(None, methods=["none", "cutmix"], seeds=[0], output=out,
                                overrides=_sweep_over(data_dir, epochs=2, lr=0.1), rerun=True))
    assert all(json.loads((out / f"{m}-seed0" / "final.json").read_text())["epochs"] == 2
               for m in ("none", "cutmix"))
    assert rows[0]["n"] == 1
    assert "training again (--rerun" in capsys.readouterr().err


def test_compare_cli_stale_run_is_one_line(data_dir, tmp_path, capsys):
    def argv(epochs):
        return ["compare", "--recipe", "fashion_mnist", "--methods", "none", "--seeds", "0",
                "--output-dir", str(tmp_path / "s"), "--data-dir", str(data_dir),
                "--img-size", "16", "--patch-size", "4", "--model-kwargs",
                "{embed_dim: 32, depth: 1, num_heads: 2}", "--epochs", str(epochs),
                "--warmup-epochs", "0", "--max-steps", "2", "--batch-size", "16",
                "--threads", "1", "--no-progress"]

    assert main(argv(1)) == 0
    capsys.readouterr()
    assert main(argv(2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mixpro: error:") and "epochs 1 there, 2 now" in err[-1]
    assert main(argv(1)) == 0  # the same recipe again: reused
    assert "already finished, reused" in capsys.readouterr().err


def test_a_sweep_killed_before_a_runs_first_checkpoint_restarts_it(data_dir, tmp_path,
                                                                   monkeypatch, capsys):
    from mixpro.train import compare as cmp

    out = tmp_path / "s"
    p = cmp.plan(None, methods=["none"], seeds=[0], output=out, overrides=_sweep_over(data_dir))

    def killed(*a, **k):
        raise KeyboardInterrupt  # the kill lands before the first step

    monkeypatch.setattr(run, "train_one_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        cmp.compare(p)
    monkeypatch.undo()
    run_dir = out / "none-seed0"
    assert (run_dir / "config.yaml").exists() and not (run_dir / "last.pt").exists()
    rows = cmp.compare(cmp.plan(None, methods=["none"], seeds=[0], output=out,
                                overrides=_sweep_over(data_dir)))
    assert rows[0]["n"] == 1
    assert "none seed 0 restarting (killed before its first checkpoint)" in \
        capsys.readouterr().err


def test_compare_checks_every_variant_before_the_first_run(data_dir, tmp_path, monkeypatch):
    from mixpro.train import compare as cmp
    from mixpro.train.recipe import ConfigError

    trained = []
    monkeypatch.setattr(run, "train", lambda *a, **k: trained.append(a))
    with pytest.raises(ConfigError, match="mask_scale 3 x patch_size 4"):
        cmp.plan(None, methods=["maskmix"], seeds=[0], output=tmp_path / "s",
                 overrides=_sweep_over(data_dir), grid=["mask_scale=1,3"])
    assert not trained and not (tmp_path / "s").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="--output-dir .*file is a file"):
        cmp.plan(None, methods=["none"], seeds=[0], output=tmp_path / "file",
                 overrides=_sweep_over(data_dir))


def test_compare_refuses_a_run_a_live_process_trains(data_dir, tmp_path):
    from mixpro.train import compare as cmp

    p = cmp.plan(None, methods=["none"], seeds=[0], output=tmp_path / "s",
                 overrides=_sweep_over(data_dir))
    live = files.FolderLock(tmp_path / "s" / "none-seed0").acquire()
    try:
        with pytest.raises(files.FolderLocked, match="in use by another mixpro process"):
            cmp.compare(p)
    finally:
        live.release()


# -- item 11: a full disk is one line, and nothing half-written blocks the rerun ---------------


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write lands on /dev/full (the kernel answers ENOSPC), as on a full disk;
    the temp file's name is real, so its removal is checked."""
    real = files.tempfile.mkstemp

    def on_dev_full(*a, **k):
        fd, name = real(*a, **k)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)
        return fd, name

    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    monkeypatch.setattr(files.tempfile, "mkstemp", on_dev_full)


@pytest.mark.parametrize("write", [
    lambda p: ckpt_io.atomic_save({"w": torch.zeros(1000)}, p),  # torch's zip writer
    lambda p: files.atomic_write_text("x" * 100_000, p),
])
def test_a_full_disk_is_a_write_error_and_leaves_the_old_file(tmp_path, full_disk, write):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with pytest.raises(files.WriteError, match="the disk is full") as e:
        write(path)
    assert e.value.full and "\n" not in str(e.value)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f"]


def test_train_on_a_full_disk_is_one_line_and_the_rerun_works(data_dir, tmp_path, full_disk,
                                                              monkeypatch, capsys):
    argv = ["train", "--data-dir", str(data_dir), "--img-size", "16", "--patch-size", "4",
            "--model-kwargs", "{embed_dim: 32, depth: 1, num_heads: 2}", "--epochs", "1",
            "--warmup-epochs", "0", "--max-steps", "2", "--batch-size", "16", "--threads", "1",
            "--no-progress", "--output", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixpro: error: cannot write") and "disk is full" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # no 0-byte config.yaml (nor folder) blocks a rerun
    monkeypatch.undo()
    assert main(argv) == 0


def test_last_pt_records_the_best_accuracy_so_a_resume_keeps_the_best_weights(finished):
    """last.pt used to hold the best accuracy before its own epoch: a run resumed after its
    best epoch would then replace best.pt by any later epoch that beat the older best."""
    last = torch.load(finished / "last.pt", weights_only=True)
    best = torch.load(finished / "best.pt", weights_only=True)
    assert last["best_acc"] == best["best_acc"] == last["metrics"][-1]["test_acc"]
