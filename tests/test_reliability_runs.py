"""Reliability round 3 (issue 19), the run side: no code from a checkpoint, one writer per
output folder, resume that checks the classes and repeats the RNG exactly, preemption that
loses nothing, sweeps that never report stale runs nor get stuck, disk-full in one line."""

from __future__ import annotations

import os

import pytest
import torch
from test_data import make_fashion
from test_train import tiny

from mixpro import checkpoint as ckpt_io
from mixpro.cli import main
from mixpro.train import run

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
    (sweep / "none-seed0" / "config.yaml").write_text(
        (finished / "config.yaml").read_text())
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
        "compare (run folder)": ["compare", "--recipe", "fashion_mnist", *base,
                                 "--methods", "none", "--seeds", "0",
                                 "--output-dir", str(sweep)],
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
