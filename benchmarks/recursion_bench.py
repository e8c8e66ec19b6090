"""Recursion-at-scale benchmarks (issue 4): fan-out, per-iteration overhead, first-prompt
size, peak memory. Each prints its ratios side by side; results go to
``benchmarks/RESULTS.md``.

Every model here is a FAKE: ``ScriptedChatModel`` in process, or ``ChatOpenAI`` talking HTTP
to the scripted loopback server ``ScriptedOpenAIServer`` (the real client path; replies are
canned and latency is injected by the server).

Usage::

    PYTHONPATH=. python benchmarks/recursion_bench.py all
    PYTHONPATH=. python benchmarks/recursion_bench.py fanout [--sizes 64 256] [--concurrency 16 64 256]
    PYTHONPATH=. python benchmarks/recursion_bench.py overhead | prompt | memory
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from pydantic import SecretStr

from langchain_rlm import RLM, CodeEvent
from langchain_rlm.grounding import ground_query
from langchain_rlm.prompts import describe_context
from langchain_rlm.sandbox.base import HostFunction, PythonExecutor, SandboxLimits
from langchain_rlm.sandbox.process import ProcessSandbox
from langchain_rlm.testing import ScriptedChatModel, ScriptedOpenAIServer
from langchain_rlm.testing.openai_server import ChatRequest, Reply, replies_responder

SUB_LATENCY = 0.3
"""Seconds every fan-out sub-call takes on the scripted server."""
FANOUT_TARGET = 1.15
OVERHEAD_TARGET_MS = 5.0
PROMPT_TARGET_CHARS = 8_000
OVERHEAD_ITERATIONS = 41
MB = 1_000_000
LINE = "2024-05-01 12:00:00 INFO request served in 12 ms by worker 7 for user 12345\n"


def _context(size: int) -> str:
    """A log-like string context of about ``size`` characters (whole lines, built in one
    allocation so that building it does not dominate the peak-memory figures)."""
    return LINE * max(1, size // len(LINE))


def _repl(code: str) -> str:
    return f"```repl\n{code.strip()}\n```"


def _sandbox() -> ProcessSandbox:
    """The default, confined process sandbox (``get_sandbox`` may still map to local)."""
    return ProcessSandbox()


# -- (a) fan-out ---------------------------------------------------------------------------
def _fanout_root(request: ChatRequest) -> str:
    size = int(re.search(r"fanout=(\d+)", request.prompt_text)[1])  # type: ignore[index]
    return _repl(
        f"out = llm_query_batched([f'part {{i}}' for i in range({size})])\nFINAL(str(len(out)))"
    )


def _fanout_sub(request: ChatRequest) -> Reply:
    return Reply(content="ok", latency=SUB_LATENCY)


def _responders(kind: str) -> dict[str, Any]:
    """The scripted models of one benchmark kind, by model name."""
    if kind == "fanout":
        return {"root": _fanout_root, "sub": _fanout_sub}
    return {"root": replies_responder(_loop_replies(), cycle=True), "bare": lambda r: "pong"}


def _serve(
    conn: Any, kind: str | Callable[[], dict[str, Any]] = "fanout", keep_alive: bool = False
) -> None:
    """Child process: the scripted server, so its CPU does not share the client's GIL.

    ``kind``: a benchmark kind of this file, or a function returning the responders.
    ``keep_alive``: HTTP/1.1 keep-alive like a real provider (default: one connection per
    request, see ``ScriptedOpenAIServer``).
    """
    responders = kind() if callable(kind) else _responders(kind)
    server = ScriptedOpenAIServer(responders, keep_alive=keep_alive).start()
    conn.send(server.port)
    conn.recv()
    server.close()


class _RemoteServer:
    """The scripted server in a forked process (a real provider is not in our process)."""

    def __init__(
        self, kind: str | Callable[[], dict[str, Any]] = "fanout", keep_alive: bool = False
    ) -> None:
        self.kind = kind
        self.keep_alive = keep_alive

    def __enter__(self) -> _RemoteServer:
        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("fork").Process(
            target=_serve, args=(child, self.kind, self.keep_alive), daemon=True
        )
        self.process.start()
        self.port = self.conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.send("stop")
        self.process.join(5)

    def chat_model(self, model: str) -> Any:
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            model=model,
            base_url=f"http://127.0.0.1:{self.port}/v1",
            api_key=SecretStr("x"),
            max_retries=0,
        )


def _fanout_rlm(
    server: _RemoteServer, size: int, concurrency: int, mode: str
) -> tuple[float, float]:
    """(batch step seconds, end-to-end seconds) of one RLM run with one batch."""
    rlm = RLM(
        server.chat_model("root"),
        server.chat_model("sub"),
        max_concurrency=concurrency,
        sandbox=_sandbox(),
    )
    data = {"query": f"fanout={size}", "context": "x"}
    started = time.perf_counter()
    result = rlm.invoke(data) if mode == "sync" else asyncio.run(rlm.ainvoke(data))
    wall = time.perf_counter() - started
    assert result.answer == str(size), result.answer
    assert result.sub_calls == size
    return result.repl_history[0].seconds, wall


def _fanout_bare(server: _RemoteServer, size: int, concurrency: int, mode: str) -> float:
    """The same batch with ChatOpenAI alone (no RLM): the client's own floor."""
    model = server.chat_model("sub")
    started = time.perf_counter()
    if mode == "sync":
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda i: model.invoke(f"part {i}"), range(size)))
    else:

        async def run() -> None:
            semaphore = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with semaphore:
                    await model.ainvoke(f"part {i}")

            await asyncio.gather(*(one(i) for i in range(size)))

        asyncio.run(run())
    return time.perf_counter() - started


