"""Process-tree figures from ``/proc`` (Linux), shared by ``peer_bench.py`` and the rlms
driver (so it imports the standard library only)."""

from __future__ import annotations

import os
import time


def children(pid: int | str = "self") -> list[int]:
    """Live child processes of ``pid`` (every thread's children)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
    except OSError:
        pass
    return found


def process_cpu(pid: int) -> float:
    """CPU seconds of one process, every thread, in ns resolution (``schedstat``)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as handle:
                total += int(handle.read().split()[0])
    except OSError:
        pass
    return total / 1e9


def tree_cpu() -> float:
    """CPU seconds of this process (all threads) and its live children."""
    return time.process_time() + sum(process_cpu(pid) for pid in children())
