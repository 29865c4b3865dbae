"""The apps' user-error type.

Owns :class:`UserError`: a bad input that the user can fix (a recipe key, a dataset, a
checkpoint, a command-line value). Each app raises a subclass; the CLI prints any of them as
``mixpro: error: <one line>`` and exits with status 2, never with a traceback. The core raises
plain ``ValueError``/``TypeError`` instead and never imports this module.
"""

from __future__ import annotations


class UserError(ValueError):
    """A one-line user error of a ``mixpro`` command (exit status 2)."""


__all__ = ["UserError"]
