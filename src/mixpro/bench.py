"""`mixpro bench`: what each mixing method costs, measured in one process.

Every comparison is interleaved (one repeat of each variant in turn), after warm-up, and
reported as medians and as ratios to a baseline measured in the same run:

1. **mix** — mask generation + mixing per batch for each method against one plain out-of-place
   copy of the batch (the memory-traffic floor) and a straightforward per-sample numpy loop
   with int64 pixel masks (the official MixPro code's approach, written here from its
   description, used only as a yardstick); plus the cost of turning logits + attention into
   targets. In the same interleaved run, **the same jobs in timm and torchvision**: images
   *and* soft targets (ours unpacked as ``x, y = mixer(x, y)``, timm's contract) for
   Mixup/CutMix per batch and per sample (``elem``/``pair``). timm mixes in place, so its
   timing is *clone + mix* (ours are out of place); torchvision ``transforms.v2.MixUp``/
   ``CutMix`` are batch-level only and out of place.
2. **step** — a full training step (mix, forward, relabel, backward, optimiser) of a timm DeiT
   (or any ``--model``: Swin, ConvNeXt, ResNet get the class-attention head of ``mixpro
   train``'s ``cls_head: auto``) for none / CutMix / TransMix / MixPro, and MixPro with the
   alternative ways of getting attention: our cls-row probe, un-fusing the last block, an
   extra no-grad forward on the unmixed images (OpenMixup's way). Images/s and the ratio to
   no mixing (Table 2's speed).

CUDA timings use CUDA events after synchronisation; CPU timings use ``perf_counter``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import timm
import torch

from . import (
    ClsAttention,
    Mixup,
    NoMix,
    _kernels,
    options,
)
from .errors import UserError
from .files import atomic_write_text
from .options import option

MemoryMode = Literal["system", "reused"]


class BenchError(UserError):
    """A user error of ``mixpro bench`` (one line naming the flag, exit status 2)."""


@dataclass(frozen=True)
class BenchOptions:
    """Options of ``mixpro bench`` (field names are the CLI's ``dest`` names).

    Attributes:
        device: ``'cpu'`` or ``'cuda[:N]'``; None = CUDA if available.
        model: timm model of the training-step section.
        img_size: step image size (None = 224).
        batch: step batch (None = 32 on CPU, 128 on CUDA).
        repeats: timed repeats (None = 5 on CPU, 20 on CUDA).
        warmup: warm-up rounds before timing.
        amp: bfloat16 autocast in the step.
        skip_step: only the mix section.
        skip_mix: only the step section.
        recipe: time the step of this ``mixpro train`` recipe's model (its model,
            model_kwargs, img_size, in_chans, patch_size, mask_scale, batch_size, cls_head):
            e.g. ``fashion_mnist_limited_swin``; ``model``/``img_size``/``batch`` then come from
            the recipe.
        output: folder for ``bench-<device>.{md,json}``.
        busy: other processes kept spinning on the CPU during the run (0: none).
        memory: the CPU memory regime, see :func:`memory_regime`.
    """

    device: str | None = option(None, help="cpu or cuda[:N] (default: cuda if available)")
    model: str = option("deit_tiny_patch16_224", help=(
        "timm model for the step; models without a cls token (swin_*, convnext_*, resnet*) "
        "get mixpro train's cls_head auto head"))
    img_size: int | None = option(None, ge=1, help="step image size (default 224)")
    batch: int | None = option(None, ge=1, help="step batch (default: 32 on CPU, 128 on "
                               "CUDA)")
    repeats: int | None = option(None, ge=1, help="timed repeats (default 5 on CPU, 20 on "
                                 "CUDA)")
    warmup: int = option(2, ge=0, help="warm-up rounds before timing")
    amp: bool = option(False, help="bfloat16 autocast in the step")
    skip_step: bool = option(False, help="only the mix section")
    skip_mix: bool = option(False, help="only the step section")
    recipe: str | None = option(None, help=(
        "time the step of this mixpro train recipe's model, geometry and batch (e.g. "
        "fashion_mnist_limited_swin) instead of --model"))
    output: str = option("benchmarks/results", help="folder for bench-<device>.{md,json}")
    busy: int = option(0, ge=0, help=(
        "keep N other processes spinning on the CPU for the whole run (a busy machine, the "
        "kernels' worst case); files bench-<device>-busy<N>.{md,json}"))
    memory: MemoryMode = option("system", help=(
        "CPU memory regime (glibc): system (the allocator as a training loop has it: big "
        "outputs on new pages, each paying its page faults) | reused (freed memory is kept: "
        "no call pays page faults, so the kernels' own work is timed, run after run); "
        "reused writes bench-<device>-reused.{md,json}"))

    def __post_init__(self) -> None:
        options.check_flags(self, BenchError)
        if self.skip_mix and self.skip_step:
            raise BenchError("skip_mix and skip_step together leave nothing to time")
        out = Path(self.output)
        for p in (out, *out.parents):  # the nearest existing folder on the way must be one
            if p.exists():
                if not p.is_dir():
                    raise BenchError(f"--output {out}: {p} exists and is not a folder")
                break
        if self.recipe is not None:
            default = {f.name: f.default for f in dataclasses.fields(self)}
            given = [f"--{n.replace('_', '-')}" for n in ("model", "img_size", "batch")
                     if getattr(self, n) != default[n]]
            if given:
                raise BenchError(f"--recipe sets the step's model, image size and batch: drop "
                                 f"{', '.join(given)}")


def official_numpy_maskmix(
    x: torch.Tensor, mask_patch: int, rng: np.random.Generator
) -> tuple[torch.Tensor, float]:
    """Per-sample numpy loop building int64 pixel masks, as the official MixPro code does.

    ``G = ceil(H / mask_patch)``; ``k = ceil(G²·τ)``; positions per sample; mask upsampled with
    ``np.repeat``, cropped, expanded to C channels as int64 and copied to the device; partner
    ``randperm``; ``x̃ = M·x + (1-M)·x[perm]``. A yardstick only.
    """
    b, c, h, w = x.shape
    g = math.ceil(h / mask_patch)
    k = math.ceil(g * g * rng.beta(1.0, 1.0))
    masks = []
    for _ in range(b):
        flat = np.zeros(g * g, dtype=np.int64)
        flat[rng.permutation(g * g)[:k]] = 1
        pix = flat.reshape(g, g).repeat(mask_patch, 0).repeat(mask_patch, 1)[:h, :w]
        masks.append(np.broadcast_to(pix, (c, h, w)))
    m = torch.from_numpy(np.stack(masks)).to(x.device)
    index = torch.randperm(b, device=x.device)
    return m * x + (1 - m) * x[index], k / (g * g)


def reference_fmix(x: torch.Tensor, rng: np.random.Generator, decay: float = 3.0
                   ) -> torch.Tensor:
    """The official FMix code's way (a yardstick): one numpy low-frequency mask per batch
    (``rfft`` noise, ``irfft2``, argsort binarisation) on the host, copied to the device,
    ``M·x + (1-M)·x[perm]`` with ``randperm``."""
    b, _, h, w = x.shape
    lam = rng.beta(1.0, 1.0)
    freqs = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay
    spec = (rng.standard_normal(freqs.shape) + 1j * rng.standard_normal(freqs.shape)) * scale
    img = np.fft.irfft2(spec, s=(h, w)).reshape(-1)
    mask = np.zeros(h * w, dtype=np.float32)
    mask[np.argsort(-img)[:int(round(lam * h * w))]] = 1.0
    m = torch.from_numpy(mask.reshape(1, 1, h, w)).to(x.device)
    return m * x + (1 - m) * x[torch.randperm(b, device=x.device)]


def reference_resizemix(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """OpenMixup's ResizeMix way (a yardstick): a clone, the permuted batch resized (nearest)
    into one box, pasted in place."""
    b, _, h, w = x.shape
    tau = rng.uniform(0.1, 0.8)
    bh, bw = max(1, int(tau * h)), max(1, int(tau * w))
    y0, x0 = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
    out = x.clone()
    out[..., y0:y0 + bh, x0:x0 + bw] = torch.nn.functional.interpolate(
        x[torch.randperm(b, device=x.device)], size=(bh, bw), mode="nearest")
    return out


def reference_saliencymix(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor | None:
    """The released SaliencyMix / OpenMixup way (a yardstick): OpenCV's fine-grained saliency
    of one partner image per batch on the host, one box for the batch. None without OpenCV
    (``opencv-contrib-python-headless``, a test dependency)."""
    try:
        import cv2
    except ImportError:
        return None
    b, _, h, w = x.shape
    perm = torch.randperm(b, device=x.device)
    lam = rng.beta(1.0, 1.0)
    img = (x[perm[0]].detach().float().cpu().clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
    ok, sal = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(img)
    cy, cx = np.unravel_index(int(np.argmax(sal)), sal.shape)
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    return out


class _Clock:
    """Times one call on ``device`` (CUDA events after a sync, else ``perf_counter``)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


