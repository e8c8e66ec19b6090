"""Concurrent batches: order, bounded concurrency, failed items, sync and async paths."""

from __future__ import annotations

import threading

import pytest
from langchain_core.messages import BaseMessage

from langchain_rlm import RLM
from langchain_rlm.recursion import ERROR_PREFIX
from langchain_rlm.testing import ScriptedChatModel
from langchain_rlm.testing.fake_models import message_text
from langchain_rlm.testing.openai_server import Reply
from tests.recursion.conftest import FAST_LATENCY, repl

BATCH_CODE = repl(
    "out = llm_query_batched([f'item {i}' for i in range(12)])\n"
    "print('|'.join(out))\n"
    "FINAL('|'.join(out))"
)
EXPECTED = "|".join(f"done item {i}" for i in range(12))


def _sub(messages: list[BaseMessage]) -> str:
    return "done " + message_text(messages[-1])


@pytest.mark.parametrize("entry", ["invoke", "ainvoke"])
async def test_batch_keeps_order_and_bounds_concurrency(entry: str) -> None:
    root = ScriptedChatModel(replies=[BATCH_CODE], model="root")
    sub = ScriptedChatModel(responder=_sub, model="sub", latency=FAST_LATENCY)
    rlm = RLM(root, sub, max_concurrency=4)
    data = {"query": "q?", "context": "ctx"}
    result = rlm.invoke(data) if entry == "invoke" else await rlm.ainvoke(data)
    assert result.answer == EXPECTED
    assert sub.call_count == 12
    assert 1 < sub.peak_in_flight <= 4
    records = result.repl_history[0].sub_calls
    assert [r.prompt_preview for r in records] == [f"item {i}" for i in range(12)]
    assert all(r.kind == "llm_query" and r.error is None for r in records)


def test_default_max_concurrency_is_16() -> None:
    root = ScriptedChatModel(replies=["FINAL(x)"], model="root")
    assert RLM(root).settings.max_concurrency == 16


async def test_async_batches_run_on_the_callers_loop() -> None:
    """Under ainvoke the sub-calls go through model.ainvoke on the event loop's thread."""
    threads: list[str] = []

    def sub(messages: list[BaseMessage]) -> str:
        threads.append(threading.current_thread().name)
        return "ok"

    root = ScriptedChatModel(replies=[repl("FINAL('|'.join(llm_query_batched(['a', 'b', 'c'])))")])
    loop_thread = threading.current_thread().name
    result = await RLM(root, ScriptedChatModel(responder=sub, model="sub")).ainvoke(
        {"query": "q?", "context": "c"}
    )
    assert result.answer == "ok|ok|ok"
    assert threads == [loop_thread] * 3


def test_sync_batches_run_concurrently_on_one_event_loop() -> None:
    """``invoke`` runs the same async graph as ``ainvoke`` (on the library's bridge loop):
    a batch is asyncio tasks on one thread, in flight together, not a pool of threads."""
    threads: list[str] = []

    def sub(messages: list[BaseMessage]) -> str:
        threads.append(threading.current_thread().name)
        return "ok"

    root = ScriptedChatModel(replies=[repl("FINAL('|'.join(llm_query_batched(['a', 'b'])))")])
    sub_model = ScriptedChatModel(responder=sub, model="sub", latency=0.2)
    assert RLM(root, sub_model).invoke({"query": "q", "context": "c"}).answer == "ok|ok"
    assert len(threads) == 2 and len(set(threads)) == 1
    assert sub_model.peak_in_flight == 2


@pytest.mark.parametrize("entry", ["invoke", "ainvoke"])
async def test_failed_item_is_an_error_string_and_the_batch_survives(
    entry: str, server_factory
) -> None:
    """Over the wire: one permanent fault (HTTP 401) fails its item only."""
    code = repl(
        "out = llm_query_batched(['one', 'bad', 'three'])\nprint(out)\nFINAL(' / '.join(out))"
    )
    server = server_factory(
        {
            "root": lambda request: code,
            "sub": lambda request: (
                Reply.error(401, "no key for you")
                if "bad" in request.last_user_message
                else "ok " + request.last_user_message
            ),
        }
    )
    rlm = RLM(server.chat_model("root"), server.chat_model("sub"), retry_backoff=0.01)
    data = {"query": "q?", "context": "ctx"}
    result = rlm.invoke(data) if entry == "invoke" else await rlm.ainvoke(data)
    first, failed, third = result.answer.split(" / ")
    assert (first, third) == ("ok one", "ok three")
    assert failed.startswith(ERROR_PREFIX) and "401" in failed
    records = result.repl_history[0].sub_calls
    assert records[1].error is not None and records[1].response is None
    assert len(server.requests_for("sub")) == 3  # a permanent fault is not retried


def test_llm_query_raises_a_readable_error_in_model_code() -> None:
    """The single-call form raises (model code can catch it); the run goes on."""
    code = repl(
        "try:\n    llm_query('boom')\nexcept Exception as e:\n    FINAL('caught: ' + str(e))"
    )
    root = ScriptedChatModel(replies=[code], model="root")
    sub = ScriptedChatModel(
        replies=[], model="sub", fail_on_call=1, fail_with=ValueError("bad prompt")
    )
    result = RLM(root, sub, max_retries=0).invoke({"query": "q?", "context": "c"})
    assert result.answer.startswith("caught: ")
    assert "bad prompt" in result.answer
    assert result.finished_reason == "final"


@pytest.mark.parametrize("entry", ["invoke", "ainvoke"])
async def test_recursive_lm_batched_keeps_order_at_the_leaf(entry: str) -> None:
    """At max_depth=1 recursive_lm_batched is a batch of leaf calls over the subsets."""
    code = repl(
        "out = recursive_lm_batched(['first?', 'second?'], ['AAA', 'BBB'])\nFINAL(' '.join(out))"
    )
    root = ScriptedChatModel(replies=[code], model="root")
    sub = ScriptedChatModel(
        responder=lambda m: message_text(m[-1]).split("Context:\n")[-1].lower(),
        model="sub",
        latency=FAST_LATENCY,
    )
    rlm = RLM(root, sub)
    data = {"query": "q?", "context": "c"}
    result = rlm.invoke(data) if entry == "invoke" else await rlm.ainvoke(data)
    assert result.answer == "aaa bbb"
    assert [r.kind for r in result.repl_history[0].sub_calls] == ["recursive_lm"] * 2


def test_recursive_lm_batched_rejects_mismatched_lengths() -> None:
    code = repl(
        "try:\n"
        "    recursive_lm_batched(['a', 'b'], ['only one'])\n"
        "except Exception as e:\n"
        "    FINAL(str(e))"
    )
    root = ScriptedChatModel(replies=[code], model="root")
    sub = ScriptedChatModel(replies=[], model="sub")
    result = RLM(root, sub).invoke({"query": "q?", "context": "c"})
    assert "2 queries but 1 context subsets" in result.answer
    assert sub.call_count == 0
