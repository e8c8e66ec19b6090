"""Cancelling ``ainvoke`` / ``astream`` aborts the sub-calls in flight and stops the worker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from langchain_rlm import RLM
from langchain_rlm.testing.openai_server import Reply
from tests.recursion.conftest import CountingSandbox, process_gone, repl

BATCH = 4
WAIT_LIMIT = 10.0
"""Upper bound for waiting on an event in these tests (a hang guard, not a timing check)."""

HANGING_CODE = repl("answer = 'before'\nout = llm_query_batched(['a', 'b', 'c', 'd'])\nprint(out)")


async def _until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("entry", ["ainvoke", "astream"])
async def test_cancel_aborts_in_flight_sub_calls_and_stops_the_worker(
    entry: str, server_factory
) -> None:
    server = server_factory({"root": lambda r: HANGING_CODE, "sub": lambda r: Reply.hanging()})
    sandbox = CountingSandbox()
    rlm = RLM(server.chat_model("root"), server.chat_model("sub"), sandbox=sandbox)
    data = {"query": "q?", "context": "c"}

    async def consume() -> None:
        if entry == "ainvoke":
            await rlm.ainvoke(data)
        else:
            async for _ in rlm.astream(data):
                pass

    task = asyncio.create_task(consume())
    await _until(lambda: server.in_flight == BATCH, "the hanging sub-calls to start")
    pid = sandbox.sessions[0].pid
    assert pid is not None and not process_gone(pid)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT_LIMIT)

    # the server sees every hanging connection closed by the client
    await _until(lambda: server.in_flight == 0, "the server to see the connections closed")
    assert len(server.requests_for("sub")) == BATCH  # and no sub-call started after cancel
    await asyncio.sleep(0.1)
    assert len(server.requests_for("sub")) == BATCH
    assert server.request_count == BATCH + 1
    assert process_gone(pid)  # no orphan worker


async def test_cancel_reaches_sub_calls_of_a_child_rlm(server_factory) -> None:
    """Depth 2: the child's hanging leaf calls are cancelled too."""
    child_code = repl("print(llm_query_batched(['x', 'y']))")

    def sub(request: Any) -> str | Reply:
        return child_code if request.system_message else Reply.hanging()

    server = server_factory(
        {"root": lambda r: repl("print(recursive_lm('go', 'sub-context'))"), "sub": sub}
    )
    sandbox = CountingSandbox()
    rlm = RLM(server.chat_model("root"), server.chat_model("sub"), sandbox=sandbox, max_depth=2)
    task = asyncio.create_task(rlm.ainvoke({"query": "q?", "context": "c"}))
    await _until(lambda: server.in_flight == 2, "the child's hanging leaf calls")
    pids = [s.pid for s in sandbox.sessions]
    assert len(pids) == 2 and all(pid is not None for pid in pids)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT_LIMIT)
    await _until(lambda: server.in_flight == 0, "the child's connections to close")
    await _until(lambda: all(process_gone(p) for p in pids), "both workers to stop")
    assert len(server.requests_for("sub")) == 3  # child root + 2 leaves, nothing after


async def test_cancelling_aresume_aborts_its_sub_calls_and_stops_the_worker(
    server_factory,
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    server = server_factory({"root": lambda r: HANGING_CODE, "sub": lambda r: Reply.hanging()})
    sandbox = CountingSandbox()
    saver = InMemorySaver()
    config = {"configurable": {"thread_id": "t"}}
    data = {"query": "q?", "context": "c"}

    def make() -> RLM:
        return RLM(
            server.chat_model("root"), server.chat_model("sub"), sandbox=sandbox, checkpointer=saver
        )

    first = asyncio.create_task(make().ainvoke(data, config))
    await _until(lambda: server.in_flight == BATCH, "the first run's hanging sub-calls")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, WAIT_LIMIT)
    await _until(lambda: server.in_flight == 0, "the first run's connections to close")

    resumed = asyncio.create_task(make().aresume({"context": "c"}, config))
    await _until(lambda: server.in_flight == BATCH, "the resumed run's hanging sub-calls")
    pid = sandbox.sessions[-1].pid
    assert pid is not None and not process_gone(pid)
    resumed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(resumed, WAIT_LIMIT)
    await _until(lambda: server.in_flight == 0, "the resumed run's connections to close")
    await _until(lambda: process_gone(pid), "the resumed run's worker to stop")
    assert len(server.requests_for("sub")) == 2 * BATCH
