"""The paper's ablations (Tables 6-10, Fig. 5), its Table 2 comparison, and the premise study
(``premise_*``: is the attention PAL labels with reliable, and when?) as ``mixpro compare``
sweeps on the data-limited preset, resumable across sessions. Runs go to ``runs/ablations/``
(the premise studies: ``runs/premise/``) and are committed under ``docs/results/`` likewise.

    python benchmarks/ablations.py run [STUDY ...]   # default: every study, in order
    python benchmarks/ablations.py sync              # copy finished runs into docs/results/
    python benchmarks/ablations.py list
    python benchmarks/ablations.py share [STUDY ...]  # reuse identical runs of other studies
    python benchmarks/ablations.py work [STUDY ...]   # one worker; start several in parallel

Table 2's study trains its helper models first (``HELPERS``: Attentive-CutMix's extractor, a
small ResNet-18, and TokenMix's teacher, the students' ViT without mixing), on the same
500-image subset and schedule as the students (seed 0), so that no helper sees more data than
the model it helps; they are kept in ``runs/ablations/table2-helpers/`` (their checkpoints
are not committed: a clean clone trains them again, about 5 min each on one core).

Runs go to ``runs/ablations/<study>/``. ``sync`` copies each finished run's ``final.json``,
``metrics.jsonl`` and ``config.yaml`` (no checkpoints) and the study's ``results.*`` into
``docs/results/ablations/<study>/``; ``run`` first restores those whose recorded recipe is the
planned one (a committed run of another recipe, e.g. in a clone whose preset was changed, is
not restored, and that is said), so a committed run is never redone (``mixpro compare`` reuses
a run whose ``final.json`` records the planned recipe).

``share``: several studies contain the same run (MixPro's defaults are Table 10's ``cosine``,
Fig. 5a's scale 2, Fig. 5b's β = 1, Table 8's MaskMix row and Table 6's MixPro row). A run
whose recipe equals a finished run's of another study, key for key apart from
``mixpro.train.compare.NOT_THE_RUN`` (the same rule ``mixpro compare`` reuses runs by), is
that run: its files are copied with a ``SHARED`` note naming the source, not trained again.

``work``: trains the unfinished runs of the studies one at a time on one thread, so two
workers on two cores share the queue (on a 2-core machine two single-thread runs finish far
sooner than one two-thread run after another). A run is taken by the run folder's lock that
``mixpro train`` holds while it trains (:class:`mixpro.files.FolderLock`; the kernel frees it
when a worker dies, even by SIGKILL, so a killed worker's run is taken by the next one); every
run skipped is said, with why. Then ``run`` writes each study's table from the finished runs
(and refuses a run that a live worker holds).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "ablations"
DOCS = ROOT / "docs" / "results" / "ablations"
SEEDS = [0, 1, 2]
RECIPE = "fashion_mnist_limited"
KEEP = ("final.json", "metrics.jsonl", "config.yaml", "SHARED", "attention.png")

# study -> (methods, grid, what it reproduces)
STUDIES: dict[str, tuple[list[str], list[str], str]] = {
    "table6": (["cutmix", "transmix", "maskmix_transmix", "cutmix_pal", "mixpro"], [],
               "Table 6: components (CutMix, TransMix, MaskMix + TransMix labels, CutMix + PAL, "
               "MixPro)"),
    "table10": (["mixpro"], ["alpha=none,equal,linear,parabolic,learnable,cosine"],
                "Table 10: alpha strategies (none = area labels)"),
    "table7": (["maskmix"], ["mask_strategy=box,block,random_patch,grid"],
               "Table 7: mask strategies with area labels"),
    "fig5a": (["mixpro"], ["mask_scale=1,2,4,8"], "Fig. 5a: mask scale on the 8x8 token grid"),
    "table8": (["transmix", "transmix_aligned", "mixpro"],
               ["mask_strategy=misaligned,subpatch,grid"],
               "Table 8: TransMix, A (aligned boxes), B (misaligned), C (sub-patch), MaskMix"),
    "table9": (["maskmix"], ["mask_strategy=grid,shuffle,shuffle_own,shuffle_both"],
               "Table 9: random shuffling patterns"),
    "fig5b": (["mixpro"], ["beta=0.5,0.8,1,2"], "Fig. 5b: beta"),
    "table2": (["none", "gridmix", "cutmix", "attentive_cutmix", "saliencymix", "puzzlemix",
                "transmix", "tokenmix", "mixpro"], [],
               "Table 2: the mixing methods compared (helpers trained on the same subset)"),
    # the premise study (issue 23): is the attention PAL labels with reliable, and when?
    "premise_registers": (["mixpro"], ["alpha=none,cosine"],
                          "Premise (a): area labels vs PAL with 4 register tokens"),
    "premise_monitor": (["mixpro", "cutmix", "none"], ["alpha=none,cosine"],
                        "Premise: attention quality and label error every 10 epochs (seed 0)"),
    "premise_grid12": (["mixpro"], ["alpha=none,cosine"],
                       "Premise (b): area labels vs PAL on a 12x12 token grid (48 px)"),
}

# study -> where its runs and results live, under runs/ and docs/results/ (default
# ablations/<study>)
PLACES: dict[str, str] = {"premise_registers": "premise/registers",
                          "premise_monitor": "premise/monitor",
                          "premise_grid12": "premise/grid12"}
STUDY_SEEDS: dict[str, list[int]] = {"premise_monitor": [0]}  # default SEEDS

# study -> recipe keys set for the sweep (each reaches only the methods that read it)
SETTINGS: dict[str, dict[str, str]] = {
    "premise_registers": {"model_kwargs": "{embed_dim: 64, depth: 4, num_heads: 2, "
                                          "mlp_ratio: 2.0, reg_tokens: 4}"},
    "premise_monitor": {"eval_every": "10"},
    "premise_grid12": {"img_size": "48"},  # 48 px, patch 4: 12x12 tokens (the images resized)
    "table2": {
        # Attentive-CutMix: the extractor's stride-8 stage, a 4x4 map of 2x2-token cells (the
        # paper's 7x7 map of 32-px cells is 2x2 tokens at p = 16); 2 of 16 cells = 12.5 %
        # kept, the paper's 6 of 49 = 12.2 %
        "extractor": "runs/ablations/table2-helpers/extractor/last.pt",
        "attentive_stage": "2",
        "attentive_top_k": "2",
        "teacher": "runs/ablations/table2-helpers/teacher/last.pt",
    },
}

# study -> helper models it trains first, on the same subset and schedule as its students
# (so a helper never sees more data than the model it helps): name -> `mixpro train` args
HELPERS: dict[str, dict[str, list[str]]] = {
    "table2": {
        "extractor": ["--method", "none", "--model", "resnet18",
                      "--model-kwargs", '{"channels": [32, 64, 128, 256]}'],
        "teacher": ["--method", "none"],  # the students' ViT, trained without mixing
    },
}


def runs_dir(study: str) -> Path:
    """Where ``study``'s runs are trained: ``runs/<place>``."""
    return ROOT / "runs" / PLACES[study] if study in PLACES else RUNS / study


