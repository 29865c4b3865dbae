"""A run's output folder: what a run writes there and when it may (nothing is overwritten by
surprise).

Owns :data:`ARTEFACTS` (every file a run writes), :data:`FINAL`, :func:`output_dir` and
:func:`check_output` (refuse a folder holding another run without ``--resume`` or
``--overwrite``, a folder that is a file, lies under one or cannot be written).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .recipe import ConfigError, Recipe

FINAL = "final.json"
# every file a run writes into its output folder
ARTEFACTS = ("last.pt", "best.pt", "metrics.jsonl", FINAL, "config.yaml", "curves.png",
             "alpha_epoch.png", "alpha_hist.png", "attention.png", "tb")



def output_dir(cfg: Recipe) -> Path:
    """The run's folder: ``output``, else ``runs/<run_name>``."""
    return Path(cfg.output) if cfg.output else Path("runs") / cfg.run_name


def check_output(out: Path, resume_path: Path | None, overwrite: bool) -> list[Path]:
    """Check the output folder before any work; returns the old run's files that
    ``overwrite`` will remove (only once every other check has passed).

    A folder holding any run artefact is refused without ``--resume`` or ``--overwrite``;
    ``--resume A.pt`` into a folder that holds another run than ``A.pt``'s is refused.
    """
    if resume_path is not None and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: choose one")
    for parent in [out, *out.parents]:
        if parent.exists():
            if not parent.is_dir():
                what = "is a file" if parent == out else f"is under the file {parent}"
                raise ConfigError(f"--output {out} {what}; choose a folder")
            try:  # the one real test of writability (root passes os.access everywhere)
                with tempfile.TemporaryFile(dir=parent):
                    pass
            except OSError as e:
                raise ConfigError(f"--output {out}: cannot write in {parent} "
                                  f"({e.strerror or e})") from None
            break
    held = [out / a for a in ARTEFACTS if (out / a).exists()] if out.is_dir() else []
    if resume_path is None:
        if held and not overwrite:
            raise ConfigError(f"{out} already holds a run ({held[0].name}): pass --resume to "
                              "continue it, --overwrite to start afresh, or choose another "
                              "--output")
        return held
    if held and resume_path.resolve().parent != out.resolve():
        raise ConfigError(f"--output {out} holds another run ({held[0].name}) than the "
                          f"checkpoint {resume_path} you resume; choose an empty --output")
    return []
