"""``mixpro compare``: a tiny sweep, its table and plot, skipping and resuming runs."""

from __future__ import annotations

import csv
import json

import pytest
from test_data import make_fashion

from mixpro.train import compare as cmp
from mixpro.train import run
from mixpro.train.recipe import ConfigError

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


def _over(data_dir):
    return dict(data_dir=str(data_dir), img_size=16, model_kwargs=TINY, epochs=2,
                warmup_epochs=1, batch_size=16, eval_batch_size=64, progress=False,
                max_steps=2, threads=1)


def test_sweep_writes_table_and_plot_then_skips_and_resumes(tmp_path, monkeypatch):
    data = make_fashion(tmp_path / "fm")
    out = tmp_path / "sweep"
    rows = cmp.compare(None, methods=["none", "mixpro"], seeds=[0, 1], output=out,
                       overrides=_over(data))
    assert [r["method"] for r in rows] == ["none", "mixpro"]
    for name in ("results.md", "results.csv", "compare.png"):
        assert (out / name).is_file()
    finals = {(m, s): json.loads((out / f"{m}-seed{s}" / "final.json").read_text())
              for m in ("none", "mixpro") for s in (0, 1)}
    accs = [finals["mixpro", s]["test_acc"] for s in (0, 1)]
    assert rows[1]["mean"] == pytest.approx(sum(accs) / 2)
    with open(out / "results.csv") as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["none", "mixpro"]
    assert "± " in (out / "results.md").read_text()

    # interrupted sweep: one run lost its final.json (killed after the last checkpoint),
    # the others are finished and must be skipped
    (out / "mixpro-seed1" / "final.json").unlink()
    calls = []
    real = run.train

    def spy(cfg, resume=False):
        calls.append((cfg.method, cfg.seed, resume))
        return real(cfg, resume=resume)

    monkeypatch.setattr(run, "train", spy)
    rows2 = cmp.compare(None, methods=["none", "mixpro"], seeds=[0, 1], output=out,
                        overrides=_over(data))
    assert calls == [("mixpro", 1, True)]
    assert rows2[1]["mean"] == pytest.approx(rows[1]["mean"])


def test_summary_statistics():
    runs = {cmp.Variant("a", ()): {0: {"test_acc": 80.0, "best_acc": 81.0, "img_per_s": 100.0,
                                       "train_time_s": 10.0},
                                   1: {"test_acc": 82.0, "best_acc": 83.0, "img_per_s": 300.0,
                                       "train_time_s": 30.0}}}
    (row,) = cmp.summarize(runs)
    assert row["mean"] == 81.0 and row["std"] == pytest.approx(2 ** 0.5)
    assert row["best_mean"] == 82.0 and row["img_per_s"] == 200.0
    assert "| a | 2 | 81.00 ± 1.41 |" in cmp.markdown([row], "t")


def test_sweep_input_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'mixpr'"):
        cmp.compare(None, methods=["mixpr"], seeds=[0], output=tmp_path)
    with pytest.raises(ConfigError, match="--seeds"):
        cmp.compare(None, methods=["none"], seeds=[0], output=tmp_path,
                    overrides={"seed": 3})
    with pytest.raises(ConfigError, match="repeat"):
        cmp.compare(None, methods=["none", "none"], seeds=[0], output=tmp_path)
