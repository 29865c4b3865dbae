"""``mixpro eval``: robustness evaluation of one or more checkpoints.

Owns the evaluation's options (:class:`EvalOptions`), the checks that run before any work
(:func:`prepare`, one-line :class:`EvalError`), the evaluation of one checkpoint (clean
top-1/top-5, RMS calibration error, AURRA, OOD AUPRC/AUROC, PatchDrop occlusion) and
:func:`evaluate_checkpoints`, the Python entry point that writes ``eval.json`` and the
occlusion PNG. Checkpoints come from :mod:`mixpro.checkpoint`, data from
:mod:`mixpro.data.factory`, the table from :mod:`.report`, the plot from :mod:`mixpro.plots`.

Default OOD set for Fashion-MNIST: typeset letters (:mod:`mixpro.data.glyphs`), or the
held-out classes of a checkpoint trained with ``holdout_classes``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, Subset

from mixpro import ClsAttention, NoClsAttentionError, models, options
from mixpro.checkpoint import (
    PREFIXES,
    CheckpointError,
    load_model,
    load_weights,
    read_state_dict,
)
from mixpro.data import DatasetError, folder
from mixpro.data.factory import (
    EvalData,
    Normalize,
    checkpoint_data,
    checkpoint_stats,
    eval_data,
    holdout_of,
    is_fashion_mnist,
    ood_data,
)
from mixpro.data.loading import DatasetLoader
from mixpro.errors import UserError
from mixpro.files import atomic_write_text
from mixpro.options import SEED_MAX, option

from . import attention_quality, metrics
from .occlusion import DROP_MODES, ClsSaliency, model_grid, occlusion_sweep
from .report import format_table

__all__ = ["DEFAULT_EVALS", "EVALS", "INTERPOLATIONS", "EvalError", "EvalOptions", "check_device",
           "evaluate_checkpoints", "format_table", "prepare"]

EVALS = ("clean", "ood", "occlusion", "attention")
DEFAULT_EVALS = ("clean", "ood", "occlusion")  # attention needs data with known object masks
# the evaluation's resize: timm's interpolations less 'random' (a training augmentation)
INTERPOLATIONS = tuple(i for i in folder.INTERPOLATIONS if i != "random")


class EvalError(UserError):
    """A user error of ``mixpro eval`` (reported as one line, exit status 2)."""


@dataclass(frozen=True)
class EvalOptions:
    """Options of ``mixpro eval`` (the CLI flags, same names), each declared once."""

    data: str | None = option(None, help=(
        "'fashion-mnist' (embedded test split), an ImageFolder, or a .tar, folder of tars, "
        "hfds/NAME, wds/FOLDER (their val_split from the checkpoint's recipe) (default: the "
        "data the checkpoint was trained on)"))
    data_dir: str | None = option(None, help=(
        "Fashion-MNIST idx folder (default: $MIXPRO_FASHION_MNIST, then "
        "/usr/share/datasets/fashion-mnist)"))
    ood: str = option("auto", help=(
        "OOD set: 'auto' (fashion-mnist: the held-out classes of a checkpoint trained with "
        "holdout_classes, else glyphs; otherwise none), 'heldout', 'glyphs', 'none', or an "
        "image folder (labels ignored)"))
    evals: tuple[Literal[EVALS], ...] = option(  # type: ignore[valid-type]
        DEFAULT_EVALS, help="evaluations to run (attention: the cls attention against the "
        "object mask, Fashion-MNIST only)")
    attention_images: int = option(2000, ge=1, help="test images of the attention quality "
                                   "(the first N)")
    valid_labels: str | None = option(None, help=(
        "class index list file: slice the logits to these columns (ImageNet-A/-O style); its "
        "length must equal the dataset's classes"))
    names: tuple[str, ...] | None = option(None, help="display names of the checkpoints "
                                           "(default: file stem / run dir)")
    limit: int | None = option(None, ge=1, help="evaluate the first N images only")
    occlusion_modes: tuple[Literal[DROP_MODES], ...] = option(  # type: ignore[valid-type]
        DROP_MODES, help="PatchDrop orders of the occlusion sweep")
    occlusion_images: int = option(1000, ge=0, help="images used by the occlusion sweep "
                                   "(0 = all)")
    repeats: int = option(3, ge=1, help="random PatchDrop repeats R (mean ± std)")
    per_image: bool = option(False, help="random PatchDrop: one draw per image (default: per "
                             "batch, as the reference)")
    saliency: str | None = option(None, help="checkpoint whose cls attention gives the "
                                  "saliency (default: each evaluated model's own)")
    saliency_model: str | None = option(None, help=(
        "timm architecture of a raw --saliency state dict (e.g. DINO weights with "
        "vit_small_patch16_224)"))
    calib_bin: int = option(100, ge=1, help="samples per calibration bin (beta)")
    interpolation: str = option("bilinear", choices=INTERPOLATIONS,
                                help="resize interpolation of the test images")
    batch_size: int = option(256, ge=1, help="evaluation batch size")
    workers: int = option(0, ge=0, help="data-loader workers")
    seed: int = option(0, ge=0, le=SEED_MAX, help="random seed (0..2**63-1)")
    device: str = option("cuda" if torch.cuda.is_available() else "cpu",
                         help="cpu | cuda | cuda:N")
    out: str = option("eval_out", help="output folder (eval.json, PNGs)")
    progress: bool = option(True, help="show progress bars")


def load_saliency_model(path: str, arch: str | None, img_size: int) -> nn.Module:
    """The saliency model: a ``mixpro train`` checkpoint, or a raw state dict (e.g. DINO's
    ``dino_deitsmall16_pretrain.pth``) for the timm architecture ``arch``."""
    if arch is None:
        return load_model(path)[0]
    ckpt = read_state_dict(path)
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot build saliency model {arch}: {e}") from None
    from mixpro.checkpoint import strip_prefixes

    sd = {k: v for k, v in strip_prefixes(ckpt, PREFIXES + ("backbone.",)).items()
          if not k.startswith("head")}
    load_weights(model, sd, path, arch)
    return model.eval()


@dataclass
class Job:
    """One checkpoint, its data and settings, all checked before any work starts."""

    path: str
    name: str
    model: nn.Module
    config: dict
    normalize: Normalize
    data: EvalData
    ood: EvalData | None
    indices: list[int] | None
    saliency: ClsSaliency | None
    occl_data: Dataset | None
    results: dict = field(default_factory=dict)


def _name(path: str, taken: set[str]) -> str:
    p = Path(path)
    name = p.parent.name if p.stem in ("last", "best", "checkpoint", "final") else p.stem
    base, i = name, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def _check_classes(path: str, config: dict, num_logits: int, data: EvalData,
                   indices: list[int] | None) -> None:
    want = config.get("classes")
    n = len(data.classes)
    if indices is None and n != num_logits:
        raise DatasetError(
            f"dataset {data.name} has {n} classes but checkpoint {path} predicts {num_logits} "
            "(pass --valid-labels to evaluate on a class subset)"
        )
    if indices is None and isinstance(want, list) and [str(c) for c in want] != data.classes:
        if len(want) != n:
            raise DatasetError(f"dataset {data.name} has {n} classes but checkpoint {path} "
                               f"was trained on {len(want)}")
        names = zip(map(str, want), data.classes, strict=True)
        diff = next(i for i, (a, b) in enumerate(names) if a != b)
        raise DatasetError(
            f"dataset {data.name} classes differ from checkpoint {path}: class {diff} is "
            f"{data.classes[diff]!r} in the data, {want[diff]!r} in the checkpoint"
        )


def check_device(device: object, flag: str = "--device") -> None:
    """:class:`EvalError` unless ``device`` is ``cpu`` or a CUDA device that is here."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise EvalError(f"{flag} must be cpu, cuda or cuda:N, got {device!r}") from None
    if parsed.type == "cpu":
        return
    if parsed.type != "cuda":
        raise EvalError(f"{flag} must be cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        raise EvalError(f"{flag} {device} asked for, but CUDA is not available here "
                        f"(use {flag} cpu)")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise EvalError(f"{flag} {device}: there {'is' if count == 1 else 'are'} {count} "
                        f"CUDA device{'' if count == 1 else 's'} (cuda:0..cuda:{count - 1})")


