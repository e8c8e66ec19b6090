"""RLM as a LangChain Runnable: LCEL, async, batch, input checks, prompt size."""

from __future__ import annotations

import asyncio
import copy
import re

import pytest
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda

from langchain_rlm import RLM, AnswerEvent, CodeEvent, OutputEvent, RLMInputError, RLMResult
from langchain_rlm.testing import ScriptedChatModel, ScriptedOpenAIServer
from langchain_rlm.testing.fake_models import message_text
from tests.conftest import ModelFactory, repl

SECRET_CODE = repl("import re\nprint(re.search(r'code=(\\w+)', context)[1])")


def _context(secret: str) -> str:
    return f"noise {'lorem ' * 200}\ncode={secret}\n{'ipsum ' * 200}"


def test_lcel_composition(models: ModelFactory) -> None:
    pair = models([SECRET_CODE, "FINAL(k9)"])
    rlm = RLM(pair.root, pair.sub)
    loader = RunnableLambda(lambda path: {"query": f"code in {path}?", "context": _context("k9")})
    chain = loader | rlm | (lambda r: r.answer)
    assert chain.invoke("doc.txt") == "k9"


def test_answer_only_runnable() -> None:
    root = ScriptedChatModel(replies=["FINAL(yes)"], model="root")
    assert RLM(root).answer_only().invoke({"query": "q?", "context": "x"}) == "yes"


def test_answer_only_in_a_streamed_chain() -> None:
    root = ScriptedChatModel(replies=[SECRET_CODE, "FINAL(k9)"], model="root")
    chunks = list(RLM(root).answer_only().stream({"query": "q?", "context": _context("k9")}))
    assert chunks == ["k9"]


def test_stream_yields_typed_events_in_order() -> None:
    root = ScriptedChatModel(replies=[SECRET_CODE, "FINAL(k9)"], model="root")
    events = list(RLM(root).stream({"query": "q?", "context": _context("k9")}))
    kinds = [type(e) for e in events]
    assert kinds == [CodeEvent, OutputEvent, AnswerEvent]
    assert events[1].stdout == "k9\n"  # type: ignore[attr-defined]
    final = events[-1]
    assert isinstance(final, AnswerEvent) and final.result is not None
    assert final.result.answer == "k9"


async def test_ainvoke(models: ModelFactory) -> None:
    pair = models([SECRET_CODE, "FINAL(k9)"])
    result = await RLM(pair.root, pair.sub).ainvoke({"query": "q?", "context": _context("k9")})
    assert result.answer == "k9"
    assert result.iterations == 2


async def test_astream() -> None:
    root = ScriptedChatModel(replies=[SECRET_CODE, "FINAL(k9)"], model="root")
    events = [e async for e in RLM(root).astream({"query": "q?", "context": _context("k9")})]
    assert [e.type for e in events] == ["code", "output", "answer"]


def _per_query_root(messages: list) -> str:  # type: ignore[type-arg]
    """FAKE root: reads the run's own query and answers with the REPL's output."""
    first_user = message_text(messages[1])
    run = re.search(r"Query: run (\d+)", first_user)[1]  # type: ignore[index]
    if len(messages) == 2:
        return repl(
            f"import re\nfound_{run} = re.search(r'code=(\\w+)', context)[1]\nprint(found_{run})"
        )
    output = re.search(r"```\n(.*?)\n```", message_text(messages[-1]), re.S)[1]  # type: ignore[index]
    return f"FINAL(run {run}: {output})"


def test_batch_of_8_runs_has_no_cross_talk() -> None:
    root = ScriptedChatModel(responder=_per_query_root, model="root", latency=0.02)
    rlm = RLM(root)
    inputs = [{"query": f"run {i}", "context": _context(f"s{i}x")} for i in range(8)]
    results = rlm.batch(inputs, config={"max_concurrency": 8})
    assert [r.answer for r in results] == [f"run {i}: s{i}x" for i in range(8)]
    for i, result in enumerate(results):
        assert result.repl_history[0].stdout == f"s{i}x\n"
        assert result.total_calls == 2


