"""The checkpoint format: written by ``mixpro train``, read by every app.

Owns the file format: assembling it (:func:`training_checkpoint`, :func:`weights_checkpoint`),
writing it atomically, reading and validating it (:data:`RESUME_KEYS`: the one list of recipe
keys a resumed run must share with its checkpoint) and rebuilding the model it describes; also
the initial weights of a fine-tuning run (:func:`load_initial_weights`: a ``mixpro train``
checkpoint, a plain state dict or a ``.safetensors`` file, the classifier head re-initialised
when the class count differs). ``last.pt`` / ``best.pt`` hold::

    {"version": 2,
     "model": <state dict>,   # timm.create_model(...), wrapped by with_class_attention if cls_head
     "config": {"model": timm_name, "model_kwargs": {...}, "num_classes": K,
                "cls_head": None | {"mode": "ca" | "ca_swin", ...},   # missing: None
                "world_size": ranks, "multi_label": bool,
                "mean": [...], "std": [...], "classes": [...], "recipe": {...}},
     "epoch": completed_epochs, "metrics": [per-epoch dicts], "best_acc": float,
     # last.pt only:
     "optimizer", "scheduler", "scaler", "ema": state dicts (scaler, ema: None when unused),
     "mixer": [learnable mixer tensors], "rng": rng_state(), "alpha_last": [α] | None,
     "position": None at an epoch's end; in the middle of epoch ``epoch`` (0-based, i.e. the
                 epoch after the completed ones): {"step": steps done, "stats": the epoch's
                 running statistics (engine.EpochState as a dict), "mixer_gen": the mixer
                 generator's state, "data_gen": the dataset's augmentation generator state or
                 None}}

Every file is read with ``torch.load(weights_only=True)``, never with the full unpickler (a
crafted file could run code through it): a version-2 file holds tensors, lists and numbers only;
a version-1 file's numpy RNG state is let through as a plain numpy array (nothing else is).
A file pickling any other object is refused in one line naming what it pickles. Writes are
atomic (:mod:`mixpro.files`): a unique ``last.pt.<random>.tmp``, fsync, ``os.replace``; a
crash or a full disk never leaves a half-written checkpoint in place of a good one; a failed
write removes its temp file, and the temp file of a SIGKILLed writer is removed when the next
run takes the folder.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from . import files
from .errors import UserError, first_line
from .models import ModelError, build_model

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
TRAINING_KEYS = ("model", "config", "epoch", "metrics", "optimizer", "scheduler")
WEIGHTS_KEYS = ("version", "model", "config", "epoch", "metrics", "best_acc")  # best.pt
# recipe keys a resumed run must share with its checkpoint: what the model, the data order and
# the learning-rate schedule depend on (the scheduler's state is restored, not rebuilt, so a
# changed schedule key would be ignored silently). cls_head is compared by the head it resolves
# to (check_cls_head), the classes by name (check_classes), the world size by check_world.
RESUME_KEYS = ("model", "model_kwargs", "img_size", "patch_size", "in_chans", "method", "data",
               "train_subset", "subset_seed", "holdout_classes", "batch_size", "epochs", "seed",
               "ema", "opt", "sched", "mask_scale", "lr", "min_lr", "warmup_epochs",
               "warmup_lr", "max_steps", "sched_per_step", "mask_strategy", "layer_decay",
               "train_split", "val_split", "mix_until")
# keys newer than some checkpoints: their value when a checkpoint lacks them
MISSING_MEANS: dict[str, Any] = {"holdout_classes": [], "mask_strategy": "grid",
                                 "train_split": "train", "val_split": "val",
                                 "mix_until": 1.0}
PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


class CheckpointError(UserError):
    """An unreadable, corrupt or mismatched checkpoint, or one that cannot be written."""



# -- writing -------------------------------------------------------------------------------


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (:func:`mixpro.files.atomic_write`: a unique temp file,
    fsync, ``os.replace``).

    Raises:
        WriteError: the file cannot be written (disk full, permissions); the temp file is
            removed and an existing ``path`` is left as it was.
    """
    files.atomic_write(path, lambda f: torch.save(obj, f))


