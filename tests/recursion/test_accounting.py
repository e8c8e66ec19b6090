"""Honest accounting (issue 12, finding 4): one retry layer, every attempt counted and
logged, ``timeout`` bounding calls in flight, prices that never fail open.

HTTP goes through the real ``ChatOpenAI`` client against the scripted loopback server
(``ScriptedOpenAIServer``), so the request counts below are what a provider would see.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.messages.utils import count_tokens_approximately

from langchain_rlm import RLM, ModelPrice
from langchain_rlm.concurrency import run_sync
from langchain_rlm.models import ModelCallError, acall_model, without_sdk_retries
from langchain_rlm.testing import ScriptedChatModel
from langchain_rlm.testing.openai_server import Fault, Reply
from langchain_rlm.usage import (
    DEFAULT_PRICES,
    BudgetExceeded,
    Budgets,
    UnpricedModelError,
    UsageMeter,
    price_for,
    require_prices,
    unpriced_models,
    usage_from_message,
)
from tests.recursion.conftest import FAST_BACKOFF, repl

SDK_RETRIES = 2
"""The OpenAI SDK's own default; set explicitly so the test does not depend on it."""

LONG_CLIENT_TIMEOUT = 120.0
"""A client timeout far beyond the run's: only the RLM's ``timeout`` can cut the call."""

TEST_GUARD = 60.0
"""Upper bound on a test that would otherwise hang before the fix (not a speed target)."""

CONDITION_WAIT = 30.0
"""How long to wait for the server to see a connection closed."""

SERVER_500 = Reply.server_error(500, 0.001)


def _wait_for(condition: Callable[[], bool], timeout: float = CONDITION_WAIT) -> bool:
    """Wait until ``condition()`` holds (checked on a short interval), or give up."""
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not condition():
            if done.wait(0.01):
                return condition()
        return True
    finally:
        deadline.cancel()


def _call(entry: str, model, meter: UsageMeter, *, max_retries: int) -> AIMessage:
    """One sub-call ("hi") through the sync or the async entry point."""
    messages = [HumanMessage("hi")]
    kwargs = {
        "meter": meter,
        "depth": 1,
        "root": False,
        "max_retries": max_retries,
        "backoff": FAST_BACKOFF,
    }
    if entry == "sync":
        return run_sync(acall_model(model, messages, None, **kwargs))
    return asyncio.run(asyncio.wait_for(acall_model(model, messages, None, **kwargs), TEST_GUARD))


ENTRIES = ["sync", "async"]


# -- one retry layer ---------------------------------------------------------------------
@pytest.mark.parametrize("entry", ENTRIES)
def test_persistent_500_makes_exactly_max_retries_plus_one_requests(
    entry: str, server_factory
) -> None:
    """The SDK's own retries are off inside the library's: 3 requests, not 3 x 3 = 9."""
    server = server_factory(faults=[Fault(reply=SERVER_500, first_n=100)])
    model = server.chat_model("sub", max_retries=SDK_RETRIES)
    meter = UsageMeter()
    with pytest.raises(ModelCallError, match="after 3 attempts"):
        _call(entry, model, meter, max_retries=2)
    assert server.request_count == 3
    snapshot = meter.snapshot()
    assert snapshot["failed_calls"] == 3
    assert snapshot["sub_calls"] == 0 and snapshot["root_calls"] == 0


def test_the_users_model_is_not_mutated(server_factory) -> None:
    server = server_factory(faults=[Fault(reply=SERVER_500, first_n=100)])
    model = server.chat_model("sub", max_retries=SDK_RETRIES)
    before = (model.client, model.async_client, model.root_client, model.root_async_client)
    with pytest.raises(ModelCallError):
        _call("async", model, UsageMeter(), max_retries=0)
    assert server.request_count == 1
    after = (model.client, model.async_client, model.root_client, model.root_async_client)
    assert after == before
    assert model.root_client.max_retries == SDK_RETRIES
    assert model.root_async_client.max_retries == SDK_RETRIES
    assert model.max_retries == SDK_RETRIES
    # and the user's own calls keep the SDK's retries: 1 + 2 requests
    server.reset_stats()
    with pytest.raises(Exception, match="500"):
        model.invoke("direct")
    assert server.request_count == 1 + SDK_RETRIES


def test_quiet_copy_is_cached_and_follows_the_models_settings(server_factory) -> None:
    server = server_factory()
    model = server.chat_model("sub", max_retries=SDK_RETRIES)
    first, second = without_sdk_retries(model), without_sdk_retries(model)
    assert first is not model and first.root_async_client.max_retries == 0
    assert first.root_async_client is second.root_async_client  # one client per model
    model.temperature = 0.25  # a later change of the user's model is honoured
    assert without_sdk_retries(model).temperature == 0.25