def _check_options(o: EvalOptions, checkpoints: list[str]) -> None:
    options.check_flags(o, EvalError)  # every declared type, choice and range
    check_device(o.device)
    if not checkpoints:
        raise EvalError("no checkpoint given")
    if o.names is not None and len(o.names) != len(checkpoints):
        raise EvalError(f"--names has {len(o.names)} names for {len(checkpoints)} checkpoints")
    if o.saliency_model and not o.saliency:
        raise EvalError("--saliency-model needs --saliency CKPT")
    out = Path(o.out)
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} exists and is not a folder")


def prepare(checkpoints: list[str], o: EvalOptions) -> list[Job]:
    """Every check that can fail on user input, before any evaluation starts."""
    _check_options(o, checkpoints)
    taken: set[str] = set()
    jobs = []
    for i, path in enumerate(checkpoints):
        model, config = load_model(path)
        if config.get("multi_label"):
            raise EvalError(
                f"{path} is a multi-label checkpoint: mixpro eval's metrics (top-1, "
                "calibration, OOD, occlusion) are single-label; its test mAP and top-1 "
                "precision are in the run's metrics.jsonl")
        model.to(o.device)
        img, chans = models.image_size(model), models.in_chans(model)
        holdout = holdout_of(config.get("recipe") or {})
        spec = checkpoint_data(o.data, config, path)
        if "attention" in o.evals:
            if not is_fashion_mnist(spec):
                raise EvalError(f"--evals attention needs data whose object mask is known: "
                                f"fashion-mnist (object = pixels > 0), got {spec}")
            ClsAttention(model).remove()  # NoClsAttentionError: one line, below
        data = eval_data(spec, img_size=img, in_chans=chans, interpolation=o.interpolation,
                         data_dir=o.data_dir, holdout=holdout,
                         split=(config.get("recipe") or {}).get("val_split"))
        num_logits = int(getattr(model, "num_classes", 0) or config.get("num_classes", 0))
        indices = None
        if o.valid_labels:
            indices = metrics.load_index_list(o.valid_labels, num_logits=num_logits,
                                              num_labels=len(data.classes))
        _check_classes(path, config, num_logits, data, indices)
        if o.limit is not None:
            data.dataset = Subset(data.dataset, range(min(o.limit, len(data.dataset))))
        if ("clean" in o.evals or "ood" in o.evals) and len(data) < o.calib_bin:
            raise EvalError(f"calibration needs at least --calib-bin={o.calib_bin} images, "
                            f"the dataset has {len(data)}")
        ood = None
        if "ood" in o.evals:
            ood = ood_data(o.ood, spec, img_size=img, in_chans=chans,
                           interpolation=o.interpolation, data_dir=o.data_dir, holdout=holdout)
        norm = Normalize(*checkpoint_stats(config, chans, getattr(model, "pretrained_cfg", None)))
        saliency, occl = None, None
        if "occlusion" in o.evals:
            model_grid(model)
            n = len(data) if o.occlusion_images == 0 else min(o.occlusion_images, len(data))
            occl = Subset(data.dataset, range(n))
            if set(o.occlusion_modes) - {"random"}:
                sal_model = model
                if o.saliency:
                    sal_model = load_saliency_model(o.saliency, o.saliency_model, img[0])
                    sal_model.to(o.device)
                    if models.in_chans(sal_model) != chans or models.image_size(sal_model) != img:
                        raise EvalError(
                            f"saliency model {o.saliency} expects {models.in_chans(sal_model)}x"
                            f"{models.image_size(sal_model)} inputs, {path} gets {chans}x{img}"
                        )
                try:
                    saliency = ClsSaliency(sal_model, norm)
                except NoClsAttentionError as e:
                    src = o.saliency or path
                    raise EvalError(f"salient PatchDrop needs cls attention from {src}: "
                                    f"{e.reason}") from None
                from .occlusion import pool_attention

                pool_attention(torch.zeros(1, saliency.grid[0] * saliency.grid[1]),
                               saliency.grid, model_grid(model))
        name = o.names[i] if o.names else _name(path, taken)
        jobs.append(Job(path, name, model, config, norm, data, ood, indices, saliency, occl))
    return jobs


