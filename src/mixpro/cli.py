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


def _help(spec: Any, default: bool = True) -> str:
    """A flag's help from its declaration: the help text, the allowed values, the default."""
    from .options import _show

    text = spec.help
    if spec.allowed and not spec.choices:
        text += f"; {spec.allowed}"
    if default and spec.default is not None and "default" not in text:
        text += f" (default: {_show(spec.default)})"
    return text.replace("%", "%%")


def add_option_arguments(parser: argparse.ArgumentParser | Any, cls: type) -> None:
    """One ``--<name>`` flag per declared option of the dataclass ``cls``
    (:func:`mixpro.options.specs`): its type, choices, default and help all come from the
    declaration (booleans get ``--name/--no-name``, tuples take several values)."""
    from .options import flag, specs

    for name, spec in specs(cls).items():
        if not spec.flag:
            continue
        kw: dict[str, Any] = {"dest": name, "help": _help(spec)}
        if spec.kinds == (bool,):
            kw.update(action=argparse.BooleanOptionalAction, default=spec.default)
        elif spec.item is not None:
            kw.update(nargs="+", type=spec.item, choices=spec.choices,
                      default=None if spec.default is None else list(spec.default))
        else:
            kinds = [k for k in spec.kinds if k in (int, float, str)]
            kw.update(type=kinds[0] if len(kinds) == 1 else str, choices=spec.choices,
                      default=spec.default)
        parser.add_argument(flag(name), **kw)


def options_markdown() -> str:
    """``docs/options.md``: every declared option of every sub-command, as tables (made from
    the declarations; ``tests/test_declared_once.py`` checks the committed file is this)."""
    from .bench import BenchOptions
    from .evaluate.figures import FigureOptions
    from .evaluate.run import EvalOptions
    from .options import flag, table
    from .train.recipe import Recipe

    parts = ["# Options\n",
             "Made from the declarations (`mixpro.options.option`); regenerate with "
             "`python -c \"import mixpro.cli as c; c.write_options_doc()\"`.\n",
             "## `mixpro train` / `mixpro compare`: recipe keys\n",
             "Every key is a flag (`--key-name V`, values parsed as YAML) and a YAML recipe key. "
             "The mixing keys are `mixpro.methods.MixOptions`; which method uses which is in "
             "`mixpro train --help`.\n",
             table(Recipe, names=lambda n: n, skip=("name",))]
    for title, cls in (("mixpro eval", EvalOptions), ("mixpro figures", FigureOptions),
                       ("mixpro bench", BenchOptions)):
        parts += [f"## `{title}`\n", table(cls, names=flag)]
    return "\n".join(parts)


def write_options_doc(path: str = "docs/options.md") -> None:
    """Write :func:`options_markdown` to ``path``."""
    from .files import atomic_write_text

    atomic_write_text(options_markdown(), path)


def _methods_epilog() -> str:
    from .methods import METHODS

    width = max(map(len, METHODS))
    return "methods (--method):\n" + "\n".join(f"  {n:<{width}}  {m.help}"
                                                for n, m in METHODS.items())


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """``--recipe``, ``--set key=value`` and one ``--<key>`` flag per recipe field (values
    parsed as YAML: ``--lr 1e-3``, ``--model-kwargs '{depth: 2}'``, ``--clip-grad null``);
    their help comes from the recipe's declarations (:data:`mixpro.train.recipe.SPECS`)."""
    from .methods import METHODS
    from .train.recipe import SPECS, available_recipes, parse_value

    parser.add_argument("--recipe", default=None,
                        help=f"recipe name ({', '.join(available_recipes())}) or a YAML path")
    parser.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe key (repeatable)")
    group = parser.add_argument_group("recipe keys (override the recipe)")
    for name, spec in SPECS.items():
        if not spec.flag:
            continue
        flag = "--" + name.replace("_", "-")
        kinds, optional = spec.kinds, spec.optional
        text = _help(spec, default=False)
        if name == "method":
            text += ": " + " | ".join(METHODS)
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
                                 grid=args.grid, reference=args.reference,
                                 rerun=args.rerun))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate.run import EvalOptions, evaluate_checkpoints

    options = _options(EvalOptions, args)
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
    from .evaluate.run import EvalOptions

    parser.add_argument("checkpoints", nargs="+", help="checkpoints written by mixpro train")
    add_option_arguments(parser, EvalOptions)


def _figures_arguments(parser: argparse.ArgumentParser) -> None:
    from .evaluate.figures import FigureOptions

    add_option_arguments(parser, FigureOptions)


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``mixpro bench`` flags: :class:`~mixpro.bench.BenchOptions`' declarations."""
    from .bench import BenchOptions

    add_option_arguments(parser, BenchOptions)


def build_parser() -> argparse.ArgumentParser:
    """The ``mixpro`` parser with its five sub-commands."""
    from .train import compare

    parser = argparse.ArgumentParser(
        prog="mixpro", allow_abbrev=False,
        description="MixPro for ViTs: train, compare, eval, figures, bench")
    sub = parser.add_subparsers(dest="command")
    tr = sub.add_parser("train", allow_abbrev=False,
                        help="train a model (default: the embedded Fashion-MNIST recipe)",
                        epilog=_methods_epilog(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                    help="continue from OUTPUT/last.pt (or the given checkpoint)")
    tr.add_argument("--overwrite", action="store_true",
                    help="start afresh in an output folder that holds another run's files")
    add_recipe_arguments(tr)
    tr.set_defaults(func=_train)
    cp = sub.add_parser("compare", allow_abbrev=False,
                        help="methods x variants x seeds with one recipe -> results.md/csv, "
                             "compare.png", epilog=_methods_epilog(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    cp.add_argument("--methods", nargs="+", default=list(compare.DEFAULT_METHODS),
                    help="methods to compare (listed below; default: "
                         f"{' '.join(compare.DEFAULT_METHODS)})")
    cp.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    cp.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="sweep a recipe key over values (repeatable: the product of all)")
    cp.add_argument("--reference", default=None,
                    help="variant the others are compared with (default: the first)")
    cp.add_argument("--output-dir", default=None,
                    help="sweep folder (default runs/compare-<recipe>)")
    cp.add_argument("--rerun", action="store_true",
                    help="train again the runs whose folder holds a run of another recipe "
                         "(default: refuse them, naming the keys that differ)")
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
