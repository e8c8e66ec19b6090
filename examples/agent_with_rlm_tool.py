"""An agent that answers questions about a long document through an RLM tool, traced.

The document is bound to the tool when it is created, so the agent's own model never sees
it: the agent passes only a question, the RLM reads the document with code and sub-calls.

Run it with a real model::

    pip install 'langchain-rlm[langchain]'
    export OPENAI_API_KEY=...
    python examples/agent_with_rlm_tool.py

and, to see the whole tree (agent -> tool -> RLM -> iterations -> sub-calls) in LangSmith::

    export LANGSMITH_TRACING=true LANGSMITH_API_KEY=... LANGSMITH_PROJECT=rlm-agent

Without ``OPENAI_API_KEY`` it runs offline with FAKE scripted models (``--offline`` forces
that), so the printed run tree can be seen anywhere. Either way a callback handler collects
the runs and the script prints the tree with each run's depth and iteration metadata.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from langchain_core.tracers.schemas import Run

from langchain_rlm import RLM
from langchain_rlm.agents import rlm_tool
from langchain_rlm.testing.fake_models import ScriptedChatModel

QUESTION = "Which error code appears most often in the service log, and how often?"
LOG_LINES = 20_000


def make_log() -> str:
    """A synthetic service log of about a megabyte."""
    codes = ["E101", "E202", "E303", "E101", "E404", "E101", "E202"]
    return "\n".join(
        f"2025-06-{1 + i % 28:02d} 10:{i % 60:02d} worker={i % 9} "
        + (f"ERROR code={codes[i % len(codes)]}" if i % 13 == 0 else "INFO ok")
        for i in range(LOG_LINES)
    )


class FakeAgentModel(ScriptedChatModel):
    """FAKE agent model for the offline run: calls the tool once, then reports its answer."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> FakeAgentModel:  # type: ignore[override]
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if results:
            message = AIMessage(content=f"According to the log tool: {results[-1].content}")
        else:
            call = {
                "name": "log_qa",
                "args": {"query": QUESTION},
                "id": "call_1",
                "type": "tool_call",
            }
            message = AIMessage(content="", tool_calls=[call])
        return ChatResult(generations=[ChatGeneration(message=message)])


FAKE_RLM_SCRIPT = [
    "```repl\nimport re\ncodes = re.findall(r'code=(E\\d+)', context)\n"
    "from collections import Counter\ncounts = Counter(codes)\nprint(counts.most_common(3))\n```",
    "```repl\nsummary = llm_query('Say in one sentence: ' + str(counts.most_common(1)))\n"
    "FINAL(summary)\n```",
]


def models(offline: bool) -> tuple[BaseChatModel, BaseChatModel, BaseChatModel]:
    """(agent model, RLM root model, RLM sub-model)."""
    if offline:
        print("(offline: FAKE scripted models, no API calls)\n")
        sub = ScriptedChatModel(model="sub", responder=lambda m: "E101 is the most frequent code.")
        return FakeAgentModel(), ScriptedChatModel(model="root", replies=FAKE_RLM_SCRIPT), sub
    from langchain_openai import ChatOpenAI

    return (
        ChatOpenAI(model="gpt-4o-mini"),
        ChatOpenAI(model="gpt-4o"),
        ChatOpenAI(model="gpt-4o-mini"),
    )


def print_tree(run: Run, indent: int = 0) -> None:
    """One line per run: name, type, depth and iteration metadata."""
    meta = (run.extra or {}).get("metadata", {})
    tags = " ".join(f"{key}={meta[key]}" for key in ("depth", "iteration") if key in meta)
    print(f"{'  ' * indent}{run.name} [{run.run_type}] {tags}")
    for child in sorted(run.child_runs, key=lambda r: r.start_time):
        print_tree(child, indent + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline", action="store_true", help="use FAKE scripted models")
    args = parser.parse_args()
    offline = args.offline or not os.environ.get("OPENAI_API_KEY")
    agent_model, root, sub = models(offline)
    rlm = RLM(root, sub_model=sub, max_iterations=8)
    tool = rlm_tool(
        rlm,
        name="log_qa",
        context=make_log(),
        description="Answers questions about today's service log.",
    )
    agent = create_agent(agent_model, tools=[tool])
    collector = RunCollectorCallbackHandler()
    state = agent.invoke({"messages": [("user", QUESTION)]}, {"callbacks": [collector]})
    print("Answer:", state["messages"][-1].content, "\n")
    print("Run tree:")
    for run in collector.traced_runs:
        print_tree(run)
    rlm.close()


if __name__ == "__main__":
    main()
