"""Preemption: SIGTERM (what cluster schedulers send before killing a job) and SIGINT stop a
run after the current step, with a step-exact checkpoint.

Owns :class:`StopSignals` (the handlers, installed while training, restored after) and
:class:`Stopped` (raised once the checkpoint is saved; the CLI prints it and exits 128 +
signal).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any


class Stopped(Exception):  # noqa: N818 - not an error: the run was asked to stop
    """SIGTERM or SIGINT arrived; a step-exact checkpoint was saved (``signum``, ``out``)."""

    def __init__(self, signum: int, out: Path, epoch: int, step: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at epoch {epoch + 1}, step {step}; step-exact "
                         f"checkpoint in {out / 'last.pt'}: continue with --resume")
        self.signum = signum


class StopSignals:
    """Catches SIGTERM (what cluster schedulers send before killing a job) and SIGINT while
    training: the current step finishes, then the run saves and stops."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._catch)
        return self

    def _catch(self, signum: int, frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
