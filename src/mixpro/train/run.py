"""The ``mixpro train`` entry: build everything, check it, then train, checkpoint and plot.

Owns the order of a run. :func:`prepare` does every check that can fail on user input
(recipe, data, model name, class-attention head and cls-token support, patch/mask/token
tiling, output folder, checkpoint to resume) and raises a one-line
:class:`~.recipe.TrainError` before a single step runs; :func:`train` then runs the epochs.
Only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import yaml
from timm.optim import create_optimizer_v2, get_optimizer_class
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader, DistributedSampler

import mixpro
from mixpro import checkpoint as ckpt_io
from mixpro import files, methods, models
from mixpro._checks import ArgumentError
from mixpro.attention import unwrap_model
from mixpro.errors import first_line
from mixpro.methods import HELPER_KEYS, METHODS, build_mixer

from . import distributed
from .engine import (
    EpochState,
    EvaluationStopped,
    StepContext,
    TrainingDiverged,
    evaluate,
    train_one_epoch,
)
from .loaders import EpochBatches, auto_threads, auto_workers, datasets, loaders
from .output import ARTEFACTS, FINAL, check_output, output_dir
from .recipe import ConfigError, Recipe, TrainError
from .signals import Stopped, StopSignals

# the recipe's names of the core's arguments (where they differ)
_RECIPE_NAMES = {"image_size": "img_size", "mode": "mask_mode", "top_k": "attentive_top_k",
                 "stage": "attentive_stage", "blocks": "puzzlemix_blocks",
                 "clean_lam": "puzzlemix_clean_lam", "workers": "puzzlemix_workers",
                 "lam": "tokenmix_lam", "objective": "tokenmix_loss"}


@dataclass
class Prepared:
    """Everything a run needs, built and checked (see :func:`prepare`)."""

    cfg: Recipe
    info: distributed.DistInfo
    out: Path
    model: torch.nn.Module
    ctx: StepContext
    train_loader: DataLoader
    test_loader: DataLoader
    train_sampler: DistributedSampler
    train_data: Any
    mixer_gen: torch.Generator
    model_config: dict
    batches: EpochBatches | None = None
    start_epoch: int = 0
    position: dict | None = None  # a mid-epoch checkpoint's step, statistics and RNG states
    position_rng: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    best_acc: float = -1.0
    alpha_last: list[float] | None = None
    writer: Any = None
    owns_group: bool = False
    lock: files.FolderLock | None = None  # rank 0: the output folder's, held to the end
    monitor: Any = None  # rank 0: the AttentionMonitor (attention quality at every evaluation)


@dataclass
class Result:
    """What :func:`train` returns: the summary (as ``final.json``), the unwrapped model,
    the per-epoch metrics and the output folder."""

    summary: dict
    model: torch.nn.Module
    metrics: list[dict]
    out: Path


def _model(cfg: Recipe, num_classes: int, pretrained: bool = False
           ) -> tuple[torch.nn.Module, dict]:
    try:
        return models.create_model(
            cfg.model, num_classes=num_classes, img_size=cfg.img_size,
            in_chans=cfg.in_channels, patch_size=cfg.patch_size, model_kwargs=cfg.model_kwargs,
            pretrained=pretrained, drop_path_rate=cfg.drop_path, drop_rate=cfg.drop_rate)
    except models.ModelError as e:
        hint = ""
        if cfg.model_kwargs and e.keywords_refused:
            hint = f" (model_kwargs: set the keywords of {cfg.model}, e.g. --model-kwargs '{{}}')"
        raise ConfigError(f"{e}{hint}") from None


def _mixer(cfg: Recipe, num_classes: int | None, patch: int | None,
           generator: torch.Generator, token_size: int | None = None,
           stats: tuple[list, list] | None = None, model: torch.nn.Module | None = None):
    mean, std = stats or (None, None)
    needs = METHODS[cfg.method].helpers
    helped = model if "model" in needs else None
    frozen = {role: _helper(cfg, role, num_classes) for role in HELPER_KEYS
              if role in needs}
    try:
        return build_mixer(cfg.method, _mix_options(cfg), num_classes=num_classes or 2,
                           patch_size=patch or 1, generator=generator, token_size=token_size,
                           mean=mean, std=std, model=helped, **frozen)
    except ImportError as e:  # an optional extra (e.g. mixpro[puzzlemix]) is not installed
        raise ConfigError(f"method {cfg.method}: {first_line(e)}") from None
    except ArgumentError as e:
        name = _RECIPE_NAMES.get(e.argument, e.argument)
        raise ConfigError(f"method {cfg.method}: {e.renamed(name)}") from None


def _unmixed(cfg: Recipe, num_classes: int | None, generator: torch.Generator):
    """The registry's ``none`` mixer with the recipe's label keys: the epochs after the
    ``mix_until`` share of the run train with it."""
    return build_mixer("none", _mix_options(cfg), num_classes=num_classes or 2, patch_size=1,
                       generator=generator)


def _helper(cfg: Recipe, role: str, num_classes: int | None) -> torch.nn.Module:
    """The frozen helper model (``extractor`` / ``teacher``) the recipe key ``role`` names
    (a teacher's class count checked against ``num_classes``; None: not checked)."""
    spec = getattr(cfg, role)
    if not spec:
        article = "an" if role == "extractor" else "a"
        raise ConfigError(f"method {cfg.method} needs {article} {role}: set {role} to a mixpro "
                          "checkpoint, NAME@PATH (a timm model and its weights file) or a timm "
                          "model name whose weights are in the local cache")
    model, report = ckpt_io.load_helper(spec, role, in_chans=cfg.in_channels,
                                        num_classes=num_classes if role == "teacher" else None)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(report, flush=True)
    return model


def _cls_head(cfg: Recipe, model: torch.nn.Module, needs_attention: bool
              ) -> tuple[torch.nn.Module, dict | None]:
    """The model with the class-attention head the recipe's ``cls_head`` gives it, and the
    head's description (None: no head)."""
    try:
        head = models.resolve_cls_head(model, cfg.cls_head, needs_attention=needs_attention)
        return models.add_cls_head(model, head)
    except models.ModelError as e:
        raise ConfigError(str(e)) from None


def _probe(cfg: Recipe, model: torch.nn.Module) -> mixpro.ClsAttention:
    try:
        return mixpro.ClsAttention(model, block=cfg.attention_block)
    except mixpro.NoClsAttentionError as e:
        if cfg.attention_block != -1:
            raise ConfigError(f"attention_block {cfg.attention_block}: {e}") from None
        if cfg.cls_head != "none":
            raise ConfigError(f"method {cfg.method} needs cls-token attention: {e}") from None
        why = e.reason
        raise ConfigError(
            f"method {cfg.method} needs cls-token attention and cls_head is none: {why}; set "
            "cls_head auto (or ca) to add a class-attention head, or use an area-label "
            "method (maskmix, cutmix)") from None
    except ValueError as e:  # a block index the model does not have
        raise ConfigError(f"attention_block: {first_line(e)}") from None


def _check_geometry(cfg: Recipe, patch: int | None, model: torch.nn.Module | None = None,
                    needs_attention: bool = False) -> None:
    needs_patch = METHODS[cfg.method].patch
    if needs_patch and patch is None:
        raise ConfigError(f"method {cfg.method} needs a patch size and {cfg.model} has no patch "
                          "embedding: set patch_size (the pixel unit of its mask cells or "
                          "boxes, e.g. 4)")
    if patch is not None and cfg.img_size % patch:
        raise ConfigError(f"img_size {cfg.img_size} is not a multiple of patch_size {patch}")
    uses_cells = needs_patch and "mask_scale" in METHODS[cfg.method].keys
    stride = getattr(model, "token_stride", None)
    if stride is not None:  # a class-attention head: its tokens are the last stage's
        _check_head_geometry(cfg, model, patch, stride, needs_attention, uses_cells)
        return
    if uses_cells and cfg.img_size % (patch * cfg.mask_scale):
        grid = cfg.img_size // patch
        ok = [s for s in range(1, grid + 1) if grid % s == 0]
        raise ConfigError(
            f"mask_scale {cfg.mask_scale} x patch_size {patch} = {patch * cfg.mask_scale} px "
            f"cells do not tile img_size {cfg.img_size}; mask_scale must divide the "
            f"{grid}x{grid} token grid: one of {ok}")


def _check_head_geometry(cfg: Recipe, model: torch.nn.Module, patch: int | None, stride: int,
                         needs_attention: bool, uses_cells: bool) -> None:
    """A class-attention head reads the last stage's ``stride``-px tokens: attention labels
    need those tokens to tile the image in a grid of at least 2x2, and MaskMix cells of
    ``mask_scale`` x ``patch_size`` px must be whole tokens."""
    what = f"{cfg.model} with cls_head {model.mode} ({stride}-px attention tokens, its last stage)"
    if needs_attention:
        if cfg.img_size % stride:
            raise ConfigError(f"img_size {cfg.img_size} is not a multiple of the {stride}-px "
                              f"attention tokens of {what}: use a multiple of {stride}")
        grid = model.token_grid(cfg.img_size)
        if grid[0] < 2 or grid[1] < 2:
            raise ConfigError(
                f"img_size {cfg.img_size} gives {what} a {grid[0]}x{grid[1]} attention grid: "
                f"method {cfg.method}'s attention labels need at least 2x2 tokens; use img_size "
                f">= {2 * stride}")
    if uses_cells:
        try:
            mixpro.check_mask_geometry(model, patch, cfg.mask_scale, cfg.img_size)
        except ArgumentError as e:
            raise ConfigError(f"{what}: {e.renamed(_RECIPE_NAMES.get(e.argument, e.argument))}"
                              ) from None


def _amp(cfg: Recipe, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler)."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None, False
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return torch.float16, True
    return torch.bfloat16, False


def seed_epoch(cfg: Recipe, epoch: int, rank: int, mixer_gen: torch.Generator,
               data: Any) -> None:
    """Re-seed every RNG from (seed, epoch, rank): a resumed run repeats the same draws."""
    s = (cfg.seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31 - 1)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)
    mixer_gen.manual_seed(s + 1)
    gen = getattr(data, "generator", None)
    if isinstance(gen, torch.Generator):
        gen.manual_seed(s + 2)


