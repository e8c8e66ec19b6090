"""JSONL export of a run (ids, parents, types, timings, usage; the context referenced,
never copied), reading it back, and the HTML page's content (escaped, self-contained).
Models are FAKE (scripted)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from obs_helpers import BATCH, BATCH_ROOT_REPLIES, DEPTH2_ROOT_REPLIES, sub_model

from langchain_rlm import RLM, RLMResult
from langchain_rlm.testing.fake_models import ScriptedChatModel
from langchain_rlm.trajectory import (
    read_trajectory,
    render_html,
    trajectory_records,
    write_trajectory,
)

HIDDEN_MARKER = "ZEBRA-MARKER-DEEP-IN-THE-CONTEXT"
"""Text placed far beyond the context preview: it must never reach the trajectory."""

HOSTILE_OUTPUT = "<script>alert(1)</script><b>bold</b>"


def _context() -> str:
    return "fruit basket\n" * 2_000 + HIDDEN_MARKER


def _batched_result() -> RLMResult:
    replies = [
        BATCH_ROOT_REPLIES[0],
        f"```repl\nprint({HOSTILE_OUTPUT!r})\n```",
        BATCH_ROOT_REPLIES[2],
    ]
    rlm = RLM(ScriptedChatModel(model="root", replies=replies), sub_model())
    return rlm.invoke({"query": "How many fruits?", "context": _context()})


def _depth2_result() -> RLMResult:
    rlm = RLM(
        ScriptedChatModel(model="root", replies=DEPTH2_ROOT_REPLIES), sub_model(), max_depth=2
    )
    return rlm.invoke({"query": "Count", "context": _context()})


def _check_links(records: list[dict]) -> None:
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "ids must be unique"
    known = set(ids)
    assert records[0]["type"] == "run" and records[0]["parent_id"] is None
    for record in records[1:]:
        assert record["parent_id"] in known, record
        assert record["type"] in {"iteration", "step", "subcall", "child_run"}


def test_records_have_ids_parents_timings_and_usage(tmp_path: Path) -> None:
    result = _batched_result()
    path = write_trajectory(
        result,
        tmp_path / "run.jsonl",
        query="How many fruits?",
        context_description={"source": "test", "chars": len(_context())},
    )
    records = read_trajectory(path)
    _check_links(records)
    run = records[0]
    assert run["query"] == "How many fruits?" and run["answer"] == "42 fruits"
    assert run["context_description"] == {"source": "test", "chars": len(_context())}
    assert run["iterations"] == 3 and run["total_tokens"] == result.total_tokens > 0
    assert set(run["usage"]) == {"root", "sub"}
    kinds = [r["type"] for r in records]
    assert kinds.count("iteration") == 3 and kinds.count("step") == 3
    assert kinds.count("subcall") == len(BATCH)
    by_id = {r["id"]: r for r in records}
    for call in (r for r in records if r["type"] == "subcall"):
        step = by_id[call["parent_id"]]
        assert step["type"] == "step" and step["iteration"] == 1
        assert call["usage"]["total_tokens"] > 0 and call["seconds"] >= 0
        assert call["response"].startswith("leaf:")
    steps = [r for r in records if r["type"] == "step"]
    assert steps[1]["stdout"].strip() == HOSTILE_OUTPUT
    assert all(s["seconds"] >= 0 for s in steps)
    assert "```repl" in by_id["it1"]["reply"]
    assert path.read_text(encoding="utf-8").count("\n") == len(records)


def test_context_is_referenced_never_copied(tmp_path: Path) -> None:
    path = write_trajectory(
        _depth2_result(),
        tmp_path / "run.jsonl",
        query="Count",
        context_description={"chars": len(_context())},
    )
    text = path.read_text(encoding="utf-8")
    assert HIDDEN_MARKER not in text
    assert len(text) < len(_context()) / 2


def test_child_rlm_is_exported_recursively() -> None:
    records = trajectory_records(_depth2_result(), query="Count")
    _check_links(records)
    by_id = {r["id"]: r for r in records}
    children = [r for r in records if r["type"] == "child_run"]
    assert len(children) == 1
    child = children[0]
    assert child["depth"] == 1 and child["answer"] == "4" and child["iterations"] == 2
    assert by_id[child["parent_id"]]["kind"] == "recursive_lm"
    inner_calls = [r for r in records if r["type"] == "subcall" and r["depth"] == 1]
    assert len(inner_calls) == 2
    for call in inner_calls:  # call -> step -> iteration -> child run
        iteration = by_id[by_id[call["parent_id"]]["parent_id"]]
        assert iteration["type"] == "iteration" and iteration["parent_id"] == child["id"]


def test_read_trajectory_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "run", "id": "run"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        read_trajectory(bad)
    headless = tmp_path / "headless.jsonl"
    headless.write_text('{"type": "step", "id": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="first record must be the run"):
        read_trajectory(headless)


def test_html_is_self_contained_and_escaped() -> None:
    page = render_html(trajectory_records(_batched_result(), query="How <many> fruits?"))
    assert page.startswith("<!DOCTYPE html>")
    assert HOSTILE_OUTPUT not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "How &lt;many&gt; fruits?" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no external resources"
    assert "@import" not in page and "url(" not in page
    assert page.count("<script>") == 1  # the viewer's own inline script only
    assert page.count('class="subcall"') == len(BATCH)
    assert 'class="tl-row"' in page and "iteration 3" in page


def test_html_shows_the_child_tree() -> None:
    page = render_html(trajectory_records(_depth2_result(), query="Count"))
    assert 'class="child-run"' in page and "Child RLM" in page
    assert page.count('class="subcall"') == 3  # the recursive_lm call and the child's 2


def test_render_html_rejects_non_trajectories() -> None:
    with pytest.raises(ValueError):
        render_html([{"type": "step", "id": "x"}])
    assert json.loads(json.dumps(trajectory_records(_batched_result())))  # JSON-able