def bench_fanout(sizes: list[int], concurrencies: list[int]) -> None:
    print(
        f"\n(a) fan-out through ChatOpenAI, sub-call latency {SUB_LATENCY * 1000:.0f} ms, "
        "scripted server in its own process"
    )
    print(
        "    ratio = measured / (ceil(N / concurrency) x latency); target <= "
        f"{FANOUT_TARGET}; bare = ChatOpenAI alone, same batch, same pool/semaphore"
    )
    print(
        f"{'N':>5} {'conc':>5} {'mode':>5} {'ideal s':>8} {'step s':>8} {'step ratio':>10} "
        f"{'e2e s':>7} {'e2e ratio':>9} {'bare ratio':>10}"
    )
    with _RemoteServer() as server:
        _fanout_rlm(server, 4, 4, "sync")  # warm-up: imports, first worker spawn
        for size in sizes:
            for concurrency in concurrencies:
                if concurrency > size:
                    continue
                ideal = math.ceil(size / concurrency) * SUB_LATENCY
                for mode in ("sync", "async"):
                    step, wall = _fanout_rlm(server, size, concurrency, mode)
                    bare = _fanout_bare(server, size, concurrency, mode)
                    print(
                        f"{size:>5} {concurrency:>5} {mode:>5} {ideal:>8.2f} {step:>8.3f} "
                        f"{step / ideal:>10.3f} {wall:>7.3f} {wall / ideal:>9.3f} "
                        f"{bare / ideal:>10.3f}"
                    )


