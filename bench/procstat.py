"""What a process tree costs, read from /proc: CPU seconds, memory (RSS and PSS) and
open descriptors.

A "tree" is a root pid and every live descendant. CPU is counted so that a delta
between two snapshots is right even when children exit in between: each live
process contributes utime+stime+cutime+cstime, and a child reaped by a live parent
moves its whole total into that parent's cutime+cstime.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["TreeSample", "find_pids", "open_fds", "sample_tree", "tree_pids"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name; ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read().decode("ascii", "replace")
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _all_parents() -> dict[int, int]:
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None:
                parents[int(name)] = int(fields[1])
    return parents


def tree_pids(roots: Iterable[int]) -> list[int]:
    """``roots`` and all their live descendants."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _all_parents().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def find_pids(needle: str) -> list[int]:
    """Pids whose command line contains ``needle``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as file:
                cmdline = file.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(name))
    return pids


def _kib(path: str, key: str) -> int:
    """The ``key:  N kB`` value of a /proc status-style file, 0 when missing."""
    try:
        with open(path, "rb") as file:
            for line in file:
                if line.startswith(key.encode() + b":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class TreeSample:
    """One snapshot of a tree: process count, CPU seconds, RSS and PSS in KiB."""

    processes: int
    cpu_s: float
    rss_kib: int
    pss_kib: int


def sample_tree(roots: Iterable[int], *, memory: bool = True) -> TreeSample:
    pids = tree_pids(roots)
    ticks = rss = pss = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # utime, stime, cutime, cstime are fields 14-17 of stat; 12-15 after the name.
        ticks += sum(int(value) for value in fields[11:15])
        if memory:
            rss += _kib(f"/proc/{pid}/status", "VmRSS")
            pss += _kib(f"/proc/{pid}/smaps_rollup", "Pss")
    return TreeSample(len(pids), ticks / _CLOCK_TICKS, rss, pss)


def open_fds(roots: Iterable[int]) -> dict[int, int]:
    """Open descriptors of each process in the trees of ``roots`` that we may inspect
    (another user's are left out), by pid."""
    counts = {}
    for pid in tree_pids(roots):
        try:
            counts[pid] = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return counts