async def test_abatch_of_8_over_the_wire_has_no_cross_talk() -> None:
    def responder(request):  # type: ignore[no-untyped-def]
        class _M:
            def __init__(self, content: str) -> None:
                self.content = content

        return _per_query_root([_M(m.content) for m in request.messages])

    with ScriptedOpenAIServer({"root": responder}, latency=0.2) as server:
        rlm = RLM(server.chat_model("root"))
        inputs = [{"query": f"run {i}", "context": _context(f"w{i}y")} for i in range(8)]
        results = await rlm.abatch(inputs)
        assert server.peak_in_flight >= 2
    assert [r.answer for r in results] == [f"run {i}: w{i}y" for i in range(8)]


def test_result_is_an_rlmresult_and_str_is_the_answer() -> None:
    root = ScriptedChatModel(replies=["FINAL(hello)"], model="root")
    result = RLM(root).invoke({"query": "q?", "context": ""})
    assert isinstance(result, RLMResult)
    assert str(result) == "hello"
    assert result.usage["root"].calls == 1
    assert result.usage["root"].input_tokens > 0


def test_documents_become_records_with_metadata() -> None:
    code = repl(
        "print([(d['id'], d['metadata']['source']) for d in context if 'cat' in d['text']])"
    )
    root = ScriptedChatModel(replies=[code, "FINAL(ok)"], model="root")
    docs = [
        Document(page_content="a cat", metadata={"source": "a.txt"}, id="d1"),
        Document(page_content="a dog", metadata={"source": "b.txt"}, id="d2"),
    ]
    result = RLM(root).invoke({"query": "cats?", "context": docs})
    assert result.repl_history[0].stdout == "[('d1', 'a.txt')]\n"


def test_dict_context() -> None:
    code = repl("print(sorted(context), context['b'][1])")
    root = ScriptedChatModel(replies=[code, "FINAL(ok)"], model="root")
    result = RLM(root).invoke({"query": "q?", "context": {"a": 1, "b": [1, 2]}})
    assert result.repl_history[0].stdout == "['a', 'b'] 2\n"


def test_the_callers_context_is_not_mutated() -> None:
    context = [{"text": "keep me", "tags": ["x"]}, "plain"]
    snapshot = copy.deepcopy(context)
    code = repl(
        "context[0]['text'] = 'changed'\ncontext[0]['tags'].append('y')\ncontext.append(1)\nprint(len(context))"
    )
    root = ScriptedChatModel(replies=[code, "FINAL(ok)"], model="root")
    result = RLM(root).invoke({"query": "q?", "context": context})
    assert result.repl_history[0].stdout == "3\n"
    assert context == snapshot


# -- bad input: clear errors, before any model call ----------------------------------------
@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"context": "x"}, "needs a 'query'"),
        ({"query": "", "context": "x"}, "non-empty str"),
        ({"query": "   ", "context": "x"}, "non-empty str"),
        ({"query": 42, "context": "x"}, "non-empty str"),
        ({"query": "q?"}, "needs a 'context'"),
        ("just a string", "must be a dict"),
    ],
)
def test_bad_input_is_refused_before_any_model_call(payload: object, fragment: str) -> None:
    root = ScriptedChatModel(replies=["FINAL(x)"], model="root")
    with pytest.raises(RLMInputError, match=re.escape(fragment)):
        RLM(root).invoke(payload)  # type: ignore[arg-type]
    assert root.calls == []


@pytest.mark.parametrize("context", [object(), b"bytes", {1, 2}, [object()], {"k": object()}])
def test_unsupported_context_types_name_the_fix(context: object) -> None:
    root = ScriptedChatModel(replies=["FINAL(x)"], model="root")
    with pytest.raises(TypeError, match=r"pass a str, a list|decode it first"):
        RLM(root).invoke({"query": "q?", "context": context})
    assert root.calls == []


@pytest.mark.parametrize("model", ["gpt-4o", "nonsense:model-x", ":x", 42])
def test_unknown_model_strings_are_refused(model: object) -> None:
    with pytest.raises(
        (ValueError, TypeError),
        match=r"provider:model|provider LangChain knows|langchain-rlm\[langchain\]",
    ):
        RLM(model)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_iterations": 0},
        {"max_iterations": -1},
        {"max_depth": 0},
        {"max_llm_calls": -5},
        {"max_tokens": 0},
        {"max_cost": -1.0},
        {"timeout": -3},
        {"max_concurrency": 0},
        {"max_output_chars": -1},
        {"cell_timeout": 0},
        {"max_retries": -1},
    ],
)
def test_negative_or_zero_limits_are_refused(kwargs: dict[str, object]) -> None:
    root = ScriptedChatModel(replies=["FINAL(x)"], model="root")
    name = next(iter(kwargs))
    with pytest.raises(RLMInputError, match=name):
        RLM(root, **kwargs)  # type: ignore[arg-type]


