"""Sweep helpers: --grid parsing, variant names, the Student-t quantile, paired statistics."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixpro.sweep import (
    expand_grid,
    paired_difference,
    parse_grid,
    regularized_incomplete_beta,
    summarize_variants,
    t_cdf,
    t_quantile,
    variant_name,
)

SETTINGS = settings(max_examples=60, deadline=None)


# ------------------------------------------------------------------------------------------
# Student t
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("df", "table"), [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262),
                                           (30, 2.042)])
def test_t_quantile_matches_printed_tables(df, table):
    assert round(t_quantile(0.975, df), 3) == table


def t_closed_form(p: float, df: int) -> float:
    """Exact quantiles for df = 1, 2, 4 (the Cauchy, df=2 and df=4 closed forms)."""
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    a = 4 * p * (1 - p)
    q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
    return math.copysign(2 * math.sqrt(q - 1), p - 0.5)


@SETTINGS
@given(st.floats(0.501, 0.9999), st.sampled_from([1, 2, 4]))
def test_t_quantile_equals_closed_forms(p, df):
    assert math.isclose(t_quantile(p, df), t_closed_form(p, df), rel_tol=1e-9)
    assert math.isclose(t_quantile(1 - p, df), -t_quantile(p, df), rel_tol=1e-12)


@SETTINGS
@given(st.floats(1e-6, 1 - 1e-6), st.floats(0.5, 500))
def test_t_cdf_inverts_quantile(p, df):
    assert math.isclose(t_cdf(t_quantile(p, df), df), p, rel_tol=1e-9, abs_tol=1e-12)


@SETTINGS
@given(st.floats(-50, 50))
def test_t_cdf_closed_forms(t):
    assert math.isclose(t_cdf(t, 1), 0.5 + math.atan(t) / math.pi, abs_tol=1e-13)
    assert math.isclose(t_cdf(t, 2), 0.5 + t / (2 * math.sqrt(2 + t * t)), abs_tol=1e-13)


def test_t_far_tails():
    # Cauchy: P(T < -t) = atan(1/t)/π, so t = 1/tan(πp) exactly; df = 2 by its closed form
    for p in (1e-12, 1e-100, 1e-200):
        assert math.isclose(t_quantile(p, 1), -1 / math.tan(math.pi * p), rel_tol=1e-9)
        assert math.isclose(t_quantile(p, 2), t_closed_form(p, 2), rel_tol=1e-9)
        assert math.isclose(t_cdf(t_quantile(p, 3), 3), p, rel_tol=1e-9)
    q = 1 - 1e-12  # its upper tail is the float 1 - q, not 1e-12
    assert math.isclose(t_quantile(q, 2), -t_closed_form(1 - q, 2), rel_tol=1e-9)
    assert t_quantile(1e-300, 0.5) == -math.inf  # beyond the largest float


def test_t_limits_and_errors():
    assert t_quantile(0.5, 3) == 0.0 and t_cdf(0.0, 7) == 0.5
    assert t_cdf(math.inf, 3) == 1.0 and t_cdf(-math.inf, 3) == 0.0
    assert abs(t_quantile(0.975, 1e7) - 1.959963985) < 1e-5  # the normal quantile
    for bad in (0.0, 1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="p must be"):
            t_quantile(bad, 3)
    with pytest.raises(ValueError, match="df must be"):
        t_quantile(0.9, 0)
    with pytest.raises(ValueError, match="df must be"):
        t_cdf(1.0, -1)


@SETTINGS
@given(st.floats(0.0, 1.0), st.floats(0.1, 20), st.floats(0.1, 20))
def test_incomplete_beta_identities(x, a, b):
    assert math.isclose(regularized_incomplete_beta(1, 1, x), x, abs_tol=1e-13)
    assert math.isclose(regularized_incomplete_beta(a, 1, x), x**a, abs_tol=1e-12)
    assert math.isclose(regularized_incomplete_beta(1, b, x), 1 - (1 - x) ** b, abs_tol=1e-12)
    if 1 - (1 - x) == x:  # the symmetry needs 1 - x to be exact
        assert math.isclose(regularized_incomplete_beta(a, b, x),
                            1 - regularized_incomplete_beta(b, a, 1 - x), abs_tol=1e-12)
    with pytest.raises(ValueError, match="x must be"):
        regularized_incomplete_beta(a, b, 1.5)
    with pytest.raises(ValueError, match="a and b"):
        regularized_incomplete_beta(0, b, x)


# ------------------------------------------------------------------------------------------
# paired difference
# ------------------------------------------------------------------------------------------


def test_paired_difference_by_hand():
    # differences 0.02, 0.02, -0.01: mean 0.01, squared deviations 1e-4 + 1e-4 + 4e-4 = 6e-4,
    # variance 6e-4 / 2 = 3e-4, std sqrt(3e-4), standard error sqrt(3e-4 / 3) = 0.01,
    # t_{0.975, 2} = 0.95 / sqrt(2 · 0.975 · 0.025) = 4.30265..., CI 0.01 ± 0.0430265
    out = paired_difference([0.80, 0.82, 0.79], [0.78, 0.80, 0.80])
    t = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert out["n"] == 3
    assert math.isclose(out["mean"], 0.01, abs_tol=1e-15)
    assert math.isclose(out["std"], math.sqrt(3e-4), rel_tol=1e-12)
    assert math.isclose(out["t"], t, rel_tol=1e-12)
    assert math.isclose(out["ci_low"], 0.01 - t * 0.01, rel_tol=1e-12)
    assert math.isclose(out["ci_high"], 0.01 + t * 0.01, rel_tol=1e-12)
    assert set(out) == {"mean", "std", "n", "ci_low", "ci_high", "t"}


def test_paired_difference_five_seeds_90_percent():
    # a - b = 1, 2, 3, 4, 5: mean 3, std sqrt(10 / 4), se sqrt(2.5 / 5) = sqrt(0.5);
    # t_{0.95, 4} by the df=4 closed form
    a = [11.0, 12.0, 13.0, 14.0, 15.0]
    b = [10.0, 10.0, 10.0, 10.0, 10.0]
    out = paired_difference(a, b, confidence=0.90)
    t = t_closed_form(0.95, 4)
    assert math.isclose(t, 2.131846786, rel_tol=1e-9)
    assert math.isclose(out["std"], math.sqrt(2.5), rel_tol=1e-12)
    assert math.isclose(out["ci_low"], 3 - t * math.sqrt(0.5), rel_tol=1e-12)
    assert math.isclose(out["ci_high"], 3 + t * math.sqrt(0.5), rel_tol=1e-12)
    # the order matters: b - a is the mirror image
    back = paired_difference(b, a, confidence=0.90)
    assert back["mean"] == -3 and math.isclose(back["ci_low"], -out["ci_high"], rel_tol=1e-12)


def test_paired_difference_one_seed_has_no_interval():
    out = paired_difference([0.7], [0.5])
    assert math.isclose(out["mean"], 0.2) and out["n"] == 1
    assert out["std"] is None and out["ci_low"] is None and out["ci_high"] is None
    assert out["t"] is None


@pytest.mark.parametrize(("a", "b", "kwargs", "match"), [
    ([1.0, 2.0], [1.0], {}, "a and b must pair up"),
    ([], [], {}, "at least one pair"),
    ([1.0, math.nan], [1.0, 2.0], {}, r"a\[1\] must be a finite number"),
    ([1.0, 2.0], [1.0, "x"], {}, r"b\[1\] must be a finite number"),
    ([1.0, 2.0], [1.0, 2.0], {"confidence": 1.0}, "confidence"),
    ([1.0, 2.0], [1.0, 2.0], {"confidence": 0}, "confidence"),
])
def test_paired_difference_errors(a, b, kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_difference(a, b, **kwargs)


# ------------------------------------------------------------------------------------------
# --grid
# ------------------------------------------------------------------------------------------


def test_parse_grid():
    grid = parse_grid(["mask_scale=1,2,4", " beta = 0.5, 1.0 ", "holdout_classes=[8,9],[7]",
                       "opt={lr: 1, betas: [0.9, 0.99]},'a,b',\"c\",(1,2)", "eq=a=b"])
    assert grid == {
        "mask_scale": ["1", "2", "4"],
        "beta": ["0.5", "1.0"],
        "holdout_classes": ["[8,9]", "[7]"],
        "opt": ["{lr: 1, betas: [0.9, 0.99]}", "'a,b'", '"c"', "(1,2)"],
        "eq": ["a=b"],
    }
    assert list(grid) == ["mask_scale", "beta", "holdout_classes", "opt", "eq"]
    assert parse_grid([]) == {}


@pytest.mark.parametrize(("items", "match"), [
    (["mask_scale"], "no '='"),
    (["=1,2"], "key ''"),
    (["mask scale=1"], "key 'mask scale'"),
    (["2x=1"], "key '2x'"),
    (["a=1", "a=2"], "'a' given twice"),
    (["a="], "empty value"),
    (["a=1,,2"], "empty value"),
    (["a=1,"], "empty value"),
    (["a=1,2,1"], r"\['1'\] repeated"),
    (["a=[1,2"], "unclosed bracket"),
    (["a=1],2"], "unbalanced"),
    (["a=[1,2)"], "unbalanced"),
    (["a='1,2"], "unclosed quote"),
])
def test_parse_grid_errors(items, match):
    with pytest.raises(ValueError, match=match) as err:
        parse_grid(items)
    message = str(err.value)
    assert message.startswith("--grid ") and "\n" not in message


def test_parse_grid_type_errors():
    with pytest.raises(TypeError, match="--grid"):
        parse_grid("a=1,2")
    with pytest.raises(TypeError, match="--grid"):
        parse_grid([b"a=1"])


def test_expand_grid_order():
    grid = {"a": ["1", "2"], "b": ["x", "y", "z"]}
    assert expand_grid(grid) == [
        {"a": "1", "b": "x"}, {"a": "1", "b": "y"}, {"a": "1", "b": "z"},
        {"a": "2", "b": "x"}, {"a": "2", "b": "y"}, {"a": "2", "b": "z"},
    ]
    assert [list(v) for v in expand_grid(grid)] == [["a", "b"]] * 6
    assert expand_grid({}) == [{}]
    with pytest.raises(ValueError, match=r"grid\['b'\]"):
        expand_grid({"a": ["1"], "b": []})
    with pytest.raises(ValueError, match=r"grid\['a'\]"):
        expand_grid({"a": "12"})


# ------------------------------------------------------------------------------------------
# variant names
# ------------------------------------------------------------------------------------------

SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+~-]*\Z")


def test_variant_name_examples():
    assert variant_name({"mask_scale": "2", "beta": "1.0"}) == "mask_scale-2_beta-1.0"
    assert variant_name({"lr": "-1e-3"}) == "lr--1e-3"
    assert variant_name({}) == "default"
    # lossy values get a stable hash of the exact assignment
    name = variant_name({"holdout_classes": "[8,9]"})
    assert name.startswith("holdout_classes-8-9~") and len(name.split("~")[1]) == 10
    assert name == variant_name({"holdout_classes": "[8,9]"})
    assert name != variant_name({"holdout_classes": "[8, 9]"})
    assert name == "holdout_classes-8-9~0114be8e69"  # stable across runs and versions
    long = variant_name({"k": "x" * 300})
    assert len(long) <= 131 and "~" in long and SAFE_NAME.match(long)
    with pytest.raises(ValueError, match="key 'a b'"):
        variant_name({"a b": "1"})
    with pytest.raises(TypeError, match=r"assignment\['a'\]"):
        variant_name({"a": 1})


VALUE = st.text(alphabet="ab1._-+,[]{} /~=\"'é", max_size=6)


@SETTINGS
@given(st.lists(VALUE, min_size=1, max_size=5, unique=True),
       st.lists(VALUE, min_size=1, max_size=5, unique=True))
def test_variant_names_unique_and_safe_across_the_product(first, second):
    grid = {"a": first, "a_b": second}
    names = [variant_name(v) for v in expand_grid(grid)]
    assert len(set(names)) == len(names)
    for name in names:
        assert SAFE_NAME.match(name), name
        assert name not in (".", "..") and len(name.encode()) <= 255


def test_grid_round_trip_names():
    grid = parse_grid(["mask_scale=1,2", "holdout_classes=[8,9],[7],[]"])
    names = [variant_name(v) for v in expand_grid(grid)]
    assert len(names) == 6 and len(set(names)) == 6
    assert names[0].startswith("mask_scale-1_holdout_classes-8-9~")


# ------------------------------------------------------------------------------------------
# summaries
# ------------------------------------------------------------------------------------------

ROWS = [
    {"variant": "cutmix", "seed": 0, "value": 70.0},
    {"variant": "cutmix", "seed": 1, "value": 72.0},
    {"variant": "cutmix", "seed": 2, "value": 71.0},
    {"variant": "mixpro", "seed": 2, "value": 74.0, "epochs": 5},
    {"variant": "mixpro", "seed": 0, "value": 73.0},
    {"variant": "mixpro", "seed": 3, "value": 99.0},
    {"variant": "single", "seed": 1, "value": 50.0},
]


def test_summarize_variants_by_hand():
    out = summarize_variants(ROWS)
    assert [s["variant"] for s in out] == ["cutmix", "mixpro", "single"]
    cut, pro, single = out
    # cutmix: 70, 72, 71 -> mean 71, std sqrt((1 + 1 + 0) / 2) = 1
    assert cut["reference"] == "cutmix" and cut["vs_reference"] is None
    assert cut["seeds"] == [0, 1, 2] and cut["values"] == [70.0, 72.0, 71.0]
    assert cut["mean"] == 71.0 and math.isclose(cut["std"], 1.0)
    # mixpro: seeds 0, 2, 3 -> 73, 74, 99; pairs with cutmix on seeds 0 and 2 only
    assert pro["seeds"] == [0, 2, 3] and pro["values"] == [73.0, 74.0, 99.0]
    assert pro["n"] == 3 and math.isclose(pro["mean"], 82.0)
    assert pro["paired_seeds"] == [0, 2]
    assert pro["missing_from_variant"] == [1] and pro["missing_from_reference"] == [3]
    # differences 73-70 = 3, 74-71 = 3: mean 3, std 0, the interval is the point
    vs = pro["vs_reference"]
    assert vs["n"] == 2 and vs["mean"] == 3.0 and vs["std"] == 0.0
    assert vs["ci_low"] == vs["ci_high"] == 3.0
    assert math.isclose(vs["t"], 12.706204736, rel_tol=1e-9)
    # one seed: no std; one shared seed: a difference without an interval
    assert single["std"] is None and single["n"] == 1
    assert single["vs_reference"]["mean"] == -22.0 and single["vs_reference"]["ci_low"] is None
    assert single["missing_from_variant"] == [0, 2]


def test_summarize_variants_reference_and_metric():
    rows = [dict(r, top1=r["value"] / 100) for r in ROWS]
    out = summarize_variants(rows, reference="mixpro", metric="top1", confidence=0.9)
    by = {s["variant"]: s for s in out}
    assert by["mixpro"]["vs_reference"] is None
    vs = by["cutmix"]["vs_reference"]
    assert math.isclose(vs["mean"], -0.03) and by["cutmix"]["missing_from_reference"] == [1]
    # no shared seed: no difference
    lonely = summarize_variants(ROWS[:2] + [{"variant": "b", "seed": 9, "value": 1.0}])
    assert lonely[1]["vs_reference"] is None and lonely[1]["paired_seeds"] == []


@pytest.mark.parametrize(("rows", "kwargs", "match"), [
    ([], {}, "at least one run"),
    ([{"variant": "a", "value": 1.0}], {}, r"rows\[0\] has no 'seed'"),
    ([{"variant": "a", "seed": 0, "value": 1.0}], {"metric": "top1"}, "no 'top1'"),
    ([{"variant": "a", "seed": 0, "value": 1.0}, {"variant": "a", "seed": 0, "value": 2.0}],
     {}, r"rows\[1\]: variant 'a' has seed 0 twice"),
    ([{"variant": "a", "seed": True, "value": 1.0}], {}, "seed'] must be an int"),
    ([{"variant": 3, "seed": 0, "value": 1.0}], {}, "variant'] must be a string"),
    ([{"variant": "a", "seed": 0, "value": math.inf}], {}, "finite number"),
    ([{"variant": "a", "seed": 0, "value": 1.0}], {"reference": "b"}, "reference 'b'"),
    (["a"], {}, r"rows\[0\] must be a mapping"),
])
def test_summarize_variants_errors(rows, kwargs, match):
    with pytest.raises(ValueError, match=match):
        summarize_variants(rows, **kwargs)


def test_sweep_module_is_pure_standard_library():
    """No torch, numpy, timm or plotting: the module can serve any caller cheaply."""
    import ast
    import sys

    import mixpro.sweep as sweep

    tree = ast.parse(open(sweep.__file__, encoding="utf-8").read())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no imports from the package"
            roots.add(node.module.split(".")[0])
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots
