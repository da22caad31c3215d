"""Which processes write into a watched folder, and whether they are still alive (Linux).

A training job usually keeps its metric file open while it runs (`metrics.jsonl` opened for
appending, a logger's file). `find_writers` scans `/proc/*/fd` once for the processes that hold
a file under a folder open; `alive` then tells cheaply, from `/proc/<pid>/stat` alone, whether
those very processes still run (a recycled pid has another start time). The daemon uses it to
end a run as soon as its job exited, without waiting for the run-idle time. Where there is no
`/proc` (not Linux), nothing is found, and the idle time alone ends runs.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")

# A process as (pid, start time in clock ticks since boot): unique, unlike a pid.
Process = tuple[int, int]


def find_writers(folder: str | os.PathLike[str]) -> set[Process]:
    """The processes (other than this one) holding a file under `folder` open. Processes of
    other users, whose descriptors cannot be read, are not seen."""
    root = os.path.realpath(folder).rstrip("/") + "/"
    me = os.getpid()
    found: set[Process] = set()
    try:
        entries = os.scandir(PROC)
    except OSError:
        return found
    with entries:
        for entry in entries:
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            pid = int(entry.name)
            if _holds_under(pid, root):
                started = _start_time(pid)
                if started is not None:
                    found.add((pid, started))
    return found


def alive(process: Process) -> bool:
    """Whether this very process still runs (not a zombie, not a new one with its pid)."""
    pid, started = process
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[0] != "Z" and _start_of(fields) == started


def _holds_under(pid: int, root: str) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith(root):
            return True
    return False


def _start_time(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return _start_of(stat[stat.rfind(")") + 2 :].split())


def _start_of(fields: list[str]) -> int | None:
    # Fields after the command name: state is field 3 of stat(5), starttime field 22.
    try:
        return int(fields[22 - 3])
    except (IndexError, ValueError):
        return None


__all__ = ["Process", "alive", "find_writers"]
