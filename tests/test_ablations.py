"""benchmarks/ablations.py: sharing identical runs between studies, the work queue's claims."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _ablations(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("ablations", ROOT / "benchmarks" / "ablations.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    monkeypatch.setattr(mod, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(mod, "DOCS", tmp_path / "docs")
    return mod


def _finished(mod, study, name, recipe):
    out = mod.RUNS / study / name
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump({**recipe, "output": str(out)}))
    (out / "final.json").write_text(json.dumps({"test_acc": 71.0}))
    (out / "metrics.jsonl").write_text("{}\n")
    return out


def test_a_run_with_the_same_recipe_is_shared_and_a_different_one_is_not(tmp_path, monkeypatch):
    mod = _ablations(tmp_path, monkeypatch)
    plan = mod.planned("table10")
    cosine = {p.name: c for p, c in plan.items()}["mixpro_alpha-cosine-seed0"].to_dict()
    _finished(mod, "table6", "mixpro-seed0", cosine)
    _finished(mod, "table6", "mixpro-seed1", {**cosine, "seed": 1, "lr": 1e-3})  # not the run
    assert mod.share("table10") == 1
    got = mod.RUNS / "table10" / "mixpro_alpha-cosine-seed0"
    assert json.loads((got / "final.json").read_text()) == {"test_acc": 71.0}
    assert (got / "SHARED").read_text().strip() == "runs/table6/mixpro-seed0"
    assert not (mod.RUNS / "table10" / "mixpro_alpha-cosine-seed1").exists()
    # a run shared twice names the run that was trained
    fig5a = {p.name: c for p, c in mod.planned("fig5a").items()}
    assert mod.share("fig5a") == 1
    assert (mod.RUNS / "fig5a" / "mixpro_mask_scale-2-seed0" / "SHARED").read_text().strip() \
        == "runs/table6/mixpro-seed0"
    assert "mixpro_mask_scale-1-seed0" in fig5a
    assert mod.sync("table10") == 1  # the SHARED note travels with the committed run
    assert (mod.DOCS / "table10" / "runs" / "mixpro_alpha-cosine-seed0" / "SHARED").exists()


def test_work_skips_finished_and_live_runs_and_says_so(tmp_path, monkeypatch, capsys):
    from mixpro import files
    from mixpro.train import run

    mod = _ablations(tmp_path, monkeypatch)
    plan = mod.planned("fig5b")
    trained = []
    monkeypatch.setattr(run, "train", lambda cfg, resume, overwrite: trained.append(
        Path(cfg.output).name) or SimpleNamespace(summary={}))
    names = [p.name for p in plan]
    _finished(mod, "fig5b", names[0], plan[mod.RUNS / "fig5b" / names[0]].to_dict())
    live = files.FolderLock(mod.RUNS / "fig5b" / names[1]).acquire()  # a live worker has it
    (mod.RUNS / "fig5b" / (names[2] + ".claim")).touch()  # a claim file of an older version
    try:
        assert mod.work(["fig5b"]) == 0
    finally:
        live.release()
    by_seed = sorted(names, key=lambda n: plan[mod.RUNS / "fig5b" / n].seed)  # seed by seed
    assert trained == [n for n in by_seed if n not in names[:2]]
    out = capsys.readouterr().out
    assert f"{names[1]} skipped: another worker trains it (pid {__import__('os').getpid()}" in out
    assert not list((mod.RUNS / "fig5b").glob("*.claim"))
    # a study whose folder does not exist yet
    trained.clear()
    assert mod.work(["table9"]) == 0
    assert trained == [p.name for p, c in sorted(mod.planned("table9").items(),
                                                key=lambda item: item[1].seed)]


def test_a_killed_workers_run_is_taken_by_the_next_worker(tmp_path, monkeypatch, capsys):
    """SIGKILL frees the folder lock (the kernel drops it): the next worker trains the run."""
    import subprocess
    import sys

    from mixpro.train import run

    mod = _ablations(tmp_path, monkeypatch)
    plan = mod.planned("fig5b")
    first = next(iter(plan))
    first.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from mixpro.files import FolderLock; "
        f"FolderLock({str(first)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    (first / "config.yaml").write_text(yaml.safe_dump(plan[first].to_dict()))  # no checkpoint
    holder.kill()
    holder.wait()
    trained = []
    monkeypatch.setattr(run, "train", lambda cfg, resume, overwrite: trained.append(
        (Path(cfg.output).name, resume, overwrite)) or SimpleNamespace(summary={}))
    assert mod.work(["fig5b"]) == 0
    assert trained[0] == (first.name, False, True)  # restarted: killed before a checkpoint
    assert f"training {first.name} (restart)" in capsys.readouterr().out


def test_restore_skips_a_committed_run_of_another_recipe(tmp_path, monkeypatch, capsys):
    mod = _ablations(tmp_path, monkeypatch)
    plan = {p.name: c for p, c in mod.planned("table9").items()}
    names = list(plan)
    for i, name in enumerate(names[:2]):
        rec = plan[name].to_dict()
        if i == 1:
            rec["epochs"] = 6
        src = mod.DOCS / "table9" / "runs" / name
        src.mkdir(parents=True)
        (src / "config.yaml").write_text(yaml.safe_dump(rec))
        (src / "final.json").write_text("{}")
    assert mod.restore("table9") == 1
    assert (mod.RUNS / "table9" / names[0] / "final.json").exists()
    assert not (mod.RUNS / "table9" / names[1]).exists()
    assert f"{names[1]} not restored" in capsys.readouterr().out


def test_synced_runs_are_not_git_ignored(tmp_path, monkeypatch):
    """What ``sync`` writes under docs/ must be committable: a ``runs/`` ignore rule anywhere
    but the repository root once hid every committed run, so a clean clone retrained them."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout of the repository")
    mod = _ablations(tmp_path, monkeypatch)
    synced = [mod.DOCS.relative_to(tmp_path) / "table6" / "runs" / "mixpro-seed0" / name
              for name in mod.KEEP]
    synced += [mod.DOCS.relative_to(tmp_path) / "table6" / name
               for name in ("results.md", "results.csv", "compare.png")]
    check = subprocess.run(["git", "check-ignore", "--no-index", *map(str, synced)],
                           cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 1, f"git ignores {check.stdout.split()}"
    top = subprocess.run(["git", "check-ignore", "--no-index", "runs/table6/x/last.pt"],
                         cwd=ROOT, capture_output=True, text=True)
    assert top.returncode == 0, "the top-level runs/ folder (checkpoints) must stay ignored"
