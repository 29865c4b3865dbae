"""`mixpro bench` runs end to end on tiny sizes (structure and sanity, never speed targets)."""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json

import numpy as np
import pytest
import torch

from mixpro import bench


def test_official_yardstick_mixes_like_the_description():
    rng = np.random.default_rng(0)
    x = torch.randn(4, 3, 20, 20)
    out, lam = bench.official_numpy_maskmix(x, 8, rng)  # 8 does not divide 20: ceil grid 3x3
    assert out.shape == x.shape
    assert lam * 9 == round(lam * 9)
    # every pixel comes from some sample of the batch
    matches = (out[:, None] == x[None]).all(2)  # (B, B, H, W)
    assert matches.any(1).all()


def test_bench_runs_and_writes_markdown_and_json(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    mix = bench.bench_mix(batch=4, channels=1, size=16, patch=4, scale=2, device=cpu,
                          repeats=1, warmup=0, num_classes=5)
    names = [r["method"] for r in mix["rows"]]
    from mixpro.methods import METHODS

    refs = [n for n in names if n.startswith("reference: ")]
    assert refs == ["reference: fmix (official numpy)", "reference: resizemix (OpenMixup)"]
    assert [n for n in names if n not in refs] == [
        "copy", "official_numpy_loop", *(n for n, m in METHODS.items() if not m.helpers)]
    assert all(r["mix_ms"] > 0 for r in mix["rows"])
    jobs = [r["job"] for r in mix["libraries"]]
    assert jobs == ["Mixup, batch", "CutMix, batch", "Mixup, elem", "CutMix, elem",
                    "CutMix, pair", "Mixup+CutMix, elem"]
    for r in mix["libraries"]:
        assert r["mixpro_x_copy"] > 0 and r["timm_x_copy"] > 0
        assert (r["torchvision_ms"] is None) == ("elem" in r["job"] or "pair" in r["job"])
    step = bench.bench_step(
        model_name="vit_tiny_patch16_224", img_size=16, batch=4, num_classes=5, device=cpu,
        repeats=1, warmup=0, amp=False,
        model_kwargs=dict(patch_size=4, depth=1, embed_dim=16, num_heads=2),
    )
    assert [r["variant"] for r in step["rows"]][0] == "none"
    assert step["rows"][0]["x_none"] == 1.0 and len(step["rows"]) == 13
    assert {"saliencymix", "gridmix (token head)", "puzzlemix (saliency + graph cuts)",
            "tokenmix (teacher = the same model)"} <= {r["variant"] for r in step["rows"]}
    assert step["mask_scale"] == 4 and step["patch"] == 4
    assert 0 < step["probe_hook_share_of_step"] < 1
    result = {"command": "test", "environment": bench.environment(cpu), "mix": [mix],
              "step": step}
    md = bench.to_markdown(result)
    assert "official_numpy_loop" in md and "mixpro (extra no-grad forward)" in md
    assert "| CutMix, elem |" in md and "timm (clone + mix)" in md
    # run() writes both files (mix section only, to stay fast)
    monkeypatch.setattr(bench, "bench_mix", lambda **kw: mix)
    opts = bench.BenchOptions(device="cpu", skip_step=True, repeats=1, output=str(tmp_path))
    bench.run(opts)
    data = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert data["environment"]["device"] == "cpu" and len(data["mix"]) == 3
    # the recorded command reproduces the run: every option that differs from the defaults
    assert data["command"] == (f"mixpro bench --device cpu --repeats 1 --skip-step "
                               f"--output {tmp_path}") and data["repeats"] == 1
    assert (tmp_path / "bench-cpu.md").read_text().startswith("# mixpro bench")
    # the CLI parses the same flags into the same options
    from mixpro.cli import main

    (tmp_path / "bench-cpu.json").unlink()
    assert main(["bench", "--device", "cpu", "--skip-step", "--repeats", "1", "--output",
                 str(tmp_path)]) == 0
    assert json.loads((tmp_path / "bench-cpu.json").read_text())["command"] == data["command"]


def test_library_jobs_mix_like_timm_and_leave_the_input_alone():
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    x0 = x.clone()
    jobs = bench.library_jobs(x, y, 5)
    for job, libs in jobs.items():
        assert set(libs) == ({"mixpro", "timm", "torchvision"} if "batch" in job
                             else {"mixpro", "timm"}), job
        for lib, fn in libs.items():
            images, targets = fn()
            assert images.shape == x.shape and targets.shape == (6, 5), (job, lib)
            assert torch.allclose(targets.sum(1), torch.ones(6), atol=1e-5), (job, lib)
            assert torch.equal(x, x0), (job, lib)  # timm gets a clone


def test_bench_options_match_the_cli_flags_and_validate():
    from mixpro.cli import _bench_arguments

    parser = argparse.ArgumentParser()
    _bench_arguments(parser)
    dests = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    fields = {f.name: f.default for f in dataclasses.fields(bench.BenchOptions)}
    assert dests == fields
    # cli.py's construction: fields picked from a Namespace with extra attributes
    args = parser.parse_args(["--img-size", "64", "--amp", "--warmup", "0"])
    args.func = print
    opts = bench.BenchOptions(**{f.name: getattr(args, f.name)
                                 for f in dataclasses.fields(bench.BenchOptions)})
    assert opts.img_size == 64 and opts.amp and opts.warmup == 0 and opts.batch is None
    assert bench.command_line(opts) == "mixpro bench --img-size 64 --warmup 0 --amp"
    assert bench.command_line(bench.BenchOptions()) == "mixpro bench"
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.amp = False
    for kw, err, name in ((dict(repeats=0), ValueError, "repeats"),
                          (dict(warmup=-1), ValueError, "warmup"),
                          (dict(batch="8"), TypeError, "batch"),
                          (dict(amp=1), TypeError, "amp"),
                          (dict(device=0), TypeError, "device"),
                          (dict(recipe=3), TypeError, "recipe"),
                          (dict(skip_mix=True, skip_step=True), ValueError, "skip_mix")):
        with pytest.raises(err, match=name):
            bench.BenchOptions(**kw)
    with pytest.raises(TypeError, match="options must be a BenchOptions"):
        bench.run(args)
    with pytest.raises(ValueError, match="--device"):
        bench.run(bench.BenchOptions(device="tpu"))


def test_mixpro_bench_subcommand(tmp_path, monkeypatch, capsys):
    from mixpro import cli

    seen = {}

    real_mix = bench.bench_mix

    def fake_mix(**kw):  # the real thing, at a tiny size
        seen.setdefault("sizes", []).append(kw["size"])
        return real_mix(batch=4, channels=1, size=16, patch=4, scale=2, device=kw["device"],
                        repeats=1, warmup=0, num_classes=5)

    monkeypatch.setattr(bench, "bench_mix", fake_mix)
    argv = ["bench", "--device", "cpu", "--skip-step", "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    assert seen["sizes"] == [224, 224, 32]
    assert "# mixpro bench" in capsys.readouterr().out
    assert (tmp_path / "bench-cpu.md").exists()
    assert cli.main(["bench", "--device", "tpu", "--output", str(tmp_path)]) == 2
    assert "mixpro: error:" in capsys.readouterr().err


def test_bench_step_of_a_recipe_times_its_model_and_geometry(tmp_path, monkeypatch):
    """--recipe times the recipe's own model (here the tiny CA-Swin of the Swin preset, 1
    channel, 32 px, mask_scale 4), and --skip-mix leaves the mix section out."""
    from mixpro.cli import main

    seen = {}

    def fake_step(**kw):
        seen.update(kw)
        return {"model": kw["model_name"], "rows": [], "probe_hook_ms": 0.0,
                "probe_hook_share_of_step": 0.0, "img_size": kw["img_size"],
                "batch": kw["batch"], "amp": False, "cls_head": kw["cls_head"],
                "patch": kw["patch_size"], "mask_scale": kw["mask_scale"]}

    monkeypatch.setattr(bench, "bench_step", fake_step)
    monkeypatch.setattr(bench, "bench_mix", lambda **kw: pytest.fail("mix section ran"))
    assert main(["bench", "--device", "cpu", "--recipe", "fashion_mnist_limited_swin",
                 "--skip-mix", "--repeats", "1", "--output", str(tmp_path)]) == 0
    assert seen["model_name"] == "swin_tiny_patch4_window7_224" and seen["in_chans"] == 1
    assert (seen["img_size"], seen["patch_size"], seen["mask_scale"]) == (32, 2, 4)
    assert seen["cls_head"] == "ca_swin" and seen["model_kwargs"]["depths"] == [2, 2]
    data = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert data["mix"] == [] and data["step"]["recipe"] == "fashion_mnist_limited_swin"


def test_bench_step_runs_the_swin_preset_model_for_real():
    """The real step section on the tiny CA-Swin (2 steps): every variant times, the probe's
    share of a step is reported."""
    geo = bench._recipe_step("fashion_mnist_limited_swin")
    geo["batch"] = 4
    out = bench.bench_step(device=torch.device("cpu"), repeats=1, warmup=0, amp=False,
                           num_classes=10, **geo)
    assert out["cls_head"] == "ca_swin" and out["mask_scale"] == 4
    assert {r["variant"] for r in out["rows"]} >= {"none", "mixpro (probe)", "transmix (probe)"}
    assert 0.0 < out["probe_hook_share_of_step"] < 1.0


def test_every_bench_result_names_its_machine():
    env = bench.environment(torch.device("cpu"))
    assert env["cpu"] and env["cpu_count"] >= 1 and env["threads"] >= 1
    md = bench.to_markdown({"command": "t", "environment": env, "mix": [], "step": None})
    assert env["cpu"] in md and f"{env['cpu_count']} cores" in md


def test_reference_mixes_mix_like_their_descriptions():
    rng = np.random.default_rng(0)
    x = torch.rand(4, 3, 32, 32)
    for out in (bench.reference_fmix(x, rng), bench.reference_resizemix(x, rng)):
        assert out.shape == x.shape and torch.isfinite(out).all()
    sal = bench.reference_saliencymix(x, rng)  # OpenCV is a test dependency
    assert sal is not None and sal.shape == x.shape
    # every pixel of the saliency yardstick comes from the image or one partner, same place
    same = (sal[:, None] == x[None]).all(2)  # (B, B, H, W)
    assert same.any(1).all()


def test_goals_are_checked_on_the_run_s_own_numbers():
    rows = [{"method": "copy", "mix_ms": 10.0, "x_copy": 1.0},
            {"method": "maskmix", "mix_ms": 17.0, "x_copy": 1.7}]
    libs = [{"job": "CutMix, elem", "mixpro_ms": 8.0, "timm_ms": 9.0, "torchvision_ms": None},
            {"job": "Mixup, batch", "mixpro_ms": 8.0, "timm_ms": 9.0, "torchvision_ms": 7.0}]
    geo = {"patch": 14, "mask_scale": 4}
    got = bench.goals([{"batch": 128, "shape": [3, 224, 224], "rows": rows, "libraries": libs,
                        **geo},
                       {"batch": 128, "shape": [1, 32, 32],  # a copy under 1 ms: no x-copy goal
                        "rows": [{**rows[0], "mix_ms": 0.01}, rows[1]], "libraries": [], **geo}])
    assert [(g["value"], g["limit"], g["met"]) for g in got] == [
        (1.7, 1.6, False), (8.0 / 9.0, 1.0, True), (8.0 / 7.0, 1.0, False)]
    assert got[0]["goal"] == "maskmix × copy, B=128, 3×224×224, patch 14, mask_scale 4"
    md = bench.to_markdown({"command": "t", "environment": bench.environment(
        torch.device("cpu")), "mix": [], "step": None, "goals": got})
    assert "## Goals" in md and "| **no** |" in md


def test_bench_names_the_kernel_way_and_can_run_on_a_busy_machine(tmp_path):
    cpu = torch.device("cpu")
    mix = bench.bench_mix(batch=8, channels=3, size=16, patch=4, scale=2, device=cpu,
                          repeats=1, warmup=0, num_classes=5)
    from mixpro import _kernels

    _kernels.forget()  # warm-up runs until the kernels have chosen their ways
    bench.interleaved({"f": lambda: _kernels.fastest("t", {"a": lambda: 1, "b": lambda: 2})},
                      cpu, repeats=1, warmup=0)
    assert _kernels.calibrating() == 0 and _kernels.choices()[0]["settled"]
    kernels = {r["method"]: r["kernel"] for r in mix["rows"]}
    assert kernels["copy"] is None and kernels["maskmix"]
    assert all(r["mixpro_kernel"] for r in mix["libraries"])
    # the evidence behind each choice: the timings of every way of the signature it timed
    row = next(r for r in mix["rows"] if r["method"] == "maskmix")
    assert row["kernel_timings"] and all(e["ways_ms"] for e in row["kernel_timings"])
    assert any(row["kernel"].startswith(w) for e in row["kernel_timings"] for w in e["ways_ms"])
    assert all(t is None or t > 0 for e in row["kernel_timings"]
               for t in e["ways_ms"].values())
    json.dumps(mix, allow_nan=False)  # strict JSON: a way not timed yet is null, not Infinity
    assert next(r for r in mix["rows"] if r["method"] == "copy")["kernel_timings"] == []
    opts = bench.BenchOptions(device="cpu", skip_step=True, repeats=1, output=str(tmp_path),
                              busy=1)
    import mixpro.bench as mb

    specs = []
    real = mb.bench_mix

    def small(**kw):
        specs.append(kw)
        return real(**{**kw, "batch": 4, "size": 16, "patch": 4, "scale": 2})

    mb.bench_mix = small
    try:
        result = bench.run(opts)
    finally:
        mb.bench_mix = real
    env = result["environment"]
    assert env["busy_processes"] == 1 and len(specs) == 3
    assert (tmp_path / "bench-cpu-busy1.json").exists()
    assert "busy: 1 other processes" in (tmp_path / "bench-cpu-busy1.md").read_text()
    assert isinstance(result["goals"], list)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]


def _mmapped_blocks_of(nbytes: int) -> int:
    """How many mmapped blocks (new pages) glibc adds for one tensor of ``nbytes``."""
    libc = bench._glibc()
    libc.mallinfo2.restype = _Mallinfo2
    before = libc.mallinfo2().hblks
    t = torch.empty(nbytes, dtype=torch.uint8)
    during = libc.mallinfo2().hblks
    del t
    return during - before


@pytest.mark.skipif(bench._glibc() is None or not hasattr(bench._glibc(), "mallinfo2"),
                    reason="the memory regimes are glibc's mallopt (mallinfo2: glibc >= 2.33)")
def test_memory_regimes_put_blocks_on_the_pages_they_say(tmp_path, monkeypatch):
    with bench.memory_regime("reused"):  # freed memory is kept: even 40 MB come from the heap
        assert [_mmapped_blocks_of(40 << 20) for _ in range(2)] == [0, 0]
    # afterwards: glibc's long-run thresholds (32 MiB): a batch of 3x224^2 on new pages again
    assert _mmapped_blocks_of(77 << 20) == 1 and _mmapped_blocks_of(1 << 20) == 0
    with pytest.raises(bench.BenchError, match="--memory reused is for CPU runs"):
        bench.run(bench.BenchOptions(device="cuda:0", memory="reused", output=str(tmp_path)))
    with pytest.raises(bench.BenchError, match="--memory must be"):
        with bench.memory_regime("fresh"):
            pass
    # the run records its regime and writes files of their own
    monkeypatch.setattr(bench, "bench_mix", lambda **kw: {
        "batch": 4, "shape": [1, 8, 8], "patch": 4, "mask_scale": 1, "libraries": [],
        "rows": [{"method": "copy", "mix_ms": 0.1, "x_copy": 1.0, "speedup_vs_official": 1.0,
                  "targets_ms": None}]})
    result = bench.run(bench.BenchOptions(device="cpu", skip_step=True, repeats=1,
                                          output=str(tmp_path), memory="reused"))
    assert result["environment"]["memory"] == "reused"
    assert "--memory reused" in result["command"]
    assert "memory: reused" in (tmp_path / "bench-cpu-reused.md").read_text()
    assert json.loads((tmp_path / "bench-cpu-reused.json").read_text())["environment"][
        "memory"] == "reused"


def test_cpu_model_names_family_model_and_isa():
    """A VM's bare "AMD EPYC" is told apart by its family/model; the first processor's
    lines are read, and a missing family or flags line leaves that part out."""
    cpu_model = bench.cpu_model
    info = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
            "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n\n"
            "processor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: other\n"
            "flags\t\t: avx512f amx_tile\n")
    assert cpu_model(info) == "AMD EPYC (family 25 model 1; AVX2)"
    intel = "model name\t: Intel Xeon\nflags\t\t: avx2 avx512f amx_tile\n"
    assert cpu_model(intel) == "Intel Xeon (AVX2, AVX-512, AMX)"
    assert cpu_model("model name\t: Some ARM core\n") == "Some ARM core"
