"""Images per second of a bare timm training step (no data loading, no mixing) for the ViT of
the default recipe and for the older default that issue 24's tester timed on an Intel Xeon
(dim 96, depth 6, patch 8, 32 px, fused attention: 1,281-1,304 images/s there), interleaved
in one process, so that a machine can be placed against that Xeon on the tester's own measure.

    python benchmarks/bare_step.py            # the process's intra-op threads (2 on 2 cores)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch


def step_of(dim: int, depth: int, heads: int, img: int, patch: int, fused: bool,
            batch: int) -> Callable[[], None]:
    """One AdamW step of timm's ``vit_tiny_patch16_224`` shrunk to these sizes, 1 channel,
    10 classes, on a fixed random batch."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                              in_chans=1, img_size=img, patch_size=patch, embed_dim=dim,
                              depth=depth, num_heads=heads, mlp_ratio=2.0)
    for block in model.blocks:
        block.attn.fused_attn = fused
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x, y = torch.randn(batch, 1, img, img), torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8, help="timed rounds per model")
    p.add_argument("--steps", type=int, default=20, help="steps per round")
    args = p.parse_args()
    torch.manual_seed(0)
    batch = 128
    steps = {
        "issue 24's old default (96/6/patch 8/32 px, fused)": step_of(96, 6, 3, 32, 8, True,
                                                                     batch),
        "the default recipe (64/3/patch 4/24 px, written-out)": step_of(64, 3, 2, 24, 4, False,
                                                                       batch),
    }
    for step in steps.values():  # warm-up
        for _ in range(args.steps):
            step()
    rates: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[name].append(args.steps * batch / (time.perf_counter() - t0))
    print(f"{torch.get_num_threads()} intra-op threads, batch {batch}")
    for name, r in rates.items():
        print(f"{name}: median {statistics.median(r):.0f} images/s "
              f"(rounds {min(r):.0f}-{max(r):.0f})")


if __name__ == "__main__":
    main()
