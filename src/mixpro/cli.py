"""The ``mixpro`` command: sub-commands ``train``, ``compare``, ``eval``, ``figures``, ``bench``.

Owns every argument parser. It parses, turns the arguments into typed options (a
:class:`~mixpro.train.recipe.Recipe`, :class:`~mixpro.evaluate.run.EvalOptions`,
:class:`~mixpro.evaluate.figures.FigureOptions`, :class:`~mixpro.bench.BenchOptions`) and calls
the Python entry points; nothing below this module sees an ``argparse.Namespace``. User errors
(:class:`mixpro.errors.UserError`) become ``mixpro: error: <one line>``, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

from .errors import UserError

# -- recipe flags --------------------------------------------------------------------------


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """``--recipe``, ``--set key=value`` and one ``--<key>`` flag per recipe field (values
    parsed as YAML: ``--lr 1e-3``, ``--model-kwargs '{depth: 2}'``, ``--clip-grad null``)."""
    from .train.recipe import FIELDS, HELP, allowed_types, available_recipes, parse_value

    parser.add_argument("--recipe", default=None,
                        help=f"recipe name ({', '.join(available_recipes())}) or a YAML path")
    parser.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe key (repeatable)")
    group = parser.add_argument_group("recipe keys (override the recipe)")
    for name in FIELDS:
        if name == "name":
            continue
        flag = "--" + name.replace("_", "-")
        kinds, optional = allowed_types(name)
        text = HELP[name]
        if kinds == (bool,):
            group.add_argument(flag, dest=name, default=None, help=text,
                               action=argparse.BooleanOptionalAction)
        elif kinds == (str,) and not optional:  # names and paths stay strings
            group.add_argument(flag, dest=name, default=None, type=str, metavar="V", help=text)
        else:
            group.add_argument(flag, dest=name, default=None, type=parse_value, metavar="V",
                               help=text)


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe overrides given on the command line (flags, then ``--set``)."""
    from .train.recipe import FIELDS, ConfigError, parse_value, suggest

    out = {k: getattr(args, k) for k in FIELDS if getattr(args, k, None) is not None}
    for item in args.set_:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key = key.strip().replace("-", "_")
        if key not in FIELDS:
            raise ConfigError(f"unknown recipe key {key!r}{suggest(key)}")
        out[key] = parse_value(text)
    return out


