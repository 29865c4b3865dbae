"""Mixing kernels: the few tensor calls that build a mixed batch from two sources, tuned
for CPU caches and thread barriers and identical in result on every device.

Owns :func:`_choose` (select by 0/1 weights), :func:`_mix_blocks` (a per-sample mix run over
cache-sized blocks of samples), :func:`_single_threaded` (loops of calls with one intra-op
thread; :func:`set_single_thread_loops` turns that off) and :func:`_use_cell_loop` (whether a
:class:`~mixpro.pixels.CellMask` copies cell by cell). Used by :mod:`mixpro.pixels`; nothing
here draws random numbers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

# How a CellMask mixes (measured on 2 CPU cores, see benchmarks/): one strided copy per cell
# touches each pixel once (1.3x a plain copy at B=128, 3x224²) but pays a per-cell call; a
# select over a pixel mask with a gathered partner (`_choose`, by blocks of samples on CPU,
# `_mix_blocks`) is a few calls. The per-cell loop is used on CPU for batches past the caches
# with large cells; the select everywhere else (small batches, many tiny cells, per-sample
# masks, and on accelerators, where per-call launch latency dominates).
_MAX_CELL_LOOP = 1024
_LOOP_MIN_BYTES = 32 * 2**20
_LOOP_MIN_CELL_ELEMS = 32768


def _use_cell_loop(images: torch.Tensor, n_cells: int) -> bool:
    if images.device.type != "cpu" or images.requires_grad or n_cells > _MAX_CELL_LOOP:
        return False
    total = images.numel()
    return total * images.element_size() >= _LOOP_MIN_BYTES and (
        total // max(n_cells, 1) >= _LOOP_MIN_CELL_ELEMS
    )


# Per-sample masks and blends (a select/lerp against a gathered partner) run on CPU in blocks
# of samples of about _BLOCK_BYTES: each block's partner gather stays in cache (measured on 2
# CPU cores, B=128, 3x224²: gather + select over the whole batch 2.3x a plain copy, in 4 MB
# blocks 1.35x; gather + lerp 2.1x -> 1.2x). Loops of calls (blocks, the per-cell loop) run
# with one intra-op thread: with two, every call ends in an OpenMP barrier, and on a busy
# machine (other processes, data-loader workers) each barrier waits for a descheduled thread
# (measured at load 4 on 2 cores: 4 MB blocks 14-20x a copy with 2 threads, 1.1-1.4x with
# one). Accelerators (launch latency dominates) and autograd inputs take the whole batch in
# one call.
_BLOCK_BYTES = 4 * 2**20

_THREADS_LOCK = threading.Lock()
_threads_state = {"depth": 0, "saved": 1, "enabled": True}


def set_single_thread_loops(enabled: bool = True) -> None:
    """Whether mixpro's CPU loops of calls (blocks of samples, the per-cell copy) set
    ``torch.set_num_threads(1)`` for their duration (default True: immune to barrier stalls
    on a busy machine; the count is restored afterwards). ``False`` leaves the process's
    thread count untouched, e.g. when other Python threads run torch ops meanwhile; results
    are identical either way."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _threads_state["enabled"] = enabled


@contextmanager
def _single_threaded() -> Iterator[None]:
    """One intra-op thread for a loop of calls, restored afterwards (re-entrant and safe
    across Python threads: the count is restored when the last user leaves); nothing when
    :func:`set_single_thread_loops` turned it off."""
    if not _threads_state["enabled"]:
        yield
        return
    with _THREADS_LOCK:
        if _threads_state["depth"] == 0:
            _threads_state["saved"] = torch.get_num_threads()
            if _threads_state["saved"] != 1:
                torch.set_num_threads(1)
        _threads_state["depth"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_state["depth"] -= 1
            if _threads_state["depth"] == 0 and _threads_state["saved"] != 1:
                torch.set_num_threads(_threads_state["saved"])


def _block_size(images: torch.Tensor) -> int:
    """Samples per block for :func:`_mix_blocks`: the whole batch off the CPU."""
    if images.device.type != "cpu" or images.requires_grad:
        return images.shape[0]
    per_sample = images[0].numel() * images.element_size()
    return max(1, _BLOCK_BYTES // max(per_sample, 1))


def _mix_blocks(
    images: torch.Tensor,
    partner: torch.Tensor,
    mix: Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor],
) -> torch.Tensor:
    """A new ``(B, C, H, W)`` tensor whose rows ``r`` are ``mix(images[r], images[partner[r]],
    r)``, block of samples by block (``r`` is a slice; see ``_BLOCK_BYTES``)."""
    b = images.shape[0]
    k = _block_size(images)
    if images.device.type != "cpu":
        return mix(images, images.index_select(0, partner), slice(0, b))
    with _single_threaded():  # also one block: a 2-thread index_select can stall for seconds
        if k >= b:
            return mix(images, images.index_select(0, partner), slice(0, b))
        out = torch.empty_like(images)
        for start in range(0, b, k):
            rows = slice(start, min(b, start + k))
            out[rows] = mix(images[rows], images.index_select(0, partner[rows]), rows)
    return out


def _rows(t: torch.Tensor, rows: slice) -> torch.Tensor:
    """``t[rows]``, or ``t`` itself when it has one row shared by the batch."""
    return t if t.shape[0] == 1 else t[rows]


def _choose(keep: torch.Tensor, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``x`` where ``keep`` (bool, broadcast) else ``other``, as a new tensor.

    Floating images use ``lerp(other, x, keep)``: exact for weights 0 and 1 and 2-4x faster
    than ``torch.where`` on CPU (measured); a non-finite value in one source then turns the
    chosen pixel non-finite too. Integer images use ``torch.where``.
    """
    if x.dtype.is_floating_point:
        return torch.lerp(other, x, keep.to(x.dtype))
    return torch.where(keep, x, other)
