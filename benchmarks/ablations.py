"""The paper's ablations (Tables 6-10, Fig. 5) as ``mixpro compare`` sweeps on the
data-limited preset, resumable across sessions.

    python benchmarks/ablations.py run [STUDY ...]   # default: every study, in order
    python benchmarks/ablations.py sync              # copy finished runs into docs/results/
    python benchmarks/ablations.py list
    python benchmarks/ablations.py share [STUDY ...]  # reuse identical runs of other studies
    python benchmarks/ablations.py work [STUDY ...]   # one worker; start several in parallel

Runs go to ``runs/ablations/<study>/``. ``sync`` copies each finished run's ``final.json``,
``metrics.jsonl`` and ``config.yaml`` (no checkpoints) and the study's ``results.*`` into
``docs/results/ablations/<study>/``; ``run`` first restores those, so a committed run is never
redone (``mixpro compare`` skips a run whose ``final.json`` exists).

``share``: several studies contain the same run (MixPro's defaults are Table 10's ``cosine``,
Fig. 5a's scale 2, Fig. 5b's β = 1, Table 8's MaskMix row and Table 6's MixPro row). A run
whose recipe equals a finished run's of another study, key for key apart from
``NOT_THE_RUN`` (``output``, ``progress``, ``tensorboard``), is that run: its files are
copied with a ``SHARED`` note naming the source, not trained again.

``work``: trains the unfinished runs of the studies one at a time on one thread, claiming each
with a lock file, so two workers on two cores share the queue (on a 2-core machine two
single-thread runs finish far sooner than one two-thread run after another). Then ``run``
writes each study's table from the finished runs.
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
KEEP = ("final.json", "metrics.jsonl", "config.yaml", "SHARED")
NOT_THE_RUN = ("output", "progress", "tensorboard")  # recipe keys that do not change a result

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
}


def command(study: str) -> list[str]:
    """The ``mixpro compare`` arguments of ``study``."""
    methods, grid, _ = STUDIES[study]
    args = ["compare", "--recipe", RECIPE, "--methods", *methods,
            "--seeds", *map(str, SEEDS), "--output-dir", str(RUNS / study),
            "--no-progress"]
    for g in grid:
        args += ["--grid", g]
    return args


def planned(study: str, threads: int | None = 1):
    """``{run folder: recipe}`` of ``study``, as ``mixpro compare`` would run it."""
    from mixpro.train.compare import plan

    methods, grid, _ = STUDIES[study]
    p = plan(RECIPE, methods=methods, seeds=SEEDS, output=RUNS / study, grid=grid,
             overrides={"threads": threads, "progress": False})
    return {Path(cfg.output): cfg for cfg in p.configs.values()}


def _key(recipe: dict) -> str:
    return json.dumps({k: v for k, v in recipe.items() if k not in NOT_THE_RUN},
                      sort_keys=True, default=str)


def share(study: str) -> int:
    """Copy into ``study`` each finished run of another study with the same recipe; returns
    how many were copied."""
    import yaml

    done = {}
    for final in sorted(RUNS.glob("*/*/final.json")):
        if final.parent.parent.name != study and (final.parent / "config.yaml").exists():
            cfg = yaml.safe_load((final.parent / "config.yaml").read_text())
            done.setdefault(_key(cfg), final.parent)
    n = 0
    for out, cfg in planned(study).items():
        src = done.get(_key(cfg.to_dict()))
        if (out / "final.json").exists() or src is None:
            continue
        _copy(src, out, [name for name in KEEP if name != "SHARED"])
        origin = (src / "SHARED").read_text().strip() if (src / "SHARED").exists() else \
            str(src.relative_to(ROOT))
        (out / "SHARED").write_text(f"{origin}\n")
        print(f"{study}: {out.name} is {origin} (same recipe), copied")
        n += 1
    return n


def work(studies: list[str]) -> int:
    """Train every unfinished run of ``studies`` not claimed by another worker."""
    import torch

    from mixpro.train import run

    torch.set_num_threads(1)
    for study in studies:
        restore(study)
        share(study)
        for out, cfg in planned(study).items():
            claim = out.with_name(out.name + ".claim")
            if (out / "final.json").exists():
                continue
            claim.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            print(f"{study}: training {out.name}", flush=True)
            run.train(cfg, resume=(out / "last.pt").exists())
            claim.unlink()
    return 0


def fig2a(study: str = "table10") -> Path | None:
    """The paper's Fig. 2a from Table 10's runs: mean α per epoch of each α strategy, mean
    over seeds (band: min–max), as ``docs/results/ablations/<study>/fig2a_alpha.png``."""
    from mixpro.plots.training import alpha_curves

    runs: dict[str, list[list[dict]]] = {}
    for m in sorted((RUNS / study).glob("*/metrics.jsonl")):
        if not (m.parent / "final.json").exists():
            continue
        label = m.parent.name.rsplit("-seed", 1)[0].removeprefix("mixpro_alpha-")
        runs.setdefault(label, []).append([json.loads(x) for x in m.read_text().splitlines()])
    if not runs:
        return None
    (DOCS / study).mkdir(parents=True, exist_ok=True)
    n = sorted({len(v) for v in runs.values()})
    seeds = f"{n[0]} seeds each" if len(n) == 1 else f"{n[0]}-{n[-1]} seeds"
    return alpha_curves(runs, DOCS / study / "fig2a_alpha.png",
                        title=f"Fig. 2a: mean α per epoch ({seeds})")


def _copy(src: Path, dst: Path, names: Iterable[str]) -> None:
    """Copy each file ``src/name`` that exists to ``dst/name`` (``dst`` made when needed)."""
    for name in names:
        if (src / name).exists():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dst / name)


def sync(study: str) -> int:
    """Copy the finished runs of ``study`` into docs/; returns how many there are."""
    src, dst = RUNS / study, DOCS / study
    if study == "table10":
        fig2a(study)
    n = 0
    for final in sorted(src.glob("*/final.json")):
        _copy(final.parent, dst / "runs" / final.parent.name, KEEP)
        n += 1
    _copy(src, dst, ("results.md", "results.csv", "compare.png"))
    return n


def restore(study: str) -> None:
    """Put the committed finished runs of ``study`` back where ``mixpro compare`` finds them."""
    for run in sorted((DOCS / study / "runs").glob("*")):
        out = RUNS / study / run.name
        if not (out / "final.json").exists():
            _copy(run, out, [f.name for f in run.iterdir()])


def main(argv: list[str]) -> int:
    from mixpro.cli import main as mixpro

    what, names = (argv[0] if argv else "list"), argv[1:] or list(STUDIES)
    unknown = [n for n in names if n not in STUDIES]
    if unknown:
        print(f"ablations: unknown study {unknown[0]!r}; one of {', '.join(STUDIES)}")
        return 2
    if what == "work":
        return work(names)
    for study in names:
        if what == "share":
            print(f"{study}: {share(study)} runs shared")
        elif what == "list":
            print(f"{study}: mixpro {' '.join(command(study))}  # {STUDIES[study][2]}")
        elif what == "sync":
            print(f"{study}: {sync(study)} finished runs in {DOCS / study}")
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
