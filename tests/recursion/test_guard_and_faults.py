"""Sub-prompt size guard, provider context overflows, transient and permanent faults."""

from __future__ import annotations

import pytest

from langchain_rlm import RLM, RLMRootCallError
from langchain_rlm.testing import ScriptedChatModel
from langchain_rlm.testing.openai_server import Fault, Reply
from tests.recursion.conftest import FAST_BACKOFF, repl

CATCH = (
    "try:\n"
    "    out = llm_query({prompt})\n"
    "except Exception as e:\n"
    "    out = 'caught: ' + str(e)\n"
    "FINAL(out)"
)


def _catching(prompt: str) -> str:
    return repl(CATCH.format(prompt=prompt))


def test_configured_sub_prompt_chars_guard() -> None:
    root = ScriptedChatModel(replies=[_catching("'x' * 201")], model="root")
    sub = ScriptedChatModel(responder=lambda m: "never", model="sub")
    result = RLM(root, sub, sub_prompt_chars=200).invoke({"query": "q?", "context": "c"})
    assert sub.call_count == 0
    assert "201 characters" in result.answer and "Split it into smaller chunks" in result.answer


def test_guard_uses_the_models_profile() -> None:
    root = ScriptedChatModel(replies=[_catching("'x' * 1000")], model="root")
    sub = ScriptedChatModel(responder=lambda m: "never", model="sub")
    sub.profile = {"max_input_tokens": 100}  # about 400 characters, 90 % usable
    result = RLM(root, sub).invoke({"query": "q?", "context": "c"})
    assert sub.call_count == 0
    assert "about 360" in result.answer and "llm_query_batched" in result.answer


def test_guard_uses_the_known_window_of_a_model_name() -> None:
    root = ScriptedChatModel(replies=[_catching("'x' * 40_000")], model="root")
    sub = ScriptedChatModel(responder=lambda m: "never", model="qwen2.5-coder-0.5b")
    result = RLM(root, sub).invoke({"query": "q?", "context": "c"})
    assert sub.call_count == 0 and "40,000 characters" in result.answer


@pytest.mark.parametrize("entry", ["invoke", "ainvoke"])
async def test_provider_context_length_exceeded_is_an_item_error(
    entry: str, server_factory
) -> None:
    code = repl("out = llm_query_batched(['small', 'HUGE']); FINAL(' / '.join(out))")
    server = server_factory(
        {
            "root": lambda r: code,
            "sub": lambda r: (
                Reply.context_length_exceeded() if "HUGE" in r.last_user_message else "fine"
            ),
        }
    )
    rlm = RLM(server.chat_model("root"), server.chat_model("sub"), retry_backoff=FAST_BACKOFF)
    data = {"query": "q?", "context": "c"}
    result = rlm.invoke(data) if entry == "invoke" else await rlm.ainvoke(data)
    small, huge = result.answer.split(" / ")
    assert small == "fine"
    assert huge.startswith("ERROR: the prompt is too long for the sub-model")
    assert "Split it into smaller chunks" in huge
    assert len(server.requests_for("sub")) == 2  # an overflow is never retried


def test_root_context_overflow_after_the_first_turn_finalizes(server_factory) -> None:
    server = server_factory(
        {
            "root": lambda r: (
                repl("answer = 'kept'") if r.model_index == 0 else Reply.context_length_exceeded()
            )
        }
    )
    result = RLM(server.chat_model("root"), retry_backoff=FAST_BACKOFF).invoke(
        {"query": "q?", "context": "c"}
    )
    assert result.finished_reason == "context_overflow"
    assert result.answer == "kept"


@pytest.mark.parametrize("status", [429, 500, 503])
@pytest.mark.parametrize("entry", ["invoke", "ainvoke"])
async def test_transient_sub_call_faults_are_retried(
    status: int, entry: str, server_factory
) -> None:
    fault = Reply.rate_limited(0.01) if status == 429 else Reply.server_error(status, 0.01)
    server = server_factory(
        {"root": lambda r: repl("FINAL(llm_query('hi'))"), "sub": lambda r: "hello"},
        faults=[Fault(reply=fault, model="sub", first_n=2)],
    )
    rlm = RLM(server.chat_model("root"), server.chat_model("sub"), retry_backoff=FAST_BACKOFF)
    data = {"query": "q?", "context": "c"}
    result = rlm.invoke(data) if entry == "invoke" else await rlm.ainvoke(data)
    assert result.answer == "hello"
    assert len(server.requests_for("sub")) == 3
    assert result.usage["sub"].calls == 1  # one completed call ...
    assert result.usage["sub"].failed_calls == 2  # ... and two failed attempts, all counted