_MAX_CALIBRATION_CALLS = 60


def interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds per call of each function, run in turn ``repeats`` times after warm-up
    (and, on CPU, after the mixing kernels have chosen their ways)."""
    clock = _Clock(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    # the CPU kernels time their ways on the first calls of each shape: each function is
    # called again while its calls still calibrate (bounded), so that the timed repeats
    # measure the choice, not the search
    if device.type == "cpu":
        for fn in fns.values():
            idle = 0
            for _ in range(_MAX_CALIBRATION_CALLS):
                before = _kernels.calibration_calls()
                fn()
                idle = 0 if _kernels.calibration_calls() > before else idle + 1
                if idle >= 3 or not _kernels.calibrating():
                    break
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(clock(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def _mixers(num_classes: int, patch: int, scale: int) -> dict[str, object]:
    """Every registered method that needs only the batch (:data:`mixpro.methods.METHODS`),
    built as ``mixpro train`` builds it (its default options, ``mask_scale=scale``)."""
    from .methods import METHODS, MixOptions, build_mixer

    opts = MixOptions(mask_scale=scale)
    return {name: build_mixer(name, opts, num_classes=num_classes, patch_size=patch,
                              generator=torch.Generator().manual_seed(0))
            for name, m in METHODS.items() if not m.helpers}


# The same job in each library: (job, our mixer, timm.data.Mixup keywords, torchvision class)
_JOBS: tuple[tuple[str, dict, dict, str | None], ...] = (
    ("Mixup, batch", dict(mixup_alpha=1.0, cutmix_alpha=0.0), dict(mixup_alpha=1.0,
                                                                   cutmix_alpha=0.0), "MixUp"),
    ("CutMix, batch", dict(mixup_alpha=0.0, cutmix_alpha=1.0), dict(mixup_alpha=0.0,
                                                                    cutmix_alpha=1.0), "CutMix"),
    ("Mixup, elem", dict(mixup_alpha=1.0, cutmix_alpha=0.0, mode="elem"),
     dict(mixup_alpha=1.0, cutmix_alpha=0.0, mode="elem"), None),
    ("CutMix, elem", dict(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem"),
     dict(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem"), None),
    ("CutMix, pair", dict(mixup_alpha=0.0, cutmix_alpha=1.0, mode="pair"),
     dict(mixup_alpha=0.0, cutmix_alpha=1.0, mode="pair"), None),
    ("Mixup+CutMix, elem", dict(mixup_alpha=1.0, cutmix_alpha=1.0, mode="elem"),
     dict(mixup_alpha=1.0, cutmix_alpha=1.0, mode="elem"), None),
)
LIBRARIES = ("mixpro", "timm", "torchvision")


def library_jobs(
    x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> dict[str, dict[str, Callable[[], object]]]:
    """``{job: {library: fn}}``: each fn turns ``(x, y)`` into mixed images + soft targets.

    Ours unpacked as timm's ``x, y = mixer(x, y)`` (out of place); timm's ``Mixup`` on a clone of
    ``x`` (it mixes in place: the clone is part of its timing); torchvision
    ``transforms.v2.MixUp``/``CutMix`` (batch-level jobs only, out of place; skipped when
    torchvision is not installed).
    """
    from timm.data import Mixup as TimmMixup

    try:
        from torchvision.transforms import v2 as tv2
    except ImportError:  # torchvision is optional
        tv2 = None
    jobs: dict[str, dict[str, Callable[[], object]]] = {}
    for job, ours_kw, timm_kw, tv_name in _JOBS:
        ours = Mixup(num_classes=num_classes, label_smoothing=0.1, **ours_kw)
        theirs = TimmMixup(num_classes=num_classes, label_smoothing=0.1, **timm_kw)
        fns: dict[str, Callable[[], object]] = {
            "mixpro": lambda f=ours: tuple(f(x, y)),
            "timm": lambda f=theirs: f(x.clone(), y),
        }
        if tv2 is not None and tv_name is not None:
            tv = getattr(tv2, tv_name)(alpha=1.0, num_classes=num_classes)
            fns["torchvision"] = lambda f=tv: f(x, y)
        jobs[job] = fns
    return jobs


def _kernel_choice(fn: Callable[[], object]) -> tuple[str | None, list[dict]]:
    """The way(s) the CPU kernels chose for one more call of ``fn`` (None: no choice), and
    what they knew then of each call signature that call timed: ``[{"chosen", "settled",
    "ways_ms": {way: median ms, or None while not timed}}]`` (the evidence behind the
    choice)."""
    before = {(c["signature"], tuple(c["ways"])): c["calls"] for c in _kernels.choices()}
    with _kernels.recording() as ran:
        fn()
    timed = [c for c in _kernels.choices()
             if before.get((c["signature"], tuple(c["ways"]))) != c["calls"]]
    evidence = [{"chosen": c["chosen"], "settled": c["settled"],  # None: not timed yet
                 "ways_ms": {w: 1e3 * t if math.isfinite(t) else None
                             for w, t in c["ways"].items()}} for c in timed]
    return ", ".join(dict.fromkeys(ran)) or None, evidence


def bench_mix(
    *, batch: int, channels: int, size: int, patch: int, scale: int, device: torch.device,
    repeats: int, warmup: int, num_classes: int = 1000,
) -> dict:
    """Mix cost per batch of each method, against the copy floor and the official loop, and
    the same jobs in timm and torchvision (all interleaved in one run)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    rng = np.random.default_rng(0)
    mixers = _mixers(num_classes, patch, scale)
    fns: dict[str, Callable[[], object]] = {
        "copy": lambda: x.clone(),
        "official_numpy_loop": lambda: official_numpy_maskmix(x, patch * scale, rng),
        "reference: fmix (official numpy)": lambda: reference_fmix(x, rng),
        "reference: resizemix (OpenMixup)": lambda: reference_resizemix(x, rng),
    }
    if channels == 3 and reference_saliencymix(x[:2], rng) is not None:
        fns["reference: saliencymix (released, OpenCV)"] = lambda: reference_saliencymix(x, rng)
    fns.update({k: (lambda m=m: m(x, y)) for k, m in mixers.items()})
    jobs = library_jobs(x, y, num_classes)
    for job, libs in jobs.items():
        fns.update({f"{lib} | {job}": fn for lib, fn in libs.items()})
    med = interleaved(fns, device, repeats, warmup)
    # relabel cost: targets from logits + attention, on a fixed mixed batch per method
    logits = torch.randn(batch, num_classes, device=device)
    # a cls→patch row as the probe gives it: softmax over cls + patches (sums below 1)
    attn = torch.softmax(torch.randn(batch, (size // patch) ** 2 + 1, device=device), 1)[:, 1:]
    tgt = {}
    for k, m in mixers.items():
        b = m(x, y)
        tgt[k] = lambda b=b: b.targets(logits, attn)
    med_t = interleaved(tgt, device, repeats, warmup)
    rows = []
    for k, v in med.items():
        if " | " in k:
            continue
        way, evidence = _kernel_choice(fns[k]) if k in mixers else (None, [])
        rows.append({
            "method": k, "mix_ms": 1e3 * v, "x_copy": v / med["copy"],
            "speedup_vs_official": med["official_numpy_loop"] / v,
            "targets_ms": 1e3 * med_t[k] if k in med_t else None,
            "kernel": way, "kernel_timings": evidence,
        })
    compare = []
    for job in jobs:
        row: dict = {"job": job}
        for lib in LIBRARIES:
            v = med.get(f"{lib} | {job}")
            row[f"{lib}_ms"] = None if v is None else 1e3 * v
            row[f"{lib}_x_copy"] = None if v is None else v / med["copy"]
        row["mixpro_kernel"], row["mixpro_kernel_timings"] = _kernel_choice(
            fns[f"mixpro | {job}"])
        compare.append(row)
    return {"batch": batch, "shape": [channels, size, size], "patch": patch,
            "mask_scale": scale, "rows": rows, "libraries": compare}


def bench_step(
    *, model_name: str, img_size: int, batch: int, num_classes: int, device: torch.device,
    repeats: int, warmup: int, amp: bool, model_kwargs: dict | None = None,
    in_chans: int = 3, patch_size: int | None = None, mask_scale: int | None = None,
    cls_head: str = "auto",
) -> dict:
    """Training-step throughput of each method and attention source (Table 2's speed).

    Models without a cls token (Swin, ConvNeXt, ResNet, pooled ViTs) get the class-attention
    head ``mixpro train``'s ``cls_head: auto`` gives them (CA-Swin for Swin, a CaiT head
    otherwise), in every variant, "none" included. MaskMix cells are ``mask_scale`` × the
    model's patch (4 for a ConvNet's stem), with the largest of 4, 2, 1 that tiles a ViT's token
    grid, and the smallest whole number of last-stage tokens for a head; ``patch_size``,
    ``mask_scale``, ``in_chans`` and ``cls_head`` override that (a recipe's values).
    """
    def build() -> torch.nn.Module:
        return _step_model(model_name, img_size=img_size, num_classes=num_classes,
                           in_chans=in_chans, patch_size=patch_size, model_kwargs=model_kwargs,
                           cls_head=cls_head).to(device).train()

    probe_model = build()
    head = getattr(probe_model, "mode", None)
    patch, stride, scale = step_geometry(probe_model, model_name, img_size, mask_scale)

    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, in_chans, img_size, img_size, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    amp_ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else None

    def make_step(mixer, attention: str) -> Callable[[], None]:
        """One training step; ``mixer`` may be a function of the step's model (GridMix's
        token head reads that model's patch tokens)."""
        model = build()
        if not hasattr(mixer, "needs_attention"):
            mixer = mixer(model)
        opt = torch.optim.AdamW([*model.parameters(), *mixer.parameters()], lr=1e-4)
        probe = (
            ClsAttention(model, reading="unfused") if attention == "unfused"
            else ClsAttention(model) if attention in ("probe", "extra_forward") else None
        )

        def step() -> None:
            b = mixer(x, y)
            with amp_ctx() if amp_ctx else _null():
                if attention == "extra_forward":
                    with torch.no_grad():
                        model(x)  # OpenMixup: attention of the unmixed images
                    att = probe.attention.clone()
                logits = model(b.images)
                if attention in ("probe", "unfused"):
                    att = probe.attention
                elif attention == "none":
                    att = None
            loss = b.loss(logits.float(), att)  # soft-target CE (+ a method's auxiliary loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    # a head's tokens are last-stage cells: the same MaskMix cells in those units, so that the
    # extra forward's attention (a copy, without the probe's grid) gets the right grid too
    from .methods import MixOptions, build_mixer

    unit = stride or patch
    m = _mixers(num_classes, unit, scale * patch // unit)
    variants = {
        "none": make_step(NoMix(num_classes=num_classes), "none"),
        "cutmix": make_step(m["cutmix"], "none"),
        "transmix (probe)": make_step(m["transmix"], "probe"),
        "mixpro (probe)": make_step(m["mixpro"], "probe"),
        "mixpro (un-fused last block)": make_step(m["mixpro"], "unfused"),
        "mixpro (extra no-grad forward)": make_step(m["mixpro"], "extra_forward"),
        "saliencymix": make_step(m["saliencymix"], "none"),
        **{name: make_step(m[name], "none") for name in ("fmix", "resizemix", "gridmixup")},
    }
    if stride is None and hasattr(probe_model, "num_prefix_tokens"):  # a ViT's patch tokens
        variants["gridmix (token head)"] = make_step(
            lambda model: build_mixer("gridmix", MixOptions(mask_scale=scale),
                                      num_classes=num_classes, patch_size=patch,
                                      generator=torch.Generator().manual_seed(0), model=model),
            "none")
    helper = dict(num_classes=num_classes, patch_size=unit,
                  generator=torch.Generator().manual_seed(0))
    try:
        import gco  # noqa: F401 - Puzzle-Mix's graph cuts (mixpro[puzzlemix])

        variants["puzzlemix (saliency + graph cuts)"] = make_step(
            lambda model: build_mixer("puzzlemix", MixOptions(), model=model, **helper), "none")
    except ImportError:
        pass
    # Attentive-CutMix's paper extractor (ResNet-50, random weights: the cost is what counts)
    # and a TokenMix teacher of the student's own architecture, both frozen, no-grad
    extractor = timm.create_model("resnet50", num_classes=0, in_chans=in_chans).to(device)
    if img_size % 32 == 0 and 32 % unit == 0 and (img_size // 32) ** 2 > 6:
        variants["attentive_cutmix (ResNet-50 extractor)"] = make_step(
            build_mixer("attentive_cutmix", MixOptions(), extractor=extractor, **helper), "none")
    if stride is None and hasattr(probe_model, "num_prefix_tokens"):  # a ViT teacher's map
        variants["tokenmix (teacher = the same model)"] = make_step(
            build_mixer("tokenmix", MixOptions(), teacher=build(), **helper), "none")
    med = interleaved(variants, device, repeats, warmup)
    rows = [{"variant": k, "step_ms": 1e3 * v, "images_per_s": batch / v,
             "x_none": v / med["none"]} for k, v in med.items()]
    hook = _probe_hook_seconds(probe_model, x, device, repeats, warmup)
    return {"model": model_name, "img_size": img_size, "batch": batch, "amp": amp,
            "cls_head": head, "patch": patch, "mask_scale": scale, "rows": rows,
            "probe_hook_ms": 1e3 * hook, "probe_hook_share_of_step": hook / med["none"]}


def _step_model(model_name: str, *, img_size: int, num_classes: int, in_chans: int = 3,
                patch_size: int | None = None, model_kwargs: dict | None = None,
                cls_head: str = "auto") -> torch.nn.Module:
    """The step's model (CPU, seeded), with ``mixpro train``'s class-attention head."""
    from . import models

    torch.manual_seed(0)
    model, _ = models.create_model(model_name, num_classes=num_classes, img_size=img_size,
                                   in_chans=in_chans, patch_size=patch_size,
                                   model_kwargs=model_kwargs)
    head = models.resolve_cls_head(model, cls_head, needs_attention=True)
    return models.add_cls_head(model, head)[0]


def step_geometry(model: torch.nn.Module, model_name: str, img_size: int,
                  mask_scale: int | None = None) -> tuple[int, int | None, int]:
    """``(patch, token stride, mask_scale)`` of the step: MaskMix cells are ``mask_scale`` x
    the model's patch (4 for a ConvNet's stem), see :func:`bench_step`.

    Raises:
        BenchError: ``img_size`` is not a whole number of the model's patches, or (a
            class-attention head) of its last-stage tokens.
    """
    from . import models

    patch = models.patch_size(model) or 4
    stride = getattr(model, "token_stride", None)
    if img_size < patch or img_size % patch:
        raise BenchError(f"--img-size {img_size} is not a multiple of {model_name}'s "
                         f"{patch}-px patches")
    if mask_scale is not None:
        return patch, stride, mask_scale
    if stride is None:
        return patch, stride, next(s for s in (4, 2, 1) if (img_size // patch) % s == 0)
    scale = next((s for s in range(1, img_size // patch + 1)
                  if (s * patch) % stride == 0 and img_size % (s * patch) == 0), None)
    if scale is None:
        raise BenchError(f"--img-size {img_size} is not a multiple of {model_name}'s "
                         f"{stride}-px attention tokens")
    return patch, stride, scale


def _probe_hook_seconds(
    model: torch.nn.Module, x: torch.Tensor, device: torch.device, repeats: int, warmup: int
) -> float:
    """Time of the probe's own computation: the cls row from the captured outputs of the
    hooked projections (``qkv``: ViTs, CA-Swin; ``q`` and ``k``: class-attention heads)."""
    probe = ClsAttention(model)
    attn = probe._attn
    names = {"qkv": ("qkv",), "q_k": ("q", "k")}.get(probe.layout)
    if names is None:
        raise ValueError(f"the probe reads {type(attn).__name__} un-fused: no hook to time")
    captured: dict[str, torch.Tensor] = {}
    handles = [getattr(attn, n).register_forward_hook(
        lambda m, i, o, n=n: captured.__setitem__(n, o.detach())) for n in names]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    probe.remove()

    def hook() -> None:
        if probe.layout == "qkv":
            probe._on_qkv(attn.qkv, (), captured["qkv"])
        else:
            probe._on_q(attn.q, (), captured["q"])
            probe._on_k(attn.k, (), captured["k"])

    return interleaved({"hook": hook}, device, repeats * 5, warmup)["hook"]


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``/proc/cpuinfo``, or the text ``cpuinfo``; else
    ``platform.processor()``) with, where listed, its x86 family and model numbers (a
    virtual machine's "AMD EPYC" names no generation) and the ISA extensions that decide our
    kernels' speed (AVX2, AVX-512, AMX), e.g. ``"AMD EPYC (family 25 model 1; AVX2)"``."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or "unknown CPU"
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():  # each field's first value: the first processor's
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    flags = fields.get("flags", "").split()
    isa = [n for n, f in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_tile"))
           if f in flags]
    parts = []
    if fields.get("cpu family") and fields.get("model"):
        parts.append(f"family {fields['cpu family']} model {fields['model']}")
    if isa:
        parts.append(", ".join(isa))
    return f"{name} ({'; '.join(parts)})" if parts else name


def environment(device: torch.device, busy: int = 0, memory: MemoryMode = "system") -> dict:
    """The machine a result comes from: CPU model and ISA, cores, threads, versions, the load
    when it started, the spinning processes of ``--busy`` and the memory regime."""
    env = {
        "device": str(device), "torch": torch.__version__, "timm": timm.__version__,
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "busy_processes": busy, "memory": memory,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


MASKMIX_X_COPY = 1.6  # goal: MaskMix at most this many plain copies of the batch


def goals(mix_sections: list[dict]) -> list[dict]:
    """The speed goals, checked on one run's numbers: every mixpro job at or below the
    fastest of timm and torchvision on the same job, and MaskMix at most 1.6× a plain copy
    where a copy takes at least 1 ms (below that, per-call overhead is what is timed)."""
    out = []
    for mix in mix_sections:
        c, h, w = mix["shape"]
        shape = f"B={mix['batch']}, {c}×{h}×{w}"
        cells = f"{shape}, patch {mix['patch']}, mask_scale {mix['mask_scale']}"
        copy = next(r for r in mix["rows"] if r["method"] == "copy")
        maskmix = next((r for r in mix["rows"] if r["method"] == "maskmix"), None)
        if maskmix is not None and copy["mix_ms"] >= 1.0:
            out.append({"goal": f"maskmix × copy, {cells}", "value": maskmix["x_copy"],
                        "limit": MASKMIX_X_COPY, "met": maskmix["x_copy"] <= MASKMIX_X_COPY})
        for r in mix.get("libraries", []):
            others = [r[f"{lib}_ms"] for lib in LIBRARIES[1:] if r[f"{lib}_ms"] is not None]
            if others and r["mixpro_ms"] is not None:
                ratio = r["mixpro_ms"] / min(others)
                out.append({"goal": f"mixpro ÷ fastest of timm/torchvision: {r['job']}, {shape}",
                            "value": ratio, "limit": 1.0, "met": ratio <= 1.0})
    return out


def to_markdown(result: dict) -> str:
    env = result["environment"]
    busy = env.get("busy_processes") or 0
    load = env.get("load_avg_1min")
    lines = [f"# mixpro bench — {env.get('gpu', env['device'])}", "",
             f"{env.get('cpu', 'CPU not recorded')}, {env.get('cpu_count', '?')} cores, "
             f"torch {env['torch']}, timm {env['timm']}, {env['threads']} threads, "
             f"{env['platform']}, {env['date']}"
             + ("" if load is None else f"; load {load:.2f} at the start")
             + (f"; **busy: {busy} other processes spinning on the CPU**" if busy else "")
             + f"; memory: {env.get('memory', 'system')}",
             "", f"Command: `{result['command']}` "
             f"(medians of {result.get('repeats', '?')} interleaved repeats after "
             f"{result.get('warmup', '?')} warm-up rounds and the kernels' choice of ways)", ""]
    if result.get("goals"):
        lines += ["## Goals", "", "| goal | value | limit | met |", "|---|---:|---:|---|"]
        for g in result["goals"]:
            lines.append(f"| {g['goal']} | {g['value']:.2f} | {g['limit']:.2f} | "
                         f"{'yes' if g['met'] else '**no**'} |")
        lines.append("")
    for mix in result["mix"]:
        c, h, w = mix["shape"]
        lines += [f"## Mask + mix per batch: B={mix['batch']}, {c}×{h}×{w}, patch "
                  f"{mix['patch']}, mask_scale {mix['mask_scale']}", "",
                  "| method | mix ms | × copy | speed-up vs official loop | targets ms | "
                  "kernel way chosen |",
                  "|---|---:|---:|---:|---:|---|"]
        for r in mix["rows"]:
            t = "" if r["targets_ms"] is None else f"{r['targets_ms']:.2f}"
            lines.append(f"| {r['method']} | {r['mix_ms']:.2f} | {r['x_copy']:.2f} | "
                         f"{r['speedup_vs_official']:.1f} | {t} | {r.get('kernel') or ''} |")
        lines.append("")
        if mix.get("libraries"):
            lines += ["Same job in timm and torchvision (mixed images + soft targets, × the "
                      "plain copy above; timm mixes in place, so its time is clone + mix; "
                      "torchvision has batch-level MixUp/CutMix only):", "",
                      "| job | mixpro | timm (clone + mix) | torchvision | mixpro's way |",
                      "|---|---:|---:|---:|---|"]
            for r in mix["libraries"]:
                cells = [
                    "—" if r[f"{lib}_ms"] is None
                    else f"{r[f'{lib}_ms']:.2f} ms ({r[f'{lib}_x_copy']:.2f}×)"
                    for lib in LIBRARIES
                ]
                lines.append(f"| {r['job']} | " + " | ".join(cells)
                             + f" | {r.get('mixpro_kernel') or ''} |")
            lines.append("")
    step = result.get("step")
    if step:
        head = f", cls_head {step['cls_head']}" if step.get("cls_head") else ""
        lines += [f"## Training step: {step['model']}{head}, {step['img_size']}², "
                  f"B={step['batch']}, AMP {'on' if step['amp'] else 'off'}, MaskMix patch "
                  f"{step['patch']} × mask_scale {step['mask_scale']}", "",
                  "| variant | step ms | images/s | × none |", "|---|---:|---:|---:|"]
        for r in step["rows"]:
            lines.append(f"| {r['variant']} | {r['step_ms']:.1f} | {r['images_per_s']:.1f} | "
                         f"{r['x_none']:.3f} |")
        lines += ["", f"The probe's own computation: {step['probe_hook_ms']:.3f} ms per step, "
                  f"{100 * step['probe_hook_share_of_step']:.2f} % of a no-mixing step.", ""]
    return "\n".join(lines)


_DEFAULTS = BenchOptions()


# glibc's mallopt parameters (malloc.h), its default mmap count, and the most
# its dynamic mmap threshold rises to on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_DEFAULT_MMAP_MAX, _DYNAMIC_THRESHOLD_MAX = 65536, 32 << 20


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt``), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


@contextlib.contextmanager
def memory_regime(mode: MemoryMode) -> Iterator[None]:
    """The CPU memory regime of a run (glibc's ``mallopt``), reset afterwards (see below).

    On a glibc system a block that the heap's free memory cannot serve and that is above the
    mmap threshold (128 KiB, raised by the allocator up to 32 MiB as blocks are freed) comes as
    new pages whose first touch costs a page fault each: for a 77 MB batch of 3×224² images
    ~35 ms, 5–8× the copy itself, and whether mid-size blocks (masks, indices) get new or
    reused pages depends on what was freed before, so the ratios of one run move from those
    of another. ``'system'`` leaves the allocator alone (what a training loop gets);
    ``'reused'`` keeps freed memory in the heap (no mmap, no trimming), so after warm-up no
    call faults and the kernels' own work is timed. Afterwards the memory kept is released
    and the thresholds are set where glibc's dynamic threshold ends in a long process
    (32 MiB, trimming at twice that): a ``mallopt`` switches the dynamic threshold off for
    good, and its 128 KiB start would put every later mid-size block on new pages.
    ``'reused'`` raises :class:`BenchError` where the C library is not glibc.
    """
    if mode not in typing.get_args(MemoryMode):
        raise BenchError(f"--memory must be system or reused, got {mode!r}")
    if mode == "system":
        yield
        return
    libc = _glibc()
    if libc is None:
        raise BenchError("--memory reused needs glibc's mallopt (Linux); use --memory system")
    try:
        for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)):
            if libc.mallopt(param, value) != 1:
                raise BenchError(f"--memory reused: glibc refused mallopt({param}, {value})")
        yield
    finally:
        for param, value in ((_M_MMAP_MAX, _DEFAULT_MMAP_MAX),
                             (_M_TRIM_THRESHOLD, 2 * _DYNAMIC_THRESHOLD_MAX),
                             (_M_MMAP_THRESHOLD, _DYNAMIC_THRESHOLD_MAX)):
            libc.mallopt(param, value)
        libc.malloc_trim(0)


@contextlib.contextmanager
def _spinning(n: int) -> Iterator[None]:
    """``n`` other Python processes spinning on the CPU for the duration (``--busy``)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                              stdin=subprocess.DEVNULL) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def command_line(options: BenchOptions) -> str:
    """The ``mixpro bench`` command that reproduces ``options`` (fields that differ from the
    defaults, in field order), recorded with the results."""
    parts = ["mixpro", "bench"]
    for f in dataclasses.fields(BenchOptions):
        value = getattr(options, f.name)
        if value == getattr(_DEFAULTS, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        parts += [flag] if isinstance(value, bool) else [flag, str(value)]
    return shlex.join(parts)


def _recipe_step(name: str) -> dict:
    """The step geometry of a ``mixpro train`` recipe (a name or a YAML path)."""
    from .train.recipe import load_recipe

    r = load_recipe(name, {})
    return dict(model_name=r.model, model_kwargs=r.model_kwargs, img_size=r.img_size,
                in_chans=r.in_channels, patch_size=r.patch_size, mask_scale=r.mask_scale,
                batch=r.batch_size, cls_head="auto" if r.cls_head == "none" else r.cls_head)


def run(options: BenchOptions, command: str | None = None) -> dict:
    """Run the benchmark for ``options``; ``command`` (default: rebuilt from ``options``) is
    recorded with the results. Writes ``bench-<device>.{json,md}`` under ``options.output``."""
    if not isinstance(options, BenchOptions):
        raise TypeError(f"options must be a BenchOptions, got {type(options).__name__}")
    name = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise BenchError(f"--device must be cpu or cuda[:N], got {name!r}")
    memory = options.memory
    if memory != "system" and device.type != "cpu":
        raise BenchError(f"--memory {memory} is for CPU runs (CUDA has its own caching "
                         "allocator); drop it for --device cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda asked for, but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise BenchError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
    cuda = device.type == "cuda"
    repeats = options.repeats or (20 if cuda else 5)
    result = {"command": command or command_line(options),
              "environment": environment(device, options.busy, memory),
              "repeats": repeats, "warmup": options.warmup, "mix": []}
    step = None
    if not options.skip_step:
        step = dict(model_name=options.model, img_size=options.img_size or 224,
                    batch=options.batch or (128 if cuda else 32), num_classes=1000)
        if options.recipe is not None:
            step.update(_recipe_step(options.recipe), num_classes=10)
        # the step's geometry is checked before anything is timed (the mix section comes first)
        keys = ("img_size", "num_classes", "in_chans", "patch_size", "model_kwargs", "cls_head")
        step_geometry(_step_model(step["model_name"], **{k: step[k] for k in keys if k in step}),
                      step["model_name"], step["img_size"], step.get("mask_scale"))
    out = Path(options.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"--output {out}: cannot create the folder ({e.strerror})") from None
    specs = () if options.skip_mix else (dict(batch=128, channels=3, size=224, patch=16, scale=2),
                                          dict(batch=128, channels=3, size=224, patch=14, scale=4),
                                          dict(batch=128, channels=1, size=32, patch=4, scale=2))
    with _spinning(options.busy), memory_regime(memory):
        for spec in specs:
            result["mix"].append(bench_mix(device=device, repeats=repeats,
                                           warmup=options.warmup, **spec))
        if step is not None:
            result["step"] = bench_step(device=device, repeats=repeats, warmup=options.warmup,
                                        amp=options.amp, **step)
            if options.recipe is not None:
                result["step"]["recipe"] = options.recipe
    result["goals"] = goals(result["mix"])
    stem = (f"bench-{device.type}" + (f"-busy{options.busy}" if options.busy else "")
            + ("" if memory == "system" else f"-{memory}"))
    atomic_write_text(json.dumps(result, indent=2) + "\n", out / f"{stem}.json")
    atomic_write_text(to_markdown(result) + "\n", out / f"{stem}.md")
    return result
