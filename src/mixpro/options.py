"""Options declared once: a dataclass field carries its type, default, allowed values and help.

Owns :func:`option` (a ``dataclasses.field`` whose metadata holds the help text and the allowed
values or range), :class:`Spec` (what a field declares, read back: types, default, choices,
range, help; :meth:`Spec.check` raises :class:`~mixpro._checks.ArgumentError` naming the
field), :func:`specs` (every field of an options dataclass), :func:`check` (validate an
instance) and :func:`table` (the Markdown options table of the docs). A field whose type is a
``Literal`` takes its choices from it, so the core's ``Literal`` is the one list of values.
The command-line flags of every sub-command are made from the same specs (:mod:`mixpro.cli`),
and the recipe schema too (:mod:`mixpro.train.recipe`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any

from ._checks import ArgumentError, ArgumentTypeError

_KEY = "mixpro"
# seeds: torch takes up to 2**64 - 1, and the apps add small offsets (epoch, rank, repeat)
SEED_MAX = 2**63 - 1
_NUMBER = (int, float)


def option(default: Any = MISSING, *, help: str, choices: Sequence[Any] | None = None,
           ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, factory: Callable[[], Any] | None = None,
           flag: bool = True) -> Any:
    """A dataclass field with its ``help`` and allowed values: ``choices`` (default: the
    field's ``Literal`` type, if any) or the bounds ``ge``/``gt``/``le``/``lt`` for numbers
    (also every item of a tuple of numbers); floats must be finite. ``factory``: a
    ``default_factory``; ``flag=False``: no command-line flag is made for it."""
    meta = {_KEY: {"help": help, "choices": None if choices is None else tuple(choices),
                   "ge": ge, "gt": gt, "le": le, "lt": lt, "flag": flag}}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _bound(x: float) -> str:
    if x == SEED_MAX:
        return "2**63-1"
    return str(x) if isinstance(x, int) else f"{x:g}"


@dataclass(frozen=True)
class Spec:
    """One declared option, read back from its field (see :func:`option`)."""

    name: str
    kinds: tuple[type, ...]  # the types a value may have (besides None when optional)
    optional: bool
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    item: type | None = None  # tuple[X, ...] fields: the item type
    flag: bool = True

    @property
    def allowed(self) -> str:
        """The allowed values in words (``one of a, b``, ``in [0, 1]``, ``>= 1``), or ''."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        lo = (f"[{_bound(self.ge)}" if self.ge is not None else
              f"({_bound(self.gt)}" if self.gt is not None else None)
        hi = (f"{_bound(self.le)}]" if self.le is not None else
              f"{_bound(self.lt)})" if self.lt is not None else None)
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return (">= " if lo[0] == "[" else "> ") + lo[1:]
        if hi:
            return ("<= " if hi[-1] == "]" else "< ") + hi[:-1]
        return ""

    def check(self, value: Any) -> Any:
        """``value`` if it is allowed (ints widened to float for float fields); else an
        :class:`ArgumentError` (:class:`ArgumentTypeError` for a wrong type) naming it."""
        if value is None:
            if self.optional:
                return None
            raise ArgumentError(self.name, "must not be null")
        if self.item is not None:
            if not isinstance(value, (tuple, list)):
                raise ArgumentTypeError(self.name, f"must be a list, got {value!r}")
            return tuple(self._one(v) for v in value)
        return self._one(value)

    def _one(self, value: Any) -> Any:
        kinds = (self.item,) if self.item is not None else self.kinds
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise ArgumentTypeError(self.name, f"must be {self._names(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            raise ArgumentTypeError(self.name, f"must be {self._names(kinds)}, got {value!r}")
        null = " or null" if self.optional else ""
        if self.choices is not None and value not in self.choices:
            raise ArgumentError(self.name, f"must be {self.allowed}{null}, got {value!r}")
        if isinstance(value, _NUMBER) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise ArgumentError(self.name, f"must be a finite number, got {value}")
            if not ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                    and (self.le is None or value <= self.le)
                    and (self.lt is None or value < self.lt)):
                raise ArgumentError(self.name, f"must be {self.allowed}{null}, got {value!r}")
        return value

    def _names(self, kinds: tuple[type, ...]) -> str:
        return " or ".join(k.__name__ for k in kinds) + (" or null" if self.optional else "")


def _parse_type(hint: Any) -> tuple[tuple[type, ...], bool, tuple | None, type | None]:
    """(kinds, optional, Literal choices, tuple item type) of a resolved type hint."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or \
        typing.get_origin(hint) is typing.Union else (hint,)
    optional = type(None) in args
    args = tuple(a for a in args if a is not type(None))
    choices, item, kinds = None, None, []
    for a in args:
        origin = typing.get_origin(a)
        if origin is typing.Literal:
            choices = typing.get_args(a)
            kinds.extend(sorted({type(c) for c in choices}, key=lambda t: t.__name__))
        elif origin is tuple and typing.get_args(a)[-1:] == (Ellipsis,):
            item = typing.get_args(a)[0]
            item = typing.get_origin(item) or item
            if typing.get_origin(typing.get_args(a)[0]) is typing.Literal:
                choices = typing.get_args(typing.get_args(a)[0])
                item = type(choices[0])
            kinds.append(tuple)
        else:
            kinds.append(origin or a)
    return tuple(dict.fromkeys(kinds)), optional, choices, item


def specs(cls: type) -> dict[str, Spec]:
    """``{name: Spec}`` of every field of the dataclass ``cls`` (fields without
    :func:`option` metadata get an empty help and no bounds)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meta = dict(f.metadata.get(_KEY, {}))
        kinds, optional, literal, item = _parse_type(hints[f.name])
        default = (f.default if f.default is not MISSING else
                   f.default_factory() if f.default_factory is not MISSING else MISSING)
        out[f.name] = Spec(
            name=f.name, kinds=kinds, optional=optional, default=default,
            help=meta.get("help", ""), choices=meta.get("choices") or literal,
            ge=meta.get("ge"), gt=meta.get("gt"), le=meta.get("le"), lt=meta.get("lt"),
            item=item, flag=meta.get("flag", True))
    return out


def check(obj: Any, cls: type | None = None) -> None:
    """Check every declared option of the dataclass instance ``obj`` (by ``cls``'s specs,
    default ``type(obj)``); raises the first field's :class:`ArgumentError`."""
    for name, spec in specs(cls or type(obj)).items():
        spec.check(getattr(obj, name))


def flag(name: str) -> str:
    """The command-line flag of option ``name`` (``batch_size`` → ``--batch-size``)."""
    return "--" + name.replace("_", "-")


def check_flags(obj: Any, error: Callable[[str], Exception]) -> None:
    """:func:`check` for a sub-command's options: the first bad value raises ``error`` of the
    message naming its flag (``--batch-size must be >= 1, got 0``); a value of the wrong
    Python type (a programming error: the CLI parses types) stays a ``TypeError``."""
    try:
        check(obj)
    except ArgumentTypeError:
        raise
    except ArgumentError as e:
        raise error(e.renamed(flag(e.argument))) from None


def _show(value: Any) -> str:
    if value is MISSING:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "()"
    return str(value)


def table(cls: type, *, names: Callable[[str], str] = lambda n: n,
          skip: Sequence[str] = ()) -> str:
    """The Markdown table of ``cls``'s options: name (as ``names`` shows it, e.g. a flag),
    default, allowed values, help."""
    rows = ["| option | default | allowed | what |", "|---|---|---|---|"]
    for name, spec in specs(cls).items():
        if name in skip:
            continue
        allowed = spec.allowed or " or ".join(k.__name__ for k in spec.kinds)
        if spec.optional:
            allowed += " or null"
        text = spec.help.replace("|", "\\|")
        rows.append(f"| `{names(name)}` | `{_show(spec.default)}` | {allowed.replace('|', '/')} "
                    f"| {text} |")
    return "\n".join(rows) + "\n"


__all__ = ["SEED_MAX", "Spec", "check", "check_flags", "flag", "option", "specs", "table"]