# -- (b) overhead per root iteration ---------------------------------------------------------
class _ModelTimer(BaseCallbackHandler):
    """Records when each chat-model call started and ended (the model's own time)."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._open: dict[Any, float] = {}

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: Any, **kw: Any
    ) -> None:
        self._open[run_id] = time.perf_counter()

    def on_llm_end(self, response: Any, *, run_id: Any, **kw: Any) -> None:
        self.spans.append((self._open.pop(run_id), time.perf_counter()))


def _iteration_intervals(rlm: RLM, context: str) -> tuple[list[float], list[float], float]:
    """Per interval between consecutive root turns: its seconds, the seconds spent inside
    the model call(s) of that interval, and the setup time before the first turn."""
    stamps: list[float] = []
    timer = _ModelTimer()
    started = time.perf_counter()
    for event in rlm.stream({"query": "loop", "context": context}, {"callbacks": [timer]}):
        if isinstance(event, CodeEvent):
            stamps.append(time.perf_counter())
    setup = stamps[0] - started
    intervals, model_times = [], []
    for a, b in itertools.pairwise(stamps):
        intervals.append(b - a)
        model_times.append(sum(end - start for start, end in timer.spans if a <= start < b))
    return intervals, model_times, setup


def _loop_replies() -> list[str]:
    step = _repl("x = len(context)\nprint(x)")
    return [step] * (OVERHEAD_ITERATIONS - 1) + [_repl("FINAL(str(x))")]


def bench_overhead(sizes: list[int]) -> None:
    print(
        "\n(b) framework overhead per root iteration (median of "
        f"{OVERHEAD_ITERATIONS - 1} intervals; zero-latency model; process sandbox)"
    )
    print(
        "    one interval = root call + parse + execute (one trivial cell) + check_final; "
        f"target <= {OVERHEAD_TARGET_MS} ms"
    )
    print(
        f"{'context':>8} {'model':>22} {'median ms':>10} {'p90 ms':>8} {'in model ms':>13} "
        f"{'overhead ms':>14} {'first turn s':>12}"
    )
    warm = ScriptedChatModel(replies=_loop_replies(), model="root")
    _iteration_intervals(RLM(warm, sandbox=_sandbox()), "warm-up")
    with _RemoteServer("loop") as wire:
        for size in sizes:
            context = _context(size)
            # in-process FAKE model
            root = ScriptedChatModel(replies=_loop_replies(), model="root")
            measured = _iteration_intervals(RLM(root, sandbox=_sandbox()), context)
            _print_overhead(size, "fake (in-process)", *measured)
            # the same through ChatOpenAI and HTTP (server in another process)
            model = wire.chat_model("root")
            _iteration_intervals(RLM(model, sandbox=_sandbox()), "warm-up")
            measured = _iteration_intervals(RLM(model, sandbox=_sandbox()), context)
            _print_overhead(size, "ChatOpenAI (loopback)", *measured)


def _print_overhead(
    size: int, label: str, intervals: list[float], model_times: list[float], setup: float
) -> None:
    ms = sorted(i * 1000 for i in intervals)
    median = statistics.median(ms)
    p90 = ms[int(0.9 * (len(ms) - 1))]
    model_ms = statistics.median(m * 1000 for m in model_times)
    overhead = statistics.median(
        (i - m) * 1000 for i, m in zip(intervals, model_times, strict=True)
    )
    print(
        f"{size // MB:>6}MB {label:>22} {median:>10.2f} {p90:>8.2f} {model_ms:>13.2f} "
        f"{overhead:>14.2f} {setup:>12.3f}"
    )


# -- (c) first root prompt size ----------------------------------------------------------------
def bench_prompt(sizes: list[int]) -> None:
    print(
        f"\n(c) first root prompt (all messages of the first call), target <= "
        f"{PROMPT_TARGET_CHARS:,} chars, flat"
    )
    print(
        "    describe / ground = CPU per query before the first root call (the context's\n"
        "    description, the query's grounding), median of 3, ms; no target"
    )
    print(f"{'context':>12} {'kind':>6} {'prompt chars':>13} {'describe':>9} {'ground':>7}")
    for size in sizes:
        for kind in ("str", "list"):
            text = _context(size)
            context: Any = text
            if kind == "list":
                chunk = max(1, size // 1000)
                context = [text[i : i + chunk] for i in range(0, size, chunk)]
            root = ScriptedChatModel(replies=["FINAL(x)"], model="root")
            RLM(root, sandbox=_sandbox()).invoke({"query": PROMPT_QUERY, "context": context})
            chars = sum(len(str(m.content)) for m in root.calls[0].messages)
            describe, ground = _prepare_ms(context)
            print(f"{size:>12,} {kind:>6} {chars:>13,} {describe:>9.1f} {ground:>7.1f}")


PROMPT_QUERY = "What happened?"


def _prepare_ms(context: Any) -> tuple[float, float]:
    """Milliseconds of describing ``context`` and grounding :data:`PROMPT_QUERY` in it."""
    describes, grounds = [], []
    for _ in range(3):
        started = time.perf_counter()
        description = describe_context(context)
        described = time.perf_counter()
        ground_query(PROMPT_QUERY, context, description)
        describes.append(described - started)
        grounds.append(time.perf_counter() - described)
    return statistics.median(describes) * 1000, statistics.median(grounds) * 1000


# -- (d) peak memory ----------------------------------------------------------------------------
class _MeasuringSandbox:
    """The process sandbox; reads each worker's peak RSS (VmHWM) before it is closed."""

    name = "process"

    def __init__(self) -> None:
        self.inner = ProcessSandbox()
        self.allowed_modules: tuple[str, ...] = self.inner.allowed_modules
        """What ``import`` may load: the wrapped sandbox's list."""
        self.worker_peaks_kb: list[int] = []

    def start(
        self,
        context: Any,
        functions: Mapping[str, HostFunction],
        limits: SandboxLimits | None = None,
    ) -> PythonExecutor:
        session = self.inner.start(context, functions, limits)
        original_close = session.close
        peaks = self.worker_peaks_kb

        def close() -> None:
            pid = session.pid
            if pid is not None:
                peaks.append(_vm_hwm_kb(pid))
            original_close()

        session.close = close  # type: ignore[method-assign]
        return session


