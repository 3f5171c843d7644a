"""What the server benchmarks share: a process's CPU time, read precisely, and slices alternated within one run.

CPU time is the figure to compare on a shared machine (wall time moves with everyone else's load). It is read from
``/proc/PID/task/*/schedstat`` (nanoseconds, every thread: the Python loop and libzmq's I/O thread), not from
``/proc/PID/stat`` (10 ms ticks, which a 3,000-ping phase of 0.3 s resolves to 3%).
"""

from __future__ import annotations

import os
from pathlib import Path


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by every thread of process ``pid``; NaN where there is no /proc."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return float("nan")
    for task in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):  # a thread that ended meanwhile
            continue
    return total / 1e9


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds by thread name (``python``, ``ZMQbg/IO/0``...), to tell the loop's time from libzmq's."""
    out: dict[str, float] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
            ns = int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
        out[name] = out.get(name, 0.0) + ns / 1e9
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