def _options(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """A frozen options dataclass from the parsed flags of the same names (lists → tuples)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in fixed:
            values[f.name] = fixed[f.name]
        elif hasattr(args, f.name):
            v = getattr(args, f.name)
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


# -- sub-commands --------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    from .train import recipe, run

    cfg = recipe.load_recipe(args.recipe, recipe_overrides(args))
    result = run.train(cfg, resume=args.resume, overwrite=args.overwrite)
    rank0 = os.environ.get("RANK", "0") == "0"  # torchrun: only rank 0 reports
    if rank0 and result.summary and result.summary.get("test_acc") is not None:
        print(f"done: test top-1 {result.summary['test_acc']:.2f}% "
              f"(best {result.summary['best_acc']:.2f}%), outputs in {result.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .train import compare

    compare.compare(compare.plan(args.recipe, methods=args.methods, seeds=args.seeds,
                                 output=args.output_dir, overrides=recipe_overrides(args),
                                 grid=args.grid, reference=args.reference))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate.run import EvalOptions, evaluate_checkpoints

    options = _options(EvalOptions, args, progress=not args.no_progress)
    payload = evaluate_checkpoints(args.checkpoints, options)
    print(payload["table"])
    for kind, path in payload["files"].items():
        print(f"{kind}: {path}")
    return 0


def _figures(args: argparse.Namespace) -> int:
    from .evaluate.figures import FigureOptions, make_figures

    for path in make_figures(_options(FigureOptions, args)):
        print(path)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    try:
        print(bench.to_markdown(bench.run(_options(bench.BenchOptions, args))))
    except ValueError as e:
        raise UserError(str(e)) from None
    return 0


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    from .evaluate.occlusion import DROP_MODES
    from .evaluate.run import EVALS, INTERPOLATIONS, EvalOptions

    d = EvalOptions()
    parser.add_argument("checkpoints", nargs="+", help="checkpoints written by mixpro train")
    parser.add_argument("--data", default=None,
                        help="'fashion-mnist' (embedded test split), an ImageFolder, or a .tar, "
                             "folder of tars, hfds/NAME, wds/FOLDER (their val_split from the "
                             "checkpoint's recipe) (default: the data the checkpoint was "
                             "trained on)")
    parser.add_argument("--data-dir", default=None,
                        help="Fashion-MNIST idx folder (default: $MIXPRO_FASHION_MNIST, then "
                             "/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--ood", default=d.ood,
                        help="OOD set: 'auto' (fashion-mnist: the held-out classes of a "
                             "checkpoint trained with holdout_classes, else glyphs; otherwise "
                             "none), 'heldout', 'glyphs', 'none', or an image folder "
                             "(labels ignored)")
    parser.add_argument("--evals", nargs="+", choices=EVALS, default=list(EVALS),
                        help="evaluations to run (default: all)")
    parser.add_argument("--valid-labels", default=None, metavar="FILE",
                        help="class index list: slice the logits to these columns "
                             "(ImageNet-A/-O style); its length must equal the dataset's classes")
    parser.add_argument("--names", nargs="+", default=None,
                        help="display names of the checkpoints (default: file stem / run dir)")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate the first N images only")
    parser.add_argument("--occlusion-modes", nargs="+", choices=DROP_MODES,
                        default=list(DROP_MODES))
    parser.add_argument("--occlusion-images", type=int, default=d.occlusion_images,
                        help="images used by the occlusion sweep (default 1000; 0 = all)")
    parser.add_argument("--repeats", type=int, default=d.repeats,
                        help="random PatchDrop repeats R (mean ± std)")
    parser.add_argument("--per-image", action="store_true",
                        help="random PatchDrop: one draw per image (default: per batch, ref.)")
    parser.add_argument("--saliency", default=None, metavar="CKPT",
                        help="checkpoint whose cls attention gives the saliency "
                             "(default: each evaluated model's own)")
    parser.add_argument("--saliency-model", default=None, metavar="TIMM_NAME",
                        help="timm architecture of a raw --saliency state dict (e.g. DINO "
                             "weights with vit_small_patch16_224)")
    parser.add_argument("--calib-bin", type=int, default=d.calib_bin,
                        help="samples per calibration bin (beta, default 100)")
    parser.add_argument("--interpolation", default=d.interpolation, choices=INTERPOLATIONS)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--seed", type=int, default=d.seed, help="0..2**63-1")
    parser.add_argument("--device", default=d.device, help="cpu | cuda | cuda:N")
    parser.add_argument("--out", default=d.out, help="output folder (eval.json, PNGs)")
    parser.add_argument("--no-progress", action="store_true")


def _figures_arguments(parser: argparse.ArgumentParser) -> None:
    from .evaluate.figures import FIGURES, FigureOptions

    d = FigureOptions()
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint for attention maps and λ_attn (needed by fig1, fig6)")
    parser.add_argument("--data", default=None,
                        help="'fashion-mnist' or an ImageFolder (default: the checkpoint's "
                             "training data, else fashion-mnist)")
    parser.add_argument("--which", nargs="+", choices=FIGURES, default=list(FIGURES))
    parser.add_argument("--pairs", type=int, default=d.pairs, help="pairs shown in fig6")
    parser.add_argument("--mask-scale", type=int, default=None,
                        help="MaskMix cell side in patches (default: the checkpoint's, else 2)")
    parser.add_argument("--patch-size", type=int, default=d.patch_size,
                        help="patch size for fig4 without --checkpoint")
    parser.add_argument("--image-size", type=int, default=d.image_size,
                        help="image size for fig4 without --checkpoint")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out", default=d.out, help="output folder")


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    """The ``mixpro bench`` flags; their ``dest`` names are :class:`~mixpro.bench.BenchOptions`'
    fields."""
    from .bench import BenchOptions

    d = BenchOptions()
    p.add_argument("--device", default=d.device,
                   help="cpu or cuda (default: cuda if available)")
    p.add_argument("--model", default=d.model,
                   help="timm model for the step; models without a cls token (swin_*, "
                        "convnext_*, resnet*) get mixpro train's cls_head auto head")
    p.add_argument("--recipe", default=d.recipe,
                   help="time the step of this mixpro train recipe's model, geometry and batch "
                        "(e.g. fashion_mnist_limited_swin) instead of --model")
    p.add_argument("--img-size", type=int, default=d.img_size,
                   help="step image size (default 224)")
    p.add_argument("--batch", type=int, default=d.batch,
                   help="step batch (default: 32 on CPU, 128 on CUDA)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed repeats (default 5/20)")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--amp", action="store_true", default=d.amp,
                   help="bfloat16 autocast in the step")
    p.add_argument("--skip-step", action="store_true", default=d.skip_step,
                   help="only the mix section")
    p.add_argument("--skip-mix", action="store_true", default=d.skip_mix,
                   help="only the step section")
    p.add_argument("--output", default=d.output, help="folder for .md and .json")


def build_parser() -> argparse.ArgumentParser:
    """The ``mixpro`` parser with its five sub-commands."""
    from .train import compare

    parser = argparse.ArgumentParser(
        prog="mixpro", allow_abbrev=False,
        description="MixPro for ViTs: train, compare, eval, figures, bench")
    sub = parser.add_subparsers(dest="command")
    tr = sub.add_parser("train", allow_abbrev=False,
                        help="train a model (default: the embedded Fashion-MNIST recipe)")
    tr.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                    help="continue from OUTPUT/last.pt (or the given checkpoint)")
    tr.add_argument("--overwrite", action="store_true",
                    help="start afresh in an output folder that holds another run's files")
    add_recipe_arguments(tr)
    tr.set_defaults(func=_train)
    cp = sub.add_parser("compare", allow_abbrev=False,
                        help="methods x variants x seeds with one recipe -> results.md/csv, "
                             "compare.png")
    cp.add_argument("--methods", nargs="+", default=list(compare.DEFAULT_METHODS))
    cp.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    cp.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="sweep a recipe key over values (repeatable: the product of all)")
    cp.add_argument("--reference", default=None,
                    help="variant the others are compared with (default: the first)")
    cp.add_argument("--output-dir", default=None,
                    help="sweep folder (default runs/compare-<recipe>)")
    add_recipe_arguments(cp)
    cp.set_defaults(func=_compare, recipe=compare.DEFAULT_RECIPE)
    ev = sub.add_parser("eval", allow_abbrev=False,
                        help="accuracy, occlusion, calibration and OOD of checkpoints")
    _eval_arguments(ev)
    ev.set_defaults(func=_eval)
    fg = sub.add_parser("figures", allow_abbrev=False,
                        help="mixed samples, mask strategies, attention maps (PNG)")
    _figures_arguments(fg)
    fg.set_defaults(func=_figures)
    be = sub.add_parser("bench", allow_abbrev=False,
                        help="mix cost and training-step speed of every method, interleaved")
    _bench_arguments(be)
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
    except UserError as e:
        print(f"mixpro: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .train.signals import Stopped

        if not isinstance(e, Stopped):
            raise
        print(f"mixpro: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("mixpro: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
