"""``RLM.stream`` / ``astream`` yield typed step events live, in a sensible order, and
``astream_events(version="v2")`` shows them as ``on_custom_event`` named ``rlm_step``.
Models are FAKE (scripted)."""

from __future__ import annotations

import time
from typing import Any

from obs_helpers import BATCH, BATCH_ROOT_REPLIES, DEPTH2_ROOT_REPLIES, sub_model

from langchain_rlm import (
    RLM,
    AnswerEvent,
    CodeEvent,
    OutputEvent,
    RLMEvent,
    RLMResult,
    SubCallEndEvent,
    SubCallStartEvent,
)
from langchain_rlm.testing.fake_models import ScriptedChatModel

SLOW_SUB_SECONDS = 0.3
"""Latency of the FAKE sub-model in the liveness test."""

EVENT_TYPES = {
    "code": CodeEvent,
    "output": OutputEvent,
    "subcall_start": SubCallStartEvent,
    "subcall_end": SubCallEndEvent,
    "answer": AnswerEvent,
}


def _batched_rlm(latency: float = 0.0) -> RLM:
    return RLM(ScriptedChatModel(model="root", replies=BATCH_ROOT_REPLIES), sub_model(latency))


def _assert_order(events: list[RLMEvent], *, iterations: int, subcalls: int) -> None:
    for event in events:
        assert isinstance(event, EVENT_TYPES[event.type]), event
    assert isinstance(events[-1], AnswerEvent) and isinstance(events[-1].result, RLMResult)
    assert [e.type for e in events].count("answer") == 1
    top = [e for e in events if e.depth == 0 and e.type in ("code", "output")]
    # each iteration: its code, then its output, iterations in order
    assert [(e.iteration, e.type) for e in top] == [
        (i, kind) for i in range(1, iterations + 1) for kind in ("code", "output")
    ]
    starts = {e.id: index for index, e in enumerate(events) if isinstance(e, SubCallStartEvent)}
    ends = {e.id: index for index, e in enumerate(events) if isinstance(e, SubCallEndEvent)}
    assert len(starts) == len(ends) == subcalls
    assert starts.keys() == ends.keys()
    assert all(starts[key] < ends[key] for key in starts)
    outputs = {
        e.iteration: i for i, e in enumerate(events) if isinstance(e, OutputEvent) and e.depth == 0
    }
    codes = {
        e.iteration: i for i, e in enumerate(events) if isinstance(e, CodeEvent) and e.depth == 0
    }
    for event in events:
        if isinstance(event, SubCallStartEvent | SubCallEndEvent) and event.depth == 0:
            index = events.index(event)
            assert codes[event.iteration] < index < outputs[event.iteration], event


def test_stream_yields_typed_events_in_order() -> None:
    events = list(_batched_rlm().stream({"query": "How many?", "context": "fruit"}))
    _assert_order(events, iterations=3, subcalls=len(BATCH) + 1)
    answer = events[-1]
    assert isinstance(answer, AnswerEvent) and answer.answer == "42 fruits"
    assert answer.result is not None and answer.result.iterations == 3
    first_batch = [e for e in events if isinstance(e, SubCallStartEvent) and e.iteration == 1]
    assert sorted(e.prompt_preview for e in first_batch) == sorted(BATCH)
    output_1 = next(e for e in events if isinstance(e, OutputEvent) and e.iteration == 1)
    assert output_1.sub_calls == len(BATCH) and "leaf:" in output_1.stdout


async def test_astream_yields_typed_events_in_order() -> None:
    events = [e async for e in _batched_rlm().astream({"query": "How many?", "context": "fruit"})]
    _assert_order(events, iterations=3, subcalls=len(BATCH) + 1)
    assert events[-1].result is not None and events[-1].result.answer == "42 fruits"


def test_stream_is_live_not_buffered() -> None:
    rlm = _batched_rlm(latency=SLOW_SUB_SECONDS)
    started = time.monotonic()
    arrivals: list[tuple[str, float]] = []
    for event in rlm.stream({"query": "How many?", "context": "fruit"}):
        arrivals.append((event.type, time.monotonic() - started))
    first_code = next(t for kind, t in arrivals if kind == "code")
    first_output = next(t for kind, t in arrivals if kind == "output")
    end = arrivals[-1][1]
    # the code of iteration 1 arrives before its slow sub-calls finish
    assert first_code < first_output - SLOW_SUB_SECONDS / 2, arrivals
    assert end - first_code > SLOW_SUB_SECONDS, arrivals


def test_stream_reports_child_rlm_events_with_depth() -> None:
    rlm = RLM(
        ScriptedChatModel(model="root", replies=DEPTH2_ROOT_REPLIES), sub_model(), max_depth=2
    )
    events = list(rlm.stream({"query": "Count", "context": "basket"}))
    child = [e for e in events if e.depth == 1]
    assert {e.type for e in child} >= {"code", "output", "subcall_start", "subcall_end"}
    outer = next(e for e in events if isinstance(e, SubCallStartEvent) and e.depth == 0)
    outer_end = next(e for e in events if isinstance(e, SubCallEndEvent) and e.depth == 0)
    assert outer.kind == "recursive_lm"
    assert events.index(outer) < events.index(child[0]) < events.index(outer_end)
    assert events[-1].type == "answer" and events[-1].answer == "answer: 4"


async def test_astream_events_v2_shows_rlm_step_custom_events() -> None:
    steps: list[dict[str, Any]] = []
    async for event in _batched_rlm().astream_events(
        {"query": "How many?", "context": "fruit"}, version="v2"
    ):
        if event["event"] == "on_custom_event":
            assert event["name"] == "rlm_step"
            steps.append(event["data"])
    types = [s["type"] for s in steps]
    assert types[0] == "code" and types[-1] == "answer"
    assert types.count("subcall_start") == types.count("subcall_end") == len(BATCH) + 1
    assert types.count("code") == types.count("output") == 3
    assert steps[-1]["answer"] == "42 fruits"
    assert all("iteration" in s and "depth" in s for s in steps)
