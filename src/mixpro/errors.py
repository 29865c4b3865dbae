"""The apps' user-error type.

Owns :class:`UserError`: a bad input that the user can fix (a recipe key, a dataset, a
checkpoint, a command-line value), and :func:`first_line` (quoting another library's error in
it). Each app raises a subclass; the CLI prints any of them as ``mixpro: error: <one line>``
and exits with status 2, never with a traceback. The core raises plain ``ValueError`` /
``TypeError`` (or :class:`mixpro._checks.ArgumentError`, naming the argument) instead and never
imports this module.
"""

from __future__ import annotations


class UserError(ValueError):
    """A one-line user error of a ``mixpro`` command (exit status 2)."""


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type's name when it has none): how an app quotes
    a third-party error (torch, timm, PIL) inside its own one-line error."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["UserError", "first_line"]
