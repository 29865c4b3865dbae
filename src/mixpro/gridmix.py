"""GridMix (Baek, Bang & Shim, Pattern Recognition 2021): grid-based mixing plus "local context
mapping by predicting patch-level labels".

Owns :class:`PatchTokens` (a forward hook reading a timm ViT's final patch tokens) and
:class:`GridMix`: MaskMix's grid (cells of ``mask_scale × patch`` px, exactly ``⌊S·λ⌋`` from
sample ``i``, λ ~ Beta(β, β)), area labels for the classifier, and a per-token linear head on
the model's patch tokens trained on each token's own label (the label of the image its pixels
came from, exact token fractions), weighted into the loss by ``local_weight``.

The paper's body and code were not available to us (only its abstract): the grid size, the
cell assignment, the head and the loss weight are our choices, stated here and in
``docs/table2.md``: cells of whole tokens (``mask_scale``, default 2), MaskMix's exact-count
assignment (batch / positions / elem modes), a linear head ``D → K`` on the final-norm patch
tokens (as Token Labeling's dense head), soft-target CE per token, mean over tokens, weight
``local_weight = 1.0``. The head's parameters are the mixer's (``parameters()``), so the
training app optimises and checkpoints them with the learnable α of other mixers.
OpenMixup's ``gridmix`` is a different method (GridMixup, :mod:`mixpro.gridmixup`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from . import _checks
from .attention import unwrap_model
from .batch import MixedBatch
from .labels import mix_targets
from .loss import soft_target_cross_entropy
from .mixers import Draw, MaskMix


class PatchTokens:
    """The final (normalised) patch tokens ``(B, N, D)`` of the latest forward of a timm ViT,
    read by a forward hook on ``model.norm`` (prefix tokens dropped); kept with their graph,
    so that a loss on them trains the model too."""

    def __init__(self, model: nn.Module) -> None:
        inner = unwrap_model(model)
        norm = getattr(inner, "norm", None)
        prefix = getattr(inner, "num_prefix_tokens", None)
        if not isinstance(norm, nn.Module) or prefix is None \
                or not hasattr(inner, "patch_embed") or getattr(inner, "embed_dim", None) is None:
            raise _checks.ArgumentError(
                "model", f"must be a timm ViT with patch tokens (norm, patch_embed, "
                         f"num_prefix_tokens) for GridMix's patch-level labels, got "
                         f"{type(inner).__name__}")
        self.prefix, self.embed_dim = int(prefix), int(inner.embed_dim)
        self.tokens: torch.Tensor | None = None
        self._handle = norm.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 3:
            self.tokens = output[:, self.prefix:]

    def remove(self) -> None:
        self._handle.remove()


@dataclass(eq=False, kw_only=True)
class GridMix(MaskMix):
    """GridMix: MaskMix's grid with area labels, plus patch-level labels on the model's
    patch tokens (see the module docstring for what is ours).

    Args (besides MaskMix's):
        model: the timm ViT being trained (its patch tokens get the per-token head); None:
            no patch-level term (the grid mix alone).
        local_weight: weight of the patch-level loss (mean soft-target CE over tokens).
    """

    method: ClassVar[str] = "gridmix"

    model: nn.Module | None = field(default=None, repr=False)
    local_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.local_weight, bool) or not isinstance(self.local_weight,
                                                                 (int, float)) \
                or not self.local_weight >= 0:
            raise _checks.ArgumentError("local_weight", f"must be a number >= 0, got "
                                                        f"{self.local_weight!r}")
        self.probe = None if self.model is None else PatchTokens(self.model)
        self.token_head = None if self.probe is None else \
            nn.Linear(self.probe.embed_dim, self.num_classes)

    def parameters(self) -> list[nn.Parameter]:
        return [] if self.token_head is None else list(self.token_head.parameters())

    def token_targets(self, batch: MixedBatch, grid: tuple[int, int]) -> torch.Tensor:
        """Each token's soft label ``(B, N, K)``: its share from sample ``i`` times ``y_i``
        plus the rest times ``y_partner``, smoothed as the batch's targets."""
        b, n = batch.batch_size, grid[0] * grid[1]
        frac = batch.token_fraction(grid).reshape(b * n)
        labels = batch.labels.repeat_interleave(n, 0)
        partner = (batch.partner * n)[:, None] + torch.arange(n, device=batch.partner.device)
        return mix_targets(labels, partner.reshape(-1), frac, batch.num_classes,
                           batch.label_smoothing).reshape(b, n, -1)

    def local_loss(self, batch: MixedBatch) -> torch.Tensor:
        """The patch-level loss of ``batch`` on the tokens of the model's latest forward."""
        tokens = None if self.probe is None else self.probe.tokens
        if tokens is None or tokens.shape[0] != batch.batch_size:
            raise RuntimeError("GridMix: no patch tokens of this batch's forward pass; call "
                               "batch.loss(model(batch.images)) on the model given to GridMix")
        ph, pw = self.patch_size
        grid = (batch.images.shape[-2] // ph, batch.images.shape[-1] // pw)
        if grid[0] * grid[1] != tokens.shape[1]:
            raise RuntimeError(f"GridMix: the model has {tokens.shape[1]} patch tokens, the "
                               f"images give {grid[0]}x{grid[1]} patches of {self.patch_size}")
        head = self.token_head.to(tokens.device)
        logits = head(tokens.float())
        targets = self.token_targets(batch, grid).to(logits.device)
        return self.local_weight * soft_target_cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1, targets.shape[-1]))

    def draw(self, images: torch.Tensor) -> Draw:
        d = super().draw(images)
        if self.probe is None or self.local_weight == 0:
            return d
        return Draw(d.source, d.partner, d.lam_area, d.method, d.relabel, self.local_loss)


__all__ = ["GridMix", "PatchTokens"]
