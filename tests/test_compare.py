"""``mixpro compare``: a tiny sweep, its table and plot, skipping and resuming runs."""

from __future__ import annotations

import csv
import json

import pytest
from test_data import make_fashion

from mixpro.train import compare as cmp
from mixpro.train import run
from mixpro.train.recipe import ConfigError


def sweep(*args, **kwargs):
    """``compare(plan(...))``: plan and run a sweep."""
    return cmp.compare(cmp.plan(*args, **kwargs))


TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


def _over(data_dir):
    return dict(data_dir=str(data_dir), img_size=16, model_kwargs=TINY, epochs=2,
                warmup_epochs=1, batch_size=16, eval_batch_size=64, progress=False,
                max_steps=2, threads=1)


def test_sweep_writes_table_and_plot_then_skips_and_resumes(tmp_path, monkeypatch):
    data = make_fashion(tmp_path / "fm")
    out = tmp_path / "sweep"
    rows = sweep(None, methods=["none", "mixpro"], seeds=[0, 1], output=out,
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

    def spy(cfg, resume=False, overwrite=False):
        calls.append((cfg.method, cfg.seed, resume))
        return real(cfg, resume=resume, overwrite=overwrite)

    monkeypatch.setattr(run, "train", spy)
    rows2 = sweep(None, methods=["none", "mixpro"], seeds=[0, 1], output=out,
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
        sweep(None, methods=["mixpr"], seeds=[0], output=tmp_path)
    with pytest.raises(ConfigError, match="--seeds"):
        sweep(None, methods=["none"], seeds=[0], output=tmp_path,
                    overrides={"seed": 3})
    with pytest.raises(ConfigError, match="repeat"):
        sweep(None, methods=["none", "none"], seeds=[0], output=tmp_path)


# -- grid sweeps ----------------------------------------------------------------------------


def test_variants_drop_grid_keys_a_method_does_not_use():
    grid = {"mask_scale": ["1", "2"], "label_smoothing": ["0.0", "0.1"]}
    vs = cmp.variants(["none", "maskmix"], grid)
    assert [v.label for v in vs] == [
        "none_label_smoothing-0.0", "none_label_smoothing-0.1",
        "maskmix_mask_scale-1_label_smoothing-0.0", "maskmix_mask_scale-1_label_smoothing-0.1",
        "maskmix_mask_scale-2_label_smoothing-0.0", "maskmix_mask_scale-2_label_smoothing-0.1"]
    assert vs[2].overrides == {"mask_scale": 1, "label_smoothing": 0.0}
    # a non-mixing key (lr) is kept for every method
    assert len(cmp.variants(["none", "cutmix"], {"lr": ["1e-3", "2e-3"]})) == 4
    assert [v.label for v in cmp.variants(["mixpro"], {})] == ["mixpro"]


def test_grid_sweep_table_has_per_seed_values_and_paired_ci(tmp_path):
    data = make_fashion(tmp_path / "fm")
    out = tmp_path / "sweep"
    rows = sweep(None, methods=["maskmix"], seeds=[0, 1, 2], output=out,
                 overrides=_over(data), grid=["mask_scale=1,2"],
                 reference="maskmix_mask_scale-2")
    assert [r["variant"] for r in rows] == ["maskmix_mask_scale-1", "maskmix_mask_scale-2"]
    finals = {(k, s): json.loads((out / f"maskmix_mask_scale-{k}-seed{s}" / "final.json")
                                 .read_text())["test_acc"] for k in (1, 2) for s in (0, 1, 2)}
    a = [finals[1, s] for s in (0, 1, 2)]
    b = [finals[2, s] for s in (0, 1, 2)]
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / 3
    sd = (sum((x - mean) ** 2 for x in d) / 2) ** 0.5
    half = 4.302652729911275 * sd / 3 ** 0.5  # t_{0.975, 2}
    r1, r2 = rows
    assert r1["values"] == pytest.approx(a) and r1["seeds"] == [0, 1, 2]
    assert r1["delta"] == pytest.approx(mean)
    assert r1["delta_low"] == pytest.approx(mean - half)
    assert r1["delta_high"] == pytest.approx(mean + half)
    assert r2["reference"] == "maskmix_mask_scale-2" and r2["delta"] is None
    text = (out / "results.md").read_text()
    assert "Δ vs maskmix_mask_scale-2 (95 % CI, paired)" in text and "| reference |" in text
    with open(out / "results.csv") as f:
        got = list(csv.DictReader(f))
    assert got[0]["mask_scale"] == "1" and got[0]["values"].count(" ") == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(grid=["mask_scale"]), "--grid 'mask_scale'"),
    (dict(grid=["mask_scal=1,2"]), "unknown recipe key 'mask_scal'"),
    (dict(grid=["method=none,mixpro"]), "compare sets method itself"),
    (dict(grid=["mask_scale=1,2"], overrides={"mask_scale": 2}), "both swept"),
    (dict(methods=["none", "cutmix"], overrides={"mask_scale": 4}), "does not use mask_scale"),
    (dict(grid=["mask_scale=1,x"]), "mask_scale must be int"),
    (dict(grid=["mask_scale=1,2"], reference="maskmix"), "--reference 'maskmix' is not a"),
])
def test_grid_input_errors_before_any_run(tmp_path, kwargs, match):
    kw = dict(methods=["maskmix"], seeds=[0], output=tmp_path / "o", overrides={})
    kw.update(kwargs)
    with pytest.raises(ConfigError, match=match) as e:
        sweep(None, **kw)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "o").exists()


def test_unknown_reference_is_an_error():
    v = cmp.Variant("a", ())
    res = {v: {0: {"test_acc": 1.0, "best_acc": 1.0, "img_per_s": 1.0, "train_time_s": 1.0}}}
    with pytest.raises(ConfigError, match="--reference 'b' is not a variant"):
        cmp.summarize(res, reference="b")
