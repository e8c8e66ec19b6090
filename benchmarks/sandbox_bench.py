"""Sandbox benchmark: start, restart, round trip, bridge and peak memory, side by side.

Run: ``python benchmarks/sandbox_bench.py`` (writes nothing; paste the table into
``benchmarks/RESULTS.md``); ``--huge`` adds the 5 GB context run (needs about 3x that
in free memory). Each figure is printed with its ratio to the target (ratio <= 1.0
meets the target).

Peak memory is measured in a fresh child process that first builds the caller's own
context, then resets its high-water mark (``/proc/self/clear_refs``), starts a session
and runs one cell. "Over the caller's copy" = the host's growth past that point
(``VmHWM`` - ``VmRSS`` before) + the worker's whole ``VmHWM`` (its interpreter included)
+ every memfd / tmpfs page either process holds (sized through ``/proc/<pid>/fd``),
divided by the size of the caller's string (``sys.getsizeof``). Target (issue 12): <= 1.3.
"""

from __future__ import annotations

import json
import os
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
TARGET_PEAK_RATIO = 1.3
HUGE_BYTES = 5_000_000_000
LIMITS = SandboxLimits(cell_timeout=30, memory_mb=512, max_subcalls_per_cell=10 * BRIDGE_CALLS)


def make_context(size: int) -> str:
    """About ``size`` ASCII characters, built in one allocation."""
    return SENTENCE * (size // len(SENTENCE))


def status_kb(pid: int | str, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def vm_hwm_kb(pid: int | str) -> int:
    return status_kb(pid, "VmHWM:")


def memfd_bytes(pid: int | str) -> int:
    """Bytes held in memfd / tmpfs-backed descriptors of ``pid`` (no RSS shows them)."""
    total = 0
    folder = f"/proc/{pid}/fd"
    for fd in os.listdir(folder):
        try:
            link = os.readlink(f"{folder}/{fd}")
            if link.startswith(("/memfd:", "/dev/shm/")) or "(deleted)" in link:
                total += os.stat(f"{folder}/{fd}").st_size
        except OSError:
            continue
    return total


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


def peak_child(size: int, wide: bool) -> None:
    """Runs in a fresh process: start a session on ``size`` characters, one cell, report.

    ``wide`` adds one ``’`` so the whole string takes 2 bytes per character.
    """
    context = make_context(size - 1) + ("\u2019" if wide else "")
    before_kb = status_kb("self", "VmRSS:")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current RSS
    started = time.perf_counter()
    ex = ProcessSandbox().start(context, {}, LIMITS)
    out = ex("n = len(context)\nprint(n, context.count('fox'))")
    elapsed = time.perf_counter() - started
    assert out.error is None, out.error
    report = {
        "context_bytes": sys.getsizeof(context),
        "seconds": elapsed,
        "host_growth_kb": vm_hwm_kb("self") - before_kb,
        "worker_kb": vm_hwm_kb(ex.pid),
        "memfd_bytes": memfd_bytes("self") + memfd_bytes(ex.pid),
    }
    ex.close()
    print(json.dumps(report))


def run_peak(size: int, wide: bool = False) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, __file__, "--peak-child", str(size), "wide" if wide else "narrow"],
        capture_output=True,
        text=True,
        check=True,
    )
    report: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    over = (report["host_growth_kb"] + report["worker_kb"]) * 1024 + report["memfd_bytes"]
    report["ratio"] = over / report["context_bytes"]
    return report


def peak_row(label: str, report: dict[str, Any]) -> tuple[str, str, str, str]:
    detail = (
        f"{label}: host +{report['host_growth_kb'] * 1024 / MB:.0f} MB, worker "
        f"{report['worker_kb'] * 1024 / MB:.0f} MB, memfd {report['memfd_bytes'] / MB:.0f} MB, "
        f"start + 1 cell {report['seconds']:.2f} s"
    )
    return (
        detail,
        f"{report['ratio']:.3f} x",
        f"{TARGET_PEAK_RATIO} x",
        f"{report['ratio'] / TARGET_PEAK_RATIO:.2f}",
    )


def main() -> None:
    if sys.argv[1:2] == ["--peak-child"]:
        peak_child(int(sys.argv[2]), sys.argv[3:4] == ["wide"])
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
                "kill + restart, 100 MB (context streamed again)",
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
    rows.append(peak_row("peak over the caller's copy, 100 MB", run_peak(100 * MB)))
    rows.append(
        peak_row("same, 100 M chars at 2 bytes/char (200 MB)", run_peak(100 * MB, wide=True))
    )
    if "--huge" in sys.argv[1:]:
        rows.append(peak_row("peak over the caller's copy, 5 GB", run_peak(HUGE_BYTES)))
    with open("/proc/loadavg") as loadavg:
        print(f"load average at the end: {loadavg.read().split()[0]} (2 cores)")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>10}  {'target':>8}  ratio")
    for name, value, target, ratio in rows:
        print(f"{name:<{width}}  {value:>10}  {target:>8}  {ratio}")


if __name__ == "__main__":
    main()
