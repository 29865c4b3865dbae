"""The mixing kernels' ways (whole batch, blocks, per-cell copy, box paste; one thread or the
process's) give identical results, and the choice among them follows the timings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import mix_images_np

import mixpro
import mixpro.pixels
from mixpro import _kernels
from mixpro.masks import BoxMasks, GridMasks

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_timings():
    _kernels.forget()
    n = torch.get_num_threads()
    yield
    _kernels.forget()
    torch.set_num_threads(n)


def _sources(kind: str, b: int, h: int, w: int, g: torch.Generator):
    ratio = torch.rand(1 if kind.endswith("batch") else b, generator=g)
    if kind.startswith("grid"):
        cell = (max(1, h // 3), max(1, w // 4))
        return GridMasks(cell)(ratio, (h, w), device=CPU, generator=g)
    if kind.startswith("box"):
        return BoxMasks()(ratio, (h, w), device=CPU, generator=g)
    blend = mixpro.pixels.Blend(torch.rand(b, generator=g))
    if kind == "blend":
        return blend
    box = BoxMasks()(torch.rand(b, generator=g), (h, w), device=CPU, generator=g)
    return mixpro.pixels.Switch(torch.rand(b, generator=g) > 0.5, box, blend)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bit patterns as integers (``torch.equal`` of floats calls -0.0 and 0.0 equal)."""
    ints = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16}
    return t.view(ints[t.dtype]) if t.dtype in ints else t


def test_a_switch_with_one_blend_weight_for_the_batch_mixes_the_same_in_every_way():
    """A ``Blend`` may carry one weight for the whole batch (``Bm = 1``); the per-sample loop
    of :class:`~mixpro.pixels.Switch` must read it as every sample's weight."""
    g = torch.Generator().manual_seed(3)
    torch.set_num_threads(2)
    x = torch.randn(6, 2, 9, 11, generator=g) * 50
    partner = torch.randperm(6, generator=g)
    box = BoxMasks()(torch.rand(6, generator=g), (9, 11), device=CPU, generator=g)
    use = torch.tensor([True, False, True, False, False, True])
    source = mixpro.pixels.Switch(use, box, mixpro.pixels.Blend(torch.tensor([0.3])))
    outs = _every_way(source, x, partner)
    assert "per sample" in outs
    want = torch.where(use.view(-1, 1, 1, 1), torch.lerp(x[partner], x, box.pixel_mask().float()),
                       torch.lerp(x[partner], x, 0.3))
    for way, out in outs.items():
        assert torch.equal(_bits(out), _bits(want)), way


def _every_way(source, x, partner) -> dict[str, torch.Tensor]:
    """The result of each way the chooser offers for this call (found by one call)."""
    _kernels.forget()
    source.apply(x, partner)
    ways = _kernels.choices()[-1]["ways"]
    out = {}
    for way in ways:
        with _kernels.forced(way):
            out[way] = source.apply(x, partner)
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9), st.integers(1, 3), st.integers(3, 17), st.integers(3, 17),
       st.sampled_from(["grid elem", "grid batch", "box elem", "box batch", "blend", "switch"]),
       st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.uint8]),
       st.sampled_from([1, 2]), st.integers(0, 2**31 - 1))
def test_every_way_gives_the_same_bits(b, c, h, w, kind, dtype, threads, seed):
    """Whichever way runs (block sizes, whole batch, per-cell copy, box paste, one thread or
    two), the mixed batch is bit-identical, and equal to the numpy reference for masks."""
    if not dtype.is_floating_point and kind in ("blend", "switch"):
        return
    g = torch.Generator().manual_seed(seed)
    torch.set_num_threads(threads)
    x = (torch.randn(b, c, h, w, generator=g) * 50).to(dtype)
    partner = torch.randperm(b, generator=g)
    source = _sources(kind, b, h, w, g)
    per_sample = c * h * w * x.element_size()
    saved = _kernels._BLOCK_BYTES
    _kernels._BLOCK_BYTES = (per_sample, 2 * per_sample, 3 * per_sample + 1)
    try:
        outs = _every_way(source, x, partner)
    finally:
        _kernels._BLOCK_BYTES = saved
    names = set(outs)
    assert {"batch", "pairs"} <= names and any(n.startswith("blocks") for n in names)
    assert (threads == 2) == any(n.endswith("1 thread") for n in names)
    if kind in ("grid elem", "grid batch", "box batch"):
        assert ("cells" in names) == (not source.per_pixel)  # per-pixel cells: no loop
    if kind == "box elem":
        assert "paste boxes" in names and "cells" not in names  # per-pixel cells: no loop
    if kind == "box batch":
        assert "paste box" in names
    if kind == "switch":  # per-sample boxes: timm's loop over the samples is a way too
        assert "per sample" in names
    first = next(iter(outs.values()))
    for way, out in outs.items():
        assert out.dtype == dtype and torch.equal(_bits(out), _bits(first)), way
    if kind not in ("blend", "switch"):
        ref = mix_images_np(x.float().numpy(), source.pixel_mask().numpy().astype(np.int64),
                            partner.numpy())
        assert np.array_equal(first.float().numpy(), ref)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 11), min_size=1, max_size=12))
