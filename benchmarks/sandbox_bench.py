"""Sandbox benchmark: start, restart, round trip, bridge and peak memory, side by side.

Run: ``python benchmarks/sandbox_bench.py`` (writes nothing; paste the table into
``benchmarks/RESULTS.md``). Each figure is printed with its ratio to the target
(ratio <= 1.0 meets the target). The peak-memory figure is measured in a fresh child
process so earlier measurements do not inflate the host's high-water mark.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

from langchain_rlm.sandbox import ProcessSandbox, SandboxLimits

MB = 1_000_000
SENTENCE = "The quick brown fox jumps over the lazy dog; RLMs read long contexts. "
TARGET_START_100MB = 0.250
TARGET_ROUND_TRIP = 0.001
TARGET_BRIDGE = 0.001
BRIDGE_CALLS = 2_000
ROUND_TRIPS = 2_000
LIMITS = SandboxLimits(cell_timeout=30, memory_mb=512, max_subcalls_per_cell=10 * BRIDGE_CALLS)


def make_context(size: int) -> str:
    return (SENTENCE * (size // len(SENTENCE) + 1))[:size]


def vm_hwm_kb(pid: int | str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def time_start(context: str, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        ex = ProcessSandbox().start(context, {}, LIMITS)
        samples.append(time.perf_counter() - started)
        ex.close()
    return statistics.median(samples)


def time_restart(ex: Any, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        ex._restart()  # what a hard timeout does after the kill
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def time_round_trip(ex: Any) -> float:
    ex("pass")
    started = time.perf_counter()
    for _ in range(ROUND_TRIPS):
        ex("pass")
    return (time.perf_counter() - started) / ROUND_TRIPS


def time_bridge(ex: Any) -> float:
    loop = f"for _ in range({BRIDGE_CALLS}):\n    noop()"
    empty = f"for _ in range({BRIDGE_CALLS}):\n    pass"
    ex(loop)
    with_calls = min(ex(loop).seconds for _ in range(3))
    without = min(ex(empty).seconds for _ in range(3))
    return (with_calls - without) / BRIDGE_CALLS


def peak_child() -> None:
    """Runs in a fresh process: start a 100 MB session and report host + worker VmHWM."""
    context = make_context(100 * MB)
    ex = ProcessSandbox().start(context, {}, LIMITS)
    out = ex("n = len(context)\nprint(n, context.count('fox'))")
    assert out.error is None, out.error
    worker = vm_hwm_kb(ex.pid)
    host = vm_hwm_kb("self")
    ex.close()
    print(json.dumps({"host_kb": host, "worker_kb": worker}))


def main() -> None:
    if sys.argv[1:] == ["--peak-child"]:
        peak_child()
        return
    rows: list[tuple[str, str, str, str]] = []
    small, large = make_context(1 * MB), make_context(100 * MB)
    start_small = time_start(small, 7)
    start_large = time_start(large, 5)
    rows.append(
        (
            "worker start + handover, 1 MB",
            f"{start_small * 1000:.1f} ms",
            "250 ms",
            f"{start_small / TARGET_START_100MB:.2f}",
        )
    )
    rows.append(
        (
            "worker start + handover, 100 MB",
            f"{start_large * 1000:.1f} ms",
            "250 ms",
            f"{start_large / TARGET_START_100MB:.2f}",
        )
    )
    ex = ProcessSandbox().start(large, {"noop": lambda: None}, LIMITS)
    try:
        restart = time_restart(ex, 5)
        rows.append(
            (
                "kill + restart, 100 MB (memfd reused)",
                f"{restart * 1000:.1f} ms",
                "250 ms",
                f"{restart / TARGET_START_100MB:.2f}",
            )
        )
        round_trip = time_round_trip(ex)
        rows.append(
            (
                "cell round trip ('pass')",
                f"{round_trip * 1e6:.0f} us",
                "1 ms",
                f"{round_trip / TARGET_ROUND_TRIP:.2f}",
            )
        )
        bridge = time_bridge(ex)
        rows.append(
            (
                "sub-call bridge, per call",
                f"{bridge * 1e6:.0f} us",
                "1 ms",
                f"{bridge / TARGET_BRIDGE:.2f}",
            )
        )
    finally:
        ex.close()
    del large
    child = subprocess.run(
        [sys.executable, __file__, "--peak-child"], capture_output=True, text=True, check=True
    )
    peak = json.loads(child.stdout.strip().splitlines()[-1])
    total_mb = (peak["host_kb"] + peak["worker_kb"]) * 1024 / MB
    target_mb = 2.2 * 100 + 300
    rows.append(
        (
            f"peak RSS host {peak['host_kb'] * 1024 / MB:.0f} MB + worker {peak['worker_kb'] * 1024 / MB:.0f} MB, 100 MB",
            f"{total_mb:.0f} MB",
            f"{target_mb:.0f} MB",
            f"{total_mb / target_mb:.2f}",
        )
    )
    with open("/proc/loadavg") as loadavg:
        print(f"load average at the end: {loadavg.read().split()[0]} (2 cores)")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>10}  {'target':>8}  ratio")
    for name, value, target, ratio in rows:
        print(f"{name:<{width}}  {value:>10}  {target:>8}  {ratio}")


if __name__ == "__main__":
    main()
