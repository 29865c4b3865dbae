"""Core costs, measured in one process, interleaved, with warm-up (medians of repeats).

1. MaskMix mask + mix per batch (B=128, 3×224×224 by default) against
   (a) one plain out-of-place copy of the batch (the memory-traffic floor) and
   (b) a straightforward per-sample numpy loop building int64 pixel masks (the official
       code's approach, written here from its description as a yardstick).
2. The ClsAttention probe's cost relative to a training step of a small ViT.

Usage: python benchmarks/core_costs.py [--batch 128] [--size 224] [--repeats 9] [--json out]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import numpy as np
import timm
import torch

import mixpro


def official_numpy_maskmix(x: torch.Tensor, mask_patch: int, rng: np.random.Generator):
    """Per-sample numpy loop with int64 pixel masks (official MixPro `MaskMix`, described)."""
    b, c, h, w = x.shape
    g = math.ceil(h / mask_patch)
    tau = rng.beta(1.0, 1.0)
    k = math.ceil(g * g * tau)
    masks = []
    for _ in range(b):  # independent positions per sample
        flat = np.zeros(g * g, dtype=np.int64)
        flat[rng.permutation(g * g)[:k]] = 1
        grid = flat.reshape(g, g)
        pix = grid.repeat(mask_patch, 0).repeat(mask_patch, 1)[:h, :w]
        masks.append(np.broadcast_to(pix, (c, h, w)))
    m = torch.from_numpy(np.stack(masks)).to(x.device)  # int64, host -> device
    index = torch.randperm(b, device=x.device)
    return m * x + (1 - m) * x[index], k / (g * g)


def timed(fn, repeats: int, results: dict, key: str) -> None:
    t0 = time.perf_counter()
    fn()
    results.setdefault(key, []).append(time.perf_counter() - t0)


def mix_costs(batch: int, size: int, patch: int, scale: int, repeats: int) -> dict:
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    rng = np.random.default_rng(0)
    modes = {
        "maskmix_batch": mixpro.MaskMix(num_classes=1000, patch_size=patch, mask_scale=scale),
        "maskmix_positions": mixpro.MaskMix(num_classes=1000, patch_size=patch,
                                            mask_scale=scale, mode="positions"),
        "maskmix_elem": mixpro.MaskMix(num_classes=1000, patch_size=patch, mask_scale=scale,
                                       mode="elem"),
    }
    fns = {"copy": lambda: x.clone(),
           "official_numpy_loop": lambda: official_numpy_maskmix(x, patch * scale, rng)}
    fns.update({k: (lambda m=m: m(x, y)) for k, m in modes.items()})
    res: dict = {}
    for _ in range(2):  # warm-up
        for f in fns.values():
            f()
    for _ in range(repeats):
        for k, f in fns.items():
            timed(f, repeats, res, k)
    med = {k: statistics.median(v) for k, v in res.items()}
    return {
        "median_ms": {k: 1e3 * v for k, v in med.items()},
        "ratio_to_copy": {k: v / med["copy"] for k, v in med.items()},
        "speedup_vs_official_loop": {
            k: med["official_numpy_loop"] / v for k, v in med.items() if k.startswith("maskmix")
        },
    }


def probe_cost(batch: int, repeats: int) -> dict:
    """Train step of a small ViT (d128×4, 32², patch 4) with and without the probe."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=4, embed_dim=128, depth=4, num_heads=4, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mixer = mixpro.MixPro(num_classes=10, patch_size=4, mask_scale=2)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    probe = mixpro.ClsAttention(model)
    qkv_out = {}
    cap = model.blocks[-1].attn.qkv.register_forward_hook(
        lambda m, i, o: qkv_out.__setitem__("o", o.detach()))
    model(x)
    cap.remove()

    def step(use_probe: bool):
        batch_ = mixer(x, y)
        logits = model(batch_.images)
        att = probe.attention if use_probe else torch.full((batch, 64), 1 / 64)
        loss = mixpro.soft_target_cross_entropy(logits, batch_.targets(logits, att))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def hook_only():
        probe._on_qkv(None, (), qkv_out["o"])

    res: dict = {}
    for _ in range(2):
        step(True)
    probe.remove()
    for _ in range(repeats):
        timed(lambda: step(False), repeats, res, "step_without_probe")
        probe = mixpro.ClsAttention(model)
        timed(lambda: step(True), repeats, res, "step_with_probe")
        probe.remove()
        for _ in range(10):
            timed(hook_only, repeats, res, "probe_hook")
    med = {k: statistics.median(v) for k, v in res.items()}
    return {
        "median_ms": {k: 1e3 * v for k, v in med.items()},
        "probe_hook_share_of_step": med["probe_hook"] / med["step_without_probe"],
        "step_ratio_with_vs_without": med["step_with_probe"] / med["step_without_probe"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = {
        "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "timm": timm.__version__, "platform": platform.platform()},
        "args": vars(args),
        "mix_patch16_scale2": mix_costs(args.batch, args.size, 16, 2, args.repeats),
        "mix_patch14_scale4": mix_costs(args.batch, args.size, 14, 4, args.repeats),
        "probe": probe_cost(args.batch, args.repeats),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
