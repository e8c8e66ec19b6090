"""Runs the peer package ``rlms`` (alexzhang13/rlm) for ``peer_bench.py``.

This file runs in the *peer* venv (``benchmarks/.peer-venv``, made by ``peer_bench.py``):
it imports only the standard library, ``httpx`` and ``rlm``. It never imports
``langchain_rlm``. Every model is the scripted loopback server that ``peer_bench.py``
started (a FAKE provider); this script only drives rlms against it and prints one JSON
line with its measurements.

How rlms is driven (read from its source, rlms 0.1.3):

* ``RLM(backend="openai", backend_kwargs={"model_name", "base_url", "api_key"})`` builds
  an ``openai.OpenAI`` client for the root model; ``other_backends=["openai"]`` with its
  own kwargs is the client that depth-1 ``llm_query`` calls use (the sub-model).
* The default ``environment="local"`` is an in-process ``exec`` REPL (no isolation); a
  str context is written to a temp file and read back into the REPL's namespace.
* ``llm_query_batched`` sends the whole batch over a socket to rlms's ``LMHandler``
  thread, which runs it with ``asyncio.gather`` under a semaphore of 16
  (``LMHandler.batch_max_concurrent``, not configurable from ``RLM``).
* A run ends when code sets ``answer["content"] = ...; answer["ready"] = True``.
* ``RLM.completion`` is synchronous only (there is no async entry point).

Usage (``peer_bench.py`` does this)::

    .peer-venv/bin/python peer_rlms_driver.py '<json spec>'
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

try:  # openai >= 3 sends through httpx2; older releases through httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]
from proc_stats import inside, timed, tree_cpu  # benchmarks/, stdlib only
from rlm import RLM
from rlm.clients.openai import OpenAIClient
from rlm.environments.local_repl import LocalREPL

LINE = "2024-05-01 12:00:00 INFO request served in 12 ms by worker 7 for user 12345\n"


class Spans:
    """Start/end times of wrapped calls, by kind."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, float]] = []
        """(wall, tree CPU) at the start of each root-model call."""
        self.model: list[tuple[float, float]] = []
        self.wire: list[tuple[float, float]] = []
        self.cells: list[tuple[str, float]] = []

    def clear(self) -> None:
        self.starts.clear()
        self.model.clear()
        self.wire.clear()
        self.cells.clear()


SPANS = Spans()


def _instrument(root: str) -> None:
    """Wrap the model call, the HTTP send and the REPL cell with timers.

    Root-model calls (``model_name == root``) also stamp the wall clock and the CPU time.
    """
    completion = OpenAIClient.completion
    send = httpx.Client.send
    execute = LocalREPL.execute_code

    def timed_completion(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.model_name == root:
            SPANS.starts.append((time.perf_counter(), tree_cpu()))
        start = time.perf_counter()
        try:
            return completion(self, *args, **kwargs)
        finally:
            SPANS.model.append((start, time.perf_counter()))

    def timed_execute(self: Any, code: str) -> Any:
        start = time.perf_counter()
        try:
            return execute(self, code)
        finally:
            SPANS.cells.append((code, time.perf_counter() - start))

    OpenAIClient.completion = timed_completion  # type: ignore[method-assign]
    httpx.Client.send = timed(send, SPANS.wire)  # type: ignore[method-assign]
    LocalREPL.execute_code = timed_execute  # type: ignore[method-assign]


def _context(size: int) -> str:
    return LINE * max(1, size // len(LINE))


def _rlm(base_url: str, root: str, **kwargs: Any) -> RLM:
    common = {"base_url": base_url, "api_key": "x", "max_retries": 0}
    return RLM(
        backend="openai",
        backend_kwargs={"model_name": root, **common},
        other_backends=["openai"],
        other_backend_kwargs=[{"model_name": "sub", **common}],
        environment="local",
        **kwargs,
    )


def overhead(spec: dict[str, Any]) -> dict[str, Any]:
    """Per root-turn intervals of ``repeats`` runs of ``iterations`` turns."""
    context = _context(spec["size"])
    out: dict[str, list[float]] = {"intervals": [], "model": [], "wire": [], "cpu": []}
    for run in range(spec["warmup"] + spec["repeats"]):
        SPANS.clear()
        rlm = _rlm(spec["base_url"], "peer-loop", max_iterations=spec["iterations"] + 2)
        result = rlm.completion(context, root_prompt="loop")
        assert result.response == str(len(context)), result.response
        assert len(SPANS.starts) == spec["iterations"], len(SPANS.starts)
        if run < spec["warmup"]:
            continue
        for (a, cpu_a), (b, cpu_b) in zip(SPANS.starts, SPANS.starts[1:], strict=False):
            out["intervals"].append(b - a)
            out["model"].append(inside(SPANS.model, a, b))
            out["wire"].append(inside(SPANS.wire, a, b))
            out["cpu"].append(cpu_b - cpu_a)
    return out


def fanout(spec: dict[str, Any]) -> dict[str, Any]:
    """One ``llm_query_batched`` of ``size`` prompts: the cell's seconds and the wall time."""
    rows = []
    for index in range(spec["warmup"] + spec["repeats"]):
        SPANS.clear()
        cpu = tree_cpu()
        rlm = _rlm(spec["base_url"], "peer-fanout", max_iterations=3)
        started = time.perf_counter()
        result = rlm.completion("x", root_prompt=f"fanout={spec['n']}")
        wall = time.perf_counter() - started
        cpu = tree_cpu() - cpu
        assert result.response == str(spec["n"]), result.response
        step = max(seconds for code, seconds in SPANS.cells if "llm_query_batched" in code)
        if index >= spec["warmup"]:
            rows.append({"step": step, "wall": wall, "cpu": cpu})
    return {"rows": rows}


def memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the context, say READY, wait for GO, run, say DONE (the parent samples us)."""
    context = _context(spec["size"])
    rlm = _rlm(spec["base_url"], "peer-peek", max_iterations=4)
    print("READY", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    result = rlm.completion(context, root_prompt="peek")
    wall = time.perf_counter() - started
    return {"answer": result.response, "wall": wall, "chars": len(context)}


def main() -> None:
    spec = json.loads(sys.argv[1])
    _instrument("peer-loop")
    out = {"overhead": overhead, "fanout": fanout, "memory": memory}[spec["what"]](spec)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
