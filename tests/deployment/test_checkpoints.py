"""Checkpointers (InMemorySaver, SqliteSaver): size per iteration, multi-turn, resume API.

The models are FAKES: ScriptedOpenAIServer on 127.0.0.1 driven by ``scenario.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver

from langchain_rlm import RLM, RLMInputError
from langchain_rlm.testing.openai_server import ScriptedOpenAIServer
from tests.deployment import scenario

MB = 1_000_000
SIZE_TOLERANCE = 0.10
"""Bytes per iteration may differ by at most this share between 1 MB and 50 MB."""
SMALL_CONTEXT = 20_000


@pytest.fixture
def models() -> Iterator[ScriptedOpenAIServer]:
    with scenario.scripted_server() as server:
        yield server


@pytest.fixture(params=["memory", "sqlite"])
def checkpointer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield InMemorySaver()
        return
    connection = sqlite3.connect(tmp_path / "ckpt.sqlite", check_same_thread=False)
    yield SqliteSaver(connection)
    connection.close()


def _rlm(models: ScriptedOpenAIServer, checkpointer: Any) -> RLM:
    return RLM(
        models.chat_model(scenario.ROOT_MODEL),
        sub_model=models.chat_model(scenario.SUB_MODEL),
        checkpointer=checkpointer,
    )


def _config(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


def test_checkpoint_bytes_per_iteration_do_not_grow_with_the_context(
    models: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    small = scenario.measure_checkpoints(1 * MB, tmp_path / "1mb.sqlite", models)
    large = scenario.measure_checkpoints(50 * MB, tmp_path / "50mb.sqlite", models)
    assert small["answer_ok"] and large["answer_ok"]
    assert small["iterations"] == large["iterations"] == scenario.TURN1_ITERATIONS
    assert small["checkpoints"] == large["checkpoints"]
    ratio = large["bytes_per_iteration"] / small["bytes_per_iteration"]
    assert abs(ratio - 1) <= SIZE_TOLERANCE, (small, large)
    # Far below the context itself: a description and records, not the text.
    assert large["bytes"] < MB


def test_follow_up_reuses_repl_variables(models: ScriptedOpenAIServer, checkpointer: Any) -> None:
    context = scenario.make_context(SMALL_CONTEXT)
    with _rlm(models, checkpointer) as rlm:
        first = rlm.invoke({"query": scenario.TURN1_QUERY, "context": context}, _config("t"))
        second = rlm.invoke({"query": scenario.TURN2_QUERY}, _config("t"))
    assert first.answer == scenario.expected_turn1_answer(context)
    assert second.answer == f"follow-up: {first.answer} from 2 parts"
    assert second.repl_history[-1].error is None
    assert second.thread_id == "t" and second.iterations == 1


def test_follow_up_after_recreating_the_rlm_replays_the_variables(
    models: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    context = scenario.make_context(SMALL_CONTEXT)
    db = tmp_path / "threads.sqlite"
    with sqlite3.connect(db, check_same_thread=False) as connection:
        with _rlm(models, SqliteSaver(connection)) as rlm:
            first = rlm.invoke({"query": scenario.TURN1_QUERY, "context": context}, _config("t"))
    connection.close()
    sub_calls_before = len(models.requests_for(scenario.SUB_MODEL))
    connection = sqlite3.connect(db, check_same_thread=False)
    with _rlm(models, SqliteSaver(connection)) as rlm:
        second = rlm.invoke({"query": scenario.TURN2_QUERY, "context": context}, _config("t"))
    connection.close()
    assert second.answer == f"follow-up: {first.answer} from 2 parts"
    # The replay answered turn 1's sub-calls from the records: no sub-model request.
    assert len(models.requests_for(scenario.SUB_MODEL)) == sub_calls_before


def test_resume_of_a_finished_thread_returns_its_answer_without_model_calls(
    models: ScriptedOpenAIServer, checkpointer: Any
) -> None:
    context = scenario.make_context(SMALL_CONTEXT)
    with _rlm(models, checkpointer) as rlm:
        first = rlm.invoke({"query": scenario.TURN1_QUERY, "context": context}, _config("t"))
        calls = models.request_count
        again = rlm.resume({"context": context}, _config("t"))
    assert again.answer == first.answer
    assert again.iterations == first.iterations
    assert models.request_count == calls


def test_resume_errors_name_the_fix(models: ScriptedOpenAIServer) -> None:
    with _rlm(models, InMemorySaver()) as rlm:
        with pytest.raises(RLMInputError, match="no checkpoint to resume"):
            rlm.invoke({"context": "x"}, _config("never-started"))
        with pytest.raises(RLMInputError, match="thread id"):
            rlm.resume({"context": "x"})
    with RLM(models.chat_model(scenario.ROOT_MODEL)) as plain:
        with pytest.raises(RLMInputError, match="needs a 'query'"):
            plain.invoke({"context": "x"})
        with pytest.raises(RLMInputError, match="checkpointer"):
            plain.resume({"context": "x"}, _config("t"))
