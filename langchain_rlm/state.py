"""The graph's checkpointed state and the run's non-checkpointed runtime.

:class:`RLMState` is what LangGraph checkpoints after every node: small, made of
primitives and messages, and independent of the context's size (invariant 1 of the
design). :class:`RLMRuntime` travels through LangGraph's runtime context
(``context_schema``), which is never checkpointed: it holds the raw context, the models,
the sandbox session, the limits and the usage meter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import operator
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, NotRequired

from langchain_core.callbacks import dispatch_custom_event
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from langchain_rlm.prompts import DEFAULT_PREVIEW_CHARS, DEFAULT_STOP_SEQUENCES
from langchain_rlm.sandbox.base import PythonExecutor, Sandbox, SandboxLimits
from langchain_rlm.usage import UsageMeter

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_ITERATIONS",
    "DEFAULT_MAX_OUTPUT_CHARS",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_SUB_PROMPT_CHARS",
    "RLMRuntime",
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
"""Sub-calls of one batch that run at the same time."""
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
    """One executed code block."""

    iteration: int
    """The root turn that wrote the block (1-based)."""
    code: str
    """The code as run."""
    stdout: str
    """Everything it printed (whole; the model saw a truncated copy)."""
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
    """Concurrent sub-calls per batch."""
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


@dataclass(eq=False)
class RLMRuntime:
    """Everything a run needs that must not be checkpointed.

    Built by :class:`~langchain_rlm.rlm.RLM` per invocation (or per thread, for
    multi-turn use) and handed to the graph as its runtime context.
    """

    context: Any
    """The normalized context (str, list or dict). Lives here and in the sandbox only."""
    root_model: BaseChatModel
    """The model that writes code at this depth."""
    sub_model: BaseChatModel
    """The model ``llm_query`` calls, and the root of child RLMs."""
    sandbox: Sandbox
    """Starts the REPL session."""
    settings: RLMSettings = field(default_factory=RLMSettings)
    """Limits and knobs."""
    meter: UsageMeter = field(default_factory=UsageMeter)
    """Tree-wide usage and budgets, shared with children."""
    depth: int = 0
    """0 for the root RLM."""
    tools: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    """User functions callable from model code."""
    graph_factory: Callable[..., CompiledStateGraph[Any, Any, Any, Any]] | None = None
    """Builds child graphs (set by ``build_rlm_graph``; keeps recursion free of graph imports)."""
    memo: dict[tuple[str, str], str] = field(default_factory=dict)
    """Identical sub-calls already answered in this run (shared with children)."""
    session: PythonExecutor | None = None
    """The REPL session, started on first use."""
    replayed: bool = False
    """True once recorded cells were replayed into a fresh session (resume)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Guards the per-cell sub-call records below."""
    cell_records: list[SubCallRecord] = field(default_factory=list)
    """Sub-calls of the cell that is running."""
    replay_queue: list[SubCallRecord] | None = None
    """Recorded sub-call results served instead of model calls while replaying."""
    iteration: int = 0
    """The root turn being executed (for trace metadata and records)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when the caller cancelled the run: new sub-calls fail fast."""
    writer: Callable[[dict[str, Any]], None] | None = None
    """LangGraph's custom stream writer of the running node, for step events."""
    loop: asyncio.AbstractEventLoop | None = None
    """The caller's event loop under ``ainvoke``/``astream``: sub-call batches then run on
    it (``model.ainvoke``), so cancelling the run aborts their HTTP requests."""
    in_flight: set[concurrent.futures.Future[Any]] = field(default_factory=set)
    """Sub-call batches running on :attr:`loop` (shared with children), cancelled on cancel."""
    in_flight_lock: threading.Lock = field(default_factory=threading.Lock)
    """Guards :attr:`in_flight` (shared with children, like the set itself)."""

    def cancel_in_flight(self) -> None:
        """Mark the run cancelled and cancel every sub-call batch running on the loop."""
        self.cancelled.set()
        with self.in_flight_lock:
            futures = list(self.in_flight)
        for future in futures:
            future.cancel()

    def emit(self, event: dict[str, Any]) -> None:
        """Send a step event to ``stream(stream_mode="custom")`` and ``astream_events``."""
        event = {"iteration": self.iteration, **event, "depth": self.depth}
        if self.writer is not None:
            self.writer(event)
        with contextlib.suppress(RuntimeError):  # not inside a traced run (a bare unit call)
            dispatch_custom_event("rlm_step", event)

    def close(self) -> None:
        """Stop the sandbox session, if one was started."""
        session, self.session = self.session, None
        if session is not None:
            session.close()
