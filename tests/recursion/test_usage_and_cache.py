"""Usage per model and per depth (reported or estimated); memo; LangChain's LLM cache."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.messages.utils import count_tokens_approximately

from langchain_rlm import RLM
from langchain_rlm.testing import ScriptedChatModel
from langchain_rlm.usage import CHARS_PER_TOKEN
from tests.recursion.conftest import repl


def test_usage_comes_from_reported_usage_metadata(server_factory) -> None:
    """Over the wire: per model and per depth, the server's own token counts."""
    code = repl("FINAL('|'.join(llm_query_batched(['a' * 40, 'b' * 80])))")
    server = server_factory({"root": lambda r: code, "sub": lambda r: "z" * 12})
    result = RLM(server.chat_model("root"), server.chat_model("sub")).invoke(
        {"query": "q?", "context": "c"}
    )
    sent = {r.request_index: r for r in server.responses}
    root_tokens = [
        (sent[q.index].prompt_tokens, sent[q.index].completion_tokens)
        for q in server.requests_for("root")
    ]
    sub_tokens = [
        (sent[q.index].prompt_tokens, sent[q.index].completion_tokens)
        for q in server.requests_for("sub")
    ]
    assert result.usage["root"].input_tokens == sum(p for p, _ in root_tokens)
    assert result.usage["root"].output_tokens == sum(c for _, c in root_tokens)
    assert result.usage["sub"].input_tokens == sum(p for p, _ in sub_tokens) == 10 + 20
    assert result.usage["sub"].output_tokens == 3 + 3
    assert not result.usage["sub"].estimated and not result.usage["root"].estimated
    assert result.usage_by_depth[1].calls == 2 and result.usage_by_depth[0].calls == 1
    records = result.repl_history[0].sub_calls
    assert [(r.input_tokens, r.output_tokens) for r in records] == [(10, 3), (20, 3)]
    assert result.total_tokens == sum(u.total_tokens for u in result.usage.values())


def test_missing_usage_is_estimated_and_marked() -> None:
    """A provider reporting no usage: LangChain's ``count_tokens_approximately`` for the
    prompt, ceil(chars / 4) for the reply, flagged ``estimated``."""
    root = ScriptedChatModel(replies=[repl("FINAL(llm_query('x' * 41))")], model="root")
    sub = GenericFakeChatModel(messages=iter([AIMessage(content="y" * 9)]))
    result = RLM(root, sub).invoke({"query": "q?", "context": "c"})
    name = next(n for n in result.usage if n != "root")
    usage = result.usage[name]
    assert usage.estimated is True
    prompt_tokens = count_tokens_approximately([HumanMessage("x" * 41)])
    assert (usage.input_tokens, usage.output_tokens) == (prompt_tokens, -(-9 // CHARS_PER_TOKEN))
    assert result.usage["root"].estimated is False
    assert (
        result.usage_by_depth[1].estimated is True and result.usage_by_depth[0].estimated is False
    )


def test_identical_sub_calls_are_memoised_within_a_run() -> None:
    code1 = repl("print(llm_query_batched(['same', 'same', 'other']))")
    code2 = repl("FINAL(llm_query('same'))")
    root = ScriptedChatModel(replies=[code1, code2], model="root")
    sub = ScriptedChatModel(responder=lambda m: f"reply {len(sub.calls)}", model="sub")
    result = RLM(root, sub).invoke({"query": "q?", "context": "c"})
    assert sub.call_count == 2  # 'same' once, 'other' once
    first, second = result.repl_history
    assert [c.cached for c in first.sub_calls] == [False, True, False]
    assert first.sub_calls[0].response == first.sub_calls[1].response
    assert (
        second.sub_calls[0].cached and second.sub_calls[0].response == first.sub_calls[0].response
    )
    assert result.answer == first.sub_calls[0].response
    assert result.usage["sub"].calls == 2


def test_memoize_false_sends_every_call() -> None:
    root = ScriptedChatModel(replies=[repl("FINAL(str(llm_query_batched(['s', 's'])))")])
    sub = ScriptedChatModel(responder=lambda m: "r", model="sub")
    RLM(root, sub, memoize=False).invoke({"query": "q?", "context": "c"})
    assert sub.call_count == 2


@pytest.fixture
def llm_cache() -> Iterator[InMemoryCache]:
    previous = get_llm_cache()
    cache = InMemoryCache()
    set_llm_cache(cache)
    yield cache
    set_llm_cache(previous)


@pytest.mark.usefixtures("llm_cache")
def test_langchain_llm_cache_serves_a_second_run(server_factory) -> None:
    """With set_llm_cache(InMemoryCache()), a repeated run sends no request at all."""
    code = repl("FINAL('|'.join(llm_query_batched(['alpha', 'beta'])))")
    server = server_factory({"root": lambda r: code, "sub": lambda r: r.last_user_message.upper()})
    rlm = RLM(server.chat_model("root"), server.chat_model("sub"))
    first = rlm.invoke({"query": "q?", "context": "c"})
    sub_requests = len(server.requests_for("sub"))
    total_requests = server.request_count
    second = rlm.invoke({"query": "q?", "context": "c"})
    assert first.answer == second.answer == "ALPHA|BETA"
    assert sub_requests == 2
    assert len(server.requests_for("sub")) == sub_requests  # served from the cache
    assert server.request_count == total_requests  # the root call too (same conversation)


def test_a_models_own_cache_serves_repeated_sub_prompts(server_factory) -> None:
    """``ChatOpenAI(cache=InMemoryCache())`` on the sub-model only."""
    code = repl("FINAL(llm_query('gamma'))")
    server = server_factory({"root": lambda r: code, "sub": lambda r: "G"})
    sub = server.chat_model("sub", cache=InMemoryCache())
    rlm = RLM(server.chat_model("root"), sub)
    for _ in range(2):
        assert rlm.invoke({"query": "q?", "context": "c"}).answer == "G"
    assert len(server.requests_for("sub")) == 1
    assert len(server.requests_for("root")) == 2
