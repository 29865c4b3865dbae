"""Issue 20: every option and every method is declared once and every consumer reads the
declaration: a throw-away method (one class, one registry entry) and a throw-away option (one
field) reach the CLI, the sweep, the bench, validation and the docs without another file."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest
import torch

import mixpro
from mixpro import cli, options
from mixpro.errors import UserError
from mixpro.methods import METHODS, MixOptions, build_mixer, unregister

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "adding-a-method.md"


def readme_methods(text: str) -> list[str]:
    """The method names the README's `mixpro train` row lists (between its parentheses)."""
    row = next(line for line in text.splitlines() if line.startswith("| `mixpro train` |"))
    listed = re.search(r"any method \(`([^`]*)`\)", row)
    return listed.group(1).split() if listed else []


def undocumented_methods(text: str) -> list[str]:
    """Registered methods the README's method list does not name (the docs check)."""
    listed = set(readme_methods(text))
    return [m for m in METHODS if m not in listed]


def _example_namespace() -> dict:
    """Run the worked example of docs/adding-a-method.md (its one python block)."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 - our own documentation
    return ns


@pytest.fixture
def throwaway():
    ns = _example_namespace()
    yield ns
    unregister("brighter_half")


def test_readme_lists_every_registered_method_and_no_other():
    text = (ROOT / "README.md").read_text()
    assert undocumented_methods(text) == []
    assert set(readme_methods(text)) <= set(METHODS)


def test_registry_says_what_each_method_needs_as_its_mixer_does():
    for alpha in ("cosine", "none", "equal"):
        for ratio in (0.5, 1.0):
            o = MixOptions(alpha=alpha, transmix_ratio=ratio)
            for name, method in METHODS.items():
                if method.helpers:
                    continue
                mixer = build_mixer(name, o, num_classes=4, patch_size=4,
                                    generator=torch.Generator())
                assert method.attention(o) == mixer.needs_attention, (name, alpha, ratio)


def test_a_throwaway_method_reaches_every_consumer(throwaway, tmp_path, data_dir, capsys):
    from mixpro import bench
    from mixpro.train import compare as cmp

    assert "brighter_half" in METHODS
    # the worked example mixes exactly: each image keeps its brighter half
    x = torch.zeros(4, 1, 4, 4)
    x[0, ..., :2] = 1.0  # left brighter
    x[1, ..., 2:] = 1.0  # right brighter
    batch = throwaway["BrighterHalf"](num_classes=3)(x, torch.tensor([0, 1, 2, 0]))
    assert torch.equal(batch.lam_area, torch.full((4,), 0.5))
    assert torch.equal(batch.images[0, ..., :2], x[0, ..., :2])
    assert torch.equal(batch.images[0, ..., 2:], x[3, ..., 2:])
    assert torch.equal(batch.images[1, ..., 2:], x[1, ..., 2:])
    assert torch.allclose(batch.targets(torch.randn(4, 3)).sum(1), torch.ones(4))
    # train --help and compare --help list it with its help line
    for sub in ("train", "compare"):
        with pytest.raises(SystemExit):
            cli.main([sub, "--help"])
        out = capsys.readouterr().out
        assert "brighter_half" in out and "the brighter half of image i" in out
    # compare plans and runs it (a one-step sweep)
    over = dict(data_dir=str(data_dir), img_size=16, patch_size=4, epochs=1, warmup_epochs=0,
                batch_size=16, eval_batch_size=64, progress=False, max_steps=1, threads=1,
                model_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2})
    rows = cmp.compare(cmp.plan(None, methods=["brighter_half"], seeds=[0],
                                output=tmp_path / "s", overrides=over))
    assert rows[0]["method"] == "brighter_half"
    # a key it does not use is refused for it
    with pytest.raises(UserError, match="method brighter_half does not use beta"):
        cmp.plan(None, methods=["brighter_half"], seeds=[0], output=tmp_path / "t",
                 overrides={**over, "beta": 2.0})
    # bench times it
    assert "brighter_half" in bench._mixers(5, 4, 2)
    # the docs check reports it as missing from the README's method list
    assert undocumented_methods((ROOT / "README.md").read_text()) == ["brighter_half"]


def test_a_throwaway_option_needs_one_declaration(capsys):
    from mixpro.evaluate.run import EvalError, EvalOptions

    Extra = dataclasses.make_dataclass(
        "Extra", [("wobble", int, options.option(3, ge=1, le=5,
                                                  help="how much the images wobble"))],
        bases=(EvalOptions,), frozen=True)
    spec = options.specs(Extra)["wobble"]
    assert (spec.default, spec.kinds, spec.allowed) == (3, (int,), "in [1, 5]")
    parser = argparse.ArgumentParser(prog="mixpro eval")
    cli.add_option_arguments(parser, Extra)
    assert "--wobble" in parser.format_help() and "how much the images wobble" in \
        parser.format_help()
    assert parser.parse_args(["--wobble", "4"]).wobble == 4
    with pytest.raises(EvalError, match=r"^--wobble must be in \[1, 5\], got 9$"):
        options.check_flags(Extra(wobble=9), EvalError)
    assert "| `--wobble` | `3` | in [1, 5] | how much the images wobble |" in \
        options.table(Extra, names=options.flag)
    # and as a recipe key: the schema, --help, validation and the table
    from mixpro.train import recipe as R

    Rx = dataclasses.make_dataclass(
        "Rx", [("wobble", int, options.option(3, ge=1, le=5, help="how much it wobbles"))],
        bases=(R.Recipe,))
    assert "wobble" in options.specs(Rx)
    with pytest.raises(mixpro._checks.ArgumentError, match="wobble must be in"):
        options.check(Rx(wobble=0))


def test_every_declared_option_has_help_and_a_valid_default():
    from mixpro.bench import BenchOptions
    from mixpro.evaluate.figures import FigureOptions
    from mixpro.evaluate.run import EvalOptions
    from mixpro.train.recipe import Recipe

    for cls in (MixOptions, Recipe, EvalOptions, FigureOptions, BenchOptions):
        for name, spec in options.specs(cls).items():
            assert spec.help, (cls.__name__, name)
            if spec.default is not dataclasses.MISSING:
                spec.check(spec.default)


def test_the_committed_options_doc_is_the_declarations():
    committed = (ROOT / "docs" / "options.md").read_text()
    assert committed == cli.options_markdown(), (
        "docs/options.md is stale: python -c \"import mixpro.cli as c; c.write_options_doc()\"")


def test_bad_values_name_the_flag_or_key_in_one_line(capsys):
    for argv, text in ((["eval", "x.pt", "--batch-size", "0"], "--batch-size must be >= 1"),
                       (["figures", "--pairs", "0"], "--pairs must be >= 1"),
                       (["bench", "--warmup", "-1"], "--warmup must be >= 0"),
                       (["train", "--mask-mode", "pixel"], "mask_mode must be one of batch")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"mixpro: error: {text}") and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from test_data import make_fashion

    return make_fashion(tmp_path_factory.mktemp("fm"))
