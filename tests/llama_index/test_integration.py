"""The engine inside LlamaIndex and LangChain machinery: instrumentation, tracing, tools, agents."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from langchain_core.tracers.schemas import Run
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.tools import QueryEngineTool

from langchain_rlm.testing import ScriptedChatModel
from llama_index_rlm import RLMQueryEngine, RLMStepEvent
from tests.llama_index.conftest import ANSWER, QUESTION, ROOT_SCRIPT, sub_reply


def make_engine(index: Any, **kwargs: Any) -> RLMQueryEngine:
    root = ScriptedChatModel(replies=list(ROOT_SCRIPT), model="root")
    sub = ScriptedChatModel(responder=lambda m: sub_reply(str(m[-1].content)), model="sub")
    return RLMQueryEngine.from_index(index, root, sub, **kwargs)


class CollectingEventHandler(BaseEventHandler):
    """Keeps every instrumentation event it is given."""

    events: list[BaseEvent] = []

    @classmethod
    def class_name(cls) -> str:
        return "CollectingEventHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def instrumentation():
    """An event handler and a span handler on LlamaIndex's root dispatcher, removed after."""
    root = get_dispatcher()
    events = CollectingEventHandler(events=[])
    spans = SimpleSpanHandler()
    root.add_event_handler(events)
    root.add_span_handler(spans)
    yield events, spans
    root.event_handlers.remove(events)
    root.span_handlers.remove(spans)


def span_names(spans: SimpleSpanHandler) -> list[str]:
    return [span.id_.split("-")[0] for span in spans.completed_spans]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_query_dispatches_events_and_spans(index, instrumentation, mode) -> None:
    events, spans = instrumentation
    engine = make_engine(index)

    response = engine.query(QUESTION) if mode == "sync" else await engine.aquery(QUESTION)

    assert response.response == ANSWER
    names = [e.class_name() for e in events.events]
    assert names[0] == "QueryStartEvent"
    assert names[-1] == "QueryEndEvent"
    assert events.events[-1].response is response  # type: ignore[attr-defined]
    method = "query" if mode == "sync" else "aquery"
    assert f"RLMQueryEngine.{method}" in span_names(spans)
    assert f"RLMQueryEngine._{method}" in span_names(spans)
    # every RLM step became an event inside the engine's _query span
    steps = [e for e in events.events if isinstance(e, RLMStepEvent)]
    kinds = [e.step["type"] for e in steps]
    assert kinds.count("code") == 3
    assert kinds.count("subcall_start") == 3
    assert kinds.count("subcall_end") == 3
    assert kinds[-1] == "answer"
    assert all(e.span_id and e.span_id.startswith(f"RLMQueryEngine._{method}") for e in steps)


def all_runs(runs: list[Run]) -> list[Run]:
    found: list[Run] = []
    stack = list(runs)
    while stack:
        run = stack.pop()
        found.append(run)
        stack.extend(run.child_runs)
    return found


def test_langchain_config_passes_through_to_the_rlm_runs(index) -> None:
    collector = RunCollectorCallbackHandler()
    engine = make_engine(index, config={"callbacks": [collector], "tags": ["li-pipeline"]})

    assert engine.query(QUESTION).response == ANSWER

    runs = all_runs(collector.traced_runs)
    by_name: dict[str, list[Run]] = {}
    for run in runs:
        by_name.setdefault(run.name, []).append(run)
    assert [r.name for r in collector.traced_runs] == ["RLM"]
    assert len(by_name["generate_code"]) == 3
    assert len(by_name["execute"]) == 3
    assert len(by_name["llm_query"]) == 3
    for name in ("RLM", "generate_code", "execute", "llm_query"):
        assert all("li-pipeline" in run.tags for run in by_name[name]), name


def test_with_config_adds_per_query_tags_and_keeps_the_engine_config(index) -> None:
    collector = RunCollectorCallbackHandler()
    base = make_engine(index, config={"tags": ["engine"]})
    engine = base.with_config({"callbacks": [collector], "tags": ["request-7"]})

    assert engine.query(QUESTION).response == ANSWER

    (top,) = collector.traced_runs
    assert top.name == "RLM"
    assert {"engine", "request-7"} <= set(top.tags)
    assert base.config.get("callbacks") is None


def test_nested_in_a_langchain_run_the_rlm_is_a_child_run(index) -> None:
    from langchain_core.runnables import RunnableLambda

    collector = RunCollectorCallbackHandler()
    engine = make_engine(index)
    pipeline = RunnableLambda(lambda q: engine.query(q).response, name="pipeline")

    assert pipeline.invoke(QUESTION, {"callbacks": [collector]}) == ANSWER

    (top,) = collector.traced_runs
    assert top.name == "pipeline"
    assert [child.name for child in top.child_runs] == ["RLM"]


def test_query_engine_tool_returns_the_answer(index) -> None:
    tool = QueryEngineTool.from_defaults(
        make_engine(index), name="incidents", description="Answers questions about incidents."
    )

    output = tool.call(QUESTION)

    assert output.content == ANSWER
    assert output.tool_name == "incidents"
    assert {n.node.ref_doc_id for n in output.raw_output.source_nodes} == {
        "doc-0037",
        "doc-0281",
        "doc-0554",
    }


async def test_query_engine_tool_async(index) -> None:
    tool = QueryEngineTool.from_defaults(make_engine(index), name="incidents")

    output = await tool.acall(QUESTION)

    assert output.content == ANSWER


async def test_react_agent_calls_the_engine_as_a_tool(index, scripted_llm) -> None:
    from llama_index.core.agent.workflow import ReActAgent

    tool = QueryEngineTool.from_defaults(
        make_engine(index), name="incidents", description="Answers questions about incidents."
    )
    agent_llm = scripted_llm(
        [
            "Thought: I need the incident records.\nAction: incidents\n"
            f'Action Input: {{"input": "{QUESTION}"}}',
            f"Thought: I can answer without using any more tools.\nAnswer: The tool says: {ANSWER}.",
        ]
    )
    agent = ReActAgent(tools=[tool], llm=agent_llm)

    result = await agent.run(user_msg=QUESTION)

    assert str(result) == f"The tool says: {ANSWER}."
    assert [c.tool_name for c in result.tool_calls] == ["incidents"]
    assert result.tool_calls[0].tool_output.content == ANSWER
    # the agent's second prompt carried the engine's answer as the observation
    assert f"Observation: {ANSWER}" in agent_llm.prompts[1]
