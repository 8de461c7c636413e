"""How much memory this process can still allocate, for refusing inputs that cannot fit.

``available_memory()`` is MemAvailable (``/proc/meminfo``; ``sysconf`` on other POSIX
systems), capped by a cgroup v2 limit (a container's own, which MemAvailable does not
show); None when neither can be read. A leaf module: the file readers (``io``,
``calib_io``, ``modelcheck``, ``data``) call it through the module, so a test can
replace ``memory.available_memory``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["available_memory", "gib"]


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit."""
    limits = [n for n in (_system_available(), _cgroup_available()) if n is not None]
    return min(limits) if limits else None


def _system_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # other POSIX systems (macOS has no /proc)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """cgroup v2: a container's own limit, which MemAvailable does not show."""
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int((cgroup / "memory.current").read_text()), 0)
    except (OSError, ValueError):
        return None


def gib(n: int) -> str:
    """``n`` bytes for a message: GiB from 1 GiB on, else MiB."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
