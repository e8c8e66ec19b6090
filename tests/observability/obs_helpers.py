"""Shared helpers of the observability tests: run-tree walking and scripted (FAKE) models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.tracers.schemas import Run

from langchain_rlm.testing.fake_models import ScriptedChatModel, message_text

BATCH = ["count apples", "count pears", "count plums", "count figs"]
"""Four prompts for llm_query_batched."""

BATCH_ROOT_REPLIES = [
    "```repl\nparts = llm_query_batched(" + repr(BATCH) + ")\nprint(parts)\n```",
    "```repl\nextra = llm_query('total?')\nprint(extra)\n```",
    "```repl\nFINAL('42 fruits')\n```",
]
"""Root script (depth 1): a batch of 4 in iteration 1, one call in 2, FINAL in 3."""

DEPTH2_ROOT_REPLIES = [
    "```repl\nchild = recursive_lm('How many fruits?', 'apple pear plum fig')\nprint(child)\n```",
    "```repl\nFINAL('answer: ' + child)\n```",
]
"""Root script (depth 2): one child RLM in iteration 1, FINAL in 2."""


def leaf_or_child_responder(messages: list[BaseMessage]) -> str:
    """FAKE sub-model: as a child RLM's root it batches 2 calls then answers; else a leaf."""
    if messages and messages[0].type == "system":
        if len(messages) <= 2:
            return "```repl\nr = llm_query_batched(['inner a', 'inner b'])\nprint(r)\n```"
        return "```repl\nFINAL('4')\n```"
    return "leaf:" + message_text(messages[-1])[:12]


def sub_model(latency: float = 0.0) -> ScriptedChatModel:
    """The FAKE sub-model used across the tests."""
    return ScriptedChatModel(model="sub", responder=leaf_or_child_responder, latency=latency)


def walk(run: Run) -> Iterator[Run]:
    """The run and all its descendants, depth first, children in start order."""
    yield run
    for child in sorted(run.child_runs, key=lambda r: r.start_time):
        yield from walk(child)


def metadata(run: Run) -> dict[str, Any]:
    return dict((run.extra or {}).get("metadata", {}))


def find(root: Run, predicate: Callable[[Run], bool]) -> list[Run]:
    return [run for run in walk(root) if predicate(run)]


def named(root: Run, name: str, **meta: Any) -> list[Run]:
    """Runs called ``name`` whose metadata has every ``meta`` item."""
    return find(
        root,
        lambda r: r.name == name and all(metadata(r).get(k) == v for k, v in meta.items()),
    )


def parents(root: Run) -> dict[Any, Run]:
    """run id -> parent run."""
    table: dict[Any, Run] = {}
    for run in walk(root):
        for child in run.child_runs:
            table[child.id] = run
    return table


def render_tree(root: Run) -> str:
    """An indented outline of the tree (for assertion messages)."""
    lines: list[str] = []

    def go(run: Run, depth: int) -> None:
        meta = metadata(run)
        lines.append(f"{'  ' * depth}{run.name} d={meta.get('depth')} i={meta.get('iteration')}")
        for child in sorted(run.child_runs, key=lambda r: r.start_time):
            go(child, depth + 1)

    go(root, 0)
    return "\n".join(lines)
