"""``rlm_tool``: an RLM as a LangChain tool that an agent built with
``langchain.agents.create_agent`` calls. The agent's model is a FAKE that emits a tool
call (ScriptedChatModel has no ``bind_tools``), the RLM's models are FAKE (scripted)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent  # the "langchain" extra (in dev)
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from obs_helpers import walk

from langchain_rlm import RLM
from langchain_rlm.agents import rlm_tool
from langchain_rlm.testing.fake_models import ScriptedChatModel

DOCUMENT = "Clause 12: either party may terminate with 90 days notice.\n" * 500
RLM_SCRIPT = ["```repl\nimport re\nm = re.search(r'(\\d+) days', context)\nFINAL(m.group(0))\n```"]


class FakeToolCallingModel(ScriptedChatModel):
    """FAKE agent model: first asks the tool ``tool_args``, then repeats the tool's answer."""

    tool_name: str = "contract_qa"
    tool_args: dict[str, Any] = {}

    def bind_tools(self, tools: Any, **kwargs: Any) -> FakeToolCallingModel:  # type: ignore[override]
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        self._begin(messages, stop, kwargs)
        self._end()
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if results:
            message = AIMessage(content=f"The contract says: {results[-1].content}")
        else:
            call = {
                "name": self.tool_name,
                "args": self.tool_args,
                "id": "call_1",
                "type": "tool_call",
            }
            message = AIMessage(content="", tool_calls=[call])
        return ChatResult(generations=[ChatGeneration(message=message)])


def _rlm() -> tuple[RLM, ScriptedChatModel]:
    root = ScriptedChatModel(model="root", replies=RLM_SCRIPT)
    return RLM(root), root


def test_bound_context_tool_takes_only_the_query() -> None:
    rlm, root = _rlm()
    tool = rlm_tool(rlm, name="contract_qa", context=DOCUMENT)
    assert isinstance(tool, StructuredTool) and isinstance(tool, BaseTool)
    assert set(tool.args) == {"query"}
    assert "already loaded" in tool.description
    assert tool.invoke({"query": "Notice period?"}) == "90 days"
    assert DOCUMENT[:200] not in root.calls[0].prompt_text  # only a preview-sized part


def test_unbound_tool_takes_query_and_document_and_callables_are_read_per_call() -> None:
    rlm, _ = _rlm()
    tool = rlm_tool(rlm)
    assert tool.name == "long_context_qa" and set(tool.args) == {"query", "document"}
    assert tool.invoke({"query": "Notice?", "document": "notice is 30 days"}) == "30 days"
    reads: list[int] = []

    def load() -> str:
        reads.append(1)
        return "notice: 7 days"

    lazy = rlm_tool(RLM(ScriptedChatModel(model="root", replies=RLM_SCRIPT)), context=load)
    assert reads == []
    assert lazy.invoke({"query": "Notice?"}) == "7 days" and reads == [1]


def test_rlm_errors_come_back_as_text() -> None:
    tool = rlm_tool(_rlm()[0])
    assert tool.invoke({"query": "   ", "document": "x"}).startswith("ERROR: ")
    with pytest.raises(ValueError, match="identifier"):
        rlm_tool(_rlm()[0], name="bad name")


def test_agent_calls_the_tool_and_gets_the_rlm_answer() -> None:
    rlm, root = _rlm()
    tool = rlm_tool(rlm, name="contract_qa", context=DOCUMENT)
    agent_model = FakeToolCallingModel(tool_args={"query": "What is the notice period?"})
    agent = create_agent(agent_model, tools=[tool])
    collector = RunCollectorCallbackHandler()
    state = agent.invoke(
        {"messages": [("user", "How long is the notice period?")]}, {"callbacks": [collector]}
    )
    tool_messages = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    assert [m.content for m in tool_messages] == ["90 days"]
    assert state["messages"][-1].content == "The contract says: 90 days"
    assert root.call_count == 1 and agent_model.call_count == 2
    assert DOCUMENT not in "".join(str(m.content) for m in state["messages"])
    # the RLM's run nests under the agent's tool run
    (trace,) = collector.traced_runs
    tool_run = next(r for r in walk(trace) if r.name == "contract_qa")
    assert [c.name for c in tool_run.child_runs] == ["RLM"]
