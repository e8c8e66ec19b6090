"""Process-tree figures from ``/proc`` (Linux) and call timers, shared by ``peer_bench.py``
and the rlms driver (so it imports the standard library only)."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any


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


def timed(function: Callable[..., Any], spans: list[tuple[float, float]]) -> Callable[..., Any]:
    """``function`` wrapped to append its ``(start, end)`` (``perf_counter``) to ``spans``."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spans.append((start, time.perf_counter()))

    return wrapper


def inside(spans: list[tuple[float, float]], a: float, b: float) -> float:
    """Seconds of the spans that start in ``[a, b)``."""
    return sum(end - start for start, end in spans if a <= start < b)


def meminfo(key: str) -> int:
    """A ``/proc/meminfo`` field (``"Shmem"``, ``"MemAvailable"``) in bytes."""
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    return 0
