"""Sweeps over recipe keys: ``--grid`` parsing, variant names and paired statistics over seeds.

Pure Python (standard library only): no torch, no plotting. The Student-t quantile is
computed here (bisection on the t CDF, itself the regularized incomplete beta function by
its continued fraction), so confidence intervals need no SciPy.

Row schema of :func:`summarize_variants`: one mapping per finished run with

* ``"variant"``: ``str``, the variant's name (e.g. :func:`variant_name` of its assignment);
* ``"seed"``: ``int``, the run's seed; runs of two variants with the same seed are paired;
* ``metric`` (default ``"value"``): a finite ``float``, the measured result (e.g. top-1 %).

Other keys are ignored.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_SAFE = re.compile(r"[A-Za-z0-9.+\-]*\Z")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9.+\-]+")
_MAX_READABLE = 120
_OPEN = {"[": "]", "{": "}", "(": ")"}


# ------------------------------------------------------------------------------------------
# --grid KEY=V1,V2,...
# ------------------------------------------------------------------------------------------


def _split_values(text: str, item: str) -> list[str]:
    """Split on commas outside brackets, braces, parentheses and quotes; strip each value."""
    values, current, stack, quote = [], [], [], None
    for ch in text:
        if quote is not None:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            stack.append(_OPEN[ch])
        elif ch in _OPEN.values():
            if not stack or stack.pop() != ch:
                raise ValueError(f"--grid {item!r}: unbalanced {ch!r}")
        elif ch == "," and not stack:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if quote is not None:
        raise ValueError(f"--grid {item!r}: unclosed quote {quote}")
    if stack:
        raise ValueError(f"--grid {item!r}: unclosed bracket, expected {stack[-1]!r}")
    values.append("".join(current).strip())
    return values


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["mask_scale=1,2,4", "beta=0.5,1"]`` -> ``{"mask_scale": ["1", "2", "4"], ...}``.

    One ``--grid KEY=V1,V2,...`` per item (repeatable). Values stay strings (the caller parses
    them, e.g. as YAML); commas inside ``[]``, ``{}``, ``()`` or quotes do not split, so
    ``holdout_classes=[8,9],[7]`` gives ``["[8,9]", "[7]"]``. Keys keep the order given.

    Raises:
        ValueError (message starting ``--grid``): a missing ``=``, a bad or repeated key, an
            empty value, a value repeated within a key, unbalanced brackets or quotes.
    """
    if isinstance(items, str):
        raise TypeError("--grid items must be a list of strings, got one string")
    grid: dict[str, list[str]] = {}
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"--grid items must be strings, got {type(item).__name__}")
        key, sep, rest = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--grid {item!r}: expected KEY=V1,V2,... (no '=')")
        if not _KEY.match(key):
            raise ValueError(
                f"--grid {item!r}: key {key!r} must be a name of letters, digits, '_' or '.'"
            )
        if key in grid:
            raise ValueError(f"--grid {item!r}: key {key!r} given twice")
        values = _split_values(rest, item)
        if any(v == "" for v in values):
            raise ValueError(f"--grid {item!r}: empty value for {key!r}")
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ValueError(f"--grid {item!r}: value(s) {dupes} repeated for {key!r}")
        grid[key] = values
    return grid