def _build(cfg: Recipe, num_classes: int | None, mixer_gen: torch.Generator,
           pretrained: bool = False,
           stats: tuple[list, list] | None = None
           ) -> tuple[torch.nn.Module, dict, Any, dict | None]:
    """The model (with its class-attention head, if any) and the mixer, built once, their
    geometry checked: ``(model, model_kwargs, mixer, head)``. The registry says whether the
    method relabels with attention (so which head); the head gives the attention tokens' size
    that token-aligned methods use; ``stats``: the images' normalisation (mean, std), for
    methods that look at the pixels; ``num_classes`` None: unknown (:func:`check`: 2 are
    built, a teacher's class count is not checked). Raises :class:`ConfigError`."""
    model, model_kwargs = _model(cfg, num_classes or 2, pretrained=pretrained)
    patch = models.patch_size(model) or cfg.patch_size
    needs_attention = methods.needs_attention(cfg.method, _mix_options(cfg))
    model, head = _cls_head(cfg, model, needs_attention)
    if cfg.fused_attn is not None:  # before any probe: a probe restores what it finds
        models.set_fused_attention(model, cfg.fused_attn)
    mixer = _mixer(cfg, num_classes, patch, mixer_gen,
                   token_size=getattr(model, "token_stride", None), stats=stats, model=model)
    _check_geometry(cfg, patch, model, mixer.needs_attention)
    return model, model_kwargs, mixer, head


def _mix_options(cfg: Recipe) -> methods.MixOptions:
    try:
        return cfg.mix_options()
    except ArgumentError as e:
        raise ConfigError(str(e)) from None


def _optimizer(cfg: Recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    """timm's optimiser of the recipe; with ``fused_opt``, torch's fused step where the
    optimiser class has one and the parameters' device supports it (else torch's default)."""
    def build(**extra: bool) -> torch.optim.Optimizer:
        return create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr,
                                   weight_decay=cfg.weight_decay,
                                   layer_decay=cfg.layer_decay, **extra)

    if cfg.fused_opt and _has_fused_step(cfg.opt):
        try:
            return build(fused=True)
        except RuntimeError:  # a device (or dtype) without torch's fused kernel
            pass
    return build()


def _has_fused_step(opt: str) -> bool:
    """Whether timm's optimiser ``opt`` is a torch class with a ``fused`` keyword."""
    try:
        cls = get_optimizer_class(opt)
    except (ValueError, KeyError, AssertionError):
        return False  # unknown: create_optimizer_v2 reports it
    return "fused" in inspect.signature(cls).parameters


def check(cfg: Recipe) -> None:
    """The checks of :func:`prepare` that need no data, output folder or weights: model,
    mixer, class-attention head, cls-token attention, patch/mask/token geometry (what a sweep
    checks for every run before the first trains). Raises :class:`ConfigError`."""
    model, _, mixer, _ = _build(cfg, None, torch.Generator())  # classes unknown: None
    if mixer.needs_attention:
        _probe(cfg, model).remove()


