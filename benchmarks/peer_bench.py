"""langchain-rlm against the peer ``rlms`` package, side by side, in one run (issue 12).

Both run against the same scripted OpenAI-compatible server on 127.0.0.1
(``ScriptedOpenAIServer``, a FAKE provider), which runs in its own process so neither
side pays for it. ``rlms`` (alexzhang13/rlm, the paper's implementation) is installed by
this script into a separate venv, ``benchmarks/.peer-venv`` (git-ignored by a ``*``
``.gitignore`` inside it), and driven by ``peer_rlms_driver.py`` in a subprocess. The
project runs in this process (or a fresh child of it for the memory rows).

Parts (each prints its own table with ratios):

* ``overhead``: framework overhead per root iteration, 10 root iterations, 0 ms model
  latency, 1 MB and 100 MB str contexts. An *interval* is from one root model call's
  start to the next one's (one model call, one trivial cell, the loop's bookkeeping).
  Two subtractions, both measured the same way on both sides by wrapping the calls:
  *model* = the chat-model call (``ChatOpenAI.ainvoke`` / rlms's
  ``OpenAIClient.completion``), *wire* = ``httpx`` ``send`` (the HTTP round trip only).
  *CPU* = CPU seconds of the client's process tree (threads and the sandbox worker,
  from ``/proc/<pid>/task/*/schedstat``; the server excluded) between the two root-call
  starts: the figure that does not depend on the machine's load.
  Target: project <= 0.8x rlms. The *floor* rows replay the project's own conversation
  through the chat-model call alone (``ChatOpenAI.ainvoke`` / ``invoke``, and the openai
  SDK's sync client that rlms calls) and do nothing else: the least any RLM that calls
  ``ChatOpenAI`` can take per iteration.
* ``fanout``: one ``llm_query_batched`` of 64 prompts x 300 ms at concurrency 16,
  project sync (``invoke``) and async (``ainvoke``), rlms (sync only: it has no async
  API). ratio = seconds / (ceil(64 / 16) x 0.3 s). Target <= 1.15.
* ``memory``: peak memory *over the caller's own copy* of a 100 MB str context, in a
  fresh process per side, sampled from outside every ~2 ms over the whole process tree:
  Pss_Anon + Pss_File of every process (``smaps_rollup``; shared memory left out; PSS so
  that shared pages are not counted twice; a forked child that has not exec'd yet, and
  a zombie, is skipped: a vfork child *is* its parent's memory), plus the shared pages
  two ways: (a) memfd / ``/dev/shm`` files held open by any process of the tree
  (``st_blocks`` of ``/proc/<pid>/fd/<n>``, deduplicated by inode), (b) the rise of
  ``Shmem`` in ``/proc/meminfo`` (system-wide). Baseline: the same sum when the child
  has built its context and its RLM, just before the run. Also printed: the sum of every
  process's VmHWM minus the caller's RSS at the baseline (an upper bound that no
  sampling interval can miss). Target <= 1.3x the context.
* ``huge``: a 5 GB str context answered end to end by the project (a scripted model
  that peeks and answers), wall time and the same peak memory; refused when
  ``MemAvailable`` is too small.

Usage::

    PYTHONPATH=. python benchmarks/peer_bench.py all [--rounds N]   # all but huge
    PYTHONPATH=. python benchmarks/peer_bench.py overhead|fanout|memory|huge [--rounds N]

The first run creates ``benchmarks/.peer-venv`` (``pip install rlms==0.1.3``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # openai >= 3 sends through httpx2; older releases through httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proc_stats import children, inside, meminfo, timed, tree_cpu
from recursion_bench import (
    LINE,
    MB,
    _context,
    _fanout_rlm,
    _fanout_root,
    _fanout_sub,
    _RemoteServer,
    _repl,
)

from langchain_rlm import RLM
from langchain_rlm.sandbox.process import ProcessSandbox
from langchain_rlm.testing.openai_server import ChatRequest

HERE = Path(__file__).resolve().parent
PEER_VENV = HERE / ".peer-venv"
PEER_PYTHON = PEER_VENV / "bin" / "python"
PEER_DRIVER = HERE / "peer_rlms_driver.py"
RLMS_VERSION = "0.1.3"
"""The peer package version measured (the one the issue's findings name)."""

ITERATIONS = 10
OVERHEAD_SIZES = (1 * MB, 100 * MB)
OVERHEAD_RUNS = 3
"""Measured runs per (side, size, round); each gives ITERATIONS - 1 intervals."""
WARMUP_RUNS = 1
OVERHEAD_TARGET = 0.8
"""Project overhead / rlms overhead."""
FANOUT_N = 64
FANOUT_CONCURRENCY = 16
SUB_LATENCY = 0.3
FANOUT_TARGET = 1.15
FANOUT_RUNS = 2
MEMORY_SIZE = 100 * MB
MEMORY_TARGET = 1.3
"""Peak bytes over the caller's copy / context bytes."""
HUGE_SIZE = 5 * 10**9
HUGE_HEADROOM = 3.3
"""MemAvailable needed for the huge run, in context sizes (caller + handover + worker)."""
SAMPLE_SECONDS = 0.002
HUGE_SAMPLE_SECONDS = 0.1
GIB = 2**30
PEEK_ANSWER = LINE.split()[2]


# -- the scripted models (served in the server's process) ------------------------------------
def _turn(request: ChatRequest) -> int:
    """How many root turns this conversation already had (its own earlier replies)."""
    return sum(1 for m in request.messages if m.role == "assistant" and "```repl" in m.content)


def _loop_cell(turn: int) -> str:
    """The same work every turn, but not the same text: the project does not run a cell
    resent unchanged (and ends the turns at the third copy), so identical cells would
    measure skipped cells on one side only."""
    return _repl(f"x = len(context) + {turn} - {turn}\nprint(x)")


def _project_loop(request: ChatRequest) -> str:
    if _turn(request) < ITERATIONS - 1:
        return _loop_cell(_turn(request))
    return _repl("FINAL(str(x))")


def _peer_loop(request: ChatRequest) -> str:
    if _turn(request) < ITERATIONS - 1:
        return _loop_cell(_turn(request))
    return _repl('answer["content"] = str(x)\nanswer["ready"] = True')


def _project_peek(request: ChatRequest) -> str:
    if _turn(request) == 0:
        return _repl("head = context[:200]\nprint(len(context), head)")
    return _repl("FINAL(head.split()[2])")


def _peer_peek(request: ChatRequest) -> str:
    if _turn(request) == 0:
        return _repl("head = context[:200]\nprint(len(context), head)")
    return _repl('answer["content"] = head.split()[2]\nanswer["ready"] = True')


def _peer_fanout(request: ChatRequest) -> str:
    size = int(re.search(r"fanout=(\d+)", request.prompt_text)[1])  # type: ignore[index]
    return _repl(
        f"out = llm_query_batched([f'part {{i}}' for i in range({size})])\n"
        'answer["content"] = str(len(out))\nanswer["ready"] = True'
    )


def _responders() -> dict[str, Any]:
    return {
        "loop": _project_loop,
        "peer-loop": _peer_loop,
        "peek": _project_peek,
        "peer-peek": _peer_peek,
        "root": _fanout_root,
        "peer-fanout": _peer_fanout,
        "sub": _fanout_sub,
    }


def _server(keep_alive: bool = False) -> _RemoteServer:
    return _RemoteServer(_responders, keep_alive=keep_alive)


def _base_url(server: _RemoteServer) -> str:
    return f"http://127.0.0.1:{server.port}/v1"


# -- timing hooks on the project side ----------------------------------------------------------
@dataclass
class _Spans:
    starts: list[tuple[float, float]]
    """(wall, tree CPU) at the start of each root call of the overhead loop."""
    model: list[tuple[str, float, float]]
    wire: list[tuple[float, float]]

    def clear(self) -> None:
        self.starts.clear()
        self.model.clear()
        self.wire.clear()


SPANS = _Spans([], [], [])
ROOT_LOOP_MODEL = "loop"
LOCAL_SANDBOX = "local-trusted"
"""The in-process sandbox, opted into explicitly (trusted code only)."""


def _instrument() -> None:
    """Time ChatOpenAI calls and httpx sends (the same cut points as the rlms driver)."""
    from langchain_openai import ChatOpenAI

    ainvoke, send, asend = ChatOpenAI.ainvoke, httpx.Client.send, httpx.AsyncClient.send

    async def timed_ainvoke(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.model_name == ROOT_LOOP_MODEL:
            SPANS.starts.append((time.perf_counter(), tree_cpu()))
        start = time.perf_counter()
        try:
            return await ainvoke(self, *args, **kwargs)
        finally:
            SPANS.model.append((self.model_name, start, time.perf_counter()))

    async def timed_asend(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await asend(self, *args, **kwargs)
        finally:
            SPANS.wire.append((start, time.perf_counter()))

    ChatOpenAI.ainvoke = timed_ainvoke  # type: ignore[method-assign]
    httpx.Client.send = timed(send, SPANS.wire)  # type: ignore[method-assign]
    httpx.AsyncClient.send = timed_asend  # type: ignore[method-assign]


# -- the peer venv -------------------------------------------------------------------------------
def ensure_peer_venv() -> None:
    """Create ``benchmarks/.peer-venv`` with ``rlms`` pinned, once."""
    if PEER_PYTHON.exists() and _peer_version() == RLMS_VERSION:
        return
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    (PEER_VENV / ".gitignore").write_text("*\n")
    subprocess.run(
        [str(PEER_PYTHON), "-m", "pip", "install", "-q", f"rlms=={RLMS_VERSION}"], check=True
    )


def _peer_version() -> str:
    out = subprocess.run(
        [str(PEER_PYTHON), "-c", "import importlib.metadata as m; print(m.version('rlms'))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def _peer(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the rlms driver once and return its RESULT."""
    out = subprocess.run(
        [str(PEER_PYTHON), str(PEER_DRIVER), json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=HERE,
    )
    if out.returncode != 0:
        raise RuntimeError(f"rlms driver failed:\n{out.stderr[-3000:]}")
    return _result_line(out.stdout)


def _result_line(stdout: str) -> dict[str, Any]:
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    return result


# -- (1) overhead per root iteration -------------------------------------------------------------
@dataclass
class _Intervals:
    intervals: list[float]
    model: list[float]
    wire: list[float]
    cpu: list[float]

    def extend(self, other: dict[str, list[float]]) -> None:
        self.intervals += other["intervals"]
        self.model += other["model"]
        self.wire += other["wire"]
        self.cpu += other["cpu"]

    def medians_ms(self) -> tuple[float, float, float, float, float, float]:
        """(interval, model, interval - model, wire, interval - wire, CPU), medians in ms."""
        pairs = list(zip(self.intervals, self.model, self.wire, strict=True))
        return (
            statistics.median(self.intervals) * 1000,
            statistics.median(self.model) * 1000,
            statistics.median(i - m for i, m, _ in pairs) * 1000,
            statistics.median(self.wire) * 1000,
            statistics.median(i - w for i, _, w in pairs) * 1000,
            statistics.median(self.cpu) * 1000,
        )


def _project_overhead(
    server: _RemoteServer, size: int, mode: str, runs: int
) -> dict[str, list[float]]:
    """Intervals between root-call starts of ``runs`` project runs (after a warm-up)."""
    context = _context(size)
    out: dict[str, list[float]] = {"intervals": [], "model": [], "wire": [], "cpu": []}
    for run in range(WARMUP_RUNS + runs):
        sandbox = LOCAL_SANDBOX if mode == "local" else ProcessSandbox()
        model = _chat(_base_url(server), ROOT_LOOP_MODEL, own_clients=True)
        rlm = RLM(model, sandbox=sandbox, max_iterations=ITERATIONS + 2)
        data = {"query": "loop", "context": context}
        SPANS.clear()
        result = asyncio.run(rlm.ainvoke(data)) if mode == "async" else rlm.invoke(data)
        assert result.answer == str(len(context)), result.answer
        assert len(SPANS.starts) == ITERATIONS, len(SPANS.starts)
        if run < WARMUP_RUNS:
            continue
        _add_intervals(out, SPANS.starts, [(start, end) for _, start, end in SPANS.model])
    return out


def _add_intervals(
    out: dict[str, list[float]],
    starts: list[tuple[float, float]],
    spans: list[tuple[float, float]],
) -> None:
    """Append each interval between consecutive root-call ``starts`` (wall, tree CPU), with
    the model time (``spans``), wire time and tree CPU inside it."""
    for (a, cpu_a), (b, cpu_b) in itertools.pairwise(starts):
        out["intervals"].append(b - a)
        out["model"].append(inside(spans, a, b))
        out["wire"].append(inside(SPANS.wire, a, b))
        out["cpu"].append(cpu_b - cpu_a)


def _floor_overhead(
    server: _RemoteServer, size: int, mode: str, runs: int
) -> dict[str, list[float]]:
    """The chat-model calls alone, replaying the project's own conversation (a floor).

    One project run records the messages it sent; each floor run then sends, one call
    after the other, exactly the prompt the project sent at each root iteration, and does
    nothing else (no graph, no cell, no parsing). ``mode``: ``async`` = ``ChatOpenAI.ainvoke``
    (the call the project makes), ``sync`` = ``ChatOpenAI.invoke``, ``sdk`` = the openai
    SDK's sync client on the same message dicts (rlms's call). What no RLM built on
    ``ChatOpenAI`` can go below; the project's rows minus this row is the project's share.
    """
    from langchain_core.messages import AIMessage

    recorder = RLM(
        _chat(_base_url(server), ROOT_LOOP_MODEL, own_clients=True),
        sandbox=LOCAL_SANDBOX,
        max_iterations=ITERATIONS + 2,
    )
    sent = recorder.invoke({"query": "loop", "context": _context(size)}).messages
    prompts = [sent[:i] for i, message in enumerate(sent) if isinstance(message, AIMessage)]
    assert len(prompts) == ITERATIONS, len(prompts)
    out: dict[str, list[float]] = {"intervals": [], "model": [], "wire": [], "cpu": []}
    for run in range(WARMUP_RUNS + runs):
        SPANS.clear()
        starts, spans = _replay(server, prompts, mode)
        if run >= WARMUP_RUNS:
            _add_intervals(out, starts, spans)
    return out


def _replay(
    server: _RemoteServer, prompts: list[list[Any]], mode: str
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Send ``prompts`` one after the other with fresh clients: (call starts with tree CPU,
    call spans)."""
    from langchain_openai.chat_models.base import _convert_message_to_dict
    from openai import OpenAI

    model = _chat(_base_url(server), ROOT_LOOP_MODEL, own_clients=True)
    sdk = OpenAI(base_url=_base_url(server), api_key="x", max_retries=0) if mode == "sdk" else None
    starts: list[tuple[float, float]] = []
    spans: list[tuple[float, float]] = []

    async def replay_async() -> None:
        for prompt in prompts:
            starts.append((time.perf_counter(), tree_cpu()))
            await model.ainvoke(prompt)
            spans.append((starts[-1][0], time.perf_counter()))

    if mode == "async":
        asyncio.run(replay_async())
        return starts, spans
    for prompt in prompts:
        starts.append((time.perf_counter(), tree_cpu()))
        if sdk is not None:
            messages = [_convert_message_to_dict(m) for m in prompt]
            sdk.chat.completions.create(model=ROOT_LOOP_MODEL, messages=messages)
        else:
            model.invoke(prompt)
        spans.append((starts[-1][0], time.perf_counter()))
    return starts, spans


OVERHEAD_ROWS = (
    ("project", "sync"),
    ("project", "async"),
    ("project", "local"),
    ("floor", "async"),
    ("floor", "sync"),
    ("floor", "sdk"),
    ("rlms", "sync"),
)
"""``floor``: the chat-model calls alone on the project's conversation (see
:func:`_floor_overhead`): ``async`` / ``sync`` = ``ChatOpenAI.ainvoke`` / ``invoke``,
``sdk`` = the openai SDK's sync client (rlms's call)."""


def bench_overhead(server: _RemoteServer, rounds: int) -> dict[tuple[int, str, str], Any]:
    print(
        f"\n(1) framework overhead per root iteration: {ITERATIONS} root iterations per run, "
        f"0 ms model latency, {OVERHEAD_RUNS} runs x {rounds} rounds (+{WARMUP_RUNS} warm-up)"
    )
    print(
        "    interval = root call start -> next root call start; model = inside the chat-model "
        "call; wire = inside httpx send.\n    project: default process sandbox (sync = invoke, "
        "async = ainvoke), 'local' = in-process sandbox (sync); rlms: its default local REPL.\n"
        "    floor: the chat-model calls alone on the project's own conversation, nothing "
        "else (async = ChatOpenAI.ainvoke, sync = ChatOpenAI.invoke, sdk = openai SDK sync).\n"
        f"    ratio = project overhead / rlms overhead (same column); target <= {OVERHEAD_TARGET}"
    )
    data = {
        (size, side, mode): _Intervals([], [], [], [])
        for size in OVERHEAD_SIZES
        for side, mode in OVERHEAD_ROWS
    }
    for _ in range(rounds):
        for size in OVERHEAD_SIZES:
            for side, mode in OVERHEAD_ROWS:
                if side == "rlms":
                    measured = _peer(
                        {
                            "what": "overhead",
                            "base_url": _base_url(server),
                            "size": size,
                            "iterations": ITERATIONS,
                            "repeats": OVERHEAD_RUNS,
                            "warmup": WARMUP_RUNS,
                        }
                    )
                elif side == "floor":
                    measured = _floor_overhead(server, size, mode, OVERHEAD_RUNS)
                else:
                    measured = _project_overhead(server, size, mode, OVERHEAD_RUNS)
                data[(size, side, mode)].extend(measured)
    print(
        f"{'context':>8} {'side':>8} {'mode':>6} {'n':>4} {'interval':>9} {'ratio':>6} "
        f"{'model':>7} {'int-model':>10} {'ratio':>6} {'wire':>6} {'int-wire':>9} {'ratio':>6}"
        f" {'CPU':>6} {'ratio':>6}  (ms; CPU = client process tree, server excluded)"
    )
    for size in OVERHEAD_SIZES:
        peer = data[(size, "rlms", "sync")].medians_ms()
        for side, mode in OVERHEAD_ROWS:
            row = data[(size, side, mode)]
            interval, model, over_model, wire, over_wire, cpu = row.medians_ms()
            print(
                f"{size // MB:>6}MB {side:>8} {mode:>6} {len(row.intervals):>4} {interval:>9.2f} "
                f"{interval / peer[0]:>6.2f} {model:>7.2f} {over_model:>10.2f} "
                f"{over_model / peer[2]:>6.2f} {wire:>6.2f} "
                f"{over_wire:>9.2f} {over_wire / peer[4]:>6.2f} {cpu:>6.2f} {cpu / peer[5]:>6.2f}"
            )
    return data


# -- (2) batched fan-out -------------------------------------------------------------------------
def bench_fanout(server: _RemoteServer, rounds: int) -> None:
    ideal = math.ceil(FANOUT_N / FANOUT_CONCURRENCY) * SUB_LATENCY
    print(
        f"\n(2) fan-out: one llm_query_batched of {FANOUT_N} prompts x "
        f"{SUB_LATENCY * 1000:.0f} ms at concurrency {FANOUT_CONCURRENCY}; ideal {ideal:.2f} s; "
        f"target <= {FANOUT_TARGET}x ideal\n    step = the cell's seconds; e2e = the whole call "
        "(worker start, root calls); rlms has no async API"
    )
    rows: dict[str, list[tuple[float, float, float]]] = {
        "project sync": [],
        "project async": [],
        "rlms sync": [],
    }
    _fanout_rlm(server, 4, 4, "sync")  # warm-up
    for _ in range(rounds):
        for mode in ("sync", "async"):
            for _ in range(FANOUT_RUNS):
                cpu = tree_cpu()
                step, wall = _fanout_rlm(server, FANOUT_N, FANOUT_CONCURRENCY, mode)
                rows[f"project {mode}"].append((step, wall, tree_cpu() - cpu))
        peer = _peer(
            {
                "what": "fanout",
                "base_url": _base_url(server),
                "n": FANOUT_N,
                "repeats": FANOUT_RUNS,
                "warmup": 1,
            }
        )
        rows["rlms sync"] += [(r["step"], r["wall"], r["cpu"]) for r in peer["rows"]]
    print(
        f"{'side':>14} {'n':>3} {'step s':>7} {'step ratio':>17} {'e2e s':>7} "
        f"{'e2e ratio':>17} {'CPU s':>6}"
    )
    for label, values in rows.items():
        steps = sorted(s / ideal for s, _, _ in values)
        walls = sorted(w / ideal for _, w, _ in values)
        print(
            f"{label:>14} {len(values):>3} {statistics.median(s for s, _, _ in values):>7.3f} "
            f"{statistics.median(steps):>6.3f} ({steps[0]:.2f}-{steps[-1]:.2f}) "
            f"{statistics.median(w for _, w, _ in values):>7.3f} "
            f"{statistics.median(walls):>6.3f} ({walls[0]:.2f}-{walls[-1]:.2f}) "
            f"{statistics.median(c for _, _, c in values):>6.3f}"
        )


# -- (3) / (4) memory ---------------------------------------------------------------------------
def _status_kb(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """Fields of ``/proc/<pid>/status`` in kB (missing when the process is gone)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in keys:
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _tree(pid: int) -> Iterator[int]:
    """The process and its descendants, minus children that have not exec'd yet.

    A (v)forked child before ``exec`` (``subprocess`` spawning ``uname``, or the sandbox
    worker a moment before it starts) shares its parent's memory, and a vfork child its
    very address space, so its smaps would count the parent twice: skipped, like zombies
    (empty command line).
    """
    yield pid
    mine = _cmdline(pid)
    for child in children(pid):
        line = _cmdline(child)
        if line and line != mine:
            yield from _tree(child)


def _private_bytes(pid: int) -> int:
    """Pss_Anon + Pss_File of a process (shared memory left out).

    PSS, not RSS: a child that was forked and has not exec'd yet (``subprocess``, a
    ``uname`` call) shares its parent's pages copy-on-write; RSS would count them twice.
    """
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith(("Pss_Anon:", "Pss_File:")):
                    total += int(line.split()[1]) * 1024
    except OSError:
        pass
    return total


def _shared_files(pid: int, seen: dict[tuple[int, int], int]) -> None:
    """memfd and /dev/shm files the process holds open: allocated bytes by inode."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for fd in fds:
        path = f"/proc/{pid}/fd/{fd}"
        try:
            target = os.readlink(path)
            if target.startswith("/memfd:") or target.startswith("/dev/shm/"):
                st = os.stat(path)
                seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
        except OSError:
            continue


@dataclass
class _Sample:
    private: int
    """Pss_Anon + Pss_File over the tree, bytes."""
    fd_shared: int
    """memfd / /dev/shm files held open by the tree, bytes."""
    shmem: int
    """System-wide Shmem, bytes."""
    processes: int
    root_private: int
    """Pss_Anon + Pss_File of the root process alone (the caller's process)."""
    hwm: dict[int, int]
    """VmHWM (peak RSS, shared memory mapped included) by process, bytes."""
    root_rss: int
    """VmRSS of the root process, bytes."""


def _sample(pid: int) -> _Sample:
    private, count, root = 0, 0, 0
    shared: dict[tuple[int, int], int] = {}
    hwm: dict[int, int] = {}
    root_rss = 0
    for member in _tree(pid):
        mine = _private_bytes(member)
        root = root or mine
        private += mine
        _shared_files(member, shared)
        status = _status_kb(member, ("VmHWM", "VmRSS"))
        hwm[member] = status.get("VmHWM", 0) * 1024
        root_rss = root_rss or status.get("VmRSS", 0) * 1024
        count += 1
    return _Sample(private, sum(shared.values()), meminfo("Shmem"), count, root, hwm, root_rss)


class _Sampler:
    """Samples a process tree from outside until stopped; keeps the peaks."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.baseline = _sample(pid)
        self.peak_fd = self.peak_meminfo = 0
        self.peak_processes = 1
        self.samples = 0
        self.hwm: dict[int, int] = {}
        """Last VmHWM seen per process of the tree."""
        self.at_peak = (0, 0, 0)
        """At the (fd) peak: caller process, other processes, shared files (bytes)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peak_hwm(self) -> int:
        """Sum of every process's VmHWM, minus the caller's RSS at the baseline (an upper
        bound: each process's own peak, even when they did not coincide; a mapped memfd
        counts in the VmHWM of the process that mapped it)."""
        return sum(self.hwm.values()) - self.baseline.root_rss

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        base = self.baseline
        while not self._stop.is_set():
            s = _sample(self.pid)
            self.samples += 1
            self.peak_processes = max(self.peak_processes, s.processes)
            for member, peak in s.hwm.items():
                self.hwm[member] = max(self.hwm.get(member, 0), peak)
            over = s.private - base.private
            if over + s.fd_shared - base.fd_shared > self.peak_fd:
                self.peak_fd = over + s.fd_shared - base.fd_shared
                self.at_peak = (
                    s.root_private - base.root_private,
                    s.private - s.root_private - (base.private - base.root_private),
                    s.fd_shared - base.fd_shared,
                )
            self.peak_meminfo = max(self.peak_meminfo, over + s.shmem - base.shmem)
            self._stop.wait(self.interval)


def _project_child(spec: dict[str, Any]) -> None:
    """Fresh interpreter: context, RLM, READY; on a line from stdin, run; RESULT."""
    context = _context(spec["size"])
    rlm = RLM(
        _chat(spec["base_url"], "peek"),
        sandbox=ProcessSandbox(),
        max_iterations=4,
        memory_mb=spec.get("memory_mb", 1024),
    )
    print("READY", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    result = rlm.invoke({"query": "peek", "context": context})
    wall = time.perf_counter() - started
    out = {
        "answer": result.answer,
        "wall": wall,
        "chars": len(context),
        "reason": result.finished_reason,
    }
    print("RESULT " + json.dumps(out), flush=True)


def _chat(base_url: str, model: str, *, own_clients: bool = False) -> Any:
    """``ChatOpenAI`` on the scripted server.

    ``own_clients``: fresh HTTP clients instead of langchain-openai's process-wide cached
    ones. The cached async client pools keep-alive connections on the event loop that
    opened them, so with ``--keep-alive`` a second event loop (``asyncio.run`` per run,
    or ``invoke``'s bridge loop then ``asyncio.run(ainvoke(...))``) fails with "Event
    loop is closed" / "bound to a different event loop".
    """
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    clients: dict[str, Any] = (
        {"http_client": httpx.Client(), "http_async_client": httpx.AsyncClient()}
        if own_clients
        else {}
    )
    return ChatOpenAI(
        model=model, base_url=base_url, api_key=SecretStr("x"), max_retries=0, **clients
    )


def _measure_child(command: list[str], interval: float) -> tuple[dict[str, Any], _Sampler]:
    """Start a child, wait for READY, sample it while it runs, return RESULT and peaks."""
    child = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    line = child.stdout.readline()
    if line.strip() != "READY":
        child.kill()
        raise RuntimeError(f"child did not start: {line!r} {child.stderr.read()[-3000:]}")
    time.sleep(0.2)  # let the allocator settle before the baseline
    with _Sampler(child.pid, interval) as sampler:
        child.stdin.write("go\n")
        child.stdin.flush()
        stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"child failed ({child.returncode}):\n{stderr[-3000:]}")
    return _result_line(stdout), sampler


def _memory_row(label: str, result: dict[str, Any], sampler: _Sampler) -> None:
    size = result["chars"]
    print(
        f"{label:>8} {size / MB:>8.0f} {result['wall']:>7.2f} "
        f"{sampler.peak_fd / MB:>10.1f} {sampler.peak_fd / size:>6.2f} "
        f"{sampler.peak_meminfo / MB:>13.1f} {sampler.peak_meminfo / size:>6.2f} "
        f"{sampler.baseline.private / MB:>9.1f} {sampler.samples:>7} {result['answer']!r}"
    )
    host, others, shared = (value / MB for value in sampler.at_peak)
    print(
        f"{'':>8} at the peak: caller process +{host:.1f} MB, its children {others:.1f} MB, "
        f"memfd/shm files {shared:.1f} MB; sum of VmHWM - baseline RSS: "
        f"{sampler.peak_hwm / MB:.1f} MB ({sampler.peak_hwm / size:.2f}x)"
    )


MEMORY_HEADER = (
    f"{'side':>8} {'ctx MB':>8} {'wall s':>7} {'over(fd) MB':>10} {'x ctx':>6} "
    f"{'over(meminfo) MB':>13} {'x ctx':>6} {'base MB':>9} {'samples':>7} answer"
)


def bench_memory(server: _RemoteServer) -> None:
    print(
        f"\n(3) peak memory over the caller's copy, {MEMORY_SIZE // MB} MB str context, fresh "
        f"process per side, sampled every {SAMPLE_SECONDS * 1000:.0f} ms over the process "
        f"tree; target <= {MEMORY_TARGET}x context\n    over = max(Pss_Anon+Pss_File of the tree "
        "+ shared pages) - baseline; shared pages: (fd) memfd//dev/shm files held open by "
        "the tree, (meminfo) rise of Shmem"
    )
    print(MEMORY_HEADER)
    spec = {"base_url": _base_url(server), "size": MEMORY_SIZE}
    result, sampler = _measure_child(
        [sys.executable, __file__, "_project_child", json.dumps(spec)], SAMPLE_SECONDS
    )
    _memory_row("project", result, sampler)
    result, sampler = _measure_child(
        [str(PEER_PYTHON), str(PEER_DRIVER), json.dumps({**spec, "what": "memory"})],
        SAMPLE_SECONDS,
    )
    _memory_row("rlms", result, sampler)


def bench_huge(server: _RemoteServer) -> None:
    need = int(HUGE_SIZE * HUGE_HEADROOM)
    available = meminfo("MemAvailable")
    print(
        f"\n(4) a {HUGE_SIZE / 1e9:.0f} GB str context end to end (project, process sandbox, "
        f"scripted model peeks then answers); MemAvailable {available / GIB:.1f} GiB"
    )
    if available < need:
        print(f"    skipped: needs about {need / GIB:.1f} GiB available")
        return
    spec = {"base_url": _base_url(server), "size": HUGE_SIZE, "memory_mb": 1024}
    print(MEMORY_HEADER)
    try:
        result, sampler = _measure_child(
            [sys.executable, __file__, "_project_child", json.dumps(spec)], HUGE_SAMPLE_SECONDS
        )
    except RuntimeError as error:
        print(f"    FAILED: {error}")
        return
    _memory_row("project", result, sampler)
    assert result["answer"] == PEEK_ANSWER, result


PARTS: dict[str, Callable[..., Any]] = {
    "overhead": bench_overhead,
    "fanout": bench_fanout,
    "memory": bench_memory,
    "huge": bench_huge,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["all", *PARTS, "_project_child"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--keep-alive",
        action="store_true",
        help="the server keeps HTTP connections open, like a real provider (default: "
        "one connection per request, the scripted server's default); overhead rows only",
    )
    options = parser.parse_args()
    if options.what == "_project_child":
        _project_child(json.loads(options.args[0]))
        return
    ensure_peer_venv()
    _instrument()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, rlms {_peer_version()}")
    print(f"load average before: {os.getloadavg()}")
    print(f"server keep-alive: {options.keep_alive}")
    with _server(options.keep_alive) as server:
        for name, part in PARTS.items():
            if options.what not in ("all", name) or (name == "huge" and options.what == "all"):
                continue
            if options.keep_alive and name != "overhead":
                print(
                    f"\n({name}: skipped with --keep-alive, which only the overhead rows support)"
                )
                continue
            if name in ("overhead", "fanout"):
                part(server, options.rounds)
            else:
                part(server)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