def test_partner_order_lists_each_sample_once_followed_by_its_partner(targets):
    """Any index map (not only permutations): every sample once, and a sample whose partner
    is still to come is followed by it (so the partner is read while it is in cache)."""
    partner = [t % len(targets) for t in targets]
    order = _kernels.partner_order(partner)
    assert sorted(order) == list(range(len(partner)))
    for k, i in enumerate(order[:-1]):
        if partner[i] not in order[:k + 1]:
            assert order[k + 1] == partner[i]
    assert _kernels.partner_order([3, 2, 1, 0]) == [0, 3, 1, 2]  # flip: pair by pair


class _FakeClock:
    """Virtual time: each way advances it by its cost."""

    def __init__(self) -> None:
        self.t = 0.0
        self.cost = {"a": 1.0, "b": 2.0, "c": 10.0}
        self.runs: list[str] = []

    def ways(self) -> dict:
        def run(name):
            self.t += self.cost[name]
            self.runs.append(name)
            return name
        return {n: (lambda n=n: run(n)) for n in self.cost}


def test_the_fastest_way_is_chosen_and_losers_are_retried_ever_less_often(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(_kernels, "_clock", {"now": lambda: clock.t})
    for _ in range(1000):
        assert _kernels.fastest("sig", clock.ways()) in clock.cost
    # calibration: a and b three times each, c once (one timing 10x the best is enough)
    assert clock.runs[:7].count("c") == 1 and _kernels.calibrating() == 0
    assert clock.runs.count("a") > 985
    # retries after 16, 32, 64, ... calls: a handful in 1000 calls, not one every few calls
    assert 3 <= clock.runs.count("b") - 3 <= 7 and clock.runs.count("c") <= 7
    (state,) = _kernels.choices()
    assert state["chosen"] == "a" and state["settled"]
    assert state["ways"]["b"] == pytest.approx(2.0)


def test_a_way_that_turns_slow_is_left_within_a_few_calls_and_taken_back(monkeypatch):
    """A machine that turns busy (the chosen way stalls) is followed, and so is one that
    turns quiet again."""
    clock = _FakeClock()
    monkeypatch.setattr(_kernels, "_clock", {"now": lambda: clock.t})
    for _ in range(50):
        _kernels.fastest("sig", clock.ways())
    clock.cost["a"] = 40.0  # stalls at its barriers now
    clock.runs.clear()
    for _ in range(20):
        _kernels.fastest("sig", clock.ways())
    assert clock.runs[:2] == ["a", "a"] and clock.runs[2:].count("b") >= 16
    clock.cost["a"] = 1.0  # quiet again: a is retried (it lost 20x: after 256 calls) and wins
    clock.runs.clear()
    for _ in range(400):
        _kernels.fastest("sig", clock.ways())
    assert clock.runs.index("a") < 300
    assert clock.runs[-50:].count("a") >= 47 and _kernels.choices()[0]["chosen"] == "a"


def test_signatures_are_timed_apart_and_forced_ways_bypass_the_timing(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(_kernels, "_clock", {"now": lambda: clock.t})
    _kernels.fastest("one", clock.ways())
    _kernels.fastest("two", clock.ways())
    assert [c["signature"] for c in _kernels.choices()] == ["one", "two"]
    assert _kernels.calibrating() == 2
    with _kernels.forced("c"):
        assert _kernels.fastest("one", clock.ways()) == "c"
    assert _kernels.fastest("x", {"only": lambda: 7}) == 7  # one way: nothing to time
    assert len(_kernels.choices()) == 2


def test_one_thread_ways_run_with_one_thread_and_restore_the_count():
    torch.set_num_threads(2)
    seen = []

    def mix(a, other, rows, out):
        seen.append(torch.get_num_threads())
        return torch.lerp(other, a, 0.5, out=out)

    x = torch.randn(6, 3, 8, 8)
    ways = _kernels.mix_ways(x, torch.arange(5, -1, -1), mix)
    assert "batch, 1 thread" in ways and "batch" in ways
    out = ways["batch, 1 thread"]()
    assert seen == [1] and torch.get_num_threads() == 2
    assert torch.allclose(out, 0.5 * (x + x.flip(0)), atol=1e-6)
    ways["batch"]()
    assert seen == [1, 2]
    with _kernels._single_threaded():
        with _kernels._single_threaded():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"):
        with _kernels._single_threaded():
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_single_thread_loops_off_leaves_the_thread_count_alone():
    torch.set_num_threads(2)
    x = torch.rand(64, 3, 16, 16)
    partner = torch.arange(63, -1, -1)
    mask = GridMasks(4)(torch.rand(64), (16, 16), device=CPU)
    try:
        mixpro.set_single_thread_loops(False)
        offered = _every_way(mask, x, partner)
        assert offered and not any(n.endswith("1 thread") for n in offered)
    finally:
        mixpro.set_single_thread_loops(True)
    assert any(n.endswith("1 thread") for n in _every_way(mask, x, partner))
    with pytest.raises(TypeError, match="enabled must be a bool"):
        mixpro.set_single_thread_loops("no")


def test_block_ways_gather_one_block_of_partners_at_a_time(monkeypatch):
    """In a block way no full partner batch is materialised: each gather is one block."""
    b, c, h, w = 16, 3, 16, 16
    monkeypatch.setattr(_kernels, "_BLOCK_BYTES", (3 * c * h * w * 4,))
    x, y = torch.randn(b, c, h, w), torch.arange(b) % 4
    sizes = []
    real_select = torch.Tensor.index_select

    def spy_select(t, dim, index):
        if t.dim() == 4:
            sizes.append(index.numel())
        return real_select(t, dim, index)

    monkeypatch.setattr(torch.Tensor, "index_select", spy_select)
    mixers = [mixpro.CutMix(num_classes=4, mode=m) for m in ("elem", "pair")] + [
        mixpro.Mixup(num_classes=4, mode="elem"),
        mixpro.Mixup(cutmix_alpha=1.0, num_classes=4, mode="elem"),
        mixpro.MaskMix(num_classes=4, patch_size=4, mask_scale=1, mode="elem"),
    ]
    for mixer in mixers:
        sizes.clear()
        with _kernels.forced("blocks 9 kB"):  # 3 samples of 3x16x16 float32
            batch = mixer(x, y)
        assert sizes and max(sizes) <= 3, (type(mixer).__name__, sizes)
        same = batch.partner == torch.arange(b)
        assert torch.equal(batch.images[same], x[same])


def test_autograd_and_accelerator_inputs_take_one_call():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    mask = GridMasks(4)(torch.rand(4), (8, 8), device=CPU)
    out = mask.apply(x, torch.tensor([1, 0, 3, 2]))
    out.sum().backward()
    assert x.grad is not None and not _kernels.choices()
    assert not _kernels.timed_ways(torch.empty(2, 1, 4, 4, device="meta"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_one_blend_weight_takes_lerps_scalar_form_with_the_same_bits(dtype, monkeypatch):
    """Batch-level Mixup (one weight) uses ``lerp``'s scalar weight; every way (blocks, the
    whole batch, 1 and 2 threads) must give the bits of the broadcast tensor weight,
    ``lerp(x_j, x_i, w)``."""
    torch.set_num_threads(2)  # the fixture restores the count
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 2, 5, 7, generator=g) * 50).to(dtype)
    per_sample = x[0].numel() * x.element_size()
    monkeypatch.setattr(_kernels, "_BLOCK_BYTES", (per_sample, 2 * per_sample))
    partner = torch.randperm(6, generator=g)
    for w in torch.rand(20, generator=g):
        blend = mixpro.pixels.Blend(w.reshape(1))
        want = torch.lerp(x[partner], x, w.to(dtype).view(1, 1, 1, 1))
        outs = _every_way(blend, x, partner)
        assert "batch" in outs and any(n.startswith("blocks") for n in outs)
        for way, out in outs.items():
            assert out.dtype == dtype and torch.equal(out, want), way


def test_mixup_weights_that_require_grad_take_the_whole_batch_and_carry_grad():
    """A learnable Mixup weight (autograd) cannot be written into views of one result: the
    blend and the switch then run as one whole-batch call, and the gradient reaches it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 5, 7, generator=g)
    partner = torch.randperm(6, generator=g)
    w = torch.rand(6, generator=g).requires_grad_()
    _kernels.forget()
    out = mixpro.pixels.Blend(w).apply(x, partner)
    out.sum().backward()
    want = (x - x[partner]).sum(dim=(1, 2, 3))  # d/dw of sum(x_p + w (x - x_p))
    assert torch.allclose(w.grad, want, atol=1e-5) and _kernels.choices() == []
    box = BoxMasks()(torch.rand(6, generator=g), (5, 7), device=CPU, generator=g)
    use = torch.tensor([True, False] * 3)
    w.grad = None
    out = mixpro.pixels.Switch(use, box, mixpro.pixels.Blend(w)).apply(x, partner)
    out.sum().backward()
    assert torch.allclose(w.grad, torch.where(use, 0.0, want), atol=1e-5)


def test_the_pairs_way_refuses_partners_that_index_select_refuses():
    x = torch.randn(4, 1, 3, 3)
    blend = mixpro.pixels.Blend(torch.full((1,), 0.5))
    for bad in (torch.tensor([1, 0]), torch.tensor([1, 0, 3, -1]), torch.tensor([1, 0, 3, 4])):
        for way in ("pairs", "batch"):
            with _kernels.forced(way), pytest.raises((IndexError, RuntimeError)):
                blend.apply(x, bad)
