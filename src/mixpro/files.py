"""Writing the apps' files safely: atomic replacement and one writer per run folder.

Owns :func:`atomic_write` (and its text/bytes forms): every file an app writes goes to a
unique ``<name>.<random>.tmp`` beside it, is fsynced, then ``os.replace`` d onto the name
(atomic on POSIX), so a crash, a SIGKILL or a full disk never leaves a half-written file in
place of a good one; a failed write removes its temp file and raises :class:`WriteError`
(classified by ``errno``, never by message text). Also :func:`clean_stale_temps` (the temp
files a SIGKILL left behind) and :class:`FolderLock` (an exclusive ``flock`` on a run folder,
held for the whole run and released by the kernel when the process ends, however it ends).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from .errors import UserError

LOCK_NAME = ".mixpro.lock"
_FULL = {errno.ENOSPC, errno.EDQUOT}


class WriteError(UserError):
    """A file could not be written (``path``; ``full``: the disk or quota is full)."""

    def __init__(self, path: Path, reason: str, *, full: bool = False) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.full = path, full


class FolderLocked(UserError):  # noqa: N818 - a state, said to the user
    """Another live process writes into the folder (``path``; ``holder``: what it wrote
    into the lock file: pid, host, start time)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is in use by another mixpro process ({holder}); wait for it "
                         "to finish or choose another --output")
        self.path, self.holder = path, holder


class _Recording:
    """A binary file whose first write error is kept (torch's zip writer turns the file's
    ``OSError`` into a ``RuntimeError`` without its ``errno``)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self._f.flush()


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
    """Call ``write(f)`` on a fresh temp file beside ``path``, fsync it, then replace
    ``path`` with it. On any failure the temp file is removed and ``path`` is untouched.

    Raises:
        WriteError: the file system refused (disk or quota full, permissions, I/O error).
    """
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from None
    tmp = Path(name)
    rec = None
    try:
        with open(fd, "wb") as f:
            rec = _Recording(f)
            write(rec)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        cause = e if isinstance(e, OSError) else (rec.error if rec is not None else None)
        if cause is None and isinstance(e, RuntimeError) and _no_space(path.parent):
            cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if cause is None:
            raise
        raise _write_error(path, cause) from None


def _no_space(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def _write_error(path: Path, e: OSError) -> WriteError:
    full = e.errno in _FULL
    reason = "the disk is full" if full else (e.strerror or type(e).__name__)
    return WriteError(path, reason, full=full)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def clean_stale_temps(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Remove the temp files of ``names`` in ``folder`` (``<name>.<random>.tmp``, and the
    ``<name>.tmp`` of older versions) that a killed writer left; call it only while holding
    the folder's :class:`FolderLock`. Returns what was removed."""
    folder = Path(folder)
    gone = []
    for name in names:
        for tmp in [*folder.glob(f"{name}.*.tmp"), folder / f"{name}.tmp"]:
            if tmp.is_file():
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    gone.append(tmp)
    return gone


def _holder(fd: int) -> str:
    """What the lock's holder wrote into the lock file (pid, host, since)."""
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"


class FolderLock:
    """An exclusive lock on a run folder (``<folder>/.mixpro.lock``, ``flock``): one writer
    at a time. :meth:`acquire` creates the folder when needed and raises
    :class:`FolderLocked` naming the holder when another live process has it; the kernel
    frees it when the holder exits, even by SIGKILL, so a lock is never stale."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self.created = False

    def acquire(self) -> FolderLock:
        self.created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _write_error(self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderLocked(self.folder, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        self._fd = fd
        return self

    def release(self, *, remove_folder: bool = False) -> None:
        """Free the lock; ``remove_folder``: also remove the folder when :meth:`acquire`
        created it and nothing but the lock file is in it (a run refused before any work)."""
        if self._fd is None:
            return
        if remove_folder and self.created:
            with contextlib.suppress(OSError):
                if [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
                    self.path.unlink()
                    self.folder.rmdir()
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __del__(self, _close=os.close) -> None:  # a lock nobody releases is freed with it
        if self._fd is not None:  # (os.close bound early: os may be gone at interpreter exit)
            _close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(folder: str | os.PathLike) -> str | None:
    """Who holds ``folder``'s :class:`FolderLock` (pid, host, since), None when no live
    process does; the lock is not taken."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)
    return None


__all__ = ["LOCK_NAME", "FolderLock", "FolderLocked", "WriteError", "atomic_write",
           "atomic_write_bytes", "atomic_write_text", "clean_stale_temps", "lock_holder"]
