"""One training epoch and one evaluation pass.

Owns the inner loop: mix → forward (the probe fills its attention) → targets → soft-target
loss → backward (AMP scaler, gradient clipping) → optimizer and per-step scheduler → EMA, and
the per-epoch statistics (mean loss, images/s, mean α, the last batch's α), kept in an
:class:`EpochState` so that an epoch can stop after any step and continue from it. Evaluation
is sharded over ranks and summed.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import mixpro
from mixpro.evaluate.metrics import average_precision

from .distributed import DistInfo, all_sum


@dataclass
class StepContext:
    """What the loop needs besides the data: all created once by :mod:`.run`."""

    model: nn.Module
    probe: mixpro.ClsAttention | None
    mixer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler | None
    ema: object | None
    amp_dtype: torch.dtype | None
    clip_grad: float | None
    dist: DistInfo
    epochs: int
    steps_per_epoch: int
    sched_per_step: bool
    max_steps: int | None = None
    progress: bool = True
    unmixed: object | None = None  # the ``none`` mixer of the epochs after the mixed ones
    mixed_epochs: int | None = None  # None: every epoch mixes

    def mixer_at(self, epoch: int):
        """The mixer of 0-based ``epoch``: :attr:`unmixed` from ``mixed_epochs`` on."""
        off = self.mixed_epochs is not None and epoch >= self.mixed_epochs
        return self.unmixed if off else self.mixer


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf."""


@dataclass
class EpochState:
    """Where an epoch stands: steps done and the running statistics (a mid-epoch checkpoint
    stores it, so a resumed epoch reports the same numbers as an uninterrupted one)."""

    step: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    alpha_sum: float = 0.0
    alpha_n: int = 0
    alpha_last: list[float] | None = None
    elapsed: float = 0.0


def train_one_epoch(ctx: StepContext, loader: Iterable, epoch: int,
                    state: EpochState | None = None,
                    after_step: Callable[[EpochState], bool] | None = None) -> dict:
    """Train the rest of one epoch from ``state`` (default: its start); ``loader`` yields
    exactly the remaining batches. ``after_step(state)`` runs after every step; when it returns
    True the epoch stops there (preemption) and the result has ``complete: False``.

    Returns ``{"train_loss", "img_per_s", "alpha_mean", "lr", "steps", "alpha_last",
    "complete", "state"}``."""
    model, mixer, dev = ctx.model, ctx.mixer_at(epoch), ctx.dist.device
    mixer_params = mixer.parameters()
    model.train()
    n_steps = ctx.steps_per_epoch
    st = state or EpochState()
    bar = tqdm(total=n_steps, initial=st.step, desc=f"epoch {epoch + 1}/{ctx.epochs}",
               unit="step", disable=not (ctx.progress and ctx.dist.is_main), file=sys.stderr,
               leave=True, dynamic_ncols=True)
    t0 = time.perf_counter() - st.elapsed
    complete = True
    for images, labels in loader:
        step = st.step
        images = images.to(dev, non_blocking=True)
        labels = labels.to(dev, non_blocking=True)
        mixer.set_progress(min(1.0, (epoch + step / n_steps) / ctx.epochs))
        batch = mixer(images, labels)
        with _autocast(dev, ctx.amp_dtype):
            logits = model(batch.images)
        logits = logits.float()
        if not bool(torch.isfinite(logits).all()):
            raise TrainingDiverged(f"non-finite logits at epoch {epoch + 1}, step {step}")
        attention = ctx.probe.attention if batch.needs_attention else None
        loss = batch.loss(logits, attention)  # soft-target CE, or BCE for multi-label
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"loss is {loss_value} at epoch {epoch + 1}, step {step}")
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.scaler is not None:
            ctx.scaler.scale(loss).backward()
            ctx.scaler.unscale_(ctx.optimizer)
        else:
            loss.backward()
        if ctx.dist.distributed and mixer_params:  # learnable α lives outside DDP
            for p in mixer_params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= ctx.dist.world
        if ctx.clip_grad is not None:
            nn.utils.clip_grad_norm_(model.parameters(), ctx.clip_grad)
        if ctx.scaler is not None:
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
        else:
            ctx.optimizer.step()
        num_updates = epoch * n_steps + step + 1
        if ctx.sched_per_step:
            ctx.scheduler.step_update(num_updates=num_updates)
        if ctx.ema is not None:
            ctx.ema.update(model, step=num_updates)
        b = labels.shape[0]
        st.loss_sum += loss_value * b
        st.seen += b
        if batch.needs_attention and batch.alpha is not None:
            alpha = batch.alpha.detach().float().cpu()
            st.alpha_sum += float(alpha.sum())
            st.alpha_n += alpha.numel()
            st.alpha_last = alpha.tolist()
        st.step = step + 1
        st.elapsed = time.perf_counter() - t0
        bar.set_postfix(loss=f"{st.loss_sum / st.seen:.3f}",
                        img_s=f"{st.seen * ctx.dist.world / max(st.elapsed, 1e-9):.0f}",
                        alpha=f"{st.alpha_sum / st.alpha_n:.3f}" if st.alpha_n else "-",
                        refresh=False)
        bar.update(1)
        if after_step is not None and after_step(st) and st.step < n_steps:
            complete = False
            break
    bar.close()
    st.elapsed = time.perf_counter() - t0
    if not complete:
        return {"complete": False, "state": st, "steps": st.step}
    loss_sum, seen, alpha_sum, alpha_n = all_sum([st.loss_sum, st.seen, st.alpha_sum,
                                                  st.alpha_n], ctx.dist)
    if not ctx.sched_per_step:
        ctx.scheduler.step(epoch + 1)
    return {
        "train_loss": loss_sum / max(seen, 1),
        "img_per_s": seen / max(st.elapsed, 1e-9),
        "alpha_mean": alpha_sum / alpha_n if alpha_n else None,
        "lr": ctx.optimizer.param_groups[0]["lr"],
        "steps": st.step,
        "alpha_last": st.alpha_last,
        "complete": True,
        "state": st,
    }