def test_other_model_classes_keep_their_own_retries(caplog) -> None:
    """FAKE model: not an OpenAI client, so it is used as it is, and that is logged once
    per class (a class of its own here, so earlier tests cannot have logged it)."""

    class FakeWithOwnRetries(ScriptedChatModel):
        """FAKE: a model class this process has not called yet."""

    model = FakeWithOwnRetries(replies=["a", "b"], model="fake-keeps-retries")
    with caplog.at_level(logging.INFO, logger="langchain_rlm.models"):
        assert without_sdk_retries(model) is model
        assert without_sdk_retries(model) is model
    notes = [r for r in caplog.records if "keeps its own retries" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO


# -- every attempt counted and logged ----------------------------------------------------
@pytest.mark.parametrize("entry", ENTRIES)
def test_failed_attempts_count_against_max_llm_calls(entry: str, server_factory) -> None:
    server = server_factory(faults=[Fault(reply=SERVER_500, first_n=100)])
    meter = UsageMeter(Budgets(max_llm_calls=2))
    with pytest.raises(BudgetExceeded) as caught:
        _call(entry, server.chat_model("sub"), meter, max_retries=5)
    assert caught.value.reason == "max_llm_calls"
    assert server.request_count == 2
    assert meter.snapshot()["failed_calls"] == 2
    assert meter.exceeded is not None and meter.exceeded.reason == "max_llm_calls"


def test_a_retried_call_counts_each_attempt(server_factory) -> None:
    server = server_factory(faults=[Fault(reply=SERVER_500, first_n=2)])
    meter = UsageMeter()
    message = _call("async", server.chat_model("sub"), meter, max_retries=3)
    assert message.text == "hi"
    snapshot = meter.snapshot()
    assert (snapshot["sub_calls"], snapshot["failed_calls"]) == (1, 2)
    assert snapshot["by_model"]["sub"]["calls"] == 1
    assert snapshot["by_model"]["sub"]["failed_calls"] == 2
    assert snapshot["by_depth"]["1"]["failed_calls"] == 2


def test_failed_attempts_survive_restore_and_reach_the_parent() -> None:
    parent = UsageMeter(Budgets(max_llm_calls=3))
    child = parent.child()
    child.reserve_call()
    child.record_failure("m", 2, root=False)
    assert parent.snapshot()["failed_calls"] == 1 and child.snapshot()["failed_calls"] == 1
    resumed = UsageMeter(Budgets(max_llm_calls=3))
    resumed.restore(parent.snapshot())
    resumed.reserve_call()
    resumed.reserve_call()
    with pytest.raises(BudgetExceeded):  # the failed attempt still holds its reservation
        resumed.reserve_call()


def test_retries_and_final_failures_are_logged(server_factory, caplog) -> None:
    server = server_factory(faults=[Fault(reply=SERVER_500, first_n=100)])
    with caplog.at_level(logging.DEBUG, logger="langchain_rlm"):
        with pytest.raises(ModelCallError):
            _call("async", server.chat_model("sub"), UsageMeter(), max_retries=2)
    records = [r for r in caplog.records if r.name == "langchain_rlm.models"]
    retries = [r for r in records if r.levelno == logging.WARNING]
    failures = [r for r in records if r.levelno == logging.ERROR]
    attempts = [r for r in records if r.levelno == logging.DEBUG and "attempt" in r.getMessage()]
    assert len(attempts) == 3
    assert len(retries) == 2 and all("retrying" in r.getMessage() for r in retries)
    assert len(failures) == 1 and "after 3 attempts" in failures[0].getMessage()


def test_a_budget_stop_is_logged_once(caplog) -> None:
    meter = UsageMeter(Budgets(max_llm_calls=1))
    meter.reserve_call()
    with caplog.at_level(logging.INFO, logger="langchain_rlm.usage"):
        for _ in range(3):
            with pytest.raises(BudgetExceeded):
                meter.reserve_call()
    stops = [r for r in caplog.records if r.name == "langchain_rlm.usage"]
    assert len(stops) == 1 and stops[0].levelno == logging.WARNING
    assert "max_llm_calls" in stops[0].getMessage()


def test_total_calls_includes_failed_attempts(server_factory) -> None:
    """RLMResult.total_calls = completed calls + failed attempts (result.py reads
    ``failed_calls`` from the meter's snapshot)."""
    server = server_factory(
        {"root": lambda r: repl("FINAL(llm_query('hi'))"), "sub": lambda r: "hello"},
        faults=[Fault(reply=SERVER_500, model="sub", first_n=2)],
    )
    rlm = RLM(server.chat_model("root"), server.chat_model("sub"), retry_backoff=FAST_BACKOFF)
    result = rlm.invoke({"query": "q?", "context": "c"})
    assert result.answer == "hello"
    assert server.request_count == 4
    assert result.total_calls == 4


def test_sync_calls_share_one_loop_so_keep_alive_connections_work(server_factory) -> None:
    """call_model runs acall_model on one bridge loop: a pooled keep-alive connection is
    never reused from a closed loop ("Event loop is closed" with asyncio.run per call)."""
    server = server_factory(keep_alive=True)
    model = server.chat_model("sub")
    replies = [_call("sync", model, UsageMeter(), max_retries=0).text for _ in range(3)]
    assert replies == ["hi", "hi", "hi"]
    assert server.request_count == 3


# -- timeout bounds calls in flight ------------------------------------------------------
@pytest.mark.parametrize("entry", ENTRIES)
def test_timeout_cuts_a_hung_call_and_aborts_the_request(entry: str, server_factory) -> None:
    server = server_factory(faults=[Fault(reply=Reply.hanging(), first_n=100)])
    model = server.chat_model("sub", timeout=LONG_CLIENT_TIMEOUT)
    meter = UsageMeter(Budgets(timeout=1.0))
    with pytest.raises(BudgetExceeded) as caught:
        _call(entry, model, meter, max_retries=3)
    assert caught.value.reason == "timeout"
    assert meter.exceeded is not None and meter.exceeded.reason == "timeout"
    assert server.request_count <= 1  # cut, not retried (none sent if the machine stalled)
    assert meter.snapshot()["failed_calls"] == server.request_count
    assert _wait_for(lambda: server.in_flight == 0)  # the HTTP request was aborted


def _run_guarded(entry: str, rlm: RLM, data: dict[str, str]):
    """``invoke`` or ``ainvoke``, failing the test if it has not returned by TEST_GUARD."""
    if entry == "ainvoke":
        return asyncio.run(asyncio.wait_for(rlm.ainvoke(data), TEST_GUARD))
    results: list = []
    thread = threading.Thread(target=lambda: results.append(rlm.invoke(data)), daemon=True)
    thread.start()
    thread.join(TEST_GUARD)
    assert results, f"invoke was still running after {TEST_GUARD} s"
    return results[0]


@pytest.mark.parametrize("entry", ["invoke", "ainvoke"])
def test_rlm_timeout_ends_a_run_whose_sub_call_hangs(entry: str, server_factory) -> None:
    """The sub-call hangs and its client would wait 120 s: the run's 3 s timeout cuts it."""
    server = server_factory(
        {"root": lambda r: repl("answer = 'kept'\nprint(llm_query('hi'))"), "sub": lambda r: "x"},
        faults=[Fault(reply=Reply.hanging(), model="sub", first_n=100)],
    )
    sub = server.chat_model("sub", timeout=LONG_CLIENT_TIMEOUT)
    rlm = RLM(server.chat_model("root"), sub, timeout=3.0, retry_backoff=FAST_BACKOFF)
    result = _run_guarded(entry, rlm, {"query": "q?", "context": "c"})
    assert result.finished_reason == "timeout"
    sent = len(server.requests_for("sub"))
    assert sent <= 1  # cut, not retried
    if sent:  # the cell ran (it does unless the machine stalled for 3 s before it)
        assert result.answer == "kept"
    assert _wait_for(lambda: server.in_flight == 0)


# -- prices ------------------------------------------------------------------------------
PRICE_TABLE = [
    # (model name as reported, the DEFAULT_PRICES key it must use, or None)
    ("gpt-4o", "gpt-4o"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-mini", "gpt-4o-mini"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("gpt-4.1-2025-04-14", "gpt-4.1"),
    ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
    ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
    ("gpt-5-2025-08-07", "gpt-5"),
    ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
    ("o3-2025-04-16", "o3"),
    ("o4-mini-2025-04-16", "o4-mini"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
    ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
    ("claude-sonnet-4-5-latest", "claude-sonnet-4-5"),
    # different products that merely share a prefix: never priced as the shorter name
    ("o3-pro", None),
    ("o3-pro-2025-06-10", None),
    ("o3-mini", None),
    ("o3-deep-research", None),
    ("o4-mini-deep-research", None),
    ("gpt-4o-audio-preview", None),
    ("gpt-4o-realtime-preview-2024-12-17", None),
    ("gpt-4o-mini-tts", None),
    ("gpt-4o-search-preview", None),
    ("gpt-5-chat-latest", None),
    ("gpt-5-codex", None),
    ("gpt-4.1-preview", None),
    ("gpt-40", None),
    ("o30", None),
    ("gpt-4", None),
    ("ft:gpt-4o-mini-2024-07-18:org::abc123", None),
    ("openai/gpt-4o", None),
    ("no-such-model", None),
]


@pytest.mark.parametrize(("name", "key"), PRICE_TABLE)
def test_price_lookup_matches_only_variant_suffixes(name: str, key: str | None) -> None:
    expected = None if key is None else DEFAULT_PRICES[key]
    assert price_for(name, DEFAULT_PRICES) == expected


def test_exact_match_wins_over_a_variant() -> None:
    prices = {"m": ModelPrice(1.0, 1.0), "m-2024-01-01": ModelPrice(5.0, 5.0)}
    assert price_for("m-2024-01-01", prices) == ModelPrice(5.0, 5.0)
    assert price_for("m-2024-02-02", prices) == ModelPrice(1.0, 1.0)


def test_unpriced_models_names_each_once_in_order() -> None:
    user = {"my-finetune": ModelPrice(0.3, 1.2)}
    names = ["gpt-4o-2024-08-06", "o3-pro", "my-finetune", "o3-pro", "local-x"]
    assert unpriced_models(names, user) == ["o3-pro", "local-x"]
    assert unpriced_models(["gpt-4o"], {}) == []  # the built-in table is consulted


def test_require_prices_names_the_fix() -> None:
    with pytest.raises(UnpricedModelError) as caught:
        require_prices(["gpt-4o", "o3-pro"], {})
    assert str(caught.value) == (
        "max_cost needs a price for every model: o3-pro has none; pass "
        "prices={'o3-pro': ModelPrice(input=..., output=...)} (USD per 1M tokens) "
        "or allow_unpriced=True"
    )
    assert isinstance(caught.value, ValueError)
    require_prices(["gpt-4o", "my"], {"my": ModelPrice(1.0, 1.0)})  # all priced: no error


def test_an_unpriced_model_is_refused_under_max_cost(server_factory) -> None:
    """Fail closed: the call is not sent, since its cost could not be counted."""
    server = server_factory()
    meter = UsageMeter(Budgets(max_cost=1.0))
    with pytest.raises(BudgetExceeded) as caught:
        _call("async", server.chat_model("o3-pro"), meter, max_retries=0)
    assert caught.value.reason == "max_cost"
    assert "prices={'o3-pro': ModelPrice(" in str(caught.value)
    assert server.request_count == 0


def test_allow_unpriced_records_cost_none_and_marks_it(server_factory) -> None:
    server = server_factory()
    meter = UsageMeter(Budgets(max_cost=1.0, allow_unpriced=True))
    _call("async", server.chat_model("o3-pro"), meter, max_retries=0)
    snapshot = meter.snapshot()
    assert snapshot["by_model"]["o3-pro"]["cost"] is None
    assert snapshot["by_model"]["o3-pro"]["unpriced_calls"] == 1
    assert snapshot["unpriced_models"] == ["o3-pro"]


def test_record_of_an_unpriced_model_under_max_cost_stops_the_run() -> None:
    """Even when a call was reserved without its model's name, it never counts as free."""
    meter = UsageMeter(Budgets(max_cost=1.0))
    meter.reserve_call()
    meter.record("mystery", 1, input_tokens=10, output_tokens=10, estimated=False, root=False)
    with pytest.raises(BudgetExceeded, match="mystery has none"):
        meter.check()


def test_rlm_with_max_cost_and_an_unpriced_model_does_not_run_for_free() -> None:
    """FAKE models. Until the constructor refuses (lead's rlm.py), the meter stops it."""
    root = ScriptedChatModel(replies=[repl("print(llm_query('hi'))"), "FINAL(x)"], model="root")
    sub = ScriptedChatModel(responder=lambda m: "r", model="mystery-sub")
    prices = {"root": ModelPrice(0.0, 0.0)}
    try:
        result = RLM(root, sub, max_cost=1.0, prices=prices).invoke({"query": "q?", "context": "c"})
    except ValueError as error:  # the constructor's check, once it is in place
        assert "prices={'mystery-sub'" in str(error)
        return
    assert sub.call_count == 0
    assert result.finished_reason == "max_cost"


# -- estimates from langchain_core -------------------------------------------------------
def test_missing_usage_uses_count_tokens_approximately() -> None:
    prompt = [
        HumanMessage("x" * 41),
        AIMessage("earlier"),
        HumanMessage([{"type": "text", "text": "y"}]),
    ]
    reply = AIMessage([{"type": "text", "text": "z" * 9}])
    assert usage_from_message(reply, prompt) == (count_tokens_approximately(prompt), 3, True)
    reported = AIMessage(
        "a", usage_metadata={"input_tokens": 7, "output_tokens": 2, "total_tokens": 9}
    )
    assert usage_from_message(reported, prompt) == (7, 2, False)
