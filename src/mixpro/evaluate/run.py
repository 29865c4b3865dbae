"""``mixpro eval``: robustness evaluation of one or more checkpoints.

Owns the command: loading checkpoints (:func:`load_checkpoint_model`), the evaluation data
(the embedded Fashion-MNIST test split or an ImageFolder, and an OOD set), the input checks
that run before any work, the evaluation loop (clean top-1/top-5, RMS calibration error,
AURRA, OOD AUPRC/AUROC, PatchDrop occlusion), the Table-5 style text table, ``eval.json`` and
the occlusion PNG (drawn by :mod:`mixpro.evaluate.figures`).

Default OOD set for Fashion-MNIST: ``glyphs``, a notMNIST-style set of real typeset letters
(A–Z, a–z) rendered from the fonts matplotlib ships (21 text fonts, 1,092 images), centred in
a 20×20 box on 28×28 like MNIST. It needs no download and shares no class with clothing.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, Subset

from mixpro import NoClsAttentionError
from mixpro.data import DatasetError
from mixpro.data import fashion_mnist as fmnist

from . import metrics
from .occlusion import DROP_MODES, ClsSaliency, OcclusionError, model_grid, occlusion_sweep

__all__ = [
    "CheckpointError",
    "DatasetError",
    "EvalError",
    "add_arguments",
    "evaluate",
    "format_table",
    "glyph_images",
    "load_checkpoint_model",
    "main",
    "run",
]

EVALS = ("clean", "ood", "occlusion")
FASHION_MNIST = "fashion-mnist"


class EvalError(ValueError):
    """A user error of ``mixpro eval`` (reported as one line, exit status 2)."""


class CheckpointError(EvalError):
    """A checkpoint that cannot be read or does not match its model."""


# -- checkpoints ---------------------------------------------------------------------------


def _read_checkpoint(path: str | Path) -> dict:
    """``torch.load`` on the CPU, tensors-only first; a ``mixpro train`` ``last.pt`` also holds
    numpy/python RNG states, which need the full unpickler (only for files you trust)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    ckpt = None
    for weights_only in (True, False):
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=weights_only)
            break
        except pickle.UnpicklingError as e:
            err: Exception = e
            if "Weights only load failed" in str(e):
                continue  # RNG states etc.: retry with the full unpickler
            break
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            err = e
            break
    if ckpt is None:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {msg}")
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} is not a dict")
    return ckpt


def _state_dict(sd: dict) -> dict[str, torch.Tensor]:
    prefixes = ("module.", "_orig_mod.", "backbone.")
    out = {}
    for k, v in sd.items():
        for pre in prefixes:
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


def _load_weights(model: nn.Module, sd: dict, path: str | Path, arch: str) -> None:
    own = model.state_dict()
    sd = _state_dict(sd)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        first = (shapes or [f"missing {k}" for k in missing] or
                 [f"unexpected {k}" for k in unexpected])[0]
        raise CheckpointError(
            f"checkpoint {path} does not match model {arch}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(shapes)} mismatched tensors (e.g. {first})"
        )
    model.load_state_dict(sd, strict=True)


