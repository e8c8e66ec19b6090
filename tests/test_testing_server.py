"""Tests of the test doubles: ScriptedOpenAIServer (real OpenAI HTTP path) and ScriptedChatModel."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_rlm.testing import (
    ChatRequest,
    Fault,
    Reply,
    ScriptedChatModel,
    ScriptedOpenAIServer,
    ScriptExhaustedError,
    apply_stop,
    estimate_tokens,
)

CONCURRENT_REQUESTS = 256
CONCURRENT_LATENCY = 0.3
CONCURRENT_BUDGET_SECONDS = 20.0  # serialised would be 77 s; speed lives in benchmarks/
KEEP_ALIVE_BUDGET_SECONDS = 20.0
MIN_PEAK_IN_FLIGHT = 100


# --------------------------------------------------------------------------- helpers


def test_estimate_tokens_is_ceil_chars_over_four() -> None:
    assert [estimate_tokens("x" * n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_apply_stop_cuts_at_earliest_stop_exclusive() -> None:
    assert apply_stop("abc```def</x>", ["</x>", "```"]) == ("abc", True)
    assert apply_stop("abc", ["zz", ""]) == ("abc", False)
    assert apply_stop("abc", None) == ("abc", False)


# --------------------------------------------------------------------------- server: basics


def test_sync_invoke_gets_reply_and_usage() -> None:
    with ScriptedOpenAIServer.from_replies(["hello there"]) as srv:
        assert srv.base_url.startswith("http://127.0.0.1:")
        assert srv.base_url.endswith("/v1")
        msg = srv.chat_model("root").invoke([SystemMessage("sys"), HumanMessage("abcdefgh")])
    assert msg.content == "hello there"
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["input_tokens"] == estimate_tokens("sys") + estimate_tokens(
        "abcdefgh"
    )
    assert msg.usage_metadata["output_tokens"] == estimate_tokens("hello there")
    assert msg.response_metadata["model_name"] == "root"
    assert msg.response_metadata["finish_reason"] == "stop"
    [request] = srv.requests
    assert request.model == "root"
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "sys"),
        ("user", "abcdefgh"),
    ]
    assert request.prompt_chars == len("sys") + len("abcdefgh")


async def test_async_invoke_gets_reply() -> None:
    with ScriptedOpenAIServer.from_replies(["async reply"]) as srv:
        msg = await srv.chat_model("root").ainvoke("hi")
    assert msg.content == "async reply"
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["output_tokens"] == estimate_tokens("async reply")


@pytest.mark.parametrize("keep_alive", [False, True])
def test_streaming_yields_chunks_and_usage(keep_alive: bool) -> None:
    text = "a streamed reply that is longer than one chunk of sixteen chars"
    with ScriptedOpenAIServer.from_replies([text] * 3, keep_alive=keep_alive) as srv:
        llm = srv.chat_model("root")
        chunks = list(llm.stream("hi"))
        assert "".join(str(c.content) for c in llm.stream("again")) == text
        assert llm.invoke("and again").content == text  # same pooled connection if kept alive
        request = srv.requests[0]
    assert len(chunks) > 2
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert merged.content == text
    assert merged.usage_metadata is not None
    assert merged.usage_metadata["output_tokens"] == estimate_tokens(text)
    assert merged.usage_metadata["input_tokens"] == estimate_tokens("hi")
    assert merged.response_metadata["finish_reason"] == "stop"
    assert request.stream and request.include_usage


async def test_async_streaming() -> None:
    with ScriptedOpenAIServer.from_replies(["streamed async"]) as srv:
        parts = [c.content async for c in srv.chat_model("root").astream("hi")]
    assert "".join(str(p) for p in parts) == "streamed async"


def test_stop_sequences_cut_reply_and_are_recorded() -> None:
    reply = "```repl\nprint(1)\n```\nmore text the model would ramble"
    with ScriptedOpenAIServer.from_replies([reply, reply]) as srv:
        llm = srv.chat_model("root")
        msg = llm.invoke("go", stop=["\n```\n"])
        streamed = "".join(str(c.content) for c in llm.stream("go", stop=["print"]))
    assert msg.content == "```repl\nprint(1)"
    assert msg.response_metadata["finish_reason"] == "stop"
    assert streamed == "```repl\n"
    assert srv.requests[0].stop == ("\n```\n",)
    assert srv.responses[0].content == "```repl\nprint(1)"


def test_max_tokens_recorded_and_optionally_truncates() -> None:
    with ScriptedOpenAIServer.from_replies(["x" * 100], truncate_at_max_tokens=True) as srv:
        msg = srv.chat_model("root", max_tokens=5).invoke("hi")
    assert srv.requests[0].max_tokens == 5
    assert msg.content == "x" * 20
    assert msg.response_metadata["finish_reason"] == "length"


def test_models_endpoint_lists_scripted_models() -> None:
    with ScriptedOpenAIServer({"root": lambda r: "a", "sub": lambda r: "b"}) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)
        ids = [m.id for m in client.models.list()]
        client.close()
    assert ids == ["root", "sub"]


def test_default_responder_echoes_last_message() -> None:
    with ScriptedOpenAIServer() as srv:
        assert srv.chat_model().invoke("echo me").content == "echo me"


# --------------------------------------------------------------------------- server: routing


def test_per_model_responders_route_by_model_name() -> None:
    responders = {
        "root": lambda r: f"root saw {r.last_user_message}",
        "sub": lambda r: f"sub #{r.model_index}",
    }
    with ScriptedOpenAIServer(responders) as srv:
        root, sub = srv.chat_model("root"), srv.chat_model("sub")
        assert root.invoke("q").content == "root saw q"
        assert [sub.invoke("x").content for _ in range(2)] == ["sub #0", "sub #1"]
        with pytest.raises(openai.NotFoundError, match=r"model_not_found|does not exist"):
            srv.chat_model("unknown").invoke("x")
    assert [r.model for r in srv.requests_for("sub")] == ["sub", "sub"]


def test_from_replies_per_model_queues() -> None:
    with ScriptedOpenAIServer.from_replies({"root": ["r1", "r2"], "sub": ["s1"]}) as srv:
        root, sub = srv.chat_model("root"), srv.chat_model("sub")
        assert [root.invoke("a").content, sub.invoke("b").content] == ["r1", "s1"]
        assert root.invoke("c").content == "r2"


def test_exhausted_queue_answers_500_and_records_error() -> None:
    with ScriptedOpenAIServer.from_replies(["only"]) as srv:
        llm = srv.chat_model("root")
        llm.invoke("a")
        with pytest.raises(openai.InternalServerError, match="exhausted"):
            llm.invoke("b")
    assert isinstance(srv.errors[0], ScriptExhaustedError)
    assert srv.responses[-1].status == 500


def test_from_rules_regex_predicate_callable_and_default() -> None:
    rules: list[tuple[object, str | Reply | Callable[[ChatRequest], str | Reply]]] = [
        (r"\bsum\b", "SUM"),
        (re.compile("^chunk"), lambda r: f"chunk of {len(r.last_message)}"),
        (lambda r: r.model == "special", Reply(content="SPECIAL")),
    ]
    with ScriptedOpenAIServer.from_rules(rules, default="DEFAULT") as srv:
        llm = srv.chat_model("root")
        assert llm.invoke("please sum it").content == "SUM"
        assert llm.invoke("chunk 123").content == "chunk of 9"
        assert srv.chat_model("special").invoke("zzz").content == "SPECIAL"
        assert llm.invoke("nothing").content == "DEFAULT"


def test_from_rules_without_default_fails_loudly() -> None:
    with ScriptedOpenAIServer.from_rules([("never", "x")]) as srv:
        with pytest.raises(openai.InternalServerError, match="no rule matched"):
            srv.chat_model().invoke("hello")


# --------------------------------------------------------------------------- server: faults


def test_429_then_success_is_retried() -> None:
    with ScriptedOpenAIServer.from_replies(["ok"], fail_first_n=1, fail_status=429) as srv:
        msg = srv.chat_model("root", max_retries=2).invoke("hi")
    assert msg.content == "ok"
    assert [r.status for r in srv.responses] == [429, 200]
    assert srv.request_count == 2


def test_429_without_retries_surfaces_rate_limit_error() -> None:
    with ScriptedOpenAIServer(lambda r: Reply.rate_limited(retry_after=1.5)) as srv:
        with pytest.raises(openai.RateLimitError) as info:
            srv.chat_model().invoke("hi")
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.response.headers["retry-after-ms"] == "1500"


def test_fault_plan_targets_one_model() -> None:
    faults = [Fault(Reply.server_error(503), model="sub", first_n=2)]
    with ScriptedOpenAIServer(lambda r: r.model, faults=faults) as srv:
        assert srv.chat_model("root").invoke("x").content == "root"
        assert srv.chat_model("sub", max_retries=2).invoke("x").content == "sub"
        assert srv.chat_model("sub").invoke("x").content == "sub"  # plan used up
    statuses = [(r.model, r.status) for r in srv.responses]
    assert statuses == [("root", 200), ("sub", 503), ("sub", 503), ("sub", 200), ("sub", 200)]


def test_fault_after_skips_first_requests() -> None:
    fault = Fault(Reply.server_error(500, retry_after=None), after=1, first_n=1)
    with ScriptedOpenAIServer(lambda r: "fine", faults=[fault]) as srv:
        llm = srv.chat_model()
        assert llm.invoke("a").content == "fine"
        with pytest.raises(openai.InternalServerError):
            llm.invoke("b")
        assert llm.invoke("c").content == "fine"


def test_context_length_exceeded_is_bad_request() -> None:
    with ScriptedOpenAIServer(lambda r: Reply.context_length_exceeded(8192, 9000)) as srv:
        with pytest.raises(
            openai.BadRequestError, match=r"context_length_exceeded|maximum context"
        ):
            srv.chat_model("root").invoke("too long")


def test_hanging_reply_times_out_client_and_server_closes_fast() -> None:
    with ScriptedOpenAIServer(lambda r: Reply.hanging()) as srv:
        llm = srv.chat_model("root", timeout=0.3)
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            llm.invoke("hi")
        assert time.monotonic() - started < 3
    closed_at = time.monotonic()
    assert closed_at - started < 5
    assert srv.responses == []


def test_latency_knob_delays_every_request() -> None:
    with ScriptedOpenAIServer(lambda r: "slow", latency=0.2) as srv:
        started = time.monotonic()
        srv.chat_model().invoke("x")
    assert time.monotonic() - started >= 0.2


# --------------------------------------------------------------------------- server: concurrency


@pytest.mark.parametrize(
    ("keep_alive", "budget"),
    # keep-alive costs the *client* (httpx pool probing idle sockets) ~0.3 s more here
    [(False, CONCURRENT_BUDGET_SECONDS), (True, KEEP_ALIVE_BUDGET_SECONDS)],
)
async def test_256_concurrent_requests_are_served_in_parallel(
    keep_alive: bool, budget: float
) -> None:
    def responder(request: ChatRequest) -> Reply:
        return Reply(content=f"answer to {request.last_user_message}", latency=CONCURRENT_LATENCY)

    with ScriptedOpenAIServer({"sub": responder}, keep_alive=keep_alive) as srv:
        llm = srv.chat_model("sub")
        await llm.ainvoke("warm-up")  # client construction is not what we measure
        srv.reset_stats()
        prompts: list[LanguageModelInput] = [f"q{i}" for i in range(CONCURRENT_REQUESTS)]
        started = time.monotonic()
        results = await llm.abatch(prompts, config={"max_concurrency": CONCURRENT_REQUESTS})
        elapsed = time.monotonic() - started
    assert [m.content for m in results] == [f"answer to {p}" for p in prompts]
    assert srv.request_count == CONCURRENT_REQUESTS
    assert elapsed < budget, elapsed
    assert srv.peak_in_flight > MIN_PEAK_IN_FLIGHT, srv.peak_in_flight
    assert srv.in_flight == 0


def test_threaded_sync_clients_are_served_in_parallel() -> None:
    with ScriptedOpenAIServer(lambda r: "ok", latency=0.2) as srv:
        llm = srv.chat_model()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=32) as pool:
            replies = list(pool.map(lambda i: llm.invoke(f"q{i}").content, range(32)))
        elapsed = time.monotonic() - started
    assert replies == ["ok"] * 32
    assert elapsed < 5, elapsed  # serialised would be 6.4 s
    assert srv.peak_in_flight > 16


@pytest.mark.parametrize("keep_alive", [False, True])
def test_close_leaves_no_server_threads(keep_alive: bool) -> None:
    before = set(threading.enumerate())
    with ScriptedOpenAIServer(lambda r: "ok", keep_alive=keep_alive) as srv:
        srv.chat_model().invoke("x")  # with keep-alive this leaves an idle connection open
    leaked = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not [t for t in leaked if not t.daemon]
    assert not [t for t in leaked if "ScriptedOpenAIServer" in t.name]
    assert not [t for t in leaked if "process_request_thread" in t.name]


# --------------------------------------------------------------------------- server: HTTP layer

CONDITION_TIMEOUT = 20.0
"""How long to wait for a server-side condition (a generous bound, not a speed target)."""


def _until(condition: Callable[[], bool], timeout: float = CONDITION_TIMEOUT) -> bool:
    """Wait for ``condition`` on a short interval; False if it never held."""
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while not condition():
            if deadline.wait(0.01):
                return condition()
        return True
    finally:
        timer.cancel()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "::1", "192.168.1.10", "example.com"])
def test_binds_loopback_only(host: str) -> None:
    with pytest.raises(ValueError, match="binds loopback only"):
        ScriptedOpenAIServer(host=host)


def test_client_disconnect_ends_a_hanging_request() -> None:
    with ScriptedOpenAIServer(lambda r: Reply.hanging()) as srv:
        with pytest.raises(openai.APITimeoutError):
            srv.chat_model(timeout=0.3).invoke("hi")
        assert _until(lambda: srv.in_flight == 0), "the server did not see the client leave"
        assert srv.request_count == 1 and srv.responses == []


def test_close_drops_hanging_and_sleeping_requests() -> None:
    errors: list[BaseException] = []
    srv = ScriptedOpenAIServer(
        {"hang": lambda r: Reply.hanging(), "slow": lambda r: Reply(content="x", latency=600)}
    ).start()

    def call(model: str) -> None:
        try:
            srv.chat_model(model, timeout=120).invoke("hi")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(m,)) for m in ("hang", "slow")]
    for thread in threads:
        thread.start()
    assert _until(lambda: srv.in_flight == 2)
    srv.close()
    for thread in threads:
        thread.join(CONDITION_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    assert len(errors) == 2 and all(isinstance(e, openai.APIConnectionError) for e in errors)
    assert srv.responses == []


def test_a_blocking_responder_does_not_hold_up_other_requests() -> None:
    release = threading.Event()

    def blocked(request: ChatRequest) -> str:
        release.wait(CONDITION_TIMEOUT)
        return "late"

    with ScriptedOpenAIServer({"blocked": blocked, "free": lambda r: "now"}) as srv:
        with ThreadPoolExecutor(max_workers=1) as pool:
            late = pool.submit(lambda: srv.chat_model("blocked").invoke("x").content)
            assert _until(lambda: srv.in_flight == 1)
            assert srv.chat_model("free").invoke("y").content == "now"
            assert not late.done()
            release.set()
            assert late.result(CONDITION_TIMEOUT) == "late"


def test_large_request_bodies_are_accepted() -> None:
    prompt = "x" * (3 * 1024 * 1024)  # above aiohttp's 1 MiB default
    with ScriptedOpenAIServer(lambda r: str(r.prompt_chars)) as srv:
        assert srv.chat_model().invoke(prompt).content == str(len(prompt))


# --------------------------------------------------------------------------- fake model


def test_fake_model_sync_replies_usage_and_model_name() -> None:
    model = ScriptedChatModel(replies=["first", "second"], model="sub-model")
    msg = model.invoke([SystemMessage("abcd"), HumanMessage("efghi")])
    assert isinstance(msg, AIMessage)
    assert msg.content == "first"
    assert msg.usage_metadata == {
        "input_tokens": estimate_tokens("abcd") + estimate_tokens("efghi"),
        "output_tokens": estimate_tokens("first"),
        "total_tokens": estimate_tokens("abcd") + estimate_tokens("efghi") + 2,
    }
    assert msg.response_metadata["model_name"] == "sub-model"
    assert model.invoke("again").content == "second"
    assert [c.index for c in model.calls] == [1, 2]
    assert model._llm_type == "scripted-chat"
    with pytest.raises(ScriptExhaustedError):
        model.invoke("one too many")


async def test_fake_model_async_and_latency() -> None:
    model = ScriptedChatModel(responder=lambda msgs: f"n={len(msgs)}", latency=0.1)
    started = time.monotonic()
    results = await asyncio.gather(*(model.ainvoke("x") for _ in range(20)))
    assert time.monotonic() - started < 1.9  # concurrent; serialised would take 2.0 s
    assert {m.content for m in results} == {"n=1"}
    assert model.peak_in_flight > 1


def test_fake_model_thread_safe_under_executor() -> None:
    replies = [f"reply-{i}" for i in range(200)]
    model = ScriptedChatModel(replies=replies)
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda i: model.invoke(f"q{i}").content, range(200)))
    assert sorted(results) == sorted(replies)
    assert sorted(c.index for c in model.calls) == list(range(1, 201))


def test_fake_model_stop_cut_and_recorded() -> None:
    model = ScriptedChatModel(replies=["code\n```\ntrailing"])
    msg = model.invoke("x", stop=["```"])
    assert msg.content == "code\n"
    assert model.calls[0].stop == ("```",)
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["output_tokens"] == estimate_tokens("code\n")


def test_fake_model_raises_on_nth_call() -> None:
    model = ScriptedChatModel(replies=["a", "b", "c"], fail_on_call=2, fail_with=ValueError("boom"))
    assert model.invoke("1").content == "a"
    with pytest.raises(ValueError, match="boom"):
        model.invoke("2")
    assert model.invoke("3").content == "b"
    assert model.call_count == 3


def test_fake_model_failures_mapping_and_cycle() -> None:
    model = ScriptedChatModel(replies=["x", "y"], cycle=True, failures={1: RuntimeError("e1")})
    with pytest.raises(RuntimeError, match="e1"):
        model.invoke("1")
    assert [model.invoke(str(i)).content for i in range(3)] == ["x", "y", "x"]
