"""The ``mixpro`` command: sub-commands ``train``, ``compare``, ``eval``, ``figures``, ``bench``.

Parses arguments and hands over; user errors become ``mixpro: error: <one line>``, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .data import DatasetError
from .train.config import TrainError


def _train(args: argparse.Namespace) -> int:
    from .train import config, run

    cfg = config.load_recipe(args.recipe, config.overrides_from_args(args))
    result = run.train(cfg, resume=args.resume)
    rank0 = os.environ.get("RANK", "0") == "0"  # torchrun: only rank 0 reports
    if rank0 and result.summary and result.summary.get("test_acc") is not None:
        print(f"done: test top-1 {result.summary['test_acc']:.2f}% "
              f"(best {result.summary['best_acc']:.2f}%), outputs in {result.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .train import compare, config

    overrides = config.overrides_from_args(args)
    compare.compare(args.recipe, methods=args.methods, seeds=args.seeds, output=args.output_dir,
                    overrides=overrides)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    try:
        print(bench.to_markdown(bench.run(args)))
    except ValueError as e:
        print(f"mixpro: error: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .train import compare, config

    parser = argparse.ArgumentParser(
        prog="mixpro", allow_abbrev=False,
        description="MixPro for ViTs: train, compare, eval, figures, bench")
    sub = parser.add_subparsers(dest="command")
    tr = sub.add_parser("train", allow_abbrev=False,
                        help="train a ViT (default: the embedded Fashion-MNIST recipe)")
    tr.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                    help="continue from OUTPUT/last.pt (or the given checkpoint)")
    config.add_recipe_arguments(tr)
    tr.set_defaults(func=_train)
    cp = sub.add_parser("compare", allow_abbrev=False,
                        help="methods x seeds with one recipe -> results.md/csv, compare.png")
    cp.add_argument("--methods", nargs="+", default=list(compare.DEFAULT_METHODS))
    cp.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    cp.add_argument("--output-dir", default=None,
                    help="sweep folder (default runs/compare-<recipe>)")
    config.add_recipe_arguments(cp)
    cp.set_defaults(func=_compare, recipe=compare.DEFAULT_RECIPE)
    from . import bench
    from .evaluate import figures as eval_figures
    from .evaluate import run as eval_run

    ev = sub.add_parser("eval", allow_abbrev=False,
                        help="accuracy, occlusion, calibration and OOD of checkpoints")
    eval_run.add_arguments(ev)
    ev.set_defaults(func=eval_run.run)
    fg = sub.add_parser("figures", allow_abbrev=False,
                        help="mixed samples, mask strategies, attention maps (PNG)")
    eval_figures.add_arguments(fg)
    fg.set_defaults(func=eval_figures.run)
    be = sub.add_parser("bench", allow_abbrev=False,
                        help="mix cost and training-step speed of every method, interleaved")
    bench.add_arguments(be)
    be.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mixpro`` console script and ``python -m mixpro``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["train"]  # the embedded default
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (TrainError, DatasetError) as e:
        print(f"mixpro: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixpro: interrupted; the last finished epoch is saved, continue with --resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