def prepare(cfg: Recipe, resume: bool | str = False, overwrite: bool = False) -> Prepared:
    """Take the output folder (rank 0: an exclusive :class:`~mixpro.files.FolderLock`, held
    until :func:`train` returns; a second writer is refused in one line), then build data,
    model, mixer, optimiser, scheduler, EMA; check everything; load the checkpoint when
    resuming. Raises :class:`TrainError` (or :class:`~mixpro.files.FolderLocked`) on any user
    error, and then frees the folder."""
    info = distributed.setup(cfg.device)
    torch.set_num_threads(cfg.threads or auto_threads(info.world, auto_workers(cfg, info.world)))
    if info.device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {cfg.device} requested but CUDA is not available")
    out = output_dir(cfg)
    resume_path = (out / "last.pt" if resume is True else Path(resume)) if resume else None
    check_output(out, resume_path, overwrite)  # a file, unwritable: before creating anything
    lock = files.FolderLock(out).acquire() if info.is_main else None
    try:
        return _prepare(cfg, info, out, resume_path, overwrite, lock)
    except BaseException:
        if lock is not None:
            lock.release(remove_folder=True)
        raise


def _prepare(cfg: Recipe, info: distributed.DistInfo, out: Path, resume_path: Path | None,
             overwrite: bool, lock: files.FolderLock | None) -> Prepared:
    owns = info.distributed
    stale = check_output(out, resume_path, overwrite)  # again, now that no one else writes
    if lock is not None:
        files.clean_stale_temps(out, ARTEFACTS)
    if cfg.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("tensorboard: true needs the tensorboard package "
                              "(pip install tensorboard)") from None

    data = datasets(cfg)
    train_data, test_data, classes = data.train, data.test, data.classes
    num_classes = len(classes)
    torch.manual_seed(cfg.seed)
    fresh = resume_path is None  # initial weights only for a fresh run: --resume has priority
    if cfg.fine_tune and fresh and not (cfg.pretrained or cfg.initial_checkpoint):
        raise ConfigError(f"recipe {cfg.name} fine-tunes (fine_tune: true) but no initial weights "
                          "were given: add --initial-checkpoint PATH or --pretrained")
    mixer_gen = torch.Generator().manual_seed(cfg.seed)
    model, model_kwargs, mixer, head = _build(cfg, num_classes, mixer_gen,
                                              pretrained=cfg.pretrained and fresh,
                                              stats=(data.mean, data.std))
    if cfg.pretrained and fresh and info.is_main:
        print(models.pretrained_report(model, num_classes), flush=True)
    if cfg.initial_checkpoint and fresh:
        report = ckpt_io.load_initial_weights(model, cfg.initial_checkpoint, cfg.model)
        if info.is_main:
            print(report, flush=True)
    model.to(info.device)

    train_loader, test_loader, sampler, batches = loaders(cfg, train_data, test_data,
                                                           data.batched, info)
    steps = batches.stop
    if len(test_data) == 0:
        raise ConfigError(f"the test split of {cfg.data} ({cfg.val_split}) holds no images")
    if steps == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} x {info.world} ranks is larger than "
                          f"the {len(train_data)} training images")
    try:
        optimizer = _optimizer(cfg, model)
        # layer decay: the unscaled (head) group first, so that the logged lr is the peak's
        optimizer.param_groups.sort(key=lambda g: -g.get("lr_scale", 1.0))
        if mixer.parameters():
            optimizer.add_param_group({"params": mixer.parameters(), "weight_decay": 0.0})
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
            warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=not cfg.sched_per_step,
            updates_per_epoch=steps)
    except (ValueError, AssertionError, KeyError) as e:
        raise ConfigError(f"optimizer/scheduler: {first_line(e)}") from None
    if scheduler is None:
        raise ConfigError(f"unknown scheduler {cfg.sched!r}")
    amp_dtype, use_scaler = _amp(cfg, info.device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    ema = timm.utils.ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
    # the probe after the EMA copy: the copy (evaluation only) carries no attention hooks
    probe = _probe(cfg, model) if mixer.needs_attention else None

    recipe = cfg.to_dict()
    model_config = {"model": cfg.model, "model_kwargs": model_kwargs, "num_classes": num_classes,
                    "cls_head": head, "world_size": info.world,
                    "classes": classes, "mean": data.mean, "std": data.std, "recipe": recipe,
                    "multi_label": data.multi_label}
    prep = Prepared(cfg=cfg, info=info, out=out, model=model, ctx=None, train_loader=train_loader,
                    test_loader=test_loader, train_sampler=sampler, train_data=train_data,
                    mixer_gen=mixer_gen, model_config=model_config, owns_group=owns,
                    batches=batches, lock=lock)
    if resume_path is not None:
        ck = ckpt_io.read(resume_path, training=True)
        ckpt_io.check_matches(ck, recipe, resume_path)
        ckpt_io.check_cls_head(ck, head, resume_path)
        ckpt_io.check_classes(ck, classes, resume_path)
        ckpt_io.check_world(ck, info.world, cfg.batch_size, resume_path)
        ckpt_io.load_states(ck, resume_path, model=model, optimizer=optimizer,
                            scheduler=scheduler, scaler=scaler, ema=ema,
                            mixer_params=mixer.parameters())
        prep.start_epoch = int(ck["epoch"])
        prep.metrics = list(ck["metrics"])
        prep.best_acc = float(ck.get("best_acc", -1.0))
        prep.alpha_last = ck.get("alpha_last")
        prep.position = ck.get("position")
        prep.position_rng = ck.get("rng")
    if info.distributed:
        ddp_ids = [info.device.index] if info.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ddp_ids)
    if info.is_main:
        prep.monitor = _monitor(cfg, data, test_data, unwrap_model(model), mixer, probe,
                                num_classes)
    prep.ctx = StepContext(
        model=model, probe=probe, mixer=mixer, optimizer=optimizer, scheduler=scheduler,
        scaler=scaler, ema=ema, amp_dtype=amp_dtype, clip_grad=cfg.clip_grad, dist=info,
        epochs=cfg.epochs, steps_per_epoch=steps, sched_per_step=cfg.sched_per_step,
        max_steps=cfg.max_steps, progress=cfg.progress,
        unmixed=_unmixed(cfg, num_classes, mixer_gen) if cfg.mixed_epochs < cfg.epochs else None,
        mixed_epochs=cfg.mixed_epochs)
    if info.is_main:
        for path in stale:  # --overwrite: the old run goes only now that all checks passed
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        out.mkdir(parents=True, exist_ok=True)
        files.atomic_write_text(yaml.safe_dump(recipe, sort_keys=False), out / "config.yaml")
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            prep.writer = SummaryWriter(str(out / "tb"))
    return prep


