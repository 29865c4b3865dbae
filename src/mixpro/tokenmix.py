"""TokenMix (Liu, Liu, Zhou, Li & Liu, ECCV 2022): a block mask of whole tokens, labelled by
a teacher's class-activation maps.

Owns :class:`TokenMix`. Per batch: one mask on the student's token grid, built BEiT-style
(rectangles of whole tokens with area ~ U(1, remaining) and aspect ~ logU(0.3, 1/0.3) at a
uniform position, added until the target count is reached; up to 10 attempts a round, stop
when a round adds nothing); the partner is pasted where the mask is set. Labels: the
teacher's map of each image's own class ``A_i`` (per-location logits, resampled to the token
grid, normalised to sum 1 over the tokens) gives ``w_own = Σ_kept Â_i`` (the share of i's
activation in the tokens ``i`` keeps) and ``w_partner = Σ_given Â_j`` (the share of j's in the
tokens j gives); they are not normalised to sum 1 (the paper), and the loss is BCE by default
(the official run's ``--use-bce``).

Where this differs from the released code (spec ``table2-methods.md`` §7): the token count is
``⌊(1−λ)·N⌋`` with λ ~ Beta(β, β) (``lam='sampled'``, the paper); ``lam='fixed'`` is the
released code's 0.5 + ``extra_tokens`` (14 of 196 there; default here ``round(14·N/196)``).
The teacher map is computed on the fly, on the augmented batch the student sees, by a teacher
model (no offline NFNet-F6 maps, no crop box and so no roi_align: the released code passes its
box in (y, x) order); negative logits are clamped to 0 (``activation='relu'``; ``'raw'`` keeps
them, as the released code), and an image whose class has no positive activation falls back
to area shares. Label smoothing: ``s/C + (1−s)·(w_own·y_i + w_partner·y_j)``; the released code
subtracts ``s/2`` from each of the two weights instead.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .batch import Objective
from .helpers import class_activation_map, evaluating, frozen, on_device
from .masks import rand, sample_beta
from .mixers import Draw, LabelledMixer, Pairing
from .pixels import CellMask

__all__ = ["ACTIVATIONS", "TOKENMIX_LAMBDAS", "TokenMix", "block_mask"]

LamMode = Literal["sampled", "fixed"]
Activation = Literal["relu", "raw"]
TOKENMIX_LAMBDAS: tuple[str, ...] = typing.get_args(LamMode)
ACTIVATIONS: tuple[str, ...] = typing.get_args(Activation)


def block_mask(grid: tuple[int, int], count: int, uniforms, *, min_aspect: float = 0.3,
               attempts: int = 10) -> torch.Tensor:
    """BEiT's block-wise mask: bool ``(gh, gw)`` with about ``count`` True tokens.

    ``uniforms()`` returns the next 4 uniform [0, 1) floats (area, log-aspect, top, left) of
    one attempt. Each round draws up to ``attempts`` rectangles (area ~ U(1, remaining), aspect
    ~ exp(U(ln a, ln 1/a)), sides rounded and smaller than the grid, position uniform) and
    takes the first that adds between 1 and ``remaining`` new tokens; a round that adds nothing
    ends the mask.
    """
    gh, gw = grid
    mask = torch.zeros(gh, gw, dtype=torch.bool)
    lo, hi = math.log(min_aspect), math.log(1.0 / min_aspect)
    done = 0
    while done < count:
        remaining = count - done
        added = 0
        for _ in range(attempts):
            u_area, u_aspect, u_top, u_left = uniforms()
            area = 1.0 + (remaining - 1.0) * u_area
            aspect = math.exp(lo + (hi - lo) * u_aspect)
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h < gh and 0 < w < gw:
                top = min(int(u_top * (gh - h + 1)), gh - h)
                left = min(int(u_left * (gw - w + 1)), gw - w)
                block = mask[top:top + h, left:left + w]
                new = h * w - int(block.sum())
                if 0 < new <= remaining:
                    block.fill_(True)
                    added = new
                    break
        if added == 0:
            break
        done += added
    return mask


@dataclass(eq=False, kw_only=True)
class TokenMix(LabelledMixer):
    """TokenMix: a block mask of whole tokens, labels from a teacher's activation maps.

    Args:
        num_classes: number of classes ``K`` (class-index labels only).
        teacher: a classifier whose per-location class logits are the activation maps
            (:func:`mixpro.helpers.class_activation_map`: a CNN's classifier as a 1×1 conv, a
            ViT's head on each patch token); frozen, run in eval mode under ``no_grad`` and
            returned to its mode. It must be trained on no more data than the student.
        patch_size: the student's token size in px (int or ``(h, w)``): the mask's grid.
        beta: β of λ ~ Beta(β, β) (``lam='sampled'``).
        lam: ``'sampled'`` (paper: ``⌊(1−λ)·N⌋`` tokens from the partner) or ``'fixed'``
            (released code: ``⌊0.5·N⌋ + extra_tokens``).
        extra_tokens: the fixed mode's extra tokens; None: ``round(14·N/196)``.
        activation: ``'relu'`` (negative logits count 0) or ``'raw'`` (released code).
        objective: ``'bce'`` (default, the official run) or ``'ce'``.
        prob: probability that a batch is mixed (an unmixed batch reports ``'none'``).
        pairing: ``'flip'`` (default, as the released code) or ``'randperm'``.
        label_smoothing, generator: as every mixer.
    """

    method: ClassVar[str] = "tokenmix"

    teacher: nn.Module = field(repr=False)
    patch_size: int | tuple[int, int]
    beta: float = 1.0
    lam: LamMode = "sampled"
    extra_tokens: int | None = None
    activation: Activation = "relu"
    objective: Objective = "bce"
    prob: float = 1.0
    pairing: Pairing = "flip"

    def __post_init__(self) -> None:
        self._setup()
        self.teacher = frozen(self.teacher, "teacher")
        self.patch_size = _checks.pair(self.patch_size, "patch_size")
        self.beta = _checks.positive(self.beta, "beta")
        self.lam = _checks.choice(self.lam, "lam", TOKENMIX_LAMBDAS)
        if self.extra_tokens is not None and (isinstance(self.extra_tokens, bool) or not
                                              isinstance(self.extra_tokens, int)
                                              or self.extra_tokens < 0):
            raise _checks.ArgumentError("extra_tokens", f"must be an int >= 0 or None, got "
                                        f"{self.extra_tokens!r}")
        self.activation = _checks.choice(self.activation, "activation", ACTIVATIONS)
        self.objective = _checks.choice(self.objective, "objective", ("bce", "ce"))
        self.prob = _checks.probability(self.prob, "prob")

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The token grid of ``image_size`` images (``patch_size`` must tile them)."""
        (h, w), (ph, pw) = image_size, self.patch_size
        if h % ph or w % pw:
            raise _checks.ArgumentError(
                "patch_size", f"{self.patch_size} does not tile the image size {image_size}")
        return h // ph, w // pw

    def count(self, tokens: int, device: torch.device) -> int:
        """Tokens the partner gives this batch (one draw)."""
        if self.lam == "fixed":
            extra = round(14 * tokens / 196) if self.extra_tokens is None else self.extra_tokens
            return min(tokens, tokens // 2 + extra)
        lam = sample_beta(self.beta, 1, device=device, generator=self.generator)
        return min(tokens, int(math.floor((1.0 - float(lam[0])) * tokens)))

    def activations(self, images: torch.Tensor, labels: torch.Tensor,
                    grid: tuple[int, int]) -> torch.Tensor:
        """``Â (B, N)``: each image's own-class teacher activation on the token grid, summing
        to 1 per image (uniform where the class has no positive activation)."""
        x = images.detach()
        if not x.dtype.is_floating_point:
            x = x.float() / 255.0
        on_device(self.teacher, x.device)
        with torch.no_grad(), evaluating(self.teacher):
            cam = class_activation_map(self.teacher, x, name="teacher").float()
        if cam.shape[1] != self.num_classes:
            raise _checks.ArgumentError(
                "teacher", f"predicts {cam.shape[1]} classes, the mixer {self.num_classes}")
        own = cam.gather(1, labels.long().view(-1, 1, 1, 1).expand(-1, 1, *cam.shape[-2:]))
        if tuple(own.shape[-2:]) != grid:
            own = F.interpolate(own, size=grid, mode="bilinear", align_corners=False,
                                antialias=True)
        a = own.flatten(1)
        if self.activation == "relu":
            a = a.clamp_min(0)
            total = a.sum(1, keepdim=True)
            return torch.where(total > 0, a / total.clamp_min(1e-12), 1.0 / a.shape[1])
        return a / (a.sum(1, keepdim=True) + 1e-8)

    def draw(self, images: torch.Tensor) -> Draw:
        raise TypeError("TokenMix's labels come from its teacher's map of each image's own "
                        "class: call mixer(images, labels) (or draw_labelled), not draw(images)")

    def draw_labelled(self, images: torch.Tensor, labels: torch.Tensor) -> Draw:
        if labels.dim() != 1:
            raise _checks.ArgumentError(
                "labels", "must be class indices (B,) for TokenMix (its teacher maps are read "
                          f"for each image's own class), got shape {tuple(labels.shape)}")
        b, dev = images.shape[0], images.device
        h, w = size = (int(images.shape[-2]), int(images.shape[-1]))
        gh, gw = self.grid(size)
        partner = self.partner(b, dev)
        gen_dev = self.generator_device(dev)
        skip = self.unmixed(b, dev, partner, self.prob)
        if skip is not None:
            return skip
        n = self.count(gh * gw, gen_dev)
        chunk: list[float] = []

        def uniforms() -> list[float]:
            if not chunk:
                chunk.extend(rand(40, device=gen_dev, generator=self.generator).tolist())
            out = chunk[:4]
            del chunk[:4]
            return out

        given = block_mask((gh, gw), n, uniforms).to(dev)  # True: token from the partner
        keep = (~given)[None]
        ph, pw = self.patch_size
        mask = CellMask(keep, tuple(range(0, h + 1, ph)), tuple(range(0, w + 1, pw)))
        act = self.activations(images, labels, (gh, gw))
        kept = keep.flatten(1).float()
        w_own = (act * kept).sum(1)
        w_partner = (act.index_select(0, partner) * (1.0 - kept)).sum(1)
        return Draw(mask, partner, mask.lam_area(), self.method, self.relabel,
                    label_weights=(w_own, w_partner), objective=self.objective)
