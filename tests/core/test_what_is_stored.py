"""What checkpoints and traces hold (issue 11, finding 6): no more than what a model saw."""

from __future__ import annotations

import pickle
from typing import Any

from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph

from langchain_rlm import RLM
from langchain_rlm.testing import ScriptedChatModel
from tests.conftest import repl

MARKER = "SUBSET-MARKER-7f3a"


def _checkpoint_bytes(saver: InMemorySaver) -> int:
    return len(pickle.dumps((dict(saver.storage), dict(saver.writes), dict(saver.blobs))))


def _run_printing(chars: int) -> tuple[int, Any]:
    saver = InMemorySaver()
    root = ScriptedChatModel(
        replies=[repl(f"print('y' * {chars})"), repl("print(1)"), "FINAL(done)"], model="root"
    )
    rlm = RLM(root, checkpointer=saver, max_output_chars=1_000)
    result = rlm.invoke({"query": "q?", "context": "c"}, {"configurable": {"thread_id": "t"}})
    rlm.close()
    return _checkpoint_bytes(saver), result


def test_checkpoints_do_not_grow_with_what_a_cell_printed() -> None:
    small, _ = _run_printing(1_000)
    large, result = _run_printing(500_000)
    assert large < small * 1.2  # the 500 kB output is not in any checkpoint
    step = result.repl_history[0]
    assert len(step.stdout) == 500_001  # the result still has the whole output
    assert step.stdout_chars == 500_001


def test_the_checkpointed_step_keeps_what_the_model_saw_with_length_and_digest() -> None:
    saver = InMemorySaver()
    root = ScriptedChatModel(replies=[repl("print('z' * 5000)"), "FINAL(done)"], model="root")
    rlm = RLM(root, checkpointer=saver, max_output_chars=1_000)
    config = {"configurable": {"thread_id": "t"}}
    rlm.invoke({"query": "q?", "context": "c"}, config)
    step = rlm.graph.get_state(config).values["repl_history"][0]
    assert step["stdout"].startswith("z" * 1_000) and "z" * 1_001 not in step["stdout"]
    assert step["stdout_chars"] == 5_001 and len(step["stdout_sha256"]) == 64
    rlm.close()


def test_recursive_lm_traces_describe_the_subset_never_its_text() -> None:
    subset = f"{MARKER} " + "data " * 50
    root = ScriptedChatModel(
        replies=[repl("print(recursive_lm('what is it?', context[5000:]))"), "FINAL(done)"],
        model="root",
    )
    sub = ScriptedChatModel(
        responder=lambda m: repl("FINAL('seen ' + str(len(context)))") if len(m) > 1 else "leaf",
        model="sub",
    )
    collector = RunCollectorCallbackHandler()
    data = {"query": "q?", "context": "c" * 5000 + subset}
    RLM(root, sub, max_depth=2).invoke(data, {"callbacks": [collector]})
    runs = []
    stack = list(collector.traced_runs)
    while stack:
        run = stack.pop()
        runs.append(run)
        stack.extend(run.child_runs)
    recursive = [run for run in runs if run.name == "recursive_lm"]
    assert recursive and recursive[0].inputs["context_subset"]["size"] == len(subset)
    for run in runs:
        if run.name in ("recursive_lm", "RLM"):  # a child sees its own context, as a model does
            assert MARKER not in repr(run.inputs), run.name


def test_an_rlm_inside_a_graph_does_not_write_into_the_callers_checkpoints() -> None:
    root = ScriptedChatModel(replies=[repl("print('inner')"), "FINAL(inner-answer)"], model="root")
    rlm = RLM(root)

    def ask(state: MessagesState) -> dict[str, Any]:
        answer = rlm.invoke({"query": "q?", "context": "c"}).answer
        return {"messages": [("ai", answer)]}

    saver = InMemorySaver()
    builder = StateGraph(MessagesState)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    agent = builder.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "agent"}}
    out = agent.invoke({"messages": [("user", "go")]}, config)
    assert out["messages"][-1].content == "inner-answer"
    assert set(saver.storage["agent"]) == {""}  # only the agent's own namespace
    stored = repr(dict(saver.storage)) + repr(dict(saver.writes)) + repr(dict(saver.blobs))
    assert "repl_history" not in stored  # no RLM state in the agent's checkpoints
