"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one.

``write_atomic(target, write)``: the bytes go to a temporary file ``.<name>.<16 hex>.tmp``
in the destination folder, are flushed to disk, then ``os.replace`` d onto ``target``.
Every file the package writes (models, their external data, calibration files, sweep
results) goes through it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

__all__ = ["write_atomic"]


def write_atomic(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``target`` through ``write(file)`` so that it appears whole or not at all.

    The bytes go to a temp file ``.<name>.<16 hex>.tmp`` in the destination folder, are
    flushed to disk and then ``os.replace``d onto ``target``; the file gets the usual
    permissions (umask), not 0600. Any exception (Ctrl-C included) removes the temp file.
    A writer killed outright (SIGKILL, the OOM killer) cannot: its temp file stays until
    the next write of the same ``target`` removes it. Each writer holds an exclusive
    ``flock`` on its temp file until the rename, and a lock dies with its process, so a
    temp file whose lock can be taken is a dead writer's.
    """
    _remove_stale_temps(target)
    while not _write_temp_and_rename(target, write):
        pass  # another writer's clean-up removed our new temp file before we locked it


def _write_temp_and_rename(target: Path, write: Callable[[BinaryIO], object]) -> bool:
    # Named before it exists, so that clean-up knows it whenever an interrupt lands; with
    # 64 random bits, O_EXCL never meets another writer's file in practice.
    tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    fd = -1
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not _names(tmp, fd):
            return False
        with os.fdopen(fd, "wb", closefd=False) as f:
            write(f)
            f.flush()
            os.fsync(fd)
        os.fchmod(fd, 0o666 & ~_umask())
        os.replace(tmp, target)  # still locked: no other writer's clean-up can take it
        return True
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is the file open as ``fd``."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


def _remove_stale_temps(target: Path) -> None:
    """Remove the temp files of ``target`` that no live writer holds (killed writers')."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"[0-9a-f]{16}\.tmp")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in filter(pattern.fullmatch, names):
        path = target.parent / name
        try:  # no symlinks, and never block on a FIFO planted under that name
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
            logger.info("removed %s, left by a writer that was killed", path)
        except OSError:  # BlockingIOError: a live writer holds it
            pass
        finally:
            os.close(fd)


def _umask() -> int:
    try:  # Linux reports it without changing it (os.umask would, for a moment, process-wide)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