def test_tool_names_may_not_shadow_repl_functions() -> None:
    root = ScriptedChatModel(replies=["FINAL(x)"], model="root")

    def llm_query(prompt: str) -> str:
        return prompt

    with pytest.raises(RLMInputError, match="clashes with a REPL function"):
        RLM(root, tools=[llm_query])


def test_user_tools_are_described_and_callable() -> None:
    def lookup_price(item: str) -> float:
        """Price of an item in USD."""
        return {"apple": 0.5}.get(item, 0.0)

    root = ScriptedChatModel(
        replies=[repl("print(lookup_price('apple'))"), "FINAL(0.5)"], model="root"
    )
    result = RLM(root, tools=[lookup_price]).invoke({"query": "price?", "context": ""})
    assert result.repl_history[0].stdout == "0.5\n"
    system = message_text(root.calls[0].messages[0])
    assert "lookup_price(item: str) -> float" in system
    assert "Price of an item in USD." in system


def test_first_root_prompt_stays_small_for_a_50_mb_context() -> None:
    with ScriptedOpenAIServer({"root": lambda request: "FINAL(done)"}) as server:
        rlm = RLM(server.chat_model("root"))
        result = rlm.invoke({"query": "What is in here?", "context": "x" * 50_000_000})
        first = server.requests_for("root")[0]
    assert result.answer == "done"
    assert first.prompt_chars < 8_000
    assert "50,000,000" in first.prompt_text


def test_async_run_can_be_awaited_concurrently_with_others() -> None:
    root = ScriptedChatModel(responder=_per_query_root, model="root")
    rlm = RLM(root)

    async def main() -> list[str]:
        runs = [rlm.ainvoke({"query": f"run {i}", "context": _context(f"a{i}")}) for i in range(4)]
        return [r.answer for r in await asyncio.gather(*runs)]

    assert asyncio.run(main()) == [f"run {i}: a{i}" for i in range(4)]


def test_as_tool_takes_query_and_context_and_returns_the_answer() -> None:
    root = ScriptedChatModel(replies=[SECRET_CODE, "FINAL(k9)"], model="root")
    tool = RLM(root).as_tool(name="long_doc_qa", description="Answers questions about a document.")
    assert set(tool.args) == {"query", "context"}
    assert tool.invoke({"query": "code?", "context": _context("k9")}) == "k9"


def test_input_schema_names_query_and_context() -> None:
    schema = RLM(ScriptedChatModel(replies=[], model="root")).get_input_jsonschema()
    definition = schema["$defs"]["RLMInput"] if "$defs" in schema else schema
    assert definition["required"] == ["query"]
    assert set(definition["properties"]) == {"query", "context"}


@pytest.mark.parametrize(("model_name", "small"), [("qwen2.5-coder-0.5b", True), ("root", False)])
def test_auto_prompt_style_gives_the_embedded_small_model_the_worked_example(
    model_name: str, small: bool
) -> None:
    # the small model's answers are verified once: it repeats its answer and is believed
    root = ScriptedChatModel(replies=["FINAL(x)", "FINAL(x)"], model=model_name)
    RLM(root).invoke({"query": "q?", "context": "abc"})
    system = message_text(root.calls[0].messages[0])
    assert ("Which city hosted the chess final?" in system) is small


def test_no_model_means_the_default_chat_models(monkeypatch: pytest.MonkeyPatch) -> None:
    root = ScriptedChatModel(replies=["FINAL(local)"] * 2, model="qwen2.5-coder-0.5b")
    sub = ScriptedChatModel(replies=[], model="sub")
    import langchain_rlm.local as local

    monkeypatch.setattr(local, "default_chat_models", lambda: (root, sub))  # FAKE models
    rlm = RLM()
    assert (rlm.model, rlm.sub_model) == (root, sub)
    assert rlm.invoke({"query": "q?", "context": "c"}).answer == "local"