def expand_grid(grid: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """The Cartesian product of ``grid``, first key outermost (``{}`` gives ``[{}]``)."""
    for key, values in grid.items():
        if isinstance(values, str) or len(values) == 0:
            raise ValueError(f"grid[{key!r}] must be a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def variant_name(assignment: Mapping[str, str]) -> str:
    """A stable, filesystem-safe name: ``{"mask_scale": "2", "beta": "1.0"}`` ->
    ``"mask_scale-2_beta-1.0"``.

    Keys are kept as given (letters, digits, ``_``, ``.``), values in ``[A-Za-z0-9.+-]`` too;
    any other character (``[8,9]``, spaces, ``/``) is replaced by ``-`` and the name gets a
    ``~`` and 10 hex digits of a SHA-1 of the exact assignment, as does a name longer than 120
    characters (then cut). Names of different assignments with the same keys in the same
    order are therefore distinct. ``{}`` gives ``"default"``.
    """
    if not assignment:
        return "default"
    parts, lossy = [], False
    for key, value in assignment.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"assignment key {key!r} must be a name of letters, digits, '_', '.'")
        if not isinstance(value, str):
            raise TypeError(f"assignment[{key!r}] must be a string, got {type(value).__name__}")
        if not _SAFE.match(value):
            lossy = True
            value = _UNSAFE_RUN.sub("-", value).strip("-")
        parts.append(f"{key}-{value}")
    name = "_".join(parts)
    if lossy or len(name) > _MAX_READABLE:
        blob = json.dumps(list(assignment.items()), ensure_ascii=True)
        digest = hashlib.sha1(blob.encode(), usedforsecurity=False).hexdigest()[:10]
        name = f"{name[:_MAX_READABLE]}~{digest}"
    return name


# ------------------------------------------------------------------------------------------
# Student-t quantile (no SciPy)
# ------------------------------------------------------------------------------------------


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            delta = c * d
            h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def _ibeta(a: float, b: float, x: float, y: float) -> float:
    """``I_x(a, b)`` with ``y = 1 - x`` given separately (accurate when either is tiny)."""
    if x == 0.0 or y == 0.0:
        return 0.0 if x == 0.0 else 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log(y))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, y) / b


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``."""
    if not (a > 0 and b > 0):
        raise ValueError(f"a and b must be > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    return _ibeta(a, b, x, 1.0 - x)


def _t_tail(t: float, df: float) -> float:
    """``P(T > t)`` for ``t >= 0``, accurate in relative terms far into the tail."""
    if math.isinf(t):
        return 0.0
    root = math.sqrt(df)
    if t <= root:  # x = df / (df + t²), y = t² / (df + t²), without overflow
        v = (t / root) ** 2
        x, y = 1.0 / (1.0 + v), v / (1.0 + v)
    else:
        u = (root / t) ** 2
        if u * max(df, 1.0) < 1e-30:  # far tail: c·df^((df-1)/2)·t^(-df), relative error ~df·u
            log_c = (math.lgamma((df + 1) / 2) - math.lgamma(df / 2)
                     - 0.5 * math.log(df * math.pi))
            return math.exp(log_c + (df - 1) / 2 * math.log(df) - df * math.log(t))
        x, y = u / (1.0 + u), 1.0 / (1.0 + u)
    central = _ibeta(0.5, df / 2.0, y, x)  # P(|T| < t): exact for tiny t
    if central <= 0.5:
        return 0.5 - 0.5 * central
    return 0.5 * _ibeta(df / 2.0, 0.5, x, y)  # the tail itself: no cancellation


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df > 0`` degrees of freedom at ``t``."""
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isnan(t):
        raise ValueError("t must not be NaN")
    tail = _t_tail(abs(t), df)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df > 0``: ``t_cdf(t_quantile(p, df), df) == p``.

    Bisection on the tail probability ``min(p, 1-p)`` to machine precision
    (``t_quantile(0.975, 2) == 4.3026527...``).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    tail = min(p, 1.0 - p)  # exact: 1 - p has no rounding error for p >= 0.5
    lo, hi = 0.0, 1.0
    while _t_tail(hi, df) > tail:
        lo, hi = hi, hi * 2.0
        if math.isinf(hi):  # beyond the largest float
            return math.copysign(math.inf, p - 0.5)
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _t_tail(mid, df) > tail:
            lo = mid
        else:
            hi = mid
    return math.copysign(0.5 * (lo + hi), p - 0.5)


# ------------------------------------------------------------------------------------------
# Paired statistics over seeds
# ------------------------------------------------------------------------------------------


class PairedDifference(TypedDict):
    """Mean difference ``a - b`` over paired seeds, its sample std and t confidence interval."""

    mean: float
    std: float | None
    n: int
    ci_low: float | None
    ci_high: float | None
    t: float | None