def load_checkpoint_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Build the timm model a checkpoint describes and load its weights (eval mode, CPU).

    Format (``mixpro.train.checkpoint``, ``last.pt`` / ``best.pt``): ``{"model": state_dict,
    "config": {"model": timm_name, "model_kwargs": {...}, "num_classes": K, "mean", "std",
    "classes", "recipe"}, ...}``; ``mean``, ``std`` and ``classes`` are optional here.

    Raises:
        CheckpointError: unreadable file, missing keys, or weights that do not fit the model.
    """
    ckpt = _read_checkpoint(path)
    config = ckpt.get("config")
    weights = ckpt.get("model")
    if not isinstance(config, dict) or not isinstance(weights, dict):
        raise CheckpointError(
            f"checkpoint {path} lacks the 'model' state dict or the 'config' dict "
            "(written by mixpro train?)"
        )
    arch = config.get("model")
    if not isinstance(arch, str):
        raise CheckpointError(f"checkpoint {path}: config['model'] must name a timm model")
    kwargs = dict(config.get("model_kwargs") or {})
    if "num_classes" in config:
        kwargs["num_classes"] = int(config["num_classes"])
    try:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - unknown name / bad kwargs from the file
        raise CheckpointError(f"checkpoint {path}: cannot build {arch}: {e}") from None
    _load_weights(model, weights, path, arch)
    return model.eval(), config


def load_saliency_model(path: str | Path, arch: str | None, img_size: int) -> nn.Module:
    """The saliency model: a ``mixpro train`` checkpoint, or a raw state dict (e.g. DINO's
    ``dino_deitsmall16_pretrain.pth``) for the timm architecture ``arch``."""
    if arch is None:
        return load_checkpoint_model(path)[0]
    ckpt = _read_checkpoint(path)
    for key in ("model", "state_dict", "teacher"):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot build saliency model {arch}: {e}") from None
    sd = {k: v for k, v in _state_dict(ckpt).items() if not k.startswith("head")}
    _load_weights(model, sd, path, arch)
    return model.eval()


def norm_stats(config: dict, model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean/std: the checkpoint config's ``mean``/``std``, else the model's timm
    ``pretrained_cfg`` (averaged to one value per channel when the channel count differs)."""
    chans = in_chans(model)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = config.get("mean", cfg.get("mean", (0.5,) * chans))
    std = config.get("std", cfg.get("std", (0.5,) * chans))
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != chans:  # e.g. a 1-channel model with timm's 3-channel defaults
        mean, std = (sum(mean) / len(mean),) * chans, (sum(std) / len(std),) * chans
    return mean, std


def in_chans(model: nn.Module) -> int:
    """Input channels of a timm ViT-family model (``patch_embed.proj``)."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    return int(getattr(proj, "in_channels", 3))


def image_size(model: nn.Module) -> tuple[int, int]:
    """Input ``(H, W)`` of a timm ViT-family model (``patch_embed.img_size``)."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        return (224, 224)
    return int(size[0]), int(size[1])


class Normalize:
    """``(x - mean) / std`` per channel, for ``[0, 1]`` images ``(B, C, H, W)``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


# -- data ----------------------------------------------------------------------------------


@dataclass
class EvalData:
    """A dataset of ``([0,1] image (C, H, W), label)`` with its class names."""

    dataset: Dataset
    classes: list[str]
    name: str
    batched: bool = False  # ``dataset[list_of_indices]`` returns a whole batch

    def __len__(self) -> int:
        return len(self.dataset)


def _transform(img_size: tuple[int, int], in_chans: int, interpolation: str) -> Callable:
    """Eval transform to ``[0, 1]`` tensors (no normalisation: occlusion happens first)."""
    return timm.data.create_transform(
        input_size=(in_chans, *img_size), is_training=False, interpolation=interpolation,
        crop_pct=1.0, normalize=False,
    )


def _fmnist(images: torch.Tensor, labels: torch.Tensor, img_size, in_chans) -> Dataset:
    """The training app's Fashion-MNIST dataset (pad 28→32, resize, grey→C) in ``[0, 1]``."""
    if img_size[0] != img_size[1]:
        raise DatasetError(f"Fashion-MNIST needs a square model input, got {img_size}")
    return fmnist.FashionMNIST(images, labels, img_size=img_size[0], in_chans=in_chans,
                               mean=(0.0,), std=(1.0,))


def fashion_mnist_test(img_size, in_chans, data_dir: str | None = None,
                       classes: list[int] | None = None) -> EvalData:
    """The embedded Fashion-MNIST test split (10,000 images), read by :mod:`mixpro.data`;
    with ``classes`` (indices), only their images, labels renumbered in that order."""
    images, labels = fmnist.load_split(fmnist.resolve_root(data_dir), "test")
    names, name = list(fmnist.CLASSES), "fashion-mnist test"
    if classes is not None and list(classes) != list(range(len(names))):
        images, labels = fmnist.select_classes(images, labels, classes)
        names = [names[c] for c in classes]
        name = f"fashion-mnist test ({len(names)} classes)"
    return EvalData(_fmnist(images, labels, img_size, in_chans), names, name, batched=True)