def _monitor(cfg: Recipe, data, test_data, model: torch.nn.Module, mixer, probe,
             num_classes: int):
    """The :class:`~.monitor.AttentionMonitor` of this run, or None: off
    (``attention_monitor: 0``), data whose object is not known, or a model whose cls attention
    the probe cannot read."""
    if cfg.attention_monitor == 0 or not data.zero_background or data.multi_label:
        return None
    from .monitor import AttentionMonitor

    try:
        if probe is None:
            mixpro.ClsAttention(model).remove()
    except (TypeError, ValueError, RuntimeError):
        return None  # no cls attention to monitor (e.g. a CNN)
    n = min(cfg.attention_monitor, len(test_data))
    if data.batched:
        images, labels = test_data[list(range(n))]
    else:
        pairs = [test_data[i] for i in range(n)]
        images = torch.stack([x for x, _ in pairs])
        labels = torch.tensor([int(y) for _, y in pairs])
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    copy = _monitor_mixer(cfg, mixer, gen, num_classes, model, (data.mean, data.std))
    return AttentionMonitor(images, labels, data.mean, data.std, mixer=copy, generator=gen,
                            seed=cfg.seed + 7, num_classes=num_classes,
                            smoothing=cfg.label_smoothing, probe=probe)


def _monitor_mixer(cfg: Recipe, mixer, generator: torch.Generator, num_classes: int,
                   model: torch.nn.Module, stats: tuple[list, list]):
    """The run's method built again from the registry, drawing with ``generator`` (the run's
    mixer and its draws stay untouched), with the run's frozen helpers (Puzzle-Mix: the model;
    GridMix: no token head); MaskMix with the recipe's mask options for a run that does not
    mix (``none``) or mixes by a random choice of mixers (``paper``)."""
    patch = models.patch_size(model) or cfg.patch_size or 1
    method, options = cfg.method, _mix_options(cfg)
    if isinstance(mixer, (mixpro.NoMix, mixpro.RandomChoice)):
        method, options = "maskmix", dataclasses.replace(options, mask_strategy="grid")
    needs = METHODS[method].helpers
    helpers = {role: getattr(mixer, role) for role in HELPER_KEYS if role in needs}
    if method == "puzzlemix":
        helpers["model"] = model
    return build_mixer(method, options, num_classes=num_classes, patch_size=patch,
                       generator=generator, token_size=getattr(model, "token_stride", None),
                       mean=stats[0], std=stats[1], **helpers)


