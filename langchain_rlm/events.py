"""Typed step events that ``RLM.stream`` / ``astream`` yield as a run goes.

The graph emits plain dicts through LangGraph's custom stream mode (and as
``on_custom_event`` named ``rlm_step`` in ``astream_events``); :func:`to_event` turns
them into these models. Events add like stream chunks do (``a + b`` is ``b``), so an RLM
stream flows through LCEL steps that aggregate chunks: the last event,
:class:`AnswerEvent`, carries the :class:`~langchain_rlm.result.RLMResult`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from langchain_rlm.result import RLMResult

__all__ = [
    "AnswerEvent",
    "CodeEvent",
    "OutputEvent",
    "RLMEvent",
    "SubCallEndEvent",
    "SubCallStartEvent",
    "to_event",
]


class RLMEvent(BaseModel):
    """Base of all step events."""

    type: str
    depth: int = 0
    """Depth of the RLM that emitted the event (0 = top level)."""
    iteration: int | None = None
    """Root turn the event belongs to."""

    def __add__(self, other: Any) -> Any:
        """Stream-chunk addition keeps the latest event (so the answer ends a stream)."""
        return other


class CodeEvent(RLMEvent):
    """The root model wrote a block of code."""

    type: Literal["code"] = "code"
    code: str


class OutputEvent(RLMEvent):
    """A block finished running."""

    type: Literal["output"] = "output"
    stdout: str
    error: str | None = None
    seconds: float = 0.0
    sub_calls: int = 0


class SubCallStartEvent(RLMEvent):
    """A sub-call (``llm_query`` / ``recursive_lm``) started."""

    type: Literal["subcall_start"] = "subcall_start"
    id: str
    kind: str
    prompt_preview: str = ""


class SubCallEndEvent(RLMEvent):
    """A sub-call finished (``error`` is set when it failed)."""

    type: Literal["subcall_end"] = "subcall_end"
    id: str
    kind: str
    error: str | None = None
    response_preview: str = ""
    seconds: float = 0.0


class AnswerEvent(RLMEvent):
    """The run has an answer. From ``RLM.stream`` it also carries the full result."""

    type: Literal["answer"] = "answer"
    answer: str
    finished_reason: str | None = None
    result: RLMResult | None = None


_EVENT_TYPES: dict[str, type[RLMEvent]] = {
    "code": CodeEvent,
    "output": OutputEvent,
    "subcall_start": SubCallStartEvent,
    "subcall_end": SubCallEndEvent,
    "answer": AnswerEvent,
}


def to_event(data: dict[str, Any]) -> RLMEvent:
    """The typed event for a dict emitted by the graph."""
    return _EVENT_TYPES.get(data.get("type", ""), RLMEvent).model_validate(data)
