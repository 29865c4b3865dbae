"""Time the speed-goal jobs of whichever mixpro is importable, to compare two versions of the
mixing kernels on the same machine under the same load (issue 24's "no regression on a busy
machine"): a plain copy, MaskMix and MixPro (patch 16, mask_scale 2), and mixpro's
timm-comparable jobs (Mixup/CutMix per batch, per sample, per pair), B = 128, 3×224²,
2 threads, interleaved, medians; the timm and torchvision jobs too unless ``--slim``.

    git worktree add /tmp/old <rev>
    python -c "while True: pass" & python -c "while True: pass" &   # a busy machine
    PYTHONPATH=/tmp/old/src python benchmarks/compare_kernels.py old.json --slim
    python benchmarks/compare_kernels.py new.json --slim
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mixpro import _kernels, bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="JSON file for the medians (ms)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--slim", action="store_true", help="mixpro's jobs only")
    args = p.parse_args()
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, 224, 224, generator=g)
    y = torch.randint(0, 1000, (128,), generator=g)
    mixers = bench._mixers(1000, 16, 2)
    fns = {"copy": lambda: x.clone()}
    fns.update({k: (lambda f=mixers[k]: f(x, y)) for k in ("maskmix", "mixpro")})
    for job, libs in bench.library_jobs(x, y, 1000).items():
        fns.update({f"{lib} | {job}": fn for lib, fn in libs.items()
                    if lib == "mixpro" or not args.slim})
    calibrating = getattr(_kernels, "calibrating", None)  # older versions choose nothing
    for fn in fns.values():
        for _ in range(40 if calibrating else 1):
            fn()
            if calibrating is None or not calibrating():
                break
    for _ in range(2):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    with open(args.out, "w") as f:
        json.dump({"cpu": bench.cpu_model(), "medians_ms": med}, f, indent=1)
    for k, v in med.items():
        print(f"{k:40s} {v:8.2f} ms {v / med['copy']:6.2f}x copy")


if __name__ == "__main__":
    main()
