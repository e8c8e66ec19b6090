"""The run tree an RLM produces for LangSmith, captured offline and asserted.

Every RLM call must give one tree: ``RLM`` at the root; ``generate_code`` and ``execute``
per iteration; each sub-call as an ``llm_query`` / ``recursive_lm`` run wrapping the
model run, under the ``execute`` step of its iteration (parallel ones too, never
flattened to the root); a child RLM as a nested ``RLM`` run; and ``depth`` and
``iteration`` metadata on every run. Models are FAKE (scripted); the sandbox is the default.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from langchain_core.tracers.langchain import LangChainTracer, wait_for_all_tracers
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from langchain_core.tracers.schemas import Run
from obs_helpers import (
    BATCH,
    BATCH_ROOT_REPLIES,
    DEPTH2_ROOT_REPLIES,
    metadata,
    named,
    parents,
    render_tree,
    sub_model,
    walk,
)

from langchain_rlm import RLM
from langchain_rlm.testing.fake_models import ScriptedChatModel

SUB_LATENCY = 0.05
"""Seconds each FAKE sub-call sleeps, so a batch really overlaps in time."""


def _single_root(collector: RunCollectorCallbackHandler) -> Run:
    assert len(collector.traced_runs) == 1, [r.name for r in collector.traced_runs]
    root = collector.traced_runs[0]
    assert root.name == "RLM"
    return root


def _assert_metadata_everywhere(root: Run) -> None:
    missing = [
        r.name for r in walk(root) if "depth" not in metadata(r) or "iteration" not in metadata(r)
    ]
    assert missing == [], f"runs without depth/iteration metadata: {missing}\n{render_tree(root)}"


def _assert_iteration_steps(root: Run, depth: int, iterations: int) -> None:
    for node in ("generate_code", "execute"):
        found = sorted(metadata(r)["iteration"] for r in named(root, node, depth=depth))
        assert found == list(range(1, iterations + 1)), (node, found, render_tree(root))


def _check_batched_tree(root: Run, sub: ScriptedChatModel) -> None:
    tree = render_tree(root)
    meta = metadata(root)
    assert (meta["depth"], meta["iteration"]) == (0, 0)
    _assert_metadata_everywhere(root)
    _assert_iteration_steps(root, depth=0, iterations=3)
    parent_of = parents(root)
    execute_1 = named(root, "execute", depth=0, iteration=1)[0]
    batch_runs = named(root, "llm_query", iteration=1)
    assert len(batch_runs) == len(BATCH), tree
    for run in batch_runs:
        assert parent_of[run.id] is execute_1, tree
        assert metadata(run)["depth"] == 0
        assert [c.run_type for c in run.child_runs] == ["llm"], tree
        assert metadata(run.child_runs[0])["iteration"] == 1
    prompts = sorted(str(r.inputs.get("prompt")) for r in batch_runs)
    assert prompts == sorted(BATCH)
    single = named(root, "llm_query", iteration=2)
    assert len(single) == 1 and parent_of[single[0].id] is named(root, "execute", iteration=2)[0]
    assert all(parent_of[r.id] is not root for r in named(root, "llm_query")), tree
    for generate in named(root, "generate_code", depth=0):
        models = [c for c in generate.child_runs if c.run_type == "llm"]
        assert (
            len(models) == 1 and metadata(models[0])["iteration"] == metadata(generate)["iteration"]
        )
    assert sub.peak_in_flight > 1, "the batch did not run in parallel"


def test_run_tree_depth1_with_batched_subcalls() -> None:
    sub = sub_model(latency=SUB_LATENCY)
    rlm = RLM(ScriptedChatModel(model="root", replies=BATCH_ROOT_REPLIES), sub)
    collector = RunCollectorCallbackHandler()
    result = rlm.invoke(
        {"query": "How many fruits?", "context": "apples pears"}, {"callbacks": [collector]}
    )
    assert result.answer == "42 fruits"
    _check_batched_tree(_single_root(collector), sub)


async def test_run_tree_depth1_with_batched_subcalls_async() -> None:
    sub = sub_model(latency=SUB_LATENCY)
    rlm = RLM(ScriptedChatModel(model="root", replies=BATCH_ROOT_REPLIES), sub)
    collector = RunCollectorCallbackHandler()
    result = await rlm.ainvoke(
        {"query": "How many fruits?", "context": "apples pears"}, {"callbacks": [collector]}
    )
    assert result.answer == "42 fruits"
    _check_batched_tree(_single_root(collector), sub)


def test_run_tree_depth2_nests_child_rlm() -> None:
    rlm = RLM(
        ScriptedChatModel(model="root", replies=DEPTH2_ROOT_REPLIES),
        sub_model(latency=SUB_LATENCY),
        max_depth=2,
    )
    collector = RunCollectorCallbackHandler()
    result = rlm.invoke(
        {"query": "Count them", "context": "fruit basket"}, {"callbacks": [collector]}
    )
    assert result.answer == "answer: 4"
    root = _single_root(collector)
    tree = render_tree(root)
    _assert_metadata_everywhere(root)
    _assert_iteration_steps(root, depth=0, iterations=2)
    parent_of = parents(root)
    recursive = named(root, "recursive_lm", depth=0, iteration=1)
    assert len(recursive) == 1, tree
    assert parent_of[recursive[0].id] is named(root, "execute", depth=0, iteration=1)[0]
    children = [c for c in recursive[0].child_runs if c.name == "RLM"]
    assert len(children) == 1, tree
    child = children[0]
    assert (metadata(child)["depth"], metadata(child)["iteration"]) == (1, 0)
    assert metadata(child)["parent_iteration"] == 1
    assert [r.name for r in walk(root)].count("RLM") == 2
    _assert_iteration_steps(child, depth=1, iterations=2)
    inner = named(child, "llm_query", depth=1, iteration=1)
    assert len(inner) == 2, tree
    child_execute_1 = named(child, "execute", depth=1, iteration=1)[0]
    assert all(parent_of[r.id] is child_execute_1 for r in inner), tree
    assert all(r.child_runs and r.child_runs[0].run_type == "llm" for r in inner)
    # nothing of the child leaks to the top level's own steps
    assert named(root, "llm_query", depth=0) == []


class FakeLangSmithClient:
    """FAKE LangSmith client: records what LangChainTracer would send, sends nothing."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.updated: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def create_run(self, **kwargs: Any) -> None:
        with self._lock:
            self.created.append(kwargs)

    def update_run(self, run_id: Any, **kwargs: Any) -> None:
        with self._lock:
            self.updated.append({"id": run_id, **kwargs})


