"""Issue 12 findings: leaks, depth under a small executor, made-up answers, lifecycles.

Models are FAKE (``ScriptedChatModel``) unless a test needs HTTP; sandboxes are the real
default process sandbox, wrapped to count the sessions they start.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.memory import InMemorySaver

from langchain_rlm import RLM, RLMClosed, RLMThreadBusyError
from langchain_rlm.parsing import parse_reply
from langchain_rlm.recursion import SubCallRunner
from langchain_rlm.sessions import ThreadSessions
from langchain_rlm.testing import ScriptedChatModel
from langchain_rlm.testing.fake_models import message_text
from langchain_rlm.testing.openai_server import Reply
from tests.conftest import repl
from tests.recursion.conftest import CountingSandbox, first_user_text, is_rlm_root, process_gone

HANG_GUARD = 120.0
"""Seconds before a test that would hang gives up (a hang guard, not a speed check)."""


# -- 1. worker leaks and the session cache ------------------------------------------------
def test_generated_thread_id_session_is_closed_at_the_end_of_the_call() -> None:
    sandbox = CountingSandbox()
    root = ScriptedChatModel(replies=[repl("x = 1\nprint(x)"), "FINAL(one)"] * 3, model="root")
    rlm = RLM(root, sandbox=sandbox, checkpointer=InMemorySaver())
    for _ in range(3):
        assert rlm.invoke({"query": "q?", "context": "c"}).answer == "one"
    assert len(sandbox.sessions) == 3
    assert all(session.pid is None for session in sandbox.sessions)  # none left alive
    assert len(rlm._sessions) == 0


def test_thread_session_cache_is_bounded() -> None:
    sandbox = CountingSandbox()
    root = ScriptedChatModel(replies=[repl("x = 1"), "FINAL(one)"] * 3, model="root")
    rlm = RLM(root, sandbox=sandbox, checkpointer=InMemorySaver(), session_cache_size=2)
    for thread in ("a", "b", "c"):
        rlm.invoke({"query": "q?", "context": "c"}, {"configurable": {"thread_id": thread}})
    assert len(rlm._sessions) == 2 and "a" not in rlm._sessions
    assert sandbox.sessions[0].pid is None  # the evicted thread's worker is gone
    assert all(session.pid is not None for session in sandbox.sessions[1:])
    rlm.close()
    assert all(session.pid is None for session in sandbox.sessions)


def test_thread_session_cache_expires_idle_sessions() -> None:
    now = [0.0]
    cache = ThreadSessions(max_size=8, ttl=10.0, clock=lambda: now[0])
    closed: list[str] = []

    class State:  # FAKE DepthState: only close() matters here
        def __init__(self, name: str) -> None:
            self.name = name

        def close(self) -> None:
            closed.append(self.name)

    cache.acquire("old")
    cache.release("old", State("old"))  # type: ignore[arg-type]
    now[0] = 11.0
    cache.acquire("new")
    assert closed == ["old"] and "old" not in cache


def test_concurrent_calls_on_one_thread_are_refused() -> None:
    started, release = threading.Event(), threading.Event()

    def tool() -> str:
        """Blocks until released."""
        started.set()
        release.wait(HANG_GUARD)
        return "done"

    root = ScriptedChatModel(replies=[repl("print(tool())"), "FINAL(ok)"], model="root")
    rlm = RLM(root, tools=[tool], checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t"}}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(rlm.invoke, {"query": "q?", "context": "c"}, config)
        assert started.wait(HANG_GUARD)
        with pytest.raises(RLMThreadBusyError, match="already running a query"):
            rlm.invoke({"query": "again?", "context": "c"}, config)
        release.set()
        assert first.result(HANG_GUARD).answer == "ok"
    rlm.close()


# -- 2. depth under a small executor, one limit for the tree -----------------------------
ROOT_FANOUT = repl(
    "parts = recursive_lm_batched(['L1 q'] * 8, [str(i) for i in range(8)])\nFINAL('|'.join(parts))"
)
CHILD_FANOUT = repl(
    "parts = recursive_lm_batched(['L2 q'] * 8, [context + str(i) for i in range(8)])\n"
    "FINAL('c' + str(len(parts)))"
)
GRANDCHILD = repl("FINAL('g' + context)")


def _fanout_sub(messages: list[BaseMessage]) -> str:
    if is_rlm_root(messages):
        return CHILD_FANOUT if "L1 q" in first_user_text(messages) else GRANDCHILD
    return "leaf:" + message_text(messages[-1])[-3:]


def _fanout_rlm() -> tuple[RLM, ScriptedChatModel, CountingSandbox]:
    """Depth 3: 8 children, each with 8 grandchildren, under a tree limit of 4."""
    sandbox = CountingSandbox()
    sub = ScriptedChatModel(responder=_fanout_sub, model="sub")
    root = ScriptedChatModel(replies=[ROOT_FANOUT], model="root")
    rlm = RLM(root, sub, max_depth=3, max_concurrency=4, sandbox=sandbox)
    return rlm, sub, sandbox


async def test_ainvoke_at_depth_3_completes_under_a_4_thread_default_executor() -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    rlm, sub, sandbox = _fanout_rlm()
    result = await asyncio.wait_for(rlm.ainvoke({"query": "q?", "context": "c"}), HANG_GUARD)
    assert result.answer == "|".join(["c8"] * 8)
    # one limit for the whole tree: never more than 4 model calls at once, at any depth
    assert sub.peak_in_flight <= 4
    # workers: the root's plus, per lane, one chain of live descendants (a child waiting
    # for its grandchild keeps its variables): linear in depth, never 16^depth
    assert sandbox.peak_live <= 1 + 4 * 2
    assert len(sandbox.sessions) == 1 + 8 + 8 * 8  # every RLM of the tree had a session


def test_sync_invoke_at_depth_3_bounds_threads_and_workers() -> None:
    rlm, sub, sandbox = _fanout_rlm()
    peak_threads = [threading.active_count()]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.005):
            peak_threads[0] = max(peak_threads[0], threading.active_count())

    baseline = threading.active_count()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = rlm.invoke({"query": "q?", "context": "c"})
    finally:
        stop.set()
        watcher.join()
    assert result.answer == "|".join(["c8"] * 8)
    assert sub.peak_in_flight <= 4
    assert sandbox.peak_live <= 1 + 4 * 2
    # a session thread per live session plus a few helpers; never 16^depth
    assert peak_threads[0] - baseline <= 2 * (1 + 4 * 2) + 4


# -- 3. answers are never made up from names -----------------------------------------------
def test_prose_final_of_an_undefined_variable_is_refused() -> None:
    root = ScriptedChatModel(
        replies=[repl("x = 41"), "FINAL(result)", repl("result = x + 1"), "FINAL(result)"],
        model="root",
    )
    result = RLM(root).invoke({"query": "q?", "context": "c"})
    assert result.answer == "42"
    refusal = message_text(root.calls[2].messages[-1])
    assert "no variable named 'result'" in refusal


def test_final_var_of_an_undefined_variable_after_max_iterations_is_not_its_name() -> None:
    root = ScriptedChatModel(
        replies=[repl("answer_so_far = 'seven'\nprint('working')"), "FINAL_VAR(result)"],
        model="root",
    )
    result = RLM(root, max_iterations=1).invoke({"query": "q?", "context": "c"})
    assert result.finished_reason == "max_iterations"
    assert result.answer != "result"
    assert result.answer == "working"  # the best-effort answer: the last REPL output


def test_one_word_prose_answers_still_count() -> None:
    root = ScriptedChatModel(replies=["FINAL(Paris)"], model="root")
    assert RLM(root).invoke({"query": "capital?", "context": "c"}).answer == "Paris"


def test_prose_final_with_an_apostrophe_and_later_parentheses() -> None:
    text = "FINAL(The author's name is Bob)\nSome notes (really)."
    final = parse_reply(text).final
    assert final is not None and final.value == "The author's name is Bob"
    root = ScriptedChatModel(replies=[text], model="root")
    assert RLM(root).invoke({"query": "q?", "context": "c"}).answer == "The author's name is Bob"


def test_prose_final_keeps_python_strings_with_parentheses() -> None:
    final = parse_reply('FINAL("a (b")\n(later)').final
    assert final is not None and final.value == "a (b"


# -- 5. host-function bugs are logged, not silent -------------------------------------------
def test_a_bug_in_a_host_function_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(self: SubCallRunner, *args: Any, **kwargs: Any) -> str:
        raise ZeroDivisionError("host bug")

    monkeypatch.setattr(SubCallRunner, "_leaf", broken)
    root = ScriptedChatModel(replies=[repl("print(llm_query('hi'))"), "FINAL(x)"], model="root")
    with caplog.at_level(logging.ERROR, logger="langchain_rlm"):
        result = RLM(root).invoke({"query": "q?", "context": "c"})
    assert "ZeroDivisionError: host bug" in (result.repl_history[0].error or "")
    assert any(
        r.name.startswith("langchain_rlm") and "llm_query failed on the host" in r.getMessage()
        for r in caplog.records
    )


# -- 4. lifecycles ------------------------------------------------------------------------------
def test_a_failing_child_closes_its_worker() -> None:
    sandbox = CountingSandbox()

    def sub(messages: list[BaseMessage]) -> str:
        if is_rlm_root(messages) and len(messages) > 2:
            raise ValueError("the child's root model broke")  # permanent: not retried
        return repl("print('child ran')") if is_rlm_root(messages) else "leaf"

    root = ScriptedChatModel(
        replies=[repl("print(recursive_lm('q', 'sub'))"), "FINAL(done)"], model="root"
    )
    rlm = RLM(root, ScriptedChatModel(responder=sub, model="sub"), max_depth=2, sandbox=sandbox)
    result = rlm.invoke({"query": "q?", "context": "c"})
    assert "ERROR" in result.repl_history[0].stdout or result.repl_history[0].error
    child_session = sandbox.sessions[1]
    assert child_session.pid is None


async def test_close_while_a_turn_is_stuck_starts_no_new_worker(server_factory) -> None:
    server = server_factory(
        {
            "root": lambda r: repl("print(llm_query('x'))"),
            "sub": lambda r: Reply.hanging(),
        }
    )
    sandbox = CountingSandbox()
    rlm = RLM(server.chat_model("root"), server.chat_model("sub"), sandbox=sandbox)
    task = asyncio.create_task(rlm.ainvoke({"query": "q?", "context": "c"}))
    while not server.requests_for("sub"):  # the cell waits on its hanging sub-call
        await asyncio.sleep(0.01)
    pid = sandbox.sessions[0].pid
    rlm.close()
    result = await asyncio.wait_for(task, HANG_GUARD)
    assert result.finished_reason == "cancelled"
    assert len(sandbox.sessions) == 1  # no worker started after close
    while not process_gone(pid):
        await asyncio.sleep(0.01)
    with pytest.raises(RLMClosed):
        await rlm.ainvoke({"query": "q?", "context": "c"})


# -- 1 (deliverable). sync, async, stream and astream give the same run ------------------
def _normalised(result: Any) -> list[Any]:
    steps = [
        (s.iteration, s.code, s.stdout, s.error, [c.response for c in s.sub_calls])
        for s in result.repl_history
    ]
    return [result.answer, result.iterations, result.total_calls, result.finished_reason, steps]


async def test_sync_async_stream_and_astream_agree() -> None:
    script = [
        repl("parts = llm_query_batched([context[:3], context[3:]])\nprint(parts)"),
        repl("print(len(parts))"),
        "FINAL(parts)",
    ]

    def make() -> RLM:
        return RLM(
            ScriptedChatModel(replies=list(script), model="root"),
            ScriptedChatModel(responder=lambda m: message_text(m[-1]).upper(), model="sub"),
        )

    data = {"query": "q?", "context": "abcdef"}
    results = [
        await asyncio.to_thread(make().invoke, data),
        await make().ainvoke(data),
        [e async for e in make().astream(data)][-1].result,
        (await asyncio.to_thread(lambda: list(make().stream(data))))[-1].result,
    ]
    expected = _normalised(results[0])
    assert expected[0] == "['ABC', 'DEF']"
    for other in results[1:]:
        assert _normalised(other) == expected


def test_sync_and_async_calls_mix_in_one_process_over_keep_alive_connections() -> None:
    """``invoke`` uses the model's sync API: it never binds the provider's process-wide
    async client to the library's loop, so a later ``ainvoke`` on another loop works (and
    the other way round)."""

    def reply(request: Any) -> str:
        first = not any(m.role == "assistant" for m in request.messages)
        return repl("x = llm_query('hi')\nprint(x)") if first else "FINAL(x)"

    from langchain_rlm.testing import ScriptedOpenAIServer

    with ScriptedOpenAIServer(reply, keep_alive=True) as server:
        data = {"query": "q?", "context": "c"}
        # (a second asyncio.run would fail in ChatOpenAI itself: its cached async client
        # is bound to the first loop that used it; that is langchain-openai's behaviour)
        assert RLM(server.chat_model("m")).invoke(data).finished_reason == "final"
        assert asyncio.run(RLM(server.chat_model("m")).ainvoke(data)).finished_reason == "final"
        assert RLM(server.chat_model("m")).invoke(data).finished_reason == "final"


def test_the_worker_boots_during_the_first_root_call_and_never_leaks() -> None:
    """The session starts when the query opens (the worker boots while the root model
    writes); a run that ends without running code still closes that worker."""
    booted = threading.Event()
    seen: list[bool] = []

    def root_reply(messages: list[BaseMessage]) -> str:
        # the worker is started while this first root call is still in flight
        seen.append(booted.wait(HANG_GUARD))
        return "FINAL(Paris)"

    class Watching(CountingSandbox):
        def start(self, *args: Any, **kwargs: Any) -> Any:
            session = super().start(*args, **kwargs)
            booted.set()
            return session

    sandbox = Watching()
    rlm = RLM(ScriptedChatModel(responder=root_reply, model="root"), sandbox=sandbox)
    assert rlm.invoke({"query": "capital?", "context": "c"}).answer == "Paris"
    assert seen == [True]
    assert len(sandbox.sessions) == 1
    session = sandbox.sessions[0]
    for _ in range(int(HANG_GUARD / 0.01)):
        if session.pid is None:
            break
        threading.Event().wait(0.01)
    assert session.pid is None


async def test_depth_2_concurrency_reaches_the_tree_limit_not_the_executor_size() -> None:
    """16 children at once under ``max_concurrency=16`` with a 4-thread default executor:
    their root calls are all in flight together (the old core capped this at cpu + 3)."""
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=4)
    )
    code = repl("r = recursive_lm_batched(['q'] * 16, [str(i) for i in range(16)])\nFINAL('ok')")
    sub = ScriptedChatModel(responder=lambda m: "FINAL(context)", model="sub", latency=1.0)
    root = ScriptedChatModel(replies=[code], model="root")
    result = await asyncio.wait_for(
        RLM(root, sub, max_depth=2, max_concurrency=16).ainvoke({"query": "q?", "context": "c"}),
        HANG_GUARD,
    )
    assert result.answer == "ok"
    assert sub.peak_in_flight == 16


@pytest.mark.timeout(120)  # a hang guard: before, the cell ran to cell_timeout (600 s)
def test_the_run_timeout_caps_a_running_cell() -> None:
    root = ScriptedChatModel(replies=[repl("while True:\n    pass")], model="root")
    rlm = RLM(root, timeout=1.0, cell_timeout=600)
    result = rlm.invoke({"query": "q?", "context": "c"})
    assert result.finished_reason == "timeout"
    assert "TimeoutError" in (result.repl_history[0].error or "")
