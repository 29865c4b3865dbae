"""``mixpro compare``: several methods × seeds with one recipe, in-process and resumable.

Owns the sweep: one run per (method, seed) in ``<output>/<method>-seed<seed>``; a run with a
``final.json`` is skipped, one with a ``last.pt`` resumes from it, others start fresh. Then the
summary table (top-1 mean ± std over seeds, best-epoch top-1, training images/s) as
``results.md`` and ``results.csv`` and the bar plot ``compare.png`` — the analogue of the
paper's Table 2.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import run
from .config import METHODS, ConfigError, load_recipe

DEFAULT_RECIPE = "fashion_mnist_limited"
DEFAULT_METHODS = ("none", "cutmix", "transmix", "mixpro")


def _stats(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: Mapping[str, list[dict]]) -> list[dict[str, Any]]:
    """One row per method: ``method, n, mean, std, best_mean, img_per_s, train_time_s``."""
    rows = []
    for method, runs in results.items():
        mean, std = _stats([r["test_acc"] for r in runs])
        rows.append({
            "method": method, "n": len(runs), "mean": mean, "std": std,
            "best_mean": statistics.fmean(r["best_acc"] for r in runs),
            "img_per_s": statistics.fmean(r["img_per_s"] for r in runs),
            "train_time_s": statistics.fmean(r["train_time_s"] for r in runs),
        })
    return rows


def markdown(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    lines = [f"### {title}", "",
             "| method | runs | top-1 (%) mean ± std | best-epoch top-1 (%) | train img/s "
             "| train time / run (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['n']} | {r['mean']:.2f} ± {r['std']:.2f} | "
                     f"{r['best_mean']:.2f} | {r['img_per_s']:.0f} | {r['train_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def compare(
    recipe: str | None,
    *,
    methods: Sequence[str],
    seeds: Sequence[int],
    output: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) the sweep and write ``results.md``, ``results.csv``, ``compare.png``
    into ``output`` (default ``runs/compare-<recipe>``). Returns the table rows."""
    overrides = dict(overrides or {})
    for key in ("method", "seed", "output"):
        if key in overrides:
            raise ConfigError(f"compare sets {key} itself; use --methods/--seeds/--output-dir")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods) or len(set(seeds)) != len(seeds):
        raise ConfigError("--methods and --seeds must not repeat")
    # validate every config before the first run starts
    configs = {}
    for m in methods:
        for s in seeds:
            configs[m, s] = load_recipe(recipe, {**overrides, "method": m, "seed": s})
    name = next(iter(configs.values())).name
    out = Path(output) if output else Path("runs") / f"compare-{name}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for (m, s), cfg in configs.items():
        cfg.output = str(out / f"{m}-seed{s}")
        final = Path(cfg.output) / run.FINAL
        if final.is_file():
            print(f"compare: {m} seed {s} already finished, skipped", file=sys.stderr)
            results[m].append(json.loads(final.read_text()))
            continue
        resume = (Path(cfg.output) / "last.pt").is_file()
        print(f"compare: {m} seed {s} ({'resuming' if resume else 'starting'})", file=sys.stderr)
        results[m].append(run.train(cfg, resume=resume).summary)
    rows = summarize(results)
    title = (f"mixpro compare: recipe {name}, seeds {', '.join(map(str, seeds))} "
             f"(final-epoch top-1 on the test set)")
    (out / "results.md").write_text(markdown(rows, title))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    from .. import figures

    figures.compare_bars(rows, out / "compare.png", title=f"{name}: top-1 mean ± std")
    print(markdown(rows, title))
    print(f"sweep time this invocation: {time.perf_counter() - t0:.0f} s; results in {out}")
    return rows
