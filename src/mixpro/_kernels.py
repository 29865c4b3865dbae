"""Mixing kernels: the few tensor calls that build a mixed batch from two sources, and the
per-machine choice among equivalent ways of running them.

Owns :func:`fastest` (run the fastest of several ways that give bit-identical results,
chosen by timing real calls on this machine, per call signature), :func:`_mix_blocks` (a
per-sample mix over the whole batch, over cache-sized blocks of samples or sample by sample
with its partner, in :func:`partner_order`), :func:`threaded_ways` (a way with the
process's intra-op threads and with one; :func:`set_single_thread_loops` turns the latter
off), :func:`cell_loop_allowed` (whether a
:class:`~mixpro.pixels.CellMask` may copy cell by cell) and :func:`_choose` (select by 0/1
weights). Used by :mod:`mixpro.pixels`; nothing here draws random numbers.

Why a choice at run time: which way is fastest depends on the CPU and on what else runs. On a
2-core AMD EPYC a per-sample select in 4 MB blocks with one thread was 1.35x a plain copy and
the whole batch with two threads 2.3x; on a 2-core Intel Xeon (AVX-512/AMX) one thread copies
at 0.6x the speed of two, so the one-thread ways lose there. On a busy machine (other
processes on the cores) every two-thread call can wait for a descheduled thread at its
OpenMP barrier (measured at load 4 on 2 cores: 4 MB blocks 14-20x a copy with two threads,
1.1-1.4x with one). No constant fits all three, so each call signature keeps the recent
timings of each way and runs the fastest; the others are timed again now and then, less
often each time they lose, so a machine that turns busy (or quiet) is followed.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")

# ------------------------------------------------------------------------------------------
# Choosing among equivalent ways
# ------------------------------------------------------------------------------------------

_SAMPLES = 3        # timings kept per way (their median is the way's estimate)
_RETRY_FIRST = 16   # calls before a losing way is timed again; doubles each time it loses
_RETRY_MAX = 4096   # ... up to this many calls
_RETRY_GAP = 16     # at most one retry per this many calls of a signature
_HOPELESS = 4.0     # one timing this many times the best: calibrated; a retry: wait x16
_MAX_SIGNATURES = 256


class _Race:
    """The recent timings of each way for one call signature."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.times: dict[str, list[float]] = {n: [] for n in names}
        self.medians: dict[str, float] = dict.fromkeys(names, float("inf"))  # of self.times
        self.retry_at: dict[str, int] = {}  # call count at which a losing way runs again
        self.wait: dict[str, int] = dict.fromkeys(names, _RETRY_FIRST)
        self.calls = 0
        self.last_retry = 0
        self.calibrated = False  # every way timed enough once (retries do not reopen it)

    def estimate(self, name: str) -> float:
        return self.medians[name]

    def best(self) -> str:
        return min(self.medians, key=self.medians.__getitem__)

    def _open(self) -> list[str]:
        """Ways still to be timed in calibration (fewer than 3 timings, not hopeless)."""
        bound = _HOPELESS * self.estimate(self.best())
        return [n for n, t in self.times.items()
                if len(t) < _SAMPLES and not (t and t[-1] > bound)]

    def settled(self) -> bool:
        return self.calibrated

    def pick(self) -> str:
        """The way to run now: calibration first, then a due retry, else the fastest."""
        if not self.calibrated:
            return min(self._open(), key=lambda n: len(self.times[n]))
        due = [n for n, at in self.retry_at.items() if at <= self.calls]
        if due and self.calls - self.last_retry >= _RETRY_GAP:
            return min(due, key=self.retry_at.__getitem__)
        return self.best()

    def record(self, name: str, seconds: float) -> None:
        settled, before = self.settled(), self.best()
        if not settled:
            _calibration["calls"] += 1
        t = self.times[name]
        retry = settled and name != before
        if retry:  # its old timings are stale: the machine may have changed since
            t.clear()
        t.append(seconds)
        del t[:-_SAMPLES]
        self.medians[name] = statistics.median(t)
        self.calls += 1
        best = self.best()
        if retry:  # losing again doubles the wait (x16 when hopeless: stalls are rare)
            self.last_retry = self.calls
            slow = self.estimate(name) > _HOPELESS * self.estimate(best)
            self.wait[name] = _RETRY_FIRST if name == best else min(
                self.wait[name] * (16 if slow else 2), _RETRY_MAX)
            self.retry_at.pop(name, None)
        if best != before:
            self.wait[before] = _RETRY_FIRST
            self.retry_at.pop(before, None)
        self.retry_at.pop(best, None)
        self.calibrated = self.calibrated or not self._open()
        if self.calibrated:
            for n in self.times:
                if n != best and n not in self.retry_at:
                    self.retry_at[n] = self.calls + self.wait[n]


