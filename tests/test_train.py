"""``mixpro train``: recipes, a tiny end-to-end run, exact resume, DDP (gloo), bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import socket

import pytest
import timm
import torch
import torch.multiprocessing as mp
from test_data import make_fashion

from mixpro import checkpoint as ckpt_io
from mixpro.data import DatasetError
from mixpro.methods import METHODS, build_mixer
from mixpro.train import recipe as C
from mixpro.train import run
from mixpro.train.recipe import ConfigError, TrainError, load_recipe

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_fashion(tmp_path_factory.mktemp("fm"))


def tiny(data_dir, out, **kw):
    over = dict(data_dir=str(data_dir), img_size=16, model_kwargs=TINY, patch_size=4, epochs=2,
                warmup_epochs=1, batch_size=16, eval_batch_size=64, progress=False,
                output=str(out), max_steps=4, threads=1, eval_every=1,
                mix_until=1.0)  # every epoch mixes (the default recipe's last 0.3 do not)
    over.update(kw)
    return load_recipe(None, over)


# -- recipes ----------------------------------------------------------------------------


def test_every_packaged_recipe_loads_and_deit_follows_table_11():
    assert set(C.available_recipes()) >= {"fashion_mnist", "fashion_mnist_limited",
                                          "deit_tiny", "deit_small", "deit_base"}
    for name in C.available_recipes():
        assert load_recipe(name).name == name
    d = load_recipe("deit_small")
    assert (d.model, d.lr, d.weight_decay, d.batch_size, d.epochs, d.warmup_epochs) == (
        "deit_small_patch16_224", 1e-3, 0.05, 1024, 300, 20)
    assert (d.aa, d.label_smoothing, d.drop_path, d.mixup_alpha, d.cutmix_alpha, d.method) == (
        "rand-m9-mstd0.5-inc1", 0.1, 0.1, 0.8, 1.0, "paper")
    default = load_recipe(None)
    assert (default.method, default.img_size, default.patch_size, default.mask_scale) == (
        "mixpro", 24, 4, 2)
    # a recipe file starts from the embedded default's data, model and optimisation keys
    fields = {f.name: f for f in dataclasses.fields(C.Recipe)}
    for key in ("img_size", "translate", "model_kwargs", "patch_size", "drop_path", "epochs",
                "batch_size", "lr", "warmup_epochs", "hflip"):
        f = fields[key]
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert getattr(default, key) == value, key


def test_unknown_keys_and_bad_values_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe key 'lrr'.*'lr'"):
        load_recipe(None, {"lrr": 0.1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nmask_scal: 2\n")
    with pytest.raises(ConfigError, match="'mask_scal'"):
        load_recipe(str(bad))
    with pytest.raises(ConfigError, match="epochs must be int"):
        load_recipe(None, {"epochs": "many"})
    with pytest.raises(ConfigError, match="unknown method 'mixprox'"):
        load_recipe(None, {"method": "mixprox"})
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_recipe(None, {"label_smoothing": 1.5})
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_recipe("nope")
    assert load_recipe(None, {"lr": "1e-3", "clip_grad": 1}).lr == 1e-3  # YAML 1.1 "1e-3"


def test_method_registry_builds_every_method():
    import dataclasses

    import timm

    cfg = load_recipe(None)
    x, y = torch.randn(4, 1, 32, 32), torch.arange(4)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, img_size=32,
                            patch_size=4, embed_dim=16, depth=1, num_heads=2)
    helpers = {"model": vit, "teacher": vit, "extractor": timm.create_model(
        "resnet18", num_classes=10, in_chans=1, channels=(8, 8, 8, 8))}
    options = dataclasses.replace(cfg.mix_options(), attentive_stage=2)  # 4x4 cells at 32 px
    for name in METHODS:
        mixer = build_mixer(name, options, num_classes=10, patch_size=4,
                            generator=torch.Generator().manual_seed(0),
                            **{h: helpers[h] for h in METHODS[name].helpers})
        batch = mixer(x, y)
        assert batch.images.shape == x.shape
    assert build_mixer("none", cfg.mix_options(), num_classes=10, patch_size=4,
                       generator=torch.Generator()).needs_attention is False


# -- a run end to end -------------------------------------------------------------------


def test_tiny_run_writes_everything_and_a_plain_timm_checkpoint(data_dir, tmp_path):
    res = run.train(tiny(data_dir, tmp_path / "r", ema=True, epochs=2))
    out = res.out
    for name in ("last.pt", "best.pt", "metrics.jsonl", "config.yaml", "final.json",
                 "curves.png", "alpha_epoch.png", "alpha_hist.png"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 <= r["alpha_mean"] <= 1 and r["test_acc"] is not None for r in rows)
    assert "test_acc_ema" in rows[-1]
    ck = torch.load(out / "last.pt", weights_only=False)
    cfg = ck["config"]
    model = timm.create_model(cfg["model"], num_classes=cfg["num_classes"],
                              **cfg["model_kwargs"])
    model.load_state_dict(ck["model"])  # strict: a plain timm state dict
    assert all(torch.equal(v, res.model.state_dict()[k]) for k, v in ck["model"].items())
    assert ck["epoch"] == 2 and ck["ema"] is not None and len(ck["alpha_last"]) == 16
    assert json.loads((out / "final.json").read_text())["epochs"] == 2


def test_a_small_vit_learns_the_synthetic_task(data_dir, tmp_path):
    res = run.train(tiny(data_dir, tmp_path / "r", epochs=10, max_steps=None, lr=3e-3,
                         method="none"))  # 30 steps were not enough without random shifts
    assert res.metrics[-1]["test_acc"] > 40.0  # chance is 10 %


def _strip(rows: list[dict]) -> list[dict]:
    """Metrics without the wall-clock ones."""
    return [{k: v for k, v in r.items() if k not in ("epoch_time", "img_per_s")} for r in rows]


def kill_in_epoch_2(cfg, monkeypatch) -> None:
    """Train ``cfg`` until a KeyboardInterrupt at the start of its second epoch."""
    real = run.train_one_epoch

    def killed_in_epoch_2(ctx, loader, epoch, *rest):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(ctx, loader, epoch, *rest)

    monkeypatch.setattr(run, "train_one_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run.train(cfg)
    monkeypatch.setattr(run, "train_one_epoch", real)


def test_resume_after_a_kill_matches_an_uninterrupted_run(data_dir, tmp_path, monkeypatch):
    kw = dict(epochs=3, ema=True, method="mixpro")
    full = run.train(tiny(data_dir, tmp_path / "full", **kw))
    kill_in_epoch_2(tiny(data_dir, tmp_path / "cut", **kw), monkeypatch)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["epoch"] == 1
    resumed = run.train(tiny(data_dir, tmp_path / "cut", **kw), resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _strip(full.metrics) == _strip(resumed.metrics)
    ea = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["ema"]
    eb = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["ema"]
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


# -- bad input: one-line errors before training, good checkpoints untouched -------------


@pytest.mark.parametrize("over, match", [
    ({"model": "vit_tinyy"}, "unknown model 'vit_tinyy'"),
    ({"model": "resnet18", "model_kwargs": {}, "patch_size": None}, "cls-token|patch size"),
    ({"model_kwargs": {**TINY, "global_pool": "avg"}, "cls_head": "none"}, "global_pool"),
    ({"model_kwargs": {**TINY, "class_token": False, "global_pool": "avg"}, "cls_head": "none"},
     "cls"),
    ({"method": "transmix", "model_kwargs": {**TINY, "global_pool": "avg"}, "cls_head": "none"},
     "global_pool"),
    ({"mask_scale": 3}, r"mask_scale must divide the 4x4 token grid: one of \[1, 2, 4\]"),
    ({"img_size": 18}, "not a multiple of patch_size"),
    ({"model_kwargs": {**TINY, "depthh": 2}}, "cannot build model"),
    ({"batch_size": 4096}, "larger than"),
    ({"data": "/no/such/imagenet"}, "not found"),
    ({"mix_until": 1.5}, r"mix_until must be in \[0, 1\], got 1.5"),
])
def test_bad_input_is_one_line_before_training(data_dir, tmp_path, over, match):
    with pytest.raises((TrainError, DatasetError), match=match) as e:
        run.train(tiny(data_dir, tmp_path / "r", **over))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_held_out_classes_train_a_smaller_head_and_are_checked(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="holdout_classes"):
        load_recipe(None, {"holdout_classes": [3, 3]})
    with pytest.raises(ConfigError, match="holdout_classes works with data: fashion_mnist"):
        load_recipe(None, {"holdout_classes": [1], "data": "/some/folder"})
    cfg = tiny(data_dir, tmp_path / "h", holdout_classes=[8, 9], epochs=1, warmup_epochs=0)
    run.train(cfg)
    ck = torch.load(tmp_path / "h" / "last.pt", weights_only=False)
    assert ck["config"]["num_classes"] == 8 and len(ck["config"]["classes"]) == 8
    assert "Bag" not in ck["config"]["classes"] and ck["model"]["head.weight"].shape[0] == 8
    with pytest.raises(ckpt_io.CheckpointError, match="holdout_classes"):
        run.train(tiny(data_dir, tmp_path / "h", holdout_classes=[9], epochs=1, warmup_epochs=0),
                  resume=True)


def test_resume_refuses_corrupt_and_mismatched_checkpoints(data_dir, tmp_path):
    out = tmp_path / "r"
    run.train(tiny(data_dir, out, epochs=2))
    good = (out / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        run.train(tiny(data_dir, out, epochs=2))
    with pytest.raises(ckpt_io.CheckpointError, match="does not match this run: model_kwargs"):
        run.train(tiny(data_dir, out, epochs=2, model_kwargs={**TINY, "depth": 2}), resume=True)
    with pytest.raises(ckpt_io.CheckpointError, match="method"):
        run.train(tiny(data_dir, out, epochs=2, method="cutmix"), resume=True)
    assert (out / "last.pt").read_bytes() == good  # never overwritten
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(ConfigError, match="holds another run"):  # bad.pt is not r's run
        run.train(tiny(data_dir, out, epochs=2), resume=str(bad))
    with pytest.raises(ckpt_io.CheckpointError, match="corrupt"):
        run.train(tiny(data_dir, tmp_path / "fresh", epochs=2), resume=str(bad))
    with pytest.raises(ckpt_io.CheckpointError, match="no checkpoint"):
        run.train(tiny(data_dir, tmp_path / "empty", epochs=2), resume=True)
    assert (out / "last.pt").read_bytes() == good


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.pt"
    ckpt_io.atomic_save({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ckpt_io.atomic_save({"a": Unpicklable()}, path)
    assert torch.load(path, weights_only=False) == {"a": 1}


# -- DDP: 2 processes, gloo on CPU -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, overrides: dict, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    res = run.train(load_recipe(None, overrides))
    torch.save({"model": res.model.state_dict(), "metrics": res.metrics},
               os.path.join(result_dir, f"rank{rank}.pt"))


def test_ddp_two_ranks_gloo_keep_identical_parameters(data_dir, tmp_path):
    over = dict(data_dir=str(data_dir), img_size=16, model_kwargs=TINY, epochs=2,
                warmup_epochs=1, batch_size=8, eval_batch_size=64, progress=False,
                output=str(tmp_path / "ddp"), max_steps=3, threads=1, method="mixpro",
                eval_every=1)
    mp.spawn(_ddp_worker, args=(2, _free_port(), over, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    for k, v in r0["model"].items():
        assert torch.equal(v, r1["model"][k]), k
    init = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=16, patch_size=4,
                             in_chans=1, **TINY).state_dict()
    assert not torch.equal(init["head.weight"], r0["model"]["head.weight"])
    # summed over ranks; the attention monitor (attn_*) runs on rank 0 only
    assert all(any(k.startswith("attn_") for k in r) for r in r0["metrics"])
    assert [{k: v for k, v in r.items() if not k.startswith("attn_")} for r in _strip(
        r0["metrics"])] == _strip(r1["metrics"])
    assert (tmp_path / "ddp" / "last.pt").is_file()  # written once, by rank 0


# -- speed knobs: fused optimiser step, written-out attention ------------------------------


def test_fused_opt_uses_torchs_fused_step_where_the_optimiser_has_one():
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1,
                              num_classes=3, **TINY)
    fused = run._optimizer(load_recipe(None, {"fused_opt": True}), model)
    plain = run._optimizer(load_recipe(None, {"fused_opt": False}), model)
    assert all(g["fused"] for g in fused.param_groups)
    assert not any(g["fused"] for g in plain.param_groups)
    # an optimiser without a fused step (timm's Lamb) is built as it is
    lamb = run._optimizer(load_recipe(None, {"fused_opt": True, "opt": "lamb"}), model)
    assert type(lamb).__name__ == "Lamb"
    # the fused step and torch's loop take the same step (to float rounding)
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    start = a.weight.detach().clone()
    opts = [run._optimizer(load_recipe(None, {"fused_opt": f}), m)
            for f, m in ((True, a), (False, b))]
    x = torch.randn(8, 5)
    for _ in range(3):
        for m, o in zip((a, b), opts, strict=True):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    assert not torch.allclose(a.weight, start)  # it moved
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)


def test_fused_attn_switches_every_attention_module_and_keeps_the_output(data_dir, tmp_path):
    from mixpro import models

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1,
                              num_classes=3, **TINY).eval()
    x = torch.randn(4, 1, 16, 16)
    assert models.set_fused_attention(model, True) == len(model.blocks)
    fused = model(x)
    assert models.set_fused_attention(model, False) == len(model.blocks)
    assert not any(b.attn.fused_attn for b in model.blocks)
    torch.testing.assert_close(model(x), fused, rtol=1e-5, atol=1e-5)
    # a run with written-out attention trains and PAL reads the attention
    res = run.train(tiny(data_dir, tmp_path / "r", fused_attn=False, epochs=2))
    assert not any(m.fused_attn for m in res.model.modules() if hasattr(m, "fused_attn"))
    assert 0 < res.metrics[-1]["alpha_mean"] <= 1


def test_mix_until_trains_the_last_epochs_unmixed(data_dir, tmp_path, monkeypatch):
    # round(mix_until * epochs), halves up, at least 1 above 0: the recipe's shape at any length
    shares = [(1.0, 16, 16), (0.7, 16, 11), (0.7, 10, 7), (0.7, 3, 2), (0.7, 1, 1),
              (0.5, 3, 2), (0.1, 2, 1), (0.0, 5, 0), (0.8333, 300, 250)]
    for share, epochs, mixed in shares:
        over = {"mix_until": share, "epochs": epochs, "warmup_epochs": 0}
        assert load_recipe(None, over).mixed_epochs == mixed
    cfg = tiny(data_dir, tmp_path / "r", epochs=3, mix_until=0.3)
    seen: list[tuple[str, bool]] = []
    real = run.train_one_epoch

    def spy(ctx, loader, epoch, *a, **kw):
        m = ctx.mixer_at(epoch)
        images, labels = next(iter(loader))
        batch = m(images, labels)
        seen.append((m.method, bool(torch.equal(batch.images, images))))
        return real(ctx, loader, epoch, *a, **kw)

    monkeypatch.setattr(run, "train_one_epoch", spy)
    res = run.train(cfg)
    assert seen == [("mixpro", False), ("none", True), ("none", True)]
    alphas = [m["alpha_mean"] for m in res.metrics]
    assert alphas[0] is not None and alphas[1:] == [None, None]  # no attention labels after