def holdout_of(config: dict) -> list[int]:
    """Fashion-MNIST classes the checkpoint's run held out of training (``[]`` if none)."""
    recipe = config.get("recipe", {})
    if recipe.get("data") != "fashion_mnist":
        return []
    return list(recipe.get("holdout_classes") or [])


GLYPH_FONTS = (
    [f"DejaVu{fam}{sty}.ttf" for fam in ("Sans", "SansMono", "Serif")
     for sty in ("", "-Bold", "-Oblique" if fam != "Serif" else "-Italic",
                 "-BoldOblique" if fam != "Serif" else "-BoldItalic")]
    + [f"STIXGeneral{s}.ttf" for s in ("", "Bol", "Italic", "BolIta")]
    + [f"{n}.ttf" for n in ("cmr10", "cmb10", "cmss10", "cmti10", "cmtt10")]
)
GLYPH_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def glyph_images(size: int = 28, box: int = 20) -> np.ndarray:
    """notMNIST-style OOD images: every letter of :data:`GLYPH_CHARS` in every font of
    :data:`GLYPH_FONTS` (shipped with matplotlib), white on black, scaled to fit a
    ``box``×``box`` square centred in ``size``×``size``. uint8 ``(1092, size, size)``."""
    import matplotlib
    from matplotlib.ft2font import FT2Font
    from PIL import Image

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    out = []
    for name in GLYPH_FONTS:
        font = FT2Font(str(root / name))
        for ch in GLYPH_CHARS:
            font.set_size(48, 72)
            font.set_text(ch)
            font.draw_glyphs_to_bitmap(antialiased=True)
            g = Image.fromarray(np.asarray(font.get_image()))
            scale = box / max(g.size)
            w, h = max(1, round(g.size[0] * scale)), max(1, round(g.size[1] * scale))
            g = g.resize((w, h), Image.Resampling.BILINEAR)
            canvas = Image.new("L", (size, size))
            canvas.paste(g, ((size - w) // 2, (size - h) // 2))
            out.append(np.asarray(canvas))
    return np.stack(out)


def image_folder(root: str, img_size, in_chans, interpolation) -> EvalData:
    """An ImageFolder (``root/<class>/<image>``; a training root with ``train/`` and ``val/``
    means its ``val/``) through ``timm.data.ImageDataset``."""
    if not Path(root).is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if (Path(root) / "train").is_dir() and (Path(root) / "val").is_dir():
        root = str(Path(root) / "val")
    mode = "L" if in_chans == 1 else "RGB"
    try:
        ds = timm.data.ImageDataset(root, transform=_transform(img_size, in_chans, interpolation),
                                    input_img_mode=mode)
    except Exception as e:  # noqa: BLE001 - timm raises RuntimeError for empty folders etc.
        raise DatasetError(f"cannot read image folder {root}: {e}") from None
    if len(ds) == 0:
        raise DatasetError(f"image folder {root} holds no images")
    c2i = ds.reader.class_to_idx
    classes = sorted(c2i, key=c2i.get) if c2i else []
    return EvalData(ds, classes, f"folder {root}")


def build_data(spec: str, img_size, in_chans, interpolation, data_dir=None,
               holdout: list[int] = ()) -> EvalData:
    """``fashion-mnist`` (embedded test split, less the ``holdout`` classes a checkpoint was
    trained without) or an ImageFolder path."""
    if spec == FASHION_MNIST:
        kept, _ = fmnist.class_split(holdout)
        return fashion_mnist_test(img_size, in_chans, data_dir, kept)
    return image_folder(spec, img_size, in_chans, interpolation)


def build_ood(spec: str, data_spec: str, img_size, in_chans, interpolation,
              data_dir: str | None = None, holdout: list[int] = ()) -> EvalData | None:
    """``none``; ``heldout``: the Fashion-MNIST test images of the classes the checkpoint was
    trained without (real near-OOD images); ``glyphs``: typeset letters (far-OOD); or an
    ImageFolder whose labels are ignored. ``auto`` = ``heldout`` for Fashion-MNIST checkpoints
    trained with ``holdout_classes``, else ``glyphs`` for Fashion-MNIST, else ``none``."""
    if spec == "auto":
        spec = "none" if data_spec != FASHION_MNIST else "heldout" if holdout else "glyphs"
    if spec == "none":
        return None
    if spec == "heldout":
        if data_spec != FASHION_MNIST or not holdout:
            raise DatasetError("--ood heldout needs --data fashion-mnist and a checkpoint "
                               "trained with holdout_classes")
        _, held = fmnist.class_split(holdout)
        data = fashion_mnist_test(img_size, in_chans, data_dir, held)
        data.name = "fashion-mnist held-out classes: " + ", ".join(data.classes)
        data.classes = []
        return data
    if spec == "glyphs":
        imgs = torch.from_numpy(glyph_images())
        ds = _fmnist(imgs, torch.zeros(len(imgs), dtype=torch.long), img_size, in_chans)
        return EvalData(ds, [], "glyphs (notMNIST-style letters, matplotlib fonts)",
                        batched=True)
    return image_folder(spec, img_size, in_chans, interpolation)


# -- evaluation ----------------------------------------------------------------------------


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


def _loader(ds: Dataset, batched: bool, batch_size: int, workers: int) -> DataLoader:
    """In-order batches; batch-indexed datasets (Fashion-MNIST) get whole index lists."""
    if batched:
        sampler = BatchSampler(SequentialSampler(ds), batch_size, drop_last=False)
        return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=workers)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)


@torch.no_grad()
def _logits(job: Job, data: EvalData, args, bar) -> tuple[torch.Tensor, torch.Tensor]:
    outs, labels = [], []
    for x, y in _loader(data.dataset, data.batched, args.batch_size, args.workers):
        out = job.model(job.normalize(x.to(args.device))).float().cpu()
        if job.indices is not None:
            out = metrics.subset_logits(out, job.indices)
        outs.append(out)
        labels.append(torch.as_tensor(y))
        bar.update(len(y))
    return torch.cat(outs), torch.cat(labels)


def evaluate(job: Job, args, bar) -> dict:
    """Run the selected evaluations of one checkpoint; returns its result dict."""
    res: dict = {"checkpoint": job.path, "name": job.name, "model": job.config.get("model"),
                 "num_images": len(job.data)}
    if "clean" in args.evals or "ood" in args.evals:
        logits, labels = _logits(job, job.data, args, bar)
        conf = metrics.confidence(logits)
        correct = logits.argmax(1).eq(labels).double()
        top = metrics.topk_accuracy(logits, labels, (1, 5))
        res["clean"] = {
            "top1": top[1], "top5": top[5],
            "calib_err": metrics.calib_err(conf, correct, beta=args.calib_bin),
            "calib_err_corrected": metrics.calib_err(conf, correct, beta=args.calib_bin,
                                                     corrected=True),
            "aurra": metrics.aurra(conf, correct),
            "calib_bin": args.calib_bin,
        }
        if job.ood is not None and "ood" in args.evals:
            ood_logits, _ = _logits(job, job.ood, args, bar)
            ood_conf = metrics.confidence(ood_logits)
            y, s = metrics.ood_scores(conf, ood_conf)
            res["ood"] = {
                "dataset": job.ood.name, "num_ood": len(job.ood), "num_in": len(job.data),
                "auprc": metrics.average_precision(y, s), "auroc": metrics.auroc(y, s),
                "chance_auprc": len(job.ood) / (len(job.ood) + len(job.data)),
            }
    if "occlusion" in args.evals:
        batches = (
            (x, torch.as_tensor(y))
            for x, y in _loader(job.occl_data, job.data.batched, args.batch_size, args.workers)
        )
        modes = args.occlusion_modes
        res["occlusion"] = occlusion_sweep(
            job.model, batches, normalize=job.normalize, modes=modes, repeats=args.repeats,
            per_image=args.per_image, seed=args.seed, saliency=job.saliency,
            device=args.device, on_batch=bar.update,
        )
        res["occlusion"]["saliency"] = args.saliency or "own cls attention"
    return res


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def format_table(results: Sequence[dict]) -> str:
    """Table-5 style text table (percent): clean Top-1/Top-5, Calib-Error ↓, AURRA ↑,
    OOD AUPRC ↑ / AUROC ↑, and PatchDrop accuracy at 50% information loss per mode."""
    head = ["checkpoint", "Top-1", "Top-5", "Calib-Err↓", "AURRA", "OOD AUPRC", "OOD AUROC"]
    occl_modes = [m for m in DROP_MODES if any(m in r.get("occlusion", {}).get("curves", {})
                                               for r in results)]
    head += [f"{m}@50%" for m in occl_modes]
    rows = []
    for r in results:
        c, o = r.get("clean", {}), r.get("ood", {})
        row = [r["name"], _pct(c.get("top1")), _pct(c.get("top5")), _pct(c.get("calib_err")),
               _pct(c.get("aurra")), _pct(o.get("auprc")), _pct(o.get("auroc"))]
        for m in occl_modes:
            pts = r.get("occlusion", {}).get("curves", {}).get(m, [])
            at = [p for p in pts if abs(p["info_loss"] - 0.5) < 1e-9]
            row.append(f"{_pct(at[0]['acc_mean'])}±{100 * at[0]['acc_std']:.2f}"
                       if at else "—")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join(("-" * (w + 2)) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


# -- command -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mixpro eval``."""
    parser.add_argument("checkpoints", nargs="+", help="checkpoints written by mixpro train")
    parser.add_argument("--data", default=FASHION_MNIST,
                        help="'fashion-mnist' (embedded test split, default) or an ImageFolder")
    parser.add_argument("--data-dir", default=None,
                        help="Fashion-MNIST idx folder (default: $MIXPRO_FASHION_MNIST, then "
                             "/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--ood", default="auto",
                        help="OOD set: 'auto' (fashion-mnist: the held-out classes of a "
                             "checkpoint trained with holdout_classes, else glyphs; otherwise "
                             "none), 'heldout', 'glyphs', 'none', or an image folder "
                             "(labels ignored)")
    parser.add_argument("--evals", nargs="+", choices=EVALS, default=list(EVALS),
                        help="evaluations to run (default: all)")
    parser.add_argument("--valid-labels", default=None, metavar="FILE",
                        help="class index list: slice the logits to these columns "
                             "(ImageNet-A/-O style); its length must equal the dataset's classes")
    parser.add_argument("--names", nargs="+", default=None,
                        help="display names of the checkpoints (default: file stem / run dir)")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate the first N images only")
    parser.add_argument("--occlusion-modes", nargs="+", choices=DROP_MODES,
                        default=list(DROP_MODES))
    parser.add_argument("--occlusion-images", type=int, default=1000,
                        help="images used by the occlusion sweep (default 1000; 0 = all)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="random PatchDrop repeats R (mean ± std)")
    parser.add_argument("--per-image", action="store_true",
                        help="random PatchDrop: one draw per image (default: per batch, ref.)")
    parser.add_argument("--saliency", default=None, metavar="CKPT",
                        help="checkpoint whose cls attention gives the saliency "
                             "(default: each evaluated model's own)")
    parser.add_argument("--saliency-model", default=None, metavar="TIMM_NAME",
                        help="timm architecture of a raw --saliency state dict (e.g. DINO "
                             "weights with vit_small_patch16_224)")
    parser.add_argument("--calib-bin", type=int, default=100,
                        help="samples per calibration bin (beta, default 100)")
    parser.add_argument("--interpolation", default="bilinear",
                        choices=("bilinear", "bicubic", "nearest"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="eval_out", help="output folder (eval.json, PNGs)")
    parser.add_argument("--no-progress", action="store_true")


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


def _prepare(args) -> list[Job]:
    """Every check that can fail on user input, before any evaluation starts."""
    for key in ("batch_size", "repeats", "calib_bin"):
        if getattr(args, key) < 1:
            raise EvalError(f"--{key.replace('_', '-')} must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise EvalError("--limit must be >= 1")
    if args.occlusion_images < 0:
        raise EvalError("--occlusion-images must be >= 0")
    if args.names is not None and len(args.names) != len(args.checkpoints):
        raise EvalError(f"--names has {len(args.names)} names for "
                        f"{len(args.checkpoints)} checkpoints")
    if args.saliency_model and not args.saliency:
        raise EvalError("--saliency-model needs --saliency CKPT")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} exists and is not a folder")
    taken: set[str] = set()
    jobs = []
    for i, path in enumerate(args.checkpoints):
        model, config = load_checkpoint_model(path)
        model.to(args.device)
        img, chans = image_size(model), in_chans(model)
        holdout = holdout_of(config)
        data = build_data(args.data, img, chans, args.interpolation, args.data_dir, holdout)
        num_logits = int(getattr(model, "num_classes", 0) or config.get("num_classes", 0))
        indices = None
        if args.valid_labels:
            indices = metrics.load_index_list(args.valid_labels, num_logits=num_logits,
                                              num_labels=len(data.classes))
        _check_classes(path, config, num_logits, data, indices)
        if args.limit is not None:
            data.dataset = Subset(data.dataset, range(min(args.limit, len(data.dataset))))
        if ("clean" in args.evals or "ood" in args.evals) and len(data) < args.calib_bin:
            raise EvalError(f"calibration needs at least --calib-bin={args.calib_bin} images, "
                            f"the dataset has {len(data)}")
        ood = None
        if "ood" in args.evals:
            ood = build_ood(args.ood, args.data, img, chans, args.interpolation,
                            args.data_dir, holdout)
        mean, std = norm_stats(config, model)
        norm = Normalize(mean, std)
        saliency, occl = None, None
        if "occlusion" in args.evals:
            model_grid(model)
            n = len(data) if args.occlusion_images == 0 else min(args.occlusion_images, len(data))
            occl = Subset(data.dataset, range(n))
            if set(args.occlusion_modes) - {"random"}:
                sal_model = model
                if args.saliency:
                    sal_model = load_saliency_model(args.saliency, args.saliency_model, img[0])
                    sal_model.to(args.device)
                    if in_chans(sal_model) != chans or image_size(sal_model) != img:
                        raise EvalError(
                            f"saliency model {args.saliency} expects {in_chans(sal_model)}x"
                            f"{image_size(sal_model)} inputs, {path} gets {chans}x{img}"
                        )
                try:
                    saliency = ClsSaliency(sal_model, norm)
                except NoClsAttentionError as e:
                    src = args.saliency or path
                    raise EvalError(f"salient PatchDrop needs cls attention from {src}: "
                                    f"{str(e).split(':')[0]}") from None
                from .occlusion import pool_attention

                pool_attention(torch.zeros(1, saliency.grid[0] * saliency.grid[1]),
                               saliency.grid, model_grid(model))
        name = args.names[i] if args.names else _name(path, taken)
        jobs.append(Job(path, name, model, config, norm, data, ood, indices, saliency, occl))
    return jobs


def _work(job: Job, args) -> int:
    n = 0
    if "clean" in args.evals or "ood" in args.evals:
        n += len(job.data) + (len(job.ood) if job.ood is not None else 0)
    if "occlusion" in args.evals and job.occl_data is not None:
        n += len(job.occl_data)
    return n


def run(args: argparse.Namespace) -> int:
    """``mixpro eval``: returns 0, or 2 after printing ``mixpro: error: ...`` for bad input."""
    from tqdm import tqdm

    try:
        jobs = _prepare(args)
    except (EvalError, DatasetError, metrics.MetricInputError, OcclusionError,
            NoClsAttentionError) as e:
        print(f"mixpro: error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.perf_counter()
    for job in jobs:
        with tqdm(total=_work(job, args), desc=f"eval {job.name}", unit="img",
                  disable=args.no_progress, file=sys.stderr) as bar:
            results.append(evaluate(job, args, bar))
    from . import figures

    files = {"json": str(out / "eval.json")}
    if any("occlusion" in r for r in results):
        files["occlusion_png"] = str(
            figures.occlusion_curves(results, out / "occlusion.png", title=jobs[0].data.name)
        )
    table = format_table(results)
    payload = {
        "data": args.data, "ood": args.ood, "evals": args.evals, "seed": args.seed,
        "device": str(args.device), "seconds": round(time.perf_counter() - t0, 2),
        "table": table, "files": files, "results": results,
    }
    (out / "eval.json").write_text(json.dumps(payload, indent=2))
    print(table)
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mixpro.evaluate.run``."""
    parser = argparse.ArgumentParser(prog="mixpro eval", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
