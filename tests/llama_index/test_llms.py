"""The model adapters: LlamaIndex LLMs as LangChain chat models, and back."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage
from llama_index.core.base.llms.types import ChatMessage as LIChatMessage
from llama_index.core.base.llms.types import ChatResponse, MessageRole
from llama_index.core.llms import MockLLM

from langchain_rlm import RLM
from langchain_rlm.testing import ScriptedChatModel
from llama_index_rlm import LangChainLLM, LlamaIndexChatModel, RLMQueryEngine, as_chat_model
from llama_index_rlm.llms import apply_stop, to_llama_index_messages, usage_from_response
from tests.llama_index.conftest import ANSWER, CRITICAL_IDS, QUESTION, ROOT_SCRIPT


def test_mock_llm_as_a_chat_model_echoes_through_chat() -> None:
    model = LlamaIndexChatModel(llm=MockLLM())

    reply = model.invoke([SystemMessage("be brief"), HumanMessage("hi there")])

    assert reply.content == "system: be brief\nuser: hi there\nassistant: "
    assert reply.response_metadata["model_name"] == "MockLLM"
    assert reply.usage_metadata is None


def test_roles_are_mapped() -> None:
    messages = to_llama_index_messages(
        [
            SystemMessage("s"),
            HumanMessage("h"),
            AIMessage("a"),
            ChatMessage(role="tool", content="t"),
            ChatMessage(role="narrator", content="n"),
        ]
    )
    assert [(m.role, m.content) for m in messages] == [
        (MessageRole.SYSTEM, "s"),
        (MessageRole.USER, "h"),
        (MessageRole.ASSISTANT, "a"),
        (MessageRole.TOOL, "t"),
        (MessageRole.USER, "n"),
    ]


def test_stop_sequences_cut_the_reply(scripted_llm) -> None:
    llm = scripted_llm(["```repl\nprint(1)\n```\nREPL output:\n1\nFINAL(1)"])
    model = LlamaIndexChatModel(llm=llm)

    reply = model.invoke("go", stop=["\nREPL output", "<|im_end|>"])

    assert reply.content == "```repl\nprint(1)\n```"
    assert apply_stop("abcXdefY", ["Y", "X"]) == "abc"
    assert apply_stop("abc", None) == "abc"


def test_usage_from_raw_and_additional_kwargs(scripted_llm) -> None:
    llm = scripted_llm(["ok"], raw_usage={"prompt_tokens": 11, "completion_tokens": 2}, model="m1")
    reply = LlamaIndexChatModel(llm=llm).invoke("hi")

    assert reply.usage_metadata == {"input_tokens": 11, "output_tokens": 2, "total_tokens": 13}
    assert reply.response_metadata["model_name"] == "m1"
    anthropic_like = ChatResponse(
        message=LIChatMessage(content="x"), raw={"usage": {"input_tokens": 5, "output_tokens": 1}}
    )
    assert usage_from_response(anthropic_like)["input_tokens"] == 5
    kwargs_like = ChatResponse(
        message=LIChatMessage(content="x"),
        additional_kwargs={"prompt_tokens": 3, "completion_tokens": 4},
    )
    assert usage_from_response(kwargs_like)["total_tokens"] == 7
    assert usage_from_response(ChatResponse(message=LIChatMessage(content="x"))) is None


def test_model_window_becomes_the_profile(scripted_llm) -> None:
    from langchain_rlm.models import context_window_chars

    assert LlamaIndexChatModel(llm=scripted_llm([])).profile == {"max_input_tokens": 32_000}
    assert LlamaIndexChatModel(llm=MockLLM()).profile is None  # LlamaIndex's default says nothing
    assert context_window_chars(LlamaIndexChatModel(llm=scripted_llm([]))) == 32_000 * 4


async def test_async_path(scripted_llm) -> None:
    reply = await LlamaIndexChatModel(llm=scripted_llm(["pong"])).ainvoke("ping")
    assert reply.content == "pong"


def test_llama_index_llms_as_root_and_sub_model_of_the_engine(index, scripted_llm) -> None:
    root = scripted_llm(list(ROOT_SCRIPT), model="li-root")
    sub = scripted_llm(["4", "7", "2"], model="li-sub")
    engine = RLMQueryEngine.from_index(index, root, sub)

    response = engine.query(QUESTION)

    assert response.response == ANSWER
    assert {n.node.ref_doc_id for n in response.source_nodes} == CRITICAL_IDS
    usage = response.metadata["rlm"]["usage"]
    assert usage["li-root"]["calls"] == 3
    assert usage["li-sub"]["calls"] == 3
    # no counts in the responses: the RLM's estimate is marked as such
    assert usage["li-root"]["estimated"] is True
    assert any("took down" in p for p in sub.prompts)


def test_mock_llm_as_root_model_runs_end_to_end(corpus) -> None:
    """MockLLM echoes its prompt, so it "writes" the system prompt's example cell
    (``print(len(context))`` / ``print(context[:500])``) and its prose ``FINAL(answer)``.

    ``answer`` is a variable name that is never defined: it is refused every turn (an
    answer is never made up from a name); the repeated cell is not run again, and the run
    ends with the REPL's output."""
    engine = RLMQueryEngine.from_documents(corpus[:20], MockLLM(), max_iterations=2)

    response = engine.query("anything?")

    run = response.metadata["rlm"]
    assert run["repl_history"][0]["code"] == "print(len(context))\nprint(context[:500])"
    assert run["repl_history"][0]["stdout"].startswith("20\n[{'id': 'doc-0000'")
    assert run["finished_reason"] == "max_iterations"
    assert response.response != "answer"
    # the same echoed cell is run once; the best-effort answer is the end of its output
    assert len(run["repl_history"]) == 1
    assert response.response and response.response in run["repl_history"][0]["stdout"]
    # the 500 printed characters hold the first documents whole: they are the sources
    assert [n.node.node_id for n in response.source_nodes][:2] == ["doc-0000", "doc-0001"]


def test_langchain_llm_drives_llama_index_code() -> None:
    chat = ScriptedChatModel(replies=["one", "two", "three"], model="lc")
    llm = LangChainLLM(chat_model=chat)

    assert llm.chat([LIChatMessage(role="user", content="hi")]).message.content == "one"
    assert llm.complete("hi").text == "two"
    assert "".join(r.delta or "" for r in llm.stream_complete("hi")) == "three"
    assert llm.metadata.model_name == "lc"
    assert llm.metadata.is_chat_model is True
    assert [type(m).__name__ for m in chat.calls[0].messages] == ["HumanMessage"]


def test_as_chat_model_wraps_unwraps_and_passes_through() -> None:
    chat = ScriptedChatModel(replies=[], model="lc")
    assert isinstance(as_chat_model(MockLLM()), LlamaIndexChatModel)
    assert as_chat_model(LangChainLLM(chat_model=chat)) is chat
    assert as_chat_model(chat) is chat
    assert as_chat_model("openai:gpt-4o-mini") == "openai:gpt-4o-mini"
    assert as_chat_model(None) is None
    assert isinstance(RLM(as_chat_model(MockLLM())).model, LlamaIndexChatModel)
