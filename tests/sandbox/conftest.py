"""Shared fixtures for the sandbox suites: short limits keep the suite fast."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from langchain_rlm.sandbox import HostFunctionError, ProcessSandbox, SandboxLimits
from tests.conftest import process_alive

TEST_LIMITS = SandboxLimits(
    cell_timeout=2.0,
    memory_mb=256,
    max_captured_output=10_000,
    max_subcalls_per_cell=10,
    max_subcall_chars=1_000,
)
CONTEXT = "The quick brown fox. " * 50 + "SECRET-IN-CONTEXT-IS-FINE"


def host_functions(calls: list[Any] | None = None) -> dict[str, Any]:
    """Host functions that record their calls (a stand-in for the sub-model bridge)."""
    log = calls if calls is not None else []

    def llm_query(prompt: str, **kwargs: Any) -> str:
        log.append(("llm_query", prompt, kwargs))
        return f"answer to {prompt[:20]}"

    def llm_query_batched(prompts: list[str]) -> list[str]:
        log.append(("llm_query_batched", prompts))
        return [f"answer to {p[:20]}" for p in prompts]

    def recursive_lm(query: str, context_subset: Any = None) -> str:
        log.append(("recursive_lm", query, context_subset))
        return "child says hi"

    def refuse(*_args: Any, **_kwargs: Any) -> str:
        raise HostFunctionError("budget exhausted: no more sub-calls")

    def crash(*_args: Any) -> str:
        raise ValueError("host bug")

    def echo(*args: Any, **kwargs: Any) -> Any:
        """Returns what crossed the bridge, so tests can see exactly what arrived."""
        log.append(("echo", args, kwargs))
        return {"args": list(args), "kwargs": kwargs}

    return {
        "llm_query": llm_query,
        "llm_query_batched": llm_query_batched,
        "recursive_lm": recursive_lm,
        "refuse": refuse,
        "crash": crash,
        "echo": echo,
    }


@pytest.fixture(scope="module")
def session() -> Iterator[Any]:
    """One process session reused by many attempts (each must leave it working)."""
    yield from _closing_session()


@pytest.fixture()
def fresh_session() -> Iterator[Any]:
    yield from _closing_session()


def _closing_session() -> Iterator[Any]:
    """A session; after ``close()`` neither its worker nor anything it started lives."""
    ex = ProcessSandbox(grace_seconds=1.0).start(CONTEXT, host_functions(), TEST_LIMITS)
    pids: list[int] = []
    try:
        yield ex
    finally:
        if ex.pid is not None:
            pids = [ex.pid, *descendants(ex.pid)]
        ex.close()
    assert not [pid for pid in pids if alive(pid)]


alive = process_alive
"""Whether ``pid`` is a live (not zombie) process."""


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (through ``/proc``)."""
    found: list[int] = []
    queue = [pid]
    while queue:
        current = queue.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    children = [int(c) for c in handle.read().split()]
            except OSError:
                continue
            found.extend(children)
            queue.extend(children)
    return [p for p in found if alive(p)]


def assert_next_cell_works(ex: Any) -> None:
    out = ex("_probe = 6 * 7\nprint(_probe, len(context))")
    assert out.error is None, out.error
    assert out.stdout == f"42 {len(CONTEXT)}\n"
    fin = ex("FINAL_VAR('_probe')")
    assert fin.final_answer == "42", fin