def _save(p: Prepared, epoch: int, state: EpochState | None = None) -> None:
    """Rank 0: ``last.pt`` (:func:`mixpro.checkpoint.training_checkpoint`). At the end of an
    epoch also ``best.pt`` (weights) and ``metrics.jsonl``; in the middle of one (``state``:
    the epoch's progress) ``last.pt`` also holds its position (step, running statistics,
    generator states), so that a resumed run continues bit for bit."""
    ctx = p.ctx
    position = None
    best = False
    if state is None:  # best first, so that last.pt records the best accuracy it knows of
        acc = p.metrics[-1]["test_acc"]
        best = acc is not None and acc >= p.best_acc
        p.best_acc = acc if best else p.best_acc
    else:
        gen = getattr(p.train_data, "generator", None)
        position = {"step": state.step, "stats": dataclasses.asdict(state),
                    "mixer_gen": p.mixer_gen.get_state(),
                    "data_gen": gen.get_state() if isinstance(gen, torch.Generator) else None}
    ckpt = ckpt_io.training_checkpoint(
        model=unwrap_model(ctx.model), config=p.model_config, epoch=epoch, metrics=p.metrics,
        best_acc=p.best_acc, optimizer=ctx.optimizer, scheduler=ctx.scheduler,
        scaler=ctx.scaler, ema=ctx.ema, mixer_params=ctx.mixer.parameters(),
        alpha_last=p.alpha_last, position=position)
    ckpt_io.atomic_save(ckpt, p.out / "last.pt")
    if state is not None:
        return
    if best:
        ckpt_io.atomic_save(ckpt_io.weights_checkpoint(ckpt), p.out / "best.pt")
    files.atomic_write_text("".join(json.dumps(m) + "\n" for m in p.metrics),
                            p.out / "metrics.jsonl")