def rng_state() -> dict[str, Any]:
    """torch, numpy, python (and CUDA) RNG states, as tensors and lists (weights-only safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pstate, pgauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": [version, list(pstate), pgauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (also the pickled form of version 1)."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    if isinstance(npst, Mapping):
        npst = (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                npst["has_gauss"], npst["gauss"])
    np.random.set_state(npst)
    version, pstate, pgauss = state["python"]
    random.setstate((version, tuple(pstate), pgauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- reading -------------------------------------------------------------------------------


def read(path: str | os.PathLike, *, training: bool = False) -> dict[str, Any]:
    """Load a checkpoint on the CPU, tensors-only where the file allows it.

    ``training=True`` also requires the training state (``last.pt``: optimizer, scheduler,
    metrics) and a format version this code writes. Raises :class:`CheckpointError` when the
    file is missing, corrupt, or not a ``mixpro train`` checkpoint.
    """
    path = Path(path)
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) \
            or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"checkpoint {path} lacks the 'model' state dict or the 'config' "
                              "dict (written by mixpro train?)")
    if training:
        missing = [k for k in TRAINING_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(f"checkpoint {path} is not a mixpro train checkpoint with a "
                                  f"training state (lacks {', '.join(missing)}; best.pt holds "
                                  "weights only: resume from last.pt)")
        if ckpt.get("version") not in READABLE_VERSIONS:
            raise CheckpointError(f"checkpoint {path} has format version {ckpt.get('version')}, "
                                  f"expected one of {READABLE_VERSIONS}")
    return ckpt


def _numpy_globals() -> list[Any]:
    """What a version-1 file pickles besides tensors: numpy's uint32 RNG key array (under
    numpy 1's and numpy 2's module names). These only rebuild plain arrays: no callable of
    the file's choosing ever runs."""
    from numpy._core import multiarray

    rebuild = multiarray._reconstruct
    return [rebuild, (rebuild, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
            type(np.dtype(np.uint32))]


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` on the CPU: tensors, containers and numbers only
    (plus numpy's plain arrays, which version-1 files hold). A file that needs any other
    Python object is refused, never handed to the full unpickler: loading it could run code
    of the file's choosing. :class:`CheckpointError` when it fails."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (the file does not exist)")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, zipfile.BadZipFile,
            ValueError, AttributeError, ImportError, IndexError, KeyError, TypeError) as e:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise CheckpointError(
                f"cannot read checkpoint {path}: it pickles Python objects other than tensors "
                f"({', '.join(unsafe[:3])}), which mixpro never unpickles (that could run "
                "code); save the state dict alone (torch.save(model.state_dict(), path)) or "
                "a .safetensors file") from None
        why = type(e).__name__ if isinstance(e, pickle.UnpicklingError) else first_line(e)
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt or not a checkpoint "
                              f"({why})") from None


def _unsafe_globals(path: Path) -> list[str]:
    """The globals (classes, functions) a torch file pickles that weights-only loading does
    not allow; empty when there are none or the file cannot be read that far."""
    allowed = {f"{g.__module__}.{g.__name__}" if not isinstance(g, tuple) else g[1]
               for g in _numpy_globals()}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - corrupt files fail here in many ways; reported above
        return []
    return [g for g in found if g not in allowed]


def training_checkpoint(*, model: nn.Module, config: Mapping[str, Any], epoch: int,
                        metrics: list[dict], best_acc: float, optimizer, scheduler, scaler,
                        ema, mixer_params: list[torch.Tensor], alpha_last: list[float] | None,
                        position: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``last.pt`` dict (format above) of a run after ``epoch`` completed epochs; the RNG
    states are read now. ``position``: the mid-epoch progress (None at an epoch's end)."""
    return {
        "version": FORMAT_VERSION,
        "model": model.state_dict(),
        "config": dict(config),
        "epoch": epoch,
        "metrics": metrics,
        "best_acc": best_acc,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.module.state_dict() if ema is not None else None,
        "mixer": [t.detach().cpu() for t in mixer_params],
        "rng": rng_state(),
        "alpha_last": alpha_last,
        "position": None if position is None else dict(position),
    }


def weights_checkpoint(training: Mapping[str, Any]) -> dict[str, Any]:
    """The ``best.pt`` dict: the weights part (:data:`WEIGHTS_KEYS`) of a ``last.pt`` dict."""
    return {k: training[k] for k in WEIGHTS_KEYS}


def check_world(ckpt: Mapping[str, Any], world: int, batch_size: int,
                path: str | os.PathLike) -> None:
    """A resumed run must have the checkpoint's world size (its global batch)."""
    then = ckpt["config"].get("world_size", 1)
    if then != world:
        raise CheckpointError(
            f"checkpoint {path} was trained on {then} process(es) (global batch "
            f"{then * batch_size}); this run has {world} (global batch {world * batch_size}): "
            "resume with the same world size")


def check_matches(ckpt: Mapping[str, Any], recipe: Mapping[str, Any],
                  path: str | os.PathLike, keys: tuple[str, ...] = RESUME_KEYS) -> None:
    """The run must be the one the checkpoint was written by (``keys`` of the recipe)."""
    from .methods import METHODS, uses

    saved = ckpt["config"].get("recipe", {})
    method = recipe.get("method")
    for key in keys:
        if method in METHODS and key != "method" and not uses(method, key):
            continue  # a key the method does not read cannot make it another run
        then = saved.get(key, MISSING_MEANS.get(key))
        if then != recipe.get(key):
            raise CheckpointError(
                f"checkpoint {path} does not match this run: {key} is {then!r} in "
                f"the checkpoint and {recipe.get(key)!r} now"
            )


def _head_name(head: Any) -> str:
    if not head:
        return "no class-attention head"
    extra = ", ".join(f"{k}={v}" for k, v in head.items() if k != "mode")
    return f"the {head.get('mode')} head" + (f" ({extra})" if extra else "")


def check_classes(ckpt: Mapping[str, Any], classes: list[str], path: str | os.PathLike) -> None:
    """The data's classes (in label order) must be the checkpoint's ``config['classes']``:
    a renamed or re-ordered class folder would silently permute the labels of a resumed run.
    A checkpoint without a class list (older files) is not checked."""
    then = ckpt["config"].get("classes")
    if then is None or list(then) == list(classes):
        return
    if len(then) != len(classes):
        diff = f"{len(then)} classes in the checkpoint, {len(classes)} now"
    else:
        i = next(i for i, (a, b) in enumerate(zip(then, classes, strict=True)) if a != b)
        n = sum(a != b for a, b in zip(then, classes, strict=True))
        diff = (f"label {i} is {then[i]!r} in the checkpoint and {classes[i]!r} now"
                + (f" ({n} labels differ)" if n > 1 else ""))
    raise CheckpointError(f"checkpoint {path} does not match this run's data: {diff}; resume "
                          "with the classes it was trained on")


def check_cls_head(ckpt: Mapping[str, Any], head: Mapping[str, Any] | None,
                   path: str | os.PathLike) -> None:
    """The run's resolved class-attention head (``head``; None: none) must be the checkpoint's
    (``config['cls_head']``; missing means none, as in checkpoints from before heads)."""
    then = ckpt["config"].get("cls_head") or None
    if then != (dict(head) if head else None):
        raise CheckpointError(
            f"checkpoint {path} does not match this run: cls_head gives {_head_name(then)} in "
            f"the checkpoint and {_head_name(head)} now"
        )


def strip_prefixes(state_dict: Mapping[str, Any],
                   prefixes: tuple[str, ...] = PREFIXES) -> dict[str, Any]:
    """Keys without DDP's ``module.`` and ``torch.compile``'s ``_orig_mod.`` prefixes (in
    either order), by torch's ``consume_prefix_in_state_dict_if_present``."""
    out = dict(state_dict)
    for prefix in prefixes * len(prefixes):
        consume_prefix_in_state_dict_if_present(out, prefix)
    return out


def load_weights(model: nn.Module, state_dict: Mapping[str, Any], path: str | os.PathLike,
                 arch: str = "the model") -> None:
    """Load ``state_dict`` strictly; :class:`CheckpointError` naming the first mismatch."""
    sd = strip_prefixes(state_dict)
    _check_fit(model.state_dict(), sd, f"checkpoint {path}", arch)
    model.load_state_dict(sd, strict=True)


def _mismatches(own: Mapping[str, Any], sd: Mapping[str, Any]
                ) -> tuple[list[str], list[str], list[str]]:
    """Keys of ``own`` missing from ``sd``, keys of ``sd`` not in ``own``, and the keys of
    both whose shapes differ."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k, v in own.items()
              if k in sd and hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(v.shape)]
    return missing, unexpected, shapes


def _check_fit(own: Mapping[str, Any], sd: Mapping[str, Any], what: str, arch: str, *,
               ignore: frozenset[str] = frozenset(), shown: int = 1) -> None:
    """:class:`CheckpointError` when ``sd`` does not fit the state dict ``own`` (keys in
    ``ignore`` aside): the counts of missing, unexpected and mis-shaped tensors and the first
    ``shown`` of them."""
    missing, unexpected, shapes = ([k for k in keys if k not in ignore]
                                   for keys in _mismatches(own, sd))
    if not (missing or unexpected or shapes):
        return
    named = ([f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in shapes]
             + [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected])
    raise CheckpointError(
        f"{what} does not match model {arch}: {len(missing)} missing, {len(unexpected)} "
        f"unexpected, {len(shapes)} mismatched tensors (e.g. {', '.join(named[:shown])})")


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights (eval mode, CPU).

    Returns ``(model, config)``; ``config`` is the checkpoint's ``config`` dict (``mean``,
    ``std`` and ``classes`` optional). Raises :class:`CheckpointError`.
    """
    ckpt = read(path)
    config = ckpt["config"]
    try:
        model = build_model(config)
    except ModelError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    load_weights(model, ckpt["model"], path, str(config.get("model")))
    return model.eval(), config


# -- initial weights (fine-tuning) ---------------------------------------------------------


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights in ``path``, on the CPU, without DDP/compile prefixes: a ``mixpro train``
    checkpoint (its ``model``), a plain state dict ``.pth``/``.pt`` (also one nested under
    ``model`` or ``state_dict``, as timm's scripts write it, or ``teacher``, as DINO's) or a
    ``.safetensors`` file.

    Raises:
        CheckpointError: the file is missing, unreadable, or holds no mapping of names to
            tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(path, device="cpu")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {path}: corrupt or not a safetensors file "
                                  f"({first_line(e)})") from None
    else:
        obj = _torch_load(path)
    if isinstance(obj, Mapping):
        obj = next((obj[k] for k in ("model", "state_dict", "teacher")
                    if isinstance(obj.get(k), Mapping)), obj)
    if not (isinstance(obj, Mapping) and obj
            and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise CheckpointError(f"{path} holds no state dict (a mapping of names to tensors)")
    return strip_prefixes(obj)


def classifier_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of the classifier head(s) timm's ``model.get_classifier()`` returns
    (mixpro's class-attention models answer with their own head)."""
    get = getattr(model, "get_classifier", None)
    heads = get() if callable(get) else ()
    ids = {id(h) for h in (heads if isinstance(heads, tuple | list) else (heads,))}
    return {f"{name}.{k}" for name, module in model.named_modules() if id(module) in ids
            for k in module.state_dict()}


def _classes(state_dict: Mapping[str, Any], head: set[str]) -> int | None:
    """Rows of the head's weight in ``state_dict`` (its class count), None without one."""
    return next((int(state_dict[k].shape[0]) for k in sorted(head)
                 if k.endswith("weight") and k in state_dict), None)


def load_initial_weights(model: nn.Module, path: str | os.PathLike,
                         arch: str = "the model") -> str:
    """Initialise ``model`` for fine-tuning from the weights in ``path`` (any file
    :func:`read_state_dict` reads). The classifier head (:func:`classifier_keys`) keeps its
    fresh initialisation when the file's head is missing or shaped for another class count.

    Returns a one-line report. Raises :class:`CheckpointError` for the file's errors and for
    any other missing, unexpected or mis-shaped tensor (naming the first few).
    """
    sd = read_state_dict(path)
    own = model.state_dict()
    head = classifier_keys(model)
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module) and not any(k.startswith("backbone.") for k in sd):
        # a plain timm model's weights into a class-attention model (mixpro.heads): they go
        # into its backbone, without their classifier; the new head's tensors start fresh
        clf = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or ()
        drop = tuple(f"{c}." for c in ((clf,) if isinstance(clf, str) else clf))
        sd = {f"backbone.{k}": v for k, v in sd.items() if not (drop and k.startswith(drop))}
        head = head | {k for k in own if not k.startswith("backbone.")}
    _check_fit(own, sd, f"initial_checkpoint {path}", arch, ignore=frozenset(head), shown=3)
    missing, _, shapes = _mismatches(own, sd)
    fresh = set(missing) | set(shapes)  # head tensors only, after the check
    model.load_state_dict({k: v for k, v in sd.items() if k not in fresh}, strict=False)
    report = f"initial_checkpoint: loaded {len(own) - len(fresh)}/{len(own)} tensors from {path}"
    if fresh:
        then = _classes(sd, head)
        report += (f"; head re-initialised for {_classes(own, head)} classes (checkpoint has "
                   f"{then if then is not None else 'no head'})")
    return report


def load_states(ckpt: Mapping[str, Any], path: str | os.PathLike, *, model: nn.Module,
                optimizer, scheduler, scaler, ema, mixer_params: list[nn.Parameter]) -> None:
    """Restore every training state of ``last.pt``; :class:`CheckpointError` on mismatches."""
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
                              f"{first_line(e)}") from None
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])


__all__ = [
    "FORMAT_VERSION",
    "RESUME_KEYS",
    "CheckpointError",
    "atomic_save",
    "check_classes",
    "check_cls_head",
    "check_matches",
    "check_world",
    "classifier_keys",
    "load_initial_weights",
    "load_model",
    "load_states",
    "load_weights",
    "read",
    "read_state_dict",
    "rng_state",
    "set_rng_state",
    "strip_prefixes",
    "training_checkpoint",
    "weights_checkpoint",
]


# -- helper models (Attentive-CutMix's extractor, TokenMix's teacher) ----------------------


def load_helper(spec: str, role: str, *, num_classes: int | None = None,
                in_chans: int | None = None) -> tuple[nn.Module, str]:
    """The frozen helper model a recipe key names, in eval mode on the CPU, and a one-line
    report of where it came from.

    ``spec`` is one of: a ``mixpro train`` checkpoint (``last.pt``/``best.pt``, which
    describes its own model); ``NAME@PATH``, a timm model name and a state dict / safetensors
    file of its weights (its class count is read from the file's classifier); a timm model
    name, with timm's pretrained weights from the local cache (never downloaded).
    ``num_classes``: the classes the helper must predict (a teacher), checked; ``in_chans``:
    the images' channels, for ``NAME@PATH`` and names.

    Raises:
        CheckpointError: a missing or unreadable file, weights that do not fit, an unknown
            name or uncached weights (one line naming ``role``).
    """
    from .models import create_model

    if not isinstance(spec, str) or not spec.strip():
        raise CheckpointError(f"{role} must be a checkpoint path, NAME@PATH or a timm model "
                              f"name, got {spec!r}")
    name, sep, file = spec.partition("@")
    try:
        if not sep and Path(spec).exists():
            try:
                model, config = load_model(spec)
            except CheckpointError as e:
                raise CheckpointError(f"{role} {spec}: {e} (a state dict or safetensors file "
                                      "is given as NAME@PATH: the timm model, then the file)"
                                      ) from None
            source = f"{config.get('model')} from the mixpro checkpoint {spec}"
        elif sep:
            sd = read_state_dict(file)
            probe, _ = create_model(name, num_classes=1, in_chans=in_chans)
            classes = _classes(sd, classifier_keys(probe))
            model, _ = create_model(name, num_classes=classes or 0, in_chans=in_chans)
            load_weights(model, sd, file, name)
            source = f"{name} with the weights of {file}"
        else:
            if Path(name).suffix in (".pt", ".pth", ".safetensors", ".bin") or "/" in name:
                raise CheckpointError(f"{role}: no such file {spec}")
            model, _ = create_model(name, num_classes=num_classes or 1000, in_chans=in_chans,
                                    pretrained=True)
            source = f"timm's pretrained {name} (local cache)"
    except ModelError as e:
        raise CheckpointError(f"{role}: {e}") from None
    except CheckpointError as e:
        text = str(e)
        raise CheckpointError(text if text.startswith(role) else f"{role}: {text}") from None
    if num_classes is not None:
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        got = getattr(head, "out_features", None)
        if got is not None and got != num_classes:
            raise CheckpointError(f"{role} {spec} predicts {got} classes, the run has "
                                  f"{num_classes}")
    return model.eval().requires_grad_(False), f"{role}: {source}"