_RACES: OrderedDict[Hashable, _Race] = OrderedDict()
_calibration = {"calls": 0}
_RACES_LOCK = threading.Lock()
_forced: dict[str, str | None] = {"way": None}
_ran: dict[str, list[str] | None] = {"ways": None}
_clock: dict[str, Callable[[], float]] = {"now": time.perf_counter}


def fastest(signature: Hashable, ways: dict[str, Callable[[], T]]) -> T:
    """Run one of ``ways`` (zero-argument callables that return identical results) and
    return its result: the fastest so far for ``signature`` on this machine.

    The first calls of a signature time each way (up to 3 times); afterwards the way with the
    lowest median of its last 3 timings runs, and each other way is timed again after 16
    calls, then 32, 64, ... up to 4096 while it keeps losing (x16 instead of x2 when it is
    over 4x slower), at most one retry per 16 calls, so a change of load is followed at a
    bounded cost. Timings are the real calls: nothing extra runs.
    """
    names = tuple(ways)
    forced = _forced["way"]
    if len(names) == 1 or (forced is not None and forced in ways):
        name = names[0] if len(names) == 1 else forced
        _note(name)
        return ways[name]()
    key = (signature, names)
    with _RACES_LOCK:
        race = _RACES.get(key)
        if race is None:
            race = _RACES[key] = _Race(names)
            if len(_RACES) > _MAX_SIGNATURES:
                _RACES.popitem(last=False)
        else:
            _RACES.move_to_end(key)
        name = race.pick()
    _note(name)
    now = _clock["now"]
    t0 = now()
    out = ways[name]()
    seconds = now() - t0
    with _RACES_LOCK:
        race.record(name, seconds)
    return out


def _note(name: str) -> None:
    if _ran["ways"] is not None:
        _ran["ways"].append(name)


@contextmanager
def recording() -> Iterator[list[str]]:
    """The names of the ways run inside the block, in order (for ``mixpro bench``)."""
    saved, _ran["ways"] = _ran["ways"], []
    try:
        yield _ran["ways"]
    finally:
        _ran["ways"] = saved


def choices() -> list[dict]:
    """What :func:`fastest` has learnt so far, newest signature last: ``[{"signature",
    "ways": {name: median seconds}, "chosen", "settled", "calls"}]`` (``calls``: the timed
    calls of the signature so far; for ``mixpro bench``)."""
    with _RACES_LOCK:
        return [{"signature": key[0], "ways": {n: race.estimate(n) for n in race.times},
                 "chosen": race.best(), "settled": race.settled(), "calls": race.calls}
                for key, race in _RACES.items()]


def calibrating() -> int:
    """How many call signatures are still timing their ways for the first time."""
    with _RACES_LOCK:
        return sum(not race.settled() for race in _RACES.values())


def calibration_calls() -> int:
    """How many calls so far timed a way of a signature that was still calibrating."""
    return _calibration["calls"]


def forget() -> None:
    """Drop every timing (the next calls calibrate again)."""
    with _RACES_LOCK:
        _RACES.clear()


@contextmanager
def forced(way: str | None) -> Iterator[None]:
    """Run ``way`` wherever it is one of the ways (tests, ``mixpro bench``'s per-way rows);
    ``None`` restores the choice by timing."""
    saved = _forced["way"]
    _forced["way"] = way
    try:
        yield
    finally:
        _forced["way"] = saved


# ------------------------------------------------------------------------------------------
# Threads
# ------------------------------------------------------------------------------------------

