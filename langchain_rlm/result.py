"""What an RLM run returns: :class:`RLMResult` and its parts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import AnyMessage
from pydantic import BaseModel, ConfigDict, Field

from langchain_rlm.usage import ModelUsage

__all__ = ["RLMResult", "ReplStep", "SubCall"]


class SubCall(BaseModel):
    """One model call made from model code; a child RLM carries its own result."""

    id: str
    kind: str
    """``llm_query`` or ``recursive_lm``."""
    model: str
    depth: int
    """Depth of the RLM that made the call."""
    prompt_chars: int
    prompt_preview: str
    response: str | None
    error: str | None
    seconds: float
    input_tokens: int = 0
    output_tokens: int = 0
    cached: bool = False
    """Served from the run's memo of identical calls."""
    child: RLMResult | None = None
    """The child RLM's result, for ``recursive_lm`` at depth < max_depth - 1."""


class ReplStep(BaseModel):
    """One executed code block."""

    iteration: int
    code: str
    stdout: str
    """The whole output (the model saw at most ``max_output_chars`` of it). A step of a
    run resumed in another process has only what the model saw (checkpoints keep no
    more); ``stdout_chars`` is the whole length."""
    stdout_chars: int | None = None
    """Length of the whole output."""
    error: str | None
    seconds: float
    sub_calls: list[SubCall] = Field(default_factory=list)
    final_answer: str | None = None


class RLMResult(BaseModel):
    """The outcome of one RLM query.

    ``str(result)`` is the answer, so ``f"{result}"`` and ``print(result)`` show it.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    answer: str
    """The final answer ("" only if no answer could be produced)."""
    iterations: int
    """Root turns taken at the top level."""
    total_calls: int
    """Every model request in the tree: root turns, sub-calls, child RLMs' calls, and the
    failed attempts (each HTTP attempt counts, retried or not)."""
    root_calls: int
    """Calls of the top-level root model."""
    sub_calls: int
    """All other completed calls (sub-calls and everything inside child RLMs)."""
    failed_calls: int = 0
    """Attempts that failed (a 5xx that was retried, a timeout...): paid for all the same."""
    repl_history: list[ReplStep] = Field(default_factory=list)
    """Executed blocks of this query, in order, each with its sub-calls."""
    messages: list[AnyMessage] = Field(default_factory=list)
    """The root conversation."""
    usage: dict[str, ModelUsage] = Field(default_factory=dict)
    """Per model: calls, tokens and cost (USD, where a price is known)."""
    usage_by_depth: dict[int, ModelUsage] = Field(default_factory=dict)
    """The same, per depth of the call: 0 = the top-level root model, 1 = its sub-calls
    and the root calls of child RLMs, and so on."""
    total_tokens: int = 0
    total_cost: float = 0.0
    finished_reason: str
    """``final``, ``max_iterations``, ``max_llm_calls``, ``max_tokens``, ``max_cost``,
    ``timeout`` or ``cancelled``."""
    depth: int = 0
    thread_id: str | None = None
    """The LangGraph thread of the run, when one was configured."""
    output: Any = None
    """With ``output_schema``: the validated answer (an instance of a pydantic schema, a
    dict for a JSON schema); ``None`` when the run ended without a valid one."""
    samples: list[str] = Field(default_factory=list)
    """With ``samples=k``: the answer of every trajectory (the vote's ballot)."""

    def __str__(self) -> str:
        return self.answer

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        usage: Mapping[str, Any],
        *,
        depth: int = 0,
        thread_id: str | None = None,
        outputs: Mapping[str, str] | None = None,
    ) -> RLMResult:
        """Build the result from the graph's final state and a usage snapshot.

        ``outputs``: whole step outputs by step id (the state holds what the model saw).
        """
        history = list(state.get("repl_history", []))[state.get("turn_start", 0) :]
        whole = outputs or {}
        root_calls = int(usage.get("by_depth", {}).get(str(depth), {}).get("calls", 0))
        completed = int(usage.get("root_calls", 0)) + int(usage.get("sub_calls", 0))
        failed = int(usage.get("failed_calls", 0))
        total = completed + failed
        return cls(
            answer=state.get("answer") or "",
            iterations=int(state.get("iteration", 0)),
            total_calls=total,
            root_calls=root_calls,
            sub_calls=completed - root_calls,
            failed_calls=failed,
            repl_history=[_step(step, whole) for step in history],
            messages=list(state.get("messages", [])),
            usage={k: ModelUsage.model_validate(v) for k, v in usage.get("by_model", {}).items()},
            usage_by_depth={
                int(k): ModelUsage.model_validate(v) for k, v in usage.get("by_depth", {}).items()
            },
            total_tokens=int(usage.get("total_tokens", 0)),
            total_cost=float(usage.get("total_cost", 0.0)),
            finished_reason=state.get("finished_reason") or "final",
            depth=depth,
            thread_id=thread_id,
        )


def _step(step: Mapping[str, Any], outputs: Mapping[str, str] | None = None) -> ReplStep:
    return ReplStep(
        iteration=step["iteration"],
        code=step["code"],
        stdout=(outputs or {}).get(step.get("id", ""), step["stdout"]),
        stdout_chars=step.get("stdout_chars"),
        error=step.get("error"),
        seconds=step.get("seconds", 0.0),
        sub_calls=[_sub_call(record) for record in step.get("sub_calls", [])],
        final_answer=step.get("final_answer"),
    )


def _sub_call(record: Mapping[str, Any]) -> SubCall:
    child = record.get("child")
    data = {k: v for k, v in record.items() if k not in ("child", "prompt_hash")}
    return SubCall(**data, child=_child(child) if child else None)


def _child(child: Mapping[str, Any]) -> RLMResult:
    if child.get("usage") is not None:  # the child's own meter: its whole subtree
        state = {**child, "iteration": child.get("iterations", 0)}
        return RLMResult.from_state(state, child["usage"], depth=int(child.get("depth", 1)))
    history = child.get("repl_history", [])
    calls = sum(len(step.get("sub_calls", [])) for step in history)
    iterations = int(child.get("iterations", 0))
    return RLMResult(
        answer=child.get("answer") or "",
        iterations=iterations,
        total_calls=iterations + calls,
        root_calls=iterations,
        sub_calls=calls,
        repl_history=[_step(step) for step in history],
        finished_reason=child.get("finished_reason") or "final",
        depth=int(child.get("depth", 1)),
    )