def _restore_position(p: Prepared) -> EpochState:
    """After :func:`seed_epoch`: put every RNG where the mid-epoch checkpoint left it and
    skip the batches already trained. Returns the epoch's progress."""
    pos = p.position
    ckpt_io.set_rng_state(p.position_rng)
    p.mixer_gen.set_state(pos["mixer_gen"])
    gen = getattr(p.train_data, "generator", None)
    if pos.get("data_gen") is not None and isinstance(gen, torch.Generator):
        gen.set_state(pos["data_gen"])
    p.batches.start = int(pos["step"])
    return EpochState(**pos["stats"])


def _finish(p: Prepared, wall: float) -> dict:
    m = p.metrics
    summary = {
        "name": p.cfg.name, "method": p.cfg.method, "seed": p.cfg.seed,
        "epochs": len(m), "test_acc": m[-1]["test_acc"] if m else None,
        "best_acc": max((r["test_acc"] for r in m if r["test_acc"] is not None),
                        default=None),
        "test_acc_ema": m[-1].get("test_acc_ema") if m else None,
        "img_per_s": float(np.mean([r["img_per_s"] for r in m])) if m else None,
        "train_time_s": float(sum(r["epoch_time"] for r in m)),
        "wall_s_this_process": wall, "output": str(p.out),
    }
    if p.info.is_main:
        from mixpro.plots import training as plots

        plots.train_curves(m, p.out / "curves.png", title=p.cfg.run_name)
        if any(r.get("alpha_mean") is not None for r in m):
            plots.alpha_per_epoch(m, p.out / "alpha_epoch.png", title=p.cfg.run_name)
        if any(r.get("attn_object_share") is not None for r in m):
            plots.attention_monitor(m, p.out / "attention.png", title=p.cfg.run_name)
        if p.alpha_last:
            plots.alpha_histogram(p.alpha_last, p.out / "alpha_hist.png",
                                    title=f"{p.cfg.run_name}: α of the last batch")
        files.atomic_write_text(json.dumps(summary, indent=2), p.out / FINAL)
    return summary


def train(cfg: Recipe, resume: bool | str = False, overwrite: bool = False) -> Result:
    """Run (or continue) the training ``cfg`` describes; see :func:`prepare` for the checks.

    ``resume``: True (``<output>/last.pt``) or a checkpoint path; ``overwrite``: replace the
    files of a run already in the output folder. SIGTERM / SIGINT finish the current step,
    save a step-exact ``last.pt`` and raise :class:`Stopped`; ``checkpoint_every_steps`` saves
    one every N steps."""
    t_start = time.perf_counter()
    p = prepare(cfg, resume, overwrite)
    try:
        with StopSignals() as signals:
            return _epochs(p, signals, t_start)
    finally:
        if p.lock is not None:
            p.lock.release()
        if p.owns_group:
            distributed.cleanup()


