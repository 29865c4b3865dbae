"""Checkpoints: atomic writes each epoch, and validated resume.

Owns the file format. ``last.pt`` / ``best.pt`` hold::

    {"model": <plain timm state dict>,            # load with timm.create_model(...).load_state_dict
     "config": {"model": timm_name, "model_kwargs": {...}, "num_classes": K,
                "mean": [...], "std": [...], "classes": [...], "recipe": {...}},
     "epoch": completed_epochs, "metrics": [per-epoch dicts], "best_acc": float,
     "optimizer", "scheduler", "scaler", "ema", "mixer", "rng", "alpha_last"}   # last.pt only

Writes go to ``<file>.tmp`` then ``os.replace`` (atomic on POSIX), so a crash never leaves a
half-written checkpoint in place of a good one. :func:`load_for_resume` checks the file and
that it matches the run *before* any training, raising :class:`CheckpointError`.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainError

FORMAT_VERSION = 1
# recipe keys that must match between a checkpoint and the run resuming it
MUST_MATCH = ("model", "model_kwargs", "img_size", "patch_size", "in_chans", "method", "data",
              "train_subset", "subset_seed", "holdout_classes", "batch_size", "epochs", "seed",
              "ema", "opt", "sched", "mask_scale")
# keys newer than some checkpoints: their value when a checkpoint lacks them
_MISSING_MEANS = {"holdout_classes": []}


class CheckpointError(TrainError):
    """An unreadable, corrupt or mismatched checkpoint."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path + '.tmp'``, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint on the CPU; :class:`CheckpointError` if missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                              ) from None
    need = ("model", "config", "epoch", "metrics", "optimizer", "scheduler")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in need):
        raise CheckpointError(f"checkpoint {path} is not a mixpro train checkpoint "
                              f"(needs keys {', '.join(need)})")
    if ckpt.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {ckpt.get('version')}, "
                              f"expected {FORMAT_VERSION}")
    return ckpt


def check_matches(ckpt: dict[str, Any], recipe: dict[str, Any], path: str | os.PathLike) -> None:
    """The run must be the one the checkpoint was written by (keys in :data:`MUST_MATCH`)."""
    saved = ckpt["config"].get("recipe", {})
    for key in MUST_MATCH:
        then = saved.get(key, _MISSING_MEANS.get(key))
        if then != recipe.get(key):
            raise CheckpointError(
                f"checkpoint {path} does not match this run: {key} is {then!r} in "
                f"the checkpoint and {recipe.get(key)!r} now"
            )


def load_states(ckpt: dict[str, Any], path: str | os.PathLike, *, model: torch.nn.Module,
                optimizer, scheduler, scaler, ema, mixer_params: list[torch.nn.Parameter]) -> None:
    """Restore every state; :class:`CheckpointError` on shape/key mismatches."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            if ckpt.get("ema") is None:
                raise CheckpointError(f"checkpoint {path} has no EMA weights")
            ema.module.load_state_dict(ckpt["ema"])
        saved_mixer = ckpt.get("mixer") or []
        if len(saved_mixer) != len(mixer_params):
            raise CheckpointError(f"checkpoint {path} has {len(saved_mixer)} mixer parameters, "
                                  f"the run {len(mixer_params)}")
        with torch.no_grad():
            for p, v in zip(mixer_params, saved_mixer, strict=True):
                p.copy_(v)
    except (RuntimeError, KeyError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint {path} does not fit this run: "
                              f"{str(e).splitlines()[0]}") from None
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])
