"""Puzzle-Mix (Kim, Choo & Song, ICML 2020): saliency-guided masks by graph cuts, then transport.

Owns :class:`PuzzleMix` and its pieces: :func:`input_saliency` (the training model's input
gradient on the clean batch), :func:`mix_energy` (unary + smoothness energy on an ``n × n``
block grid), :func:`graph_cut` (α-β swap per sample with ``gco-wrapper``, the official
solver), :func:`transport_plan` (the greedy transport), :class:`PuzzleSource` (the pixel
source that applies them), and :func:`cost_matrix` (built once per grid and device).

Per batch, following the official code (``snu-mllab/PuzzleMix`` ``imagenet/mixup.py``; spec
``table2-methods.md`` §6): the block count ``n`` is drawn from ``blocks``, the prior λ₀ ~
Beta(β, β); each sample's mask takes values {1, ½, 0} (``n_labels=3``: the share of ``x_i``)
and minimises the saliency it loses plus the binomial prior in λ₀ plus a smoothness term on
the image content; each image's cells are then moved greedily towards the region it keeps
(ε = ``t_eps``); ``lam_area`` = the mask's mean per sample (½-cells count half).

For ViTs the default ``blocks`` are the divisors > 1 (up to 16) of the token grid's side, so
that blocks are whole tokens (the official {2, 4, 8, 16} at 224 px: ``blocks=(2, 4, 8, 16)``).
The graph cuts need the optional package ``gco-wrapper`` (``pip install 'mixpro[puzzlemix]'``).
"""

from __future__ import annotations

import math
import multiprocessing
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .attention import unwrap_model
from .helpers import evaluating
from .masks import rand, sample_beta
from .mixers import Draw, LabelledMixer, Pairing
from .pixels import TokenMode

__all__ = ["MissingExtra", "PuzzleMix", "PuzzleSource", "cost_matrix", "graph_cut",
           "input_saliency", "mix_energy", "transport_plan"]


class MissingExtra(ImportError):
    """An optional dependency of a method is not installed (the message names the extra)."""


def _gco():
    try:
        import gco
    except ImportError:
        raise MissingExtra("puzzlemix needs the graph-cut package gco-wrapper: "
                           "pip install 'mixpro[puzzlemix]'") from None
    return gco


# ------------------------------------------------------------------------------------------
# Saliency and energy
# ------------------------------------------------------------------------------------------