def _epochs(p: Prepared, signals: StopSignals, t_start: float) -> Result:
    cfg, ctx, info = p.cfg, p.ctx, p.info
    if p.start_epoch > 0 or p.position:
        if info.is_main:
            where = f", step {p.position['step']}" if p.position else ""
            print(f"resuming {p.out} after epoch {p.start_epoch}/{cfg.epochs}{where}",
                  file=sys.stderr)
    every = cfg.checkpoint_every_steps

    def stop_now() -> bool:
        return distributed.any_rank(bool(signals.signum), info)

    def save_and_stop(epoch: int, st: EpochState) -> Stopped:
        if info.is_main:
            _save(p, epoch, st)
        distributed.barrier(info)
        return Stopped(signals.signum or signal.SIGTERM, p.out, epoch, st.step)

    for epoch in range(p.start_epoch, cfg.epochs):
        seed_epoch(cfg, epoch, info.rank, p.mixer_gen, p.train_data)
        p.train_sampler.set_epoch(epoch)
        state = None
        if p.position is not None:
            p.batches.start = int(p.position["step"])
        # the iterator before any RNG is restored: iter(DataLoader) draws its base seed from
        # the global RNG, at the same point of the stream as in an uninterrupted epoch
        batches = iter(p.train_loader)
        if p.position is not None:
            state = _restore_position(p)
            p.position = None

        def after_step(st: EpochState, epoch: int = epoch) -> bool:
            if stop_now():  # also at the epoch's last step: its end was not saved yet
                raise save_and_stop(epoch, st)
            due = every is not None and (epoch * ctx.steps_per_epoch + st.step) % every == 0
            if due and st.step < ctx.steps_per_epoch:
                if info.is_main:
                    _save(p, epoch, st)
                distributed.barrier(info)
            return False

        try:
            stats = train_one_epoch(ctx, batches, epoch, state, after_step)
        except ArgumentError as e:  # the mixer refused this data (e.g. its extractor's map)
            name = _RECIPE_NAMES.get(e.argument, e.argument)
            raise ConfigError(f"method {cfg.method}: {e.renamed(name)}") from None
        except TrainingDiverged as e:
            raise TrainError(f"training diverged ({e}); last good checkpoint kept "
                             f"in {p.out}") from None
        finally:
            p.batches.start = 0
        st = stats["state"]
        row = {"epoch": epoch + 1, "train_loss": stats["train_loss"],
               "test_acc": None, "test_loss": None,
               "alpha_mean": stats["alpha_mean"], "lr": stats["lr"],
               "img_per_s": stats["img_per_s"], "epoch_time": st.elapsed,
               "steps": stats["steps"]}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            multi = bool(p.model_config.get("multi_label"))
            try:  # a signal stops the evaluation: the trained epoch is saved, evaluated later
                test = evaluate(ctx.model, p.test_loader, info, ctx.amp_dtype,
                                multi_label=multi, stop=stop_now)
                ema = None if ctx.ema is None else evaluate(
                    ctx.ema.module, p.test_loader, info, multi_label=multi, stop=stop_now)
            except EvaluationStopped:
                raise save_and_stop(epoch, st) from None
            row.update(test_acc=test["acc"], test_loss=test["loss"])
            if p.monitor is not None:
                row.update(p.monitor(unwrap_model(ctx.model)))
            if multi:
                row["test_map"] = test["map"]
            if ema is not None:
                row["test_acc_ema"] = ema["acc"]
        if stats["alpha_last"] is not None:
            p.alpha_last = stats["alpha_last"]
        p.metrics.append(row)
        if info.is_main:
            _save(p, epoch + 1)
            if p.writer is not None:
                for k, v in row.items():
                    if isinstance(v, float):  # skipped evaluations are None
                        p.writer.add_scalar(k, v, epoch + 1)
            alpha = f", mean α {row['alpha_mean']:.3f}" if row["alpha_mean"] is not None \
                else ""
            acc = f"test acc {row['test_acc']:.2f}%, " if row["test_acc"] is not None else ""
            if row.get("test_map") is not None:
                acc = f"test top-1 precision {row['test_acc']:.2f}%, mAP {row['test_map']:.2f}%, "
            print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, "
                  f"{acc}{row['img_per_s']:.0f} img/s{alpha}", file=sys.stderr)
        distributed.barrier(info)
    summary = _finish(p, time.perf_counter() - t_start)
    if p.writer is not None:
        p.writer.close()
    return Result(summary, unwrap_model(ctx.model), p.metrics, p.out)