def test_langsmith_tracer_receives_iteration_metadata() -> None:
    client = FakeLangSmithClient()
    tracer = LangChainTracer(client=client, project_name="rlm-tests")  # type: ignore[arg-type]
    rlm = RLM(ScriptedChatModel(model="root", replies=BATCH_ROOT_REPLIES), sub_model())
    rlm.invoke({"query": "How many fruits?", "context": "apples"}, {"callbacks": [tracer]})
    wait_for_all_tracers()
    final = {str(u["id"]): u for u in client.updated}
    assert len(final) == len(client.created) > 0
    roots = [c for c in client.created if c.get("parent_run_id") is None and c["name"] == "RLM"]
    assert len(roots) == 1
    by_name: dict[str, list[int]] = {}
    for update in final.values():
        meta = (update.get("extra") or {}).get("metadata", {})
        assert "depth" in meta and "iteration" in meta, update["name"]
        by_name.setdefault(update["name"], []).append(meta["iteration"])
    assert sorted(by_name["generate_code"]) == [1, 2, 3]
    assert sorted(by_name["execute"]) == [1, 2, 3]
    assert sorted(by_name["llm_query"]) == [1, 1, 1, 1, 2]


@pytest.mark.parametrize("max_depth", [1, 2])
def test_one_tree_per_call(max_depth: int) -> None:
    replies = DEPTH2_ROOT_REPLIES if max_depth == 2 else BATCH_ROOT_REPLIES
    rlm = RLM(
        ScriptedChatModel(model="root", replies=replies * 2), sub_model(), max_depth=max_depth
    )
    collector = RunCollectorCallbackHandler()
    rlm.invoke({"query": "q1", "context": "c"}, {"callbacks": [collector]})
    rlm.invoke({"query": "q2", "context": "c"}, {"callbacks": [collector]})
    assert [r.name for r in collector.traced_runs] == ["RLM", "RLM"]
    assert collector.traced_runs[0].trace_id != collector.traced_runs[1].trace_id