def _loader(ds: Dataset, batched: bool, batch_size: int, workers: int) -> DataLoader:
    """In-order batches; batch-indexed datasets (Fashion-MNIST) get whole index lists."""
    if batched:
        sampler = BatchSampler(SequentialSampler(ds), batch_size, drop_last=False)
        return DatasetLoader(ds, sampler=sampler, batch_size=None, num_workers=workers)
    return DatasetLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)


Progress = Callable[[int], Any]


@torch.no_grad()
def _logits(job: Job, data: EvalData, o: EvalOptions,
            progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    outs, labels = [], []
    for x, y in _loader(data.dataset, data.batched, o.batch_size, o.workers):
        out = job.model(job.normalize(x.to(o.device))).float().cpu()
        if job.indices is not None:
            out = metrics.subset_logits(out, job.indices)
        outs.append(out)
        labels.append(torch.as_tensor(y))
        progress(len(y))
    return torch.cat(outs), torch.cat(labels)


def evaluate_job(job: Job, o: EvalOptions, progress: Progress = lambda n: None) -> dict:
    """Run the selected evaluations of one checkpoint; returns its result dict."""
    res: dict = {"checkpoint": job.path, "name": job.name, "model": job.config.get("model"),
                 "num_images": len(job.data)}
    if "clean" in o.evals or "ood" in o.evals:
        logits, labels = _logits(job, job.data, o, progress)
        conf = metrics.confidence(logits)
        correct = logits.argmax(1).eq(labels).double()
        top = metrics.topk_accuracy(logits, labels, (1, 5))
        res["clean"] = {
            "top1": top[1], "top5": top[5],
            "calib_err": metrics.calib_err(conf, correct, beta=o.calib_bin),
            "calib_err_corrected": metrics.calib_err(conf, correct, beta=o.calib_bin,
                                                     corrected=True),
            "aurra": metrics.aurra(conf, correct),
            "calib_bin": o.calib_bin,
        }
        if job.ood is not None and "ood" in o.evals:
            ood_logits, _ = _logits(job, job.ood, o, progress)
            ood_conf = metrics.confidence(ood_logits)
            y, s = metrics.ood_scores(conf, ood_conf)
            res["ood"] = {
                "dataset": job.ood.name, "num_ood": len(job.ood), "num_in": len(job.data),
                "auprc": metrics.average_precision(y, s), "auroc": metrics.auroc(y, s),
                "chance_auprc": len(job.ood) / (len(job.ood) + len(job.data)),
            }
    if "occlusion" in o.evals:
        batches = (
            (x, torch.as_tensor(y))
            for x, y in _loader(job.occl_data, job.data.batched, o.batch_size, o.workers)
        )
        res["occlusion"] = occlusion_sweep(
            job.model, batches, normalize=job.normalize, modes=o.occlusion_modes,
            repeats=o.repeats, per_image=o.per_image, seed=o.seed, saliency=job.saliency,
            device=o.device, on_batch=progress,
        )
        res["occlusion"]["saliency"] = o.saliency or "own cls attention"
    if "attention" in o.evals:
        n = min(o.attention_images, len(job.data))
        batches = _loader(Subset(job.data.dataset, range(n)), job.data.batched, o.batch_size,
                          o.workers)
        res["attention_quality"] = attention_quality.measure(
            job.model, batches, job.normalize, o.device, on_batch=progress)
        blocks = attention_quality.measure_blocks(
            job.model, _loader(Subset(job.data.dataset, range(n)), job.data.batched,
                               o.batch_size, o.workers), job.normalize, o.device)
        if blocks is not None:  # a plain ViT: every block's and head's cls attention
            res["attention_quality"]["blocks"] = blocks
    return res


def _work(job: Job, o: EvalOptions) -> int:
    n = 0
    if "clean" in o.evals or "ood" in o.evals:
        n += len(job.data) + (len(job.ood) if job.ood is not None else 0)
    if "occlusion" in o.evals and job.occl_data is not None:
        n += len(job.occl_data)
    if "attention" in o.evals:
        n += min(o.attention_images, len(job.data))
    return n


def evaluate_checkpoints(checkpoints: list[str], options: EvalOptions = EvalOptions()
                         ) -> dict[str, Any]:
    """Evaluate ``checkpoints`` (paths written by ``mixpro train``) and write ``eval.json``
    (and ``occlusion.png``) into ``options.out``.

    Returns the payload of ``eval.json``: ``{"table": str, "results": [per-checkpoint dicts],
    "files": {...}, ...}``. Raises a one-line :class:`~mixpro.errors.UserError` subclass for
    bad input, before any evaluation starts.
    """
    from tqdm import tqdm

    from mixpro.plots.evaluation import occlusion_curves

    o = options
    try:
        jobs = prepare(list(checkpoints), o)
    except NoClsAttentionError as e:  # the core's; the app's own errors are UserErrors
        raise EvalError(str(e)) from None
    torch.manual_seed(o.seed)
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.perf_counter()
    for job in jobs:
        with tqdm(total=_work(job, o), desc=f"eval {job.name}", unit="img",
                  disable=not o.progress, file=sys.stderr) as bar:
            results.append(evaluate_job(job, o, bar.update))
    files = {"json": str(out / "eval.json")}
    if any("occlusion" in r for r in results):
        files["occlusion_png"] = str(
            occlusion_curves(results, out / "occlusion.png", title=jobs[0].data.name))
    options_dict = asdict(o)
    payload = {
        "data": o.data, "ood": o.ood, "evals": list(o.evals), "seed": o.seed,
        "device": str(o.device), "seconds": round(time.perf_counter() - t0, 2),
        "options": options_dict, "table": format_table(results), "files": files,
        "results": results,
    }
    atomic_write_text(json.dumps(payload, indent=2, default=str), out / "eval.json")
    return payload