class EvaluationStopped(Exception):  # noqa: N818 - not an error: a signal arrived
    """:func:`evaluate` was stopped by its ``stop`` callback (SIGTERM / SIGINT)."""


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, info: DistInfo,
             amp_dtype: torch.dtype | None = None, multi_label: bool = False,
             stop: Callable[[], bool] | None = None) -> dict:
    """Test metrics over this rank's shard, combined over ranks. ``stop()`` is asked after
    every batch (on every rank); True raises :class:`EvaluationStopped`.

    Single-label: ``{"acc": top-1 %, "loss": mean cross-entropy}``. Multi-label (multi-hot
    ``(B, K)`` labels): ``{"acc": top-1 precision % (the highest-scoring class is one of the
    image's labels), "loss": mean binary cross-entropy, "map": mean average precision % over
    the classes with a positive test image}``.
    """
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0.0, 0.0, 0.0
    scores, targets = [], []
    for images, labels in loader:
        images, labels = images.to(info.device), labels.to(info.device)
        with _autocast(info.device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        top = logits.argmax(1)
        if multi_label:
            loss_sum += float(mixpro.binary_cross_entropy(logits, labels, reduction="sum"))
            correct += float((labels.gather(1, top[:, None]) > 0.5).sum())
            scores.append(logits.cpu())
            targets.append(labels.cpu())
        else:
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += float((top == labels).sum())
        n += labels.shape[0]
        if stop is not None and stop():
            model.train(was_training)
            raise EvaluationStopped
    correct, loss_sum, n = all_sum([correct, loss_sum, n], info)
    model.train(was_training)
    out = {"acc": 100.0 * correct / max(n, 1), "loss": loss_sum / max(n, 1)}
    if multi_label:
        out["map"] = 100.0 * mean_average_precision(gather(scores, info), gather(targets, info))
    return out


def gather(parts: list[torch.Tensor], info: DistInfo) -> torch.Tensor:
    """This rank's ``(n, K)`` pieces concatenated with every other rank's (CPU tensors)."""
    mine = torch.cat(parts) if parts else torch.zeros(0)
    if not info.distributed:
        return mine
    every: list = [None] * info.world
    dist.all_gather_object(every, mine)
    return torch.cat([t for t in every if t.numel()])


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over classes of the average precision of ``scores (N, K)`` against multi-hot
    ``targets (N, K)``; classes with no positive (or no negative) test image are skipped."""
    y = (targets > 0.5).numpy()
    s = scores.double().numpy()
    aps = [average_precision(y[:, c], s[:, c]) for c in range(y.shape[1])
           if 0 < y[:, c].sum() < y.shape[0]]
    return sum(aps) / len(aps) if aps else float("nan")