def input_saliency(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                   keep_loss: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``s_i(p) = √(mean_c (∂L/∂x_i)²)``, ``(B, H, W)`` float32, of the mean cross-entropy
    ``L`` of ``model`` on ``images``, taken with ``torch.autograd.grad`` with respect to the
    input only (no parameter's ``.grad`` changes).

    ``keep_loss=False`` (official default, ``clean_lam = 0``): the model runs in eval mode and
    is returned to its mode; returns ``(saliency, None)``. ``keep_loss=True`` (``clean_lam >
    0``): it runs in its current mode and the clean loss is returned with its graph, to be
    trained on (the official ``clean_lam`` term).
    """
    inner = unwrap_model(model)  # DDP's reducer must not see this forward
    x = images.detach().float().requires_grad_(True)

    def loss_of() -> torch.Tensor:
        logits = inner(x).float()
        if labels.dim() == 2:
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels.long())

    with torch.enable_grad():
        if keep_loss:
            loss = loss_of()
            (grad,) = torch.autograd.grad(loss, x, retain_graph=True)
        else:
            with evaluating(inner):
                loss = loss_of()
                (grad,) = torch.autograd.grad(loss, x)
            loss = None
    return grad.detach().pow(2).mean(1).sqrt(), loss


def _neigh_penalty(a: torch.Tensor, b: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute difference across each block border between pooled images ``a`` (above /
    left) and ``b`` (below / right): ``(B, n-1, n)`` vertical and ``(B, n, n-1)`` horizontal."""
    dv = (a[:, :, :-1, :] - b[:, :, 1:, :])[:, :, k - 1::k, :]
    dh = (a[:, :, :, :-1] - b[:, :, :, 1:])[:, :, :, k - 1::k]
    return (F.avg_pool2d(dv.abs().mean(1), kernel_size=(1, k)),
            F.avg_pool2d(dh.abs().mean(1), kernel_size=(k, 1)))


def mix_energy(saliency: torch.Tensor, pixels: torch.Tensor, partner: torch.Tensor, n: int, *,
               smooth_beta: float, gamma: float, neigh_size: int):
    """The terms of the official energy on an ``n × n`` block grid.

    Args:
        saliency: ``(B, H, W)`` input saliency; pixels: ``(B, C, H, W)`` de-normalised images
            (the smoothness term's content); partner: ``(B,)``.

    Returns ``(unary_own, unary_partner, edge_v, edge_h, s_own, s_partner, beta_n)``:
    unaries ``(B, n, n)`` with the smoothness terms folded in (half to each side), edge
    weights ``(B, n-1, n)`` / ``(B, n, n-1)``, the plain normalised block saliencies (the
    transport's) and the normalised smoothness weight ``β/(16·n)``.
    """
    b, _, h, w = pixels.shape
    bh, bw = h // n, w // n
    beta_n = smooth_beta / n / 16
    s_own = F.avg_pool2d(saliency[:, None], (bh, bw))[:, 0]
    s_own = s_own / s_own.flatten(1).sum(1).clamp_min(1e-30).view(b, 1, 1)
    s_partner = s_own.index_select(0, partner)
    neigh = math.gcd(min(neigh_size, bh, bw), bh, bw)
    k = bh // neigh
    own = F.avg_pool2d(pixels, neigh)
    other = own.index_select(0, partner)
    pairs = {(0, 0): (other, other), (0, 1): (other, own), (1, 0): (own, other),
             (1, 1): (own, own)}
    pv, ph = {}, {}
    for key, (a, c) in pairs.items():
        v, hz = _neigh_penalty(a, c, k)
        pv[key], ph[key] = beta_n * gamma * v, beta_n * gamma * hz
    u_own, u_partner = s_own.clone(), s_partner.clone()
    u_partner[:, :-1, :] += (pv[1, 0] + pv[1, 1]) / 2
    u_own[:, :-1, :] += (pv[0, 1] + pv[0, 0]) / 2
    u_partner[:, 1:, :] += (pv[0, 1] + pv[1, 1]) / 2
    u_own[:, 1:, :] += (pv[1, 0] + pv[0, 0]) / 2
    u_partner[:, :, :-1] += (ph[1, 0] + ph[1, 1]) / 2
    u_own[:, :, :-1] += (ph[0, 1] + ph[0, 0]) / 2
    u_partner[:, :, 1:] += (ph[0, 1] + ph[1, 1]) / 2
    u_own[:, :, 1:] += (ph[1, 0] + ph[0, 0]) / 2
    edge_v = (pv[1, 0] + pv[0, 1] - pv[1, 1] - pv[0, 0]) / 2
    edge_h = (ph[1, 0] + ph[0, 1] - ph[1, 1] - ph[0, 0]) / 2
    return u_own, u_partner, edge_v, edge_h, s_own, s_partner, beta_n


def label_prior(lam0: float, n_labels: int, eps: float = 1e-8) -> np.ndarray:
    """``-log P(l)`` of the binomial prior: label ``l`` (mask ``1 - l/(L-1)``) has
    ``P = C(L-1, l)·λ₀^(L-1-l)·(1-λ₀)^l``, float64 ``(L,)``."""
    m = n_labels - 1
    return np.array([-np.log(math.comb(m, lab) * lam0 ** (m - lab) * (1 - lam0) ** lab + eps)
                     for lab in range(n_labels)])


def graph_cut(u_own: np.ndarray, u_partner: np.ndarray, edge_v: np.ndarray,
              edge_h: np.ndarray, lam0: float, beta_n: float, eta: float, n_labels: int
              ) -> np.ndarray:
    """One sample's mask ``(n, n)`` float (values ``1 - l/(L-1)``: the share of ``x_i``) by
    α-β swap graph cuts on the official integer energy: label ``l`` costs
    ``(1-t)·u_partner + t·u_own + η/n²·(-log P(l))`` with ``t = l/(L-1)``, edges
    ``(edge + β_n)·(l-l')²/(L-1)²``, all ×1000·n² and cast to int32 (the pairwise table stays
    float32, as the official call)."""
    gco = _gco()
    n = u_own.shape[0]
    large = 1000 * n ** 2
    prior = eta * label_prior(lam0, n_labels) / n ** 2
    unary = (large * np.stack([(1 - t) * u_partner + t * u_own + prior[i]
                               for i, t in enumerate(np.linspace(0, 1, n_labels))],
                              axis=-1)).astype(np.int32)
    lab = np.arange(n_labels)
    pairwise = ((lab[:, None] - lab[None, :]) ** 2 / (n_labels - 1) ** 2).astype(np.float32)
    cost_v = (large * (edge_v + beta_n)).astype(np.int32)
    cost_h = (large * (edge_h + beta_n)).astype(np.int32)
    labels = gco.cut_grid_graph(unary, pairwise, cost_v, cost_h, algorithm="swap")
    return (1.0 - labels / (n_labels - 1)).reshape(n, n)


def _cut_star(args: tuple) -> np.ndarray:
    return graph_cut(*args)


# ------------------------------------------------------------------------------------------
# Transport
# ------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def cost_matrix(n: int, device: torch.device) -> torch.Tensor:
    """Squared grid distance between the ``n²`` cells over ``(n-1)²``: ``(n², n²)`` float32,
    built once per ``(n, device)``."""
    idx = torch.arange(n * n)
    r, c = idx // n, idx % n
    d = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
    return (d.float() / float(max(n - 1, 1) ** 2)).to(device)


def transport_plan(region: torch.Tensor, saliency: torch.Tensor, eps: float) -> torch.Tensor:
    """The official greedy transport, batched: ``(B, n², n²)`` 0/1 plan, ``[b, i, j] = 1``
    when cell ``i`` of image ``b`` moves to cell ``j``.

    ``region (B, n, n)`` bool: the cells the image keeps; ``saliency (B, n, n)``. Cost
    ``C_ij = ε·D_ij − S_i·z_j``; ``n`` rounds in which every source cell takes its cheapest
    destination, a destination keeps its cheapest claimant (the lowest index on ties; a
    destination whose claimants all cost more than 0 keeps none, as the official code), and
    every losing claim costs 1 more.
    """
    b, n = region.shape[0], region.shape[-1]
    z = region.reshape(b, 1, n * n).float()
    cost = eps * cost_matrix(n, region.device)[None] - saliency.reshape(b, n * n, 1).float() * z
    win = torch.zeros_like(cost)
    for _ in range(n):
        plan = torch.zeros_like(cost).scatter_(-1, cost.argmin(-1, keepdim=True), 1.0)
        fight = plan * cost
        win = torch.zeros_like(cost).scatter_(-2, fight.argmin(-2, keepdim=True), 1.0) * plan
        cost = cost + (plan - win)
    return win


def _move_cells(images: torch.Tensor, plan: torch.Tensor | None, n: int) -> torch.Tensor:
    """``images`` with each cell moved by ``plan`` (destinations no cell moves to are 0)."""
    if plan is None:
        return images
    b, c, h, w = images.shape
    bh, bw = h // n, w // n
    cells = images.reshape(b, c, n, bh, n, bw).permute(0, 2, 4, 1, 3, 5).reshape(b, n * n, -1)
    src = plan.argmax(1)  # (B, n²): the cell moved to each destination
    has = plan.amax(1) > 0
    moved = cells.gather(1, src[:, :, None].expand(-1, -1, cells.shape[-1]))
    moved = moved * has[:, :, None].to(moved.dtype)
    return moved.reshape(b, n, n, c, bh, bw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@dataclass(frozen=True)
class PuzzleSource:
    """Puzzle-Mix's pixel source: ``x̃_i = M_i·T_i(x_i) + (1 − M_i)·T'_i(x_j)``.

    Attributes:
        weight: ``(B, n, n)`` float32 mask (share of ``x_i`` per cell: 1, ½ or 0).
        plan_own, plan_partner: ``(B, n², n²)`` transport plans of ``x_i`` and of the partner
            (None: no transport).
    """

    weight: torch.Tensor
    plan_own: torch.Tensor | None = None
    plan_partner: torch.Tensor | None = None

    def lam_area(self) -> torch.Tensor:
        return self.weight.float().flatten(1).mean(1)

    def _pixels(self, size: tuple[int, int]) -> torch.Tensor:
        n = self.weight.shape[-1]
        return self.weight[:, None].repeat_interleave(size[0] // n, 2) \
            .repeat_interleave(size[1] // n, 3)

    def apply(self, images: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        n = self.weight.shape[-1]
        if not images.dtype.is_floating_point:
            raise TypeError(f"Puzzle-Mix blends half cells: floating images needed, got "
                            f"{images.dtype}")
        own = _move_cells(images, self.plan_own, n)
        other = _move_cells(images.index_select(0, partner), self.plan_partner, n)
        m = self._pixels(tuple(images.shape[-2:])).to(images.dtype)
        return torch.lerp(other, own, m)

    def token_fraction(self, grid: tuple[int, int], mode: TokenMode = "area") -> torch.Tensor:
        n = self.weight.shape[-1]
        gh, gw = grid
        size = (math.lcm(n, gh), math.lcm(n, gw))
        m = self._pixels(size).float()
        if mode == "area":
            frac = F.avg_pool2d(m, (size[0] // gh, size[1] // gw))
        else:  # the top-left "pixel" of each token
            frac = m[:, :, ::size[0] // gh, ::size[1] // gw]
        return frac.flatten(1)

    def pixel_mask(self) -> None:
        return None


# ------------------------------------------------------------------------------------------
# The mixer
# ------------------------------------------------------------------------------------------


def _divisor_blocks(side: int) -> tuple[int, ...]:
    return tuple(d for d in range(2, min(side, 16) + 1) if side % d == 0)


@dataclass(eq=False, kw_only=True)
class PuzzleMix(LabelledMixer):
    """Puzzle-Mix: per-sample graph-cut masks on the model's input saliency, with transport.

    Args:
        num_classes: number of classes ``K``.
        model: the model being trained; its input gradient on the clean batch is the
            saliency (eval mode, restored; parameter gradients untouched).
        patch_size: the model's token size in px: the default ``blocks`` are the divisors > 1
            (up to 16) of the token grid's side; None with ``blocks=None``: the image side's.
        blocks: block counts per side, one drawn uniformly per batch (official: (2, 4, 8, 16)).
        beta: λ₀ ~ Beta(β, β), the prior's mixing ratio (official ``--beta`` 1.0).
        smooth_beta, gamma, eta: the official ``p_beta`` 1.2, ``p_gamma`` 0.5, ``p_eta`` 0.2.
        neigh_size: the smoothness term's pooling (official 4 px; capped by the block).
        n_labels: mask values (3: {1, ½, 0}; 2: binary).
        transport: move cells towards the kept region (official True), ``t_eps`` ε = 0.8.
        clean_lam: weight of the clean batch's loss kept from the saliency pass (official
            0; the ``imagenet_fast`` configs 1): the pass then runs in train mode and the
            term is added to the batch's loss (:attr:`MixedBatch.auxiliary`).
        mean, std: the images' normalisation (0..1 scale), undone for the smoothness term;
            None: images in [0, 1].
        workers: graph cuts in a pool of this many processes, created once (0: in process;
            :meth:`close` or garbage collection ends it).
        pairing: ``'flip'`` (default) or ``'randperm'`` (official).
        label_smoothing, generator: as every mixer.
    """

    method: ClassVar[str] = "puzzlemix"

    model: nn.Module = field(repr=False)
    patch_size: int | None = None
    blocks: Sequence[int] | None = None
    beta: float = 1.0
    smooth_beta: float = 1.2
    gamma: float = 0.5
    eta: float = 0.2
    neigh_size: int = 4
    n_labels: int = 3
    transport: bool = True
    t_eps: float = 0.8
    clean_lam: float = 0.0
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    workers: int = 0
    pairing: Pairing = "flip"

    def __post_init__(self) -> None:
        self._setup()
        _gco()
        if not isinstance(self.model, nn.Module):
            raise _checks.ArgumentTypeError(
                "model", f"must be the torch.nn.Module being trained, got "
                         f"{type(self.model).__name__}")
        if self.patch_size is not None:
            self.patch_size = _checks.pair(self.patch_size, "patch_size")[0]
        if self.blocks is not None:
            if isinstance(self.blocks, (str, bytes)) or not isinstance(self.blocks, Sequence) \
                    or not self.blocks or any(isinstance(v, bool) or not isinstance(v, int)
                                              or v < 2 for v in self.blocks):
                raise _checks.ArgumentError(
                    "blocks", f"must be a non-empty sequence of ints >= 2, got {self.blocks!r}")
            self.blocks = tuple(int(v) for v in self.blocks)
        for name in ("beta", "smooth_beta", "t_eps"):
            setattr(self, name, _checks.positive(getattr(self, name), name))
        for name in ("gamma", "eta", "clean_lam"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise _checks.ArgumentError(name, f"must be a number >= 0, got {v!r}")
        if self.n_labels not in (2, 3, 4):
            raise _checks.ArgumentError("n_labels", f"must be 2, 3 or 4, got {self.n_labels!r}")
        self.neigh_size = _checks.pair(self.neigh_size, "neigh_size")[0]
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) \
                or self.workers < 0:
            raise _checks.ArgumentError("workers", f"must be an int >= 0, got {self.workers!r}")
        self.mean = _checks.channel_stats(self.mean, "mean")
        self.std = _checks.channel_stats(self.std, "std")
        if (self.mean is None) != (self.std is None):
            raise _checks.ArgumentError("mean", "and std must be given together")
        self._pool = None

    def block_choices(self, image_size: tuple[int, int]) -> tuple[int, ...]:
        """The block counts this batch may draw (each must tile the image)."""
        h, w = image_size
        if self.blocks is not None:
            choices = self.blocks
        elif self.patch_size is not None:
            choices = _divisor_blocks(math.gcd(h // self.patch_size, w // self.patch_size))
        else:
            choices = _divisor_blocks(math.gcd(h, w))
        bad = [n for n in choices if h % n or w % n]
        if bad or not choices:
            raise _checks.ArgumentError(
                "blocks", f"{choices} must hold block counts that tile the {h}x{w} images "
                          f"(bad: {bad})" if bad else f"found none for {h}x{w} images")
        return choices

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().float()
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            x = x * std + mean
        return x

    def _solve(self, jobs: list[tuple]) -> list[np.ndarray]:
        if self.workers == 0:
            return [graph_cut(*job) for job in jobs]
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(self.workers)
            weakref.finalize(self, self._pool.terminate)
        return self._pool.map(_cut_star, jobs)

    def close(self) -> None:
        """End the graph-cut worker pool (if any)."""
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"] = None
        return state

    def draw(self, images: torch.Tensor) -> Draw:
        raise TypeError("Puzzle-Mix's saliency needs the labels: call mixer(images, labels) "
                        "(or draw_labelled), not draw(images)")

    def draw_labelled(self, images: torch.Tensor, labels: torch.Tensor) -> Draw:
        b, dev = images.shape[0], images.device
        size = (int(images.shape[-2]), int(images.shape[-1]))
        choices = self.block_choices(size)
        partner = self.partner(b, dev)
        gen_dev = self.generator_device(dev)
        u = rand(1, device=gen_dev, generator=self.generator)
        n = choices[min(int(float(u[0]) * len(choices)), len(choices) - 1)]
        lam0 = float(sample_beta(self.beta, 1, device=gen_dev, generator=self.generator)[0])
        saliency, clean = input_saliency(self.model, images, labels,
                                         keep_loss=self.clean_lam > 0)
        with torch.no_grad():
            u_own, u_partner, ev, eh, s_own, s_partner, beta_n = mix_energy(
                saliency, self._pixels(images), partner, n, smooth_beta=self.smooth_beta,
                gamma=self.gamma, neigh_size=self.neigh_size)
            arrays = [t.cpu().numpy() for t in (u_own, u_partner, ev, eh)]
            jobs = [(arrays[0][i], arrays[1][i], arrays[2][i], arrays[3][i], lam0, beta_n,
                     self.eta, self.n_labels) for i in range(b)]
            weight = torch.from_numpy(np.stack(self._solve(jobs))).float().to(dev)
            plans = (None, None)
            if self.transport:
                plans = (transport_plan(weight > 0, s_own, self.t_eps),
                         transport_plan((1 - weight) > 0, s_partner, self.t_eps))
        src = PuzzleSource(weight, *plans)
        aux = None
        if clean is not None:
            scale = float(self.clean_lam)
            aux = lambda batch: scale * clean  # noqa: E731 - the kept clean loss
        return Draw(src, partner, src.lam_area(), self.method, self.relabel, auxiliary=aux)