def _finite(values: Iterable[Any], name: str) -> list[float]:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}[{i}] must be a finite number, got {v!r}")
        out.append(float(v))
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> PairedDifference:
    """Paired difference ``a[k] - b[k]`` over seeds ``k`` (same index = same seed).

    ``mean`` of the differences, ``std`` their sample standard deviation (``n - 1``), and the
    two-sided ``confidence`` interval ``mean ± t · std / √n`` with ``t = t_{(1+c)/2, n-1}``.
    With ``n = 1`` the std, ``t`` and the interval are ``None`` (undefined).
    """
    a_, b_ = _finite(a, "a"), _finite(b, "b")
    if len(a_) != len(b_):
        raise ValueError(f"a and b must pair up seed by seed: got {len(a_)} and {len(b_)} values")
    if not a_:
        raise ValueError("a and b must hold at least one pair")
    if isinstance(confidence, bool) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    diff = [x - y for x, y in zip(a_, b_, strict=True)]
    n = len(diff)
    mean, std = _mean_std(diff)
    if std is None:
        return PairedDifference(mean=mean, std=None, n=n, ci_low=None, ci_high=None, t=None)
    t = t_quantile((1.0 + confidence) / 2.0, n - 1)
    half = t * std / math.sqrt(n)
    return PairedDifference(mean=mean, std=std, n=n, ci_low=mean - half, ci_high=mean + half,
                            t=t)


class VariantSummary(TypedDict):
    """One variant's results over seeds and its paired difference to the reference."""

    variant: str
    n: int
    mean: float
    std: float | None
    seeds: list[int]
    values: list[float]
    reference: str
    vs_reference: PairedDifference | None
    paired_seeds: list[int]
    missing_from_variant: list[int]
    missing_from_reference: list[int]


def summarize_variants(
    rows: Iterable[Mapping[str, Any]],
    *,
    reference: str | None = None,
    metric: str = "value",
    confidence: float = 0.95,
) -> list[VariantSummary]:
    """Per-variant mean ± std over seeds and the paired difference to ``reference``.

    ``rows`` follow the module's row schema. Variants are listed in order of first appearance,
    seeds ascending, ``values`` aligned with ``seeds``; ``std`` is the sample std (``None`` for
    one seed). ``reference`` defaults to the first variant. ``vs_reference`` is
    :func:`paired_difference` (variant − reference) over the seeds both have
    (``paired_seeds``); seeds only one of them has are left out of the pairing and listed in
    ``missing_from_variant`` (the reference has them) and ``missing_from_reference``.
    ``vs_reference`` is ``None`` for the reference itself and when no seed is shared.
    """
    runs: dict[str, dict[int, float]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"rows[{i}] must be a mapping, got {type(row).__name__}")
        for key in ("variant", "seed", metric):
            if key not in row:
                raise ValueError(f"rows[{i}] has no {key!r}: {dict(row)!r}")
        variant, seed, value = row["variant"], row["seed"], row[metric]
        if not isinstance(variant, str):
            raise ValueError(f"rows[{i}]['variant'] must be a string, got {variant!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"rows[{i}]['seed'] must be an int, got {seed!r}")
        (value,) = _finite([value], f"rows[{i}][{metric!r}]")
        seeds = runs.setdefault(variant, {})
        if seed in seeds:
            raise ValueError(f"rows[{i}]: variant {variant!r} has seed {seed} twice")
        seeds[seed] = value
    if not runs:
        raise ValueError("rows must hold at least one run")
    ref = next(iter(runs)) if reference is None else reference
    if ref not in runs:
        raise ValueError(f"reference {ref!r} is not among the variants {list(runs)}")
    ref_runs = runs[ref]
    out: list[VariantSummary] = []
    for variant, by_seed in runs.items():
        seeds = sorted(by_seed)
        values = [by_seed[s] for s in seeds]
        mean, std = _mean_std(values)
        shared = [s for s in seeds if s in ref_runs]
        vs = None
        if variant != ref and shared:
            vs = paired_difference([by_seed[s] for s in shared], [ref_runs[s] for s in shared],
                                   confidence)
        out.append(VariantSummary(
            variant=variant, n=len(seeds), mean=mean, std=std, seeds=seeds, values=values,
            reference=ref, vs_reference=vs, paired_seeds=shared,
            missing_from_variant=sorted(s for s in ref_runs if s not in by_seed),
            missing_from_reference=[s for s in seeds if s not in ref_runs],
        ))
    return out