_THREADS_LOCK = threading.Lock()
_threads_state = {"depth": 0, "saved": 1, "enabled": True}


def set_single_thread_loops(enabled: bool = True) -> None:
    """Whether mixpro's CPU mixing may run some of its ways with one intra-op thread
    (``torch.set_num_threads(1)`` for the duration of a call, restored afterwards; default
    True). ``False`` leaves the process's thread count untouched, e.g. when other Python
    threads run torch ops meanwhile; results are identical either way."""
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


def threaded_ways(name: str, fn: Callable[[], T]) -> dict[str, Callable[[], T]]:
    """``fn`` as the ways ``name`` (the process's intra-op threads) and ``"<name>, 1 thread"``
    (one thread, restored afterwards: immune to barrier stalls on a busy machine), the latter
    only when :func:`set_single_thread_loops` allows it and the process has more threads."""
    ways = {name: fn}
    if _threads_state["enabled"] and torch.get_num_threads() > 1:
        def one() -> T:
            with _single_threaded():
                return fn()

        ways[f"{name}, 1 thread"] = one
    return ways


def timed_ways(images: torch.Tensor, *inputs: torch.Tensor) -> bool:
    """Whether a call on ``images`` (and the other tensors its mix reads, e.g. Mixup weights)
    chooses among ways: CPU images, nothing that requires grad (the ways write into views
    of one result, which autograd refuses; on an accelerator one whole-batch call is best:
    launch latency dominates)."""
    return images.device.type == "cpu" and not any(
        t.requires_grad for t in (images, *inputs))


def signature(tag: str, images: torch.Tensor, *extra: Hashable) -> tuple:
    """The call signature of a mix: what decides which way is fastest."""
    return (tag, tuple(images.shape), images.dtype, torch.get_num_threads(), *extra)


# ------------------------------------------------------------------------------------------
# Per-sample mixing: the whole batch, or blocks of samples
# ------------------------------------------------------------------------------------------

# Blocks of samples of about these sizes are ways too: a block's partner gather stays in
# cache (on the AMD EPYC above, gather + select over the whole batch was 2.3x a copy, in 4 MB
# blocks 1.35x); which size fits depends on the CPU's caches.
_BLOCK_BYTES = (1 * 2**20, 4 * 2**20, 16 * 2**20)
_MAX_CELL_LOOP = 1024  # more cells than this: the per-cell loop is all Python overhead
_MAX_PAIR_LOOP = 1024  # more samples than this: the per-sample loop is all Python overhead

Mix = Callable[[torch.Tensor, torch.Tensor, slice, "torch.Tensor | None"], torch.Tensor]
"""``mix(x, other, rows, out)``: rows ``rows`` of the mixed batch from ``x`` (those rows of
the images) and ``other`` (their partners: gathered, or views of the images, so never
written), written into ``out`` (a view of the result's rows) when it is given, else into a
new tensor; returns it."""


def _whole(images: torch.Tensor, partner: torch.Tensor, mix: Mix) -> torch.Tensor:
    return mix(images, images.index_select(0, partner), slice(0, images.shape[0]), None)


def _blocked(images: torch.Tensor, partner: torch.Tensor, mix: Mix, k: int) -> torch.Tensor:
    b = images.shape[0]
    out = torch.empty_like(images)
    for start in range(0, b, k):
        rows = slice(start, min(b, start + k))
        mix(images[rows], images.index_select(0, partner[rows]), rows, out[rows])
    return out


def partner_order(partner: list[int]) -> list[int]:
    """Every sample once, each followed by its partner where that one is still to come
    (``0, p[0], p[p[0]], ...``, then the next sample not yet listed): along a cycle of the
    pairing a sample is read as a partner one step before its own turn, while it is in
    cache."""
    seen = [False] * len(partner)
    order = []
    for start in range(len(partner)):
        i = start
        while not seen[i]:
            seen[i] = True
            order.append(i)
            i = partner[i]
    return order


def _pairs(images: torch.Tensor, partner: torch.Tensor, mix: Mix) -> torch.Tensor:
    """``mix`` sample by sample in :func:`partner_order`, straight from the two samples
    (no gathered partner batch): each image is read from memory about once."""
    b = images.shape[0]
    src = partner.tolist()
    if len(src) != b or (src and (min(src) < 0 or max(src) >= b)):  # as index_select would
        raise IndexError(f"partner must hold {b} indices in [0, {b}), got {len(src)} in "
                         f"[{min(src, default=0)}, {max(src, default=0)}]")
    out = torch.empty_like(images)
    rows, out_rows = images.split(1), out.split(1)  # every row's view in one call each
    for i in partner_order(src):
        mix(rows[i], rows[src[i]], slice(i, i + 1), out_rows[i])
    return out


def block_samples(images: torch.Tensor, block_bytes: int) -> int:
    """Samples per block of about ``block_bytes`` (at least 1)."""
    per_sample = images.numel() // max(images.shape[0], 1) * images.element_size()
    return max(1, block_bytes // max(per_sample, 1))


def mix_ways(images: torch.Tensor, partner: torch.Tensor, mix: Mix
             ) -> dict[str, Callable[[], torch.Tensor]]:
    """The ways of computing ``mix`` row by row (see :func:`_mix_blocks`): the whole batch,
    distinct block sizes and sample by sample with its partner (``"pairs"``, up to 1024
    samples), each with the process's threads and (when allowed) one."""
    b = images.shape[0]
    ways: dict[str, Callable[[], torch.Tensor]] = {}
    seen = set()
    for block in _BLOCK_BYTES:
        k = block_samples(images, block)
        if k >= b or k in seen:
            continue
        seen.add(k)
        size = f"{block >> 20} MB" if block >= 2**20 else f"{block >> 10} kB"
        ways.update(threaded_ways(f"blocks {size}",
                                  lambda k=k: _blocked(images, partner, mix, k)))
    if b <= _MAX_PAIR_LOOP:
        ways.update(threaded_ways("pairs", lambda: _pairs(images, partner, mix)))
    ways.update(threaded_ways("batch", lambda: _whole(images, partner, mix)))
    return ways


def _mix_blocks(
    images: torch.Tensor,
    partner: torch.Tensor,
    mix: Mix,
    *,
    tag: str = "mix",
    extra: tuple = (),
    inputs: tuple[torch.Tensor, ...] = (),
) -> torch.Tensor:
    """A new ``(B, C, H, W)`` tensor whose rows ``r`` are ``mix(images[r], images[partner[r]],
    r, out)`` (``r`` a slice, see :data:`Mix`), over the whole batch, block of samples by
    block or sample by sample, whichever is fastest here (:func:`fastest`; ``tag``/``extra``
    tell call signatures apart; ``inputs``: the other tensors ``mix`` reads, see
    :func:`timed_ways`)."""
    if not timed_ways(images, *inputs):
        return _whole(images, partner, mix)
    return fastest(signature(tag, images, *extra), mix_ways(images, partner, mix))


def cell_loop_allowed(images: torch.Tensor, n_cells: int) -> bool:
    """Whether copying cell by cell is one of the ways (CPU, no autograd, few cells)."""
    return timed_ways(images) and n_cells <= _MAX_CELL_LOOP


def _rows(t: torch.Tensor, rows: slice) -> torch.Tensor:
    """``t[rows]``, or ``t`` itself when it has one row shared by the batch."""
    return t if t.shape[0] == 1 else t[rows]


def _choose(keep: torch.Tensor, x: torch.Tensor, other: torch.Tensor,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` where ``keep`` (bool, or already ``x``'s dtype with values 0/1; broadcast) else
    ``other``, into ``out`` when given, else as a new tensor.

    Floating images use ``lerp(other, x, keep)``: exact for weights 0 and 1 and 2-4x faster
    than ``torch.where`` on CPU (measured); a non-finite value in one source then turns the
    chosen pixel non-finite too. Integer images use ``torch.where``.
    """
    if x.dtype.is_floating_point:
        weight = keep if keep.dtype == x.dtype else keep.to(x.dtype)
        return torch.lerp(other, x, weight, out=out)
    return torch.where(keep, x, other, out=out)
