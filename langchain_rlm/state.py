"""The graph's checkpointed state, its records, and the run's settings.

:class:`RLMState` is what LangGraph checkpoints after every node: small, made of
primitives and messages, and independent of the context's size (invariant 1 of the
design). What must not be checkpointed (the raw context, models, the sandbox session,
the meter) lives in :class:`~langchain_rlm.runtime.RLMRuntime`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Annotated, Any, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from langchain_rlm.prompts import DEFAULT_PREVIEW_CHARS, DEFAULT_STOP_SEQUENCES
from langchain_rlm.sandbox.base import SandboxLimits

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_ITERATIONS",
    "DEFAULT_MAX_OUTPUT_CHARS",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_OUTPUT_RETRIES",
    "DEFAULT_SUB_PROMPT_CHARS",
    "RLMSettings",
    "RLMState",
    "ReplStepRecord",
    "SubCallRecord",
]

DEFAULT_MAX_ITERATIONS = 20
"""Root-model turns before the run is finalized."""
DEFAULT_MAX_OUTPUT_CHARS = 4_000
"""Characters of REPL output the root model sees per block."""
DEFAULT_SUB_PROMPT_CHARS = 400_000
"""Characters a sub-call prompt may have when the sub-model's window is unknown."""
DEFAULT_MAX_CONCURRENCY = 16
"""Sub-calls in flight at the same time in a whole RLM tree."""
DEFAULT_OUTPUT_RETRIES = 2
"""Turns to fix an answer that fails ``output_schema`` validation."""
DEFAULT_MAX_RETRIES = 3
"""Retries of a transient model fault (429, 5xx, timeout), with exponential backoff."""


class SubCallRecord(TypedDict):
    """One model call made from model code (``llm_query`` and friends)."""

    id: str
    """Unique id; ``parent_id`` of a child RLM's records points here."""
    kind: str
    """``llm_query`` or ``recursive_lm`` (batched calls are recorded item by item)."""
    model: str
    """The model that answered (or would have)."""
    depth: int
    """Depth of the RLM that made the call (the root is 0)."""
    prompt_chars: int
    """Size of the prompt (the prompt itself is not kept: it may be a slice of the context)."""
    prompt_hash: str
    """sha256 of the prompt, to match recorded results when a run is resumed."""
    prompt_preview: str
    """The first characters of the prompt."""
    response: str | None
    """The answer text (``None`` when the call failed)."""
    error: str | None
    """Why the call failed, as model code saw it."""
    seconds: float
    """Wall time of the call."""
    input_tokens: int
    """Prompt tokens (reported, or estimated)."""
    output_tokens: int
    """Completion tokens (reported, or estimated)."""
    cached: bool
    """Served from the run's memo of identical calls."""
    child: NotRequired[dict[str, Any] | None]
    """For a child RLM: its result (answer, iterations, history...) as a dict."""


class ReplStepRecord(TypedDict):
    """One executed code block, as checkpointed: what the model saw, not more."""

    id: NotRequired[str]
    """Unique id of the step (keys the whole output kept outside the checkpoint)."""
    iteration: int
    """The root turn that wrote the block (1-based)."""
    code: str
    """The code as run."""
    stdout: str
    """What it printed, cut to ``max_output_chars`` as the model saw it (the whole text
    is in the run's result and trajectory, never in a checkpoint)."""
    stdout_chars: NotRequired[int]
    """Length of the whole output."""
    stdout_sha256: NotRequired[str]
    """sha256 of the whole output."""
    error: str | None
    """``ExcType: message`` when the block failed."""
    seconds: float
    """Wall time of the block, sub-calls included."""
    sub_calls: list[SubCallRecord]
    """Model calls the block made, in the order they were made."""
    final_answer: str | None
    """Set when the block called FINAL / FINAL_VAR."""


class RLMState(TypedDict):
    """Checkpointed state of one RLM graph. Never holds the context or REPL variables."""

    query: str
    """The question of the current turn."""
    context_description: NotRequired[dict[str, Any]]
    """Type, size and a short preview of the context: all the root model sees of it."""
    messages: NotRequired[Annotated[list[AnyMessage], add_messages]]
    """The append-only root conversation."""
    iteration: NotRequired[int]
    """Root turns taken in the current query."""
    pending_code: NotRequired[list[str]]
    """Code blocks of the last reply, waiting for ``execute``."""
    pending_final: NotRequired[dict[str, str] | None]
    """A prose FINAL / FINAL_VAR of the last reply, honoured after its code ran."""
    repl_history: NotRequired[Annotated[list[ReplStepRecord], operator.add]]
    """Every executed block of this thread, with its sub-calls."""
    answer: NotRequired[str | None]
    """The final answer, once set."""
    finished_reason: NotRequired[str | None]
    """Why the run stopped: ``final``, ``max_iterations``, a budget name, ``error``."""
    usage: NotRequired[dict[str, Any]]
    """A snapshot of the tree-wide usage meter."""
    turn: NotRequired[int]
    """Queries asked on this thread so far (multi-turn)."""
    turn_start: NotRequired[int]
    """Index in ``repl_history`` where the current query's steps begin."""
    finalizing: NotRequired[bool]
    """True during the one extra turn that asks for the best answer after a limit."""
    finalize_start: NotRequired[int]
    """Index in ``repl_history`` where that extra turn's steps begin."""
    verify_asked: NotRequired[bool]
    """The model was asked once to verify an unsupported answer in this query."""
    output_failures: NotRequired[int]
    """Answers of this query that did not validate against ``output_schema``."""
    output: NotRequired[Any]
    """The validated structured answer (JSON-able), with ``output_schema``."""


@dataclass(frozen=True)
class RLMSettings:
    """Limits and knobs of a run; shared unchanged by every depth of the tree."""

    max_iterations: int = DEFAULT_MAX_ITERATIONS
    """Root turns per RLM (each depth has its own count)."""
    max_depth: int = 1
    """Recursion depth: 1 means sub-calls are plain model calls."""
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    """REPL output per block shown to the model."""
    preview_chars: int = DEFAULT_PREVIEW_CHARS
    """Context preview in the first prompt."""
    stop: tuple[str, ...] | None = DEFAULT_STOP_SEQUENCES
    """Stop sequences for root calls (``None`` for models that reject ``stop``)."""
    sub_prompt_chars: int | None = None
    """Largest sub-call prompt in characters (``None``: from the model's known window)."""
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    """Sub-calls in flight in the whole tree (every depth shares this one limit)."""
    max_retries: int = DEFAULT_MAX_RETRIES
    """Retries of transient model faults."""
    retry_backoff: float = 0.5
    """First backoff in seconds; doubles per retry."""
    memoize: bool = True
    """Serve identical sub-calls (same model, same prompt) from a per-run memo."""
    strict: bool = False
    """Raise instead of finalizing when a budget or limit is hit."""
    sandbox_limits: SandboxLimits = field(default_factory=SandboxLimits)
    """Per-cell limits handed to the sandbox."""
    prompt_style: str = "default"
    """System prompt style (``prompts.PROMPT_STYLES``); ``small`` adds a worked example."""
    verify_answers: bool = False
    """Ask once for evidence when a short literal answer appears in no output of the run
    (``RLM(verify_answers="auto")``, the default, turns it on for the small-model prompt)."""
    output_retries: int = DEFAULT_OUTPUT_RETRIES
    """Turns a model gets to fix an answer that does not validate against the schema."""