def test_transient_root_faults_are_retried(server_factory) -> None:
    server = server_factory(
        {"root": lambda r: "FINAL(done)"},
        faults=[Fault(reply=Reply.server_error(502, 0.01), model="root", first_n=2)],
    )
    result = RLM(server.chat_model("root"), retry_backoff=FAST_BACKOFF).invoke(
        {"query": "q?", "context": "c"}
    )
    assert result.answer == "done"
    assert len(server.requests_for("root")) == 3


def test_a_timed_out_sub_call_is_retried(server_factory) -> None:
    """A request that hangs past the client timeout is a transient fault."""
    server = server_factory(
        {"root": lambda r: repl("FINAL(llm_query('hi'))"), "sub": lambda r: "after timeout"},
        faults=[Fault(reply=Reply.hanging(), model="sub", first_n=1)],
    )
    sub = server.chat_model("sub", timeout=0.3)
    result = RLM(server.chat_model("root"), sub, retry_backoff=FAST_BACKOFF).invoke(
        {"query": "q?", "context": "c"}
    )
    assert result.answer == "after timeout"
    assert len(server.requests_for("sub")) == 2


def test_retries_run_out_into_an_item_error(server_factory) -> None:
    server = server_factory(
        {"root": lambda r: _catching("'hi'"), "sub": lambda r: "never"},
        faults=[Fault(reply=Reply.server_error(500, 0.01), model="sub", first_n=10)],
    )
    rlm = RLM(
        server.chat_model("root"), server.chat_model("sub"), max_retries=2, retry_backoff=0.01
    )
    result = rlm.invoke({"query": "q?", "context": "c"})
    assert result.answer.startswith("caught: ") and "after 3 attempts" in result.answer
    assert len(server.requests_for("sub")) == 3


@pytest.mark.parametrize("entry", ["invoke", "ainvoke"])
async def test_one_retry_layer_with_the_sdks_default_retries(entry: str, server_factory) -> None:
    """ChatOpenAI left at the SDK's 2 retries: still 3 requests for max_retries=2, not 9."""
    server = server_factory(
        {"root": lambda r: _catching("'hi'"), "sub": lambda r: "never"},
        faults=[Fault(reply=Reply.server_error(500, 0.001), model="sub", first_n=100)],
    )
    sub = server.chat_model("sub", max_retries=2)
    rlm = RLM(server.chat_model("root"), sub, max_retries=2, retry_backoff=FAST_BACKOFF)
    data = {"query": "q?", "context": "c"}
    result = rlm.invoke(data) if entry == "invoke" else await rlm.ainvoke(data)
    assert "after 3 attempts" in result.answer
    assert len(server.requests_for("sub")) == 3
    assert result.usage["sub"].failed_calls == 3
    assert sub.root_client.max_retries == 2  # the user's model is untouched


def test_permanent_root_fault_raises_a_clear_error(server_factory) -> None:
    server = server_factory({"root": lambda r: Reply.error(404, "The model `root` does not exist")})
    with pytest.raises(RLMRootCallError, match=r"root model failed at depth 0.*404"):
        RLM(server.chat_model("root"), retry_backoff=FAST_BACKOFF).invoke(
            {"query": "q?", "context": "c"}
        )
    assert len(server.requests_for("root")) == 1  # not retried


def test_transient_root_faults_that_persist_raise_after_retries(server_factory) -> None:
    server = server_factory(
        {"root": lambda r: "FINAL(x)"},
        faults=[Fault(reply=Reply.server_error(503, 0.01), model="root", first_n=10)],
    )
    with pytest.raises(RLMRootCallError, match="after 2 attempts"):
        RLM(server.chat_model("root"), max_retries=1, retry_backoff=0.01).invoke(
            {"query": "q?", "context": "c"}
        )