def _vm_hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _memory_child(size: int, run: bool) -> None:
    """Runs in a fresh interpreter; prints host and worker peaks in kB."""
    context = _context(size)
    worker = 0
    if run:
        code = _repl(
            "n = context.count('INFO')\nparts = [context[i:i+1000] for i in range(0, 5000, 1000)]\nFINAL(str(n))"
        )
        root = ScriptedChatModel(replies=[code], model="root")
        sandbox = _MeasuringSandbox()
        result = RLM(root, sandbox=sandbox).invoke({"query": "count", "context": context})
        assert int(result.answer) > 0
        worker = max(sandbox.worker_peaks_kb)
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{host} {worker}")


def bench_memory(size: int) -> None:
    print(f"\n(d) peak memory with a {size // MB} MB str context (fresh interpreter per row)")
    rows = {}
    for run in (False, True):
        out = subprocess.run(
            [sys.executable, __file__, "_memory_child", str(size), "1" if run else "0"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ},
        ).stdout.split()
        rows[run] = (int(out[-2]) / 1024, int(out[-1]) / 1024)
    base, _ = rows[False]
    host, worker = rows[True]
    mb = size / 2**20
    print(f"    context size                         {mb:8.1f} MiB")
    print(f"    host peak RSS, context built only    {base:8.1f} MiB")
    print(
        f"    host peak RSS, after an RLM run      {host:8.1f} MiB  (+{host - base:.1f} MiB, "
        f"{host / mb:.2f}x context)"
    )
    print(
        f"    sandbox worker peak RSS (VmHWM)      {worker:8.1f} MiB  ({worker / mb:.2f}x context)"
    )
    print(
        f"    host + worker                        {host + worker:8.1f} MiB  "
        f"({(host + worker) / mb:.2f}x context)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "what", choices=["all", "fanout", "overhead", "prompt", "memory", "_memory_child"]
    )
    parser.add_argument("args", nargs="*")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    options = parser.parse_args()
    if options.what == "_memory_child":
        _memory_child(int(options.args[0]), options.args[1] == "1")
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if options.what in ("all", "fanout"):
        bench_fanout(options.sizes, options.concurrency)
    if options.what in ("all", "overhead"):
        bench_overhead([1 * MB, 100 * MB])
    if options.what in ("all", "prompt"):
        bench_prompt([10_000, 100_000, MB, 10 * MB, 100 * MB])
    if options.what in ("all", "memory"):
        bench_memory(100 * MB)


if __name__ == "__main__":
    main()