def docs_dir(study: str) -> Path:
    """Where ``study``'s finished runs and tables are committed: ``docs/results/<place>``."""
    return ROOT / "docs" / "results" / PLACES[study] if study in PLACES else DOCS / study


def seeds(study: str) -> list[int]:
    return STUDY_SEEDS.get(study, SEEDS)


def command(study: str) -> list[str]:
    """The ``mixpro compare`` arguments of ``study``."""
    methods, grid, _ = STUDIES[study]
    args = ["compare", "--recipe", RECIPE, "--methods", *methods,
            "--seeds", *map(str, seeds(study)), "--output-dir", str(runs_dir(study)),
            "--no-progress"]
    for g in grid:
        args += ["--grid", g]
    for key, value in SETTINGS.get(study, {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def planned(study: str, threads: int | None = 1):
    """``{run folder: recipe}`` of ``study``, as ``mixpro compare`` would run it."""
    from mixpro.train.compare import plan

    methods, grid, _ = STUDIES[study]
    from mixpro.train.recipe import parse_value

    settings = {k: parse_value(v) for k, v in SETTINGS.get(study, {}).items()}
    p = plan(RECIPE, methods=methods, seeds=seeds(study), output=runs_dir(study), grid=grid,
             overrides={"threads": threads, "progress": False, **settings})
    return {Path(cfg.output): cfg for cfg in p.configs.values()}


def share(study: str) -> int:
    """Copy into ``study`` each finished run of another study with the same recipe (by
    ``mixpro compare``'s rule, :func:`mixpro.train.compare.recipe_differences`: keys newer than
    a recorded recipe count as their defaults); returns how many were copied."""
    from mixpro.files import atomic_write_text
    from mixpro.train.compare import recipe_differences, recorded_recipe

    done = []  # finished runs here, then the committed ones of every study
    for final in [*sorted(RUNS.glob("*/*/final.json")),
                  *sorted(DOCS.glob("*/runs/*/final.json"))]:
        if study not in (final.parent.parent.name, final.parent.parent.parent.name):
            got = recorded_recipe(final.parent)
            if got is not None:
                done.append((got, final.parent))
    n = 0
    for out, cfg in planned(study).items():
        if (out / "final.json").exists():
            continue
        want = cfg.to_dict()
        src = next((folder for got, folder in done if not recipe_differences(got, want)), None)
        if src is None:
            continue
        _copy(src, out, [name for name in KEEP if name != "SHARED"])
        origin = (src / "SHARED").read_text().strip() if (src / "SHARED").exists() else \
            str(src.relative_to(ROOT))
        atomic_write_text(f"{origin}\n", out / "SHARED")
        print(f"{study}: {out.name} is {origin} (same recipe), copied", flush=True)
        n += 1
    return n


def work(studies: list[str]) -> int:
    """Train every unfinished run of ``studies`` that no live worker trains; say every skip.
    Returns 2 when some run holds another recipe's files (said, not trained), else 0."""
    import torch

    from mixpro.files import FolderLocked
    from mixpro.train import compare

    torch.set_num_threads(1)
    rc = 0
    for study in studies:
        restore(study)
        share(study)
        # seed by seed (every method's seed 0 first): a study stopped early still covers
        # every method
        for out, cfg in sorted(planned(study).items(), key=lambda item: item[1].seed):
            legacy = out.with_name(out.name + ".claim")  # claim files of earlier versions
            if legacy.exists():
                legacy.unlink()
                print(f"{study}: removed the old claim file {legacy.name} (runs are locked now)",
                      flush=True)
            try:
                state = compare.status(cfg)
                if state == "finished":
                    continue
                print(f"{study}: training {out.name} ({state})", flush=True)
                compare.run_one(cfg, state)
            except FolderLocked as e:
                print(f"{study}: {out.name} skipped: another worker trains it ({e.holder})",
                      flush=True)
            except compare.StaleRun as e:
                print(f"{study}: {out.name} skipped: {e}", flush=True)
                rc = 2
    return rc


def helpers(study: str) -> int:
    """Train the helper models of ``study`` that are not there yet (seed 0, one thread, in
    ``runs/ablations/<study>-helpers/<name>/``); a finished run of the same recipe elsewhere
    in ``runs/ablations`` (e.g. the study's own ``none`` run for its teacher) is copied, with
    its checkpoint, instead. Returns 0 or the first failing ``mixpro train``'s status."""
    from mixpro.cli import main as mixpro
    from mixpro.train.compare import recipe_differences, recorded_recipe
    from mixpro.train.recipe import load_recipe

    for name, args in HELPERS.get(study, {}).items():
        out = RUNS / f"{study}-helpers" / name
        if (out / "final.json").exists() and (out / "last.pt").exists():
            continue
        argv = ["train", "--recipe", RECIPE, "--seed", "0", "--threads", "1", "--no-progress",
                "--output", str(out.relative_to(ROOT)), *args]
        if not (out / "last.pt").exists():
            want = load_recipe(RECIPE, _flags(args) | {"seed": 0}).to_dict()
            for final in sorted(RUNS.glob("*/*/final.json")):
                got = recorded_recipe(final.parent)
                if got and (final.parent / "last.pt").exists() \
                        and not recipe_differences(got, want):
                    _copy(final.parent, out, ["last.pt", "best.pt", *KEEP])
                    print(f"{study}: helper {name} is {final.parent.relative_to(ROOT)} "
                          "(same recipe), copied", flush=True)
                    break
            else:
                print(f"{study}: training helper {name}: mixpro {' '.join(argv)}", flush=True)
                rc = mixpro(argv)
                if rc:
                    return rc
            continue
        print(f"{study}: resuming helper {name}", flush=True)
        rc = mixpro([*argv, "--resume"])
        if rc:
            return rc
    return 0


def _flags(args: list[str]) -> dict:
    """``["--method", "none", "--model-kwargs", "{...}"]`` as recipe overrides."""
    import yaml

    return {a[2:].replace("-", "_"): yaml.safe_load(v)
            for a, v in zip(args[::2], args[1::2], strict=True)}


def fig2a(study: str = "table10") -> Path | None:
    """The paper's Fig. 2a from Table 10's runs: mean α per epoch of each α strategy, mean
    over seeds (band: min–max), as ``docs/results/ablations/<study>/fig2a_alpha.png``."""
    from mixpro.plots.training import alpha_curves

    runs: dict[str, list[list[dict]]] = {}
    for m in sorted((runs_dir(study)).glob("*/metrics.jsonl")):
        if not (m.parent / "final.json").exists():
            continue
        label = m.parent.name.rsplit("-seed", 1)[0].removeprefix("mixpro_alpha-")
        runs.setdefault(label, []).append([json.loads(x) for x in m.read_text().splitlines()])
    if not runs:
        return None
    (docs_dir(study)).mkdir(parents=True, exist_ok=True)
    n = sorted({len(v) for v in runs.values()})
    seeds = f"{n[0]} seeds each" if len(n) == 1 else f"{n[0]}-{n[-1]} seeds"
    return alpha_curves(runs, docs_dir(study) / "fig2a_alpha.png",
                        title=f"Fig. 2a: mean α per epoch ({seeds})")


def monitor_figure(study: str = "premise_monitor") -> Path | None:
    """The attention monitor of every finished run of ``study`` on one figure,
    ``docs/results/<place>/monitor.png``."""
    from mixpro.plots.training import monitor_curves

    runs = {}
    for m in sorted(runs_dir(study).glob("*/metrics.jsonl")):
        rows = [json.loads(x) for x in m.read_text().splitlines()]
        if (m.parent / "final.json").exists() and any("attn_object_share" in r for r in rows):
            runs[m.parent.name.rsplit("-seed", 1)[0]] = rows
    if not runs:
        return None
    docs_dir(study).mkdir(parents=True, exist_ok=True)
    return monitor_curves(runs, docs_dir(study) / "monitor.png",
                          title="Attention monitor: 256 fixed test images, every 10 epochs")


def _copy(src: Path, dst: Path, names: Iterable[str]) -> None:
    """Copy each file ``src/name`` that exists to ``dst/name`` (``dst`` made when needed)."""
    for name in names:
        if (src / name).exists():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dst / name)


def sync(study: str) -> int:
    """Copy the finished runs of ``study`` into docs/; returns how many there are."""
    src, dst = runs_dir(study), docs_dir(study)
    if study == "table10":
        fig2a(study)
    if study == "premise_monitor":
        monitor_figure(study)
    n = 0
    for final in sorted(src.glob("*/final.json")):
        _copy(final.parent, dst / "runs" / final.parent.name, KEEP)
        n += 1
    _copy(src, dst, ("results.md", "results.csv", "compare.png"))
    for name in HELPERS.get(study, {}):
        helper = RUNS / f"{study}-helpers" / name
        if (helper / "final.json").exists():
            _copy(helper, dst / "helpers" / name, KEEP)
    return n


def restore(study: str) -> int:
    """Put the committed finished runs of ``study`` whose recorded recipe is the planned one
    back where ``mixpro compare`` finds them; say each one that differs (not restored).
    Returns how many were restored."""
    from mixpro.train.compare import recipe_differences, recorded_recipe

    plan = {out.name: cfg for out, cfg in planned(study).items()}
    n = 0
    for run in sorted((docs_dir(study) / "runs").glob("*")):
        out = runs_dir(study) / run.name
        if (out / "final.json").exists() or run.name not in plan:
            continue
        recorded = recorded_recipe(run)
        diff = recipe_differences(recorded or {}, plan[run.name].to_dict())
        if recorded is None or diff:
            keys = ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in list(diff.items())[:3])
            print(f"{study}: committed run {run.name} not restored: its recipe differs from "
                  f"the planned one ({keys or 'no config.yaml'})", flush=True)
            continue
        _copy(run, out, [f.name for f in run.iterdir()])
        n += 1
    return n


def main(argv: list[str]) -> int:
    from mixpro.cli import main as mixpro

    what, names = (argv[0] if argv else "list"), argv[1:] or list(STUDIES)
    unknown = [n for n in names if n not in STUDIES]
    if unknown:
        print(f"ablations: unknown study {unknown[0]!r}; one of {', '.join(STUDIES)}")
        return 2
    os.chdir(ROOT)  # the studies' recipes name their helpers' files relative to it
    if what in ("work", "run"):
        for study in names:
            rc = helpers(study)
            if rc:
                return rc
    if what == "work":
        return work(names)
    for study in names:
        if what == "share":
            print(f"{study}: {share(study)} runs shared")
        elif what == "list":
            print(f"{study}: mixpro {' '.join(command(study))}  # {STUDIES[study][2]}")
        elif what == "sync":
            print(f"{study}: {sync(study)} finished runs in {docs_dir(study)}")
        elif what == "run":
            restore(study)
            share(study)
            rc = mixpro(command(study))
            sync(study)
            if rc:
                return rc
        else:
            print(__doc__)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
