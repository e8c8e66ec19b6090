"""What a run needs that is never checkpointed, in three scopes, built in one place.

* :class:`RLMConfig` - frozen configuration: models, sandbox, settings, tools, budgets,
  prices. One per :class:`~langchain_rlm.RLM` (or per server run); shared by the tree.
* :class:`RunScope` - one per invocation, shared by the whole tree: the usage meter,
  the memo of identical sub-calls, the cancellation flag, the stream writer and the
  tree-wide concurrency limit. :meth:`RunScope.child` gives a child RLM its own view of
  the meter (its subtree's usage) and shares everything else.
* :class:`DepthState` - one per RLM of the tree (per depth): its context, its REPL
  session and the thread that talks to it, the iteration, the sub-call records of the
  running cell.

:class:`RLMRuntime` bundles the three; it is LangGraph's runtime context
(``context_schema``) for the graph. :func:`build_config` validates the knobs and
:func:`new_runtime` assembles a runtime: ``RLM``, the LangGraph Server graph and child
RLMs (:meth:`RLMRuntime.child`) all go through them.

The session's thread. A REPL session is synchronous (it talks to its worker over pipes
with deadlines), so each session gets one thread of its own that runs its cells; the
event loop awaits it. Host functions (``llm_query`` ...) called by model code run in that
thread and hand their sub-calls to the loop. No thread of the loop's default executor is
ever held, so depth cannot starve the executor (a 4-thread default executor runs a depth-3
tree), and threads grow with live sessions, which the tree limit bounds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from langchain_core.callbacks import adispatch_custom_event
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel

from langchain_rlm.answers import OutputSchema
from langchain_rlm.concurrency import TreeLimiter
from langchain_rlm.journal import CallJournal
from langchain_rlm.models import model_id, resolve_model
from langchain_rlm.prompts import DEFAULT_STOP_SEQUENCES, PROMPT_STYLES, prompt_style_for
from langchain_rlm.sandbox import get_sandbox
from langchain_rlm.sandbox.base import (
    DEFAULT_CELL_TIMEOUT,
    DEFAULT_MEMORY_MB,
    REPL_FUNCTION_NAMES,
    CodeOutput,
    HostFunction,
    PythonExecutor,
    Sandbox,
    SandboxClosedError,
    SandboxLimits,
)
from langchain_rlm.state import RLMSettings, SubCallRecord
from langchain_rlm.usage import Budgets, ModelPrice, UnpricedModelError, UsageMeter, require_prices

__all__ = [
    "DepthState",
    "RLMClosedError",
    "RLMConfig",
    "RLMInputError",
    "RLMRuntime",
    "RunScope",
    "build_config",
    "new_runtime",
    "tool_table",
]

logger = logging.getLogger("langchain_rlm.runtime")


class RLMClosedError(RuntimeError):
    """The run was cancelled or its RLM closed: no new session may start."""


@dataclass(frozen=True)
class RLMConfig:
    """Frozen configuration of an RLM, shared by every depth of every run."""

    root_model: BaseChatModel
    """The model that writes code (at depth 0; children use ``sub_model``)."""
    sub_model: BaseChatModel
    """What ``llm_query`` calls, and the root model of child RLMs."""
    sandbox: Sandbox
    """Starts REPL sessions."""
    settings: RLMSettings = field(default_factory=RLMSettings)
    """Limits and knobs."""
    tools: Mapping[str, BaseTool] = field(default_factory=dict)
    """User tools callable from model code, by name."""
    budgets: Budgets = field(default_factory=Budgets)
    """Tree-wide budgets."""
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    """Prices added to the built-in list (USD per 1M tokens)."""
    output_schema: OutputSchema | None = None
    """A pydantic model or JSON schema the answer must validate against."""

    def for_child(self) -> RLMConfig:
        """The configuration of a child RLM: the sub-model becomes its root model."""
        return replace(self, root_model=self.sub_model)


@dataclass(eq=False)
class RunScope:
    """State of one invocation, shared by the whole tree."""

    meter: UsageMeter
    """Usage and budgets (a child's meter keeps its subtree's tables, see ``child``)."""
    limiter: TreeLimiter
    """The tree's one concurrency limit."""
    memo: dict[tuple[str, str], str] = field(default_factory=dict)
    """Answers of identical sub-calls (model, prompt hash) already made in this run."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when the caller cancelled the run or closed its RLM: nothing new starts."""
    writer: Callable[[dict[str, Any]], None] | None = None
    """LangGraph's custom stream writer of the top-level graph, for step events."""
    loop: asyncio.AbstractEventLoop | None = None
    """The event loop the tree runs on (host functions hand sub-calls to it)."""
    in_flight: set[concurrent.futures.Future[Any]] = field(default_factory=set)
    """Sub-call batches handed to the loop by host functions (cancelled on cancel)."""
    in_flight_lock: threading.Lock = field(default_factory=threading.Lock)
    """Guards :attr:`in_flight`."""
    journal: CallJournal = field(default_factory=CallJournal)
    """Completed calls, written durably as they arrive and replayed on resume."""

    def child(self) -> RunScope:
        """The scope of a child RLM: its own meter view, everything else shared."""
        return replace(self, meter=self.meter.child())

    def cancel(self) -> None:
        """Stop the run: nothing new starts and the batches in flight are cancelled."""
        self.cancelled.set()
        with self.in_flight_lock:
            futures = list(self.in_flight)
        for future in futures:
            future.cancel()


@dataclass(eq=False)
class DepthState:
    """State of one RLM of the tree: its context and its REPL session."""

    context: Any
    """The normalized context (str, list or dict). Lives here and in the sandbox only."""
    depth: int = 0
    """0 for the top-level RLM."""
    session: PythonExecutor | None = None
    """The REPL session, started on first use."""
    replayed: bool = False
    """True once the recorded cells of the thread were replayed into :attr:`session`."""
    context_changed: bool = False
    """A follow-up brought a new context: the next query loads it into the session."""
    iteration: int = 0
    """The root turn being executed (trace metadata and records)."""
    node_config: RunnableConfig | None = None
    """Config of the running ``execute`` node: sub-calls nest under it in traces."""
    cell_records: list[SubCallRecord] = field(default_factory=list)
    """Sub-calls of the cell that is running."""
    replay_queue: list[SubCallRecord] | None = None
    """Recorded sub-call results served instead of model calls while replaying."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Guards :attr:`cell_records` and :attr:`replay_queue`."""
    thread: ThreadPoolExecutor | None = None
    """The session's own thread (see the module docstring)."""
    outputs: dict[str, str] = field(default_factory=dict)
    """Whole outputs of the current query's steps by step id (the checkpoint keeps only
    what the model saw)."""

    starting: concurrent.futures.Future[PythonExecutor] | None = None
    """A session being started in :attr:`thread` (see :meth:`RLMRuntime.start_session`)."""

    def close(self) -> None:
        """Stop the REPL session and its thread. Idempotent; safe from any thread.

        A session still starting is closed as soon as its worker is up.
        """
        session, self.session = self.session, None
        thread, self.thread = self.thread, None
        starting, self.starting = self.starting, None
        if session is not None:
            session.close()
        if starting is not None:
            starting.add_done_callback(_close_started)
        if thread is not None:
            thread.shutdown(wait=False)


def _close_started(future: concurrent.futures.Future[PythonExecutor]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


@dataclass(eq=False)
class RLMRuntime:
    """Everything one RLM of a run needs that must not be checkpointed."""

    config: RLMConfig
    """Frozen configuration."""
    run: RunScope
    """The invocation's scope, shared by the tree."""
    local: DepthState
    """This RLM's own state."""

    # -- shortcuts ---------------------------------------------------------------------
    @property
    def settings(self) -> RLMSettings:
        return self.config.settings

    @property
    def meter(self) -> UsageMeter:
        return self.run.meter

    @property
    def depth(self) -> int:
        return self.local.depth

    @property
    def context(self) -> Any:
        return self.local.context

    def child(self, context: Any) -> RLMRuntime:
        """The runtime of a child RLM over ``context`` (one depth down)."""
        return new_runtime(
            self.config.for_child(), context, run=self.run.child(), depth=self.depth + 1
        )

    # -- events ------------------------------------------------------------------------
    async def emit(self, event: dict[str, Any], config: RunnableConfig | None = None) -> None:
        """Send a step event to ``stream`` and to ``astream_events`` (``rlm_step``)."""
        event = {"iteration": self.local.iteration, **event, "depth": self.depth}
        if self.run.writer is not None:
            self.run.writer(event)
        if not _has_handlers(config):  # nobody listens: skip building a callback manager
            return
        with contextlib.suppress(RuntimeError):  # not inside a traced run
            await adispatch_custom_event("rlm_step", event, config=config)

    # -- the REPL session --------------------------------------------------------------
    def start_session(self, functions: Mapping[str, HostFunction]) -> None:
        """Start this RLM's session in its own thread, without waiting for it.

        The graph calls it when a query opens, so the worker boots while the root model
        writes its first reply; :meth:`open_session` then finds it ready.
        """
        if self.local.session is not None or self.local.starting is not None:
            return
        self.check_open()
        if self.local.thread is None:
            self.local.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlm-session")
        context = contextvars.copy_context()
        self.local.starting = self.local.thread.submit(
            context.run,
            self.config.sandbox.start,
            self.local.context,
            functions,
            self.settings.sandbox_limits,
        )

    async def open_session(self, functions: Mapping[str, HostFunction]) -> PythonExecutor:
        """This RLM's session: the one started by :meth:`start_session`, or a new one."""
        if self.local.session is not None:
            return self.local.session
        self.start_session(functions)
        starting = self.local.starting
        assert starting is not None
        session = await asyncio.wrap_future(starting)
        if self.local.starting is not starting:  # closed while the worker started
            raise RLMClosedError("the session was closed while it started")
        self.local.starting = None
        if self.run.cancelled.is_set():
            session.close()
            raise RLMClosedError("the run was cancelled")
        self.local.session = session
        self.local.replayed = False
        return session

    def check_open(self) -> None:
        """Raise :class:`RLMClosedError` once the run is cancelled or its RLM closed."""
        if self.run.cancelled.is_set():
            raise RLMClosedError("the run was cancelled or its RLM closed")

    async def run_cell(self, code: str) -> CodeOutput:
        """Run one cell in the session's thread, within what is left of the run's time."""
        session = self.local.session
        assert session is not None, "open_session first"
        left = self.meter.seconds_left()
        try:
            return await self.in_session_thread(_call_session, session, code, left)
        except asyncio.CancelledError:
            self.close_soon()
            raise
        except SandboxClosedError as error:  # closed from another thread: the run stops
            raise RLMClosedError(str(error)) from error

    async def in_session_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Await ``function(*args)`` on the session's thread, context variables included."""
        assert self.local.thread is not None
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(self.local.thread, context.run, function, *args)

    def close(self) -> None:
        """Stop the REPL session and its thread. Idempotent; safe from any thread."""
        self.local.close()

    async def aclose(self) -> None:
        """Close the session on its own (idle) thread, without blocking the loop."""
        session, thread = self.local.session, self.local.thread
        if session is not None and thread is not None:
            with contextlib.suppress(RuntimeError):  # the thread was shut down meanwhile
                await self.in_session_thread(session.close)
        self.close()

    def close_soon(self) -> None:
        """Close from a helper thread (a cell may still hold the session's lock)."""
        if self.local.session is None and self.local.thread is None:
            return
        threading.Thread(target=self.close, name="rlm-session-close", daemon=True).start()


def _has_handlers(config: RunnableConfig | None) -> bool:
    callbacks = (config or {}).get("callbacks")
    if callbacks is None:
        return False
    handlers = getattr(callbacks, "handlers", callbacks)
    return bool(handlers)


def _call_session(session: PythonExecutor, code: str, seconds_left: float | None) -> CodeOutput:
    """One cell, capped by what is left of the run's timeout (``PythonExecutor`` protocol)."""
    if seconds_left is None:
        return session(code)
    return session(code, timeout=max(seconds_left, 0.001))


def new_runtime(
    config: RLMConfig,
    context: Any,
    *,
    run: RunScope | None = None,
    usage: Mapping[str, Any] | None = None,
    journal: CallJournal | None = None,
    depth: int = 0,
) -> RLMRuntime:
    """Assemble a runtime: a new run scope unless given.

    ``usage``: the checkpoint's meter snapshot of a resumed run; the calls the
    ``journal`` read back (paid after that snapshot, before the kill) are added to it.
    """
    if run is None:
        meter = UsageMeter(config.budgets, config.prices)
        if usage:
            meter.restore(usage)
        journal = journal or CallJournal()
        for entry in journal.completed:
            _count_paid(meter, entry.get("usage") or {})
        for stub in journal.in_flight_usage:  # may have been paid: counted, made again
            _count_paid(meter, {**stub, "input_tokens": 0, "output_tokens": 0, "estimated": True})
        run = RunScope(
            meter=meter,
            limiter=TreeLimiter(config.settings.max_concurrency),
            journal=journal,
        )
    return RLMRuntime(config=config, run=run, local=DepthState(context=context, depth=depth))


def _count_paid(meter: UsageMeter, usage: Mapping[str, Any]) -> None:
    """Count a call that was paid before a kill (it is replayed, never made again)."""
    if not usage.get("model"):
        return
    with contextlib.suppress(Exception):  # a spent budget: the call was paid all the same
        meter.reserve_call()
    meter.record(
        str(usage["model"]),
        int(usage.get("depth", 1)),
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        estimated=bool(usage.get("estimated", False)),
        root=bool(usage.get("root", False)),
    )


class RLMInputError(ValueError):
    """The RLM was given input it cannot use; the message names the fix."""


RESERVED_NAMES = frozenset(
    {*REPL_FUNCTION_NAMES, "llm_query", "llm_query_batched", "recursive_lm", "recursive_lm_batched"}
)
"""Names model code already has: a tool may not take them."""


def build_config(
    model: BaseChatModel | str,
    sub_model: BaseChatModel | str | None = None,
    *,
    sandbox: str | Sandbox = "process",
    tools: Sequence[Callable[..., Any]] | Mapping[str, Callable[..., Any]] | None = None,
    budgets: Mapping[str, Any] | None = None,
    prices: Mapping[str, ModelPrice] | None = None,
    allow_unpriced: bool = False,
    settings: Mapping[str, Any] | None = None,
    cell_timeout: float = DEFAULT_CELL_TIMEOUT,
    memory_mb: int | None = DEFAULT_MEMORY_MB,
    output_schema: OutputSchema | None = None,
) -> RLMConfig:
    """Validate every knob and build the frozen configuration (RLM and server alike).

    Raises :class:`RLMInputError` naming the fix for any bad value.
    """
    values = dict(settings or {})
    style = values.get("prompt_style", "auto")
    if style != "auto" and style not in PROMPT_STYLES:
        raise RLMInputError(
            f"prompt_style={style!r} is unknown; choose from auto, "
            f"{', '.join(PROMPT_STYLES)} ('small' adds a worked example for small local "
            "models; 'auto' picks it for the embedded local model)"
        )
    for name in ("max_iterations", "max_depth", "max_concurrency", "max_output_chars"):
        if name in values:
            _positive_int(name, values[name])
    _check_schema(output_schema)
    for name in ("max_retries", "retry_backoff", "output_retries"):
        if name in values:
            _non_negative(name, values[name])
    _positive_number("cell_timeout", cell_timeout)
    for name, value in (
        ("sub_prompt_chars", values.get("sub_prompt_chars")),
        ("memory_mb", memory_mb),
    ):
        if value is not None:
            _positive_int(name, value)
    try:
        budget_values = Budgets(**dict(budgets or {}), allow_unpriced=allow_unpriced)
    except ValueError as error:
        raise RLMInputError(
            f"invalid budget: {error}. Budgets must be positive numbers (or None for no limit)"
        ) from error
    try:
        root = resolve_model(model, role="model")
        sub = resolve_model(sub_model, role="sub_model") if sub_model is not None else root
    except (TypeError, ValueError) as error:
        raise RLMInputError(str(error)) from error
    if style == "auto":
        values["prompt_style"] = prompt_style_for(model_id(root))
    if values.get("verify_answers", "auto") == "auto":
        values["verify_answers"] = values["prompt_style"] == "small"
    stop = values.get("stop", DEFAULT_STOP_SEQUENCES)
    values["stop"] = tuple(stop) if stop else None
    price_table = dict(prices or {})
    if budget_values.max_cost is not None and not allow_unpriced:
        try:
            require_prices([model_id(root), model_id(sub)], price_table)
        except UnpricedModelError as error:
            raise RLMInputError(str(error)) from error
    try:
        sandbox_instance = get_sandbox(sandbox)
    except ValueError as error:
        raise RLMInputError(str(error)) from error
    return RLMConfig(
        root_model=root,
        sub_model=sub,
        sandbox=sandbox_instance,
        settings=RLMSettings(
            **values,
            sandbox_limits=SandboxLimits(cell_timeout=cell_timeout, memory_mb=memory_mb),
        ),
        tools=tool_table(tools),
        budgets=budget_values,
        prices=price_table,
        output_schema=output_schema,
    )


def _check_schema(schema: Any) -> None:
    if schema is None:
        return
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return
    if isinstance(schema, Mapping) and ("type" in schema or "properties" in schema):
        return
    raise RLMInputError(
        f"output_schema must be a pydantic model class or a JSON schema dict, not "
        f"{schema!r}: e.g. output_schema=Invoice, or {{'type': 'object', 'properties': ...}}"
    )


def tool_table(
    tools: Sequence[Callable[..., Any]] | Mapping[str, Callable[..., Any]] | None,
) -> dict[str, BaseTool]:
    """User tools as LangChain tools by name (plain functions become StructuredTools)."""
    if not tools:
        return {}
    if isinstance(tools, Mapping):
        pairs = list(tools.items())
    else:
        pairs = []
        for tool in tools:
            name = getattr(tool, "name", None) or getattr(tool, "__name__", None)
            if not isinstance(name, str):
                raise RLMInputError(
                    f"tool {tool!r} has no name: pass tools as a dict name -> function"
                )
            pairs.append((name, tool))
    table: dict[str, BaseTool] = {}
    for name, tool in pairs:
        if not name.isidentifier() or name.startswith("_"):
            raise RLMInputError(f"tool name {name!r} must be a public Python identifier")
        if name in RESERVED_NAMES:
            raise RLMInputError(f"tool name {name!r} clashes with a REPL function: rename the tool")
        table[name] = _as_tool(name, tool)
    return table


def _as_tool(name: str, tool: Any) -> BaseTool:
    if isinstance(tool, BaseTool):
        return tool
    if not callable(tool):
        raise RLMInputError(f"tool {name!r} is not callable")
    try:
        return StructuredTool.from_function(tool, name=name)
    except Exception as error:  # e.g. a signature pydantic cannot describe
        raise RLMInputError(
            f"tool {name!r} cannot be described from its signature ({error}); pass a "
            "LangChain tool (langchain_core.tools.StructuredTool) instead"
        ) from error


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RLMInputError(f"{name} must be a positive int, got {value!r}")


def _non_negative(name: str, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise RLMInputError(f"{name} must be a number >= 0, got {value!r}")


def _positive_number(name: str, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise RLMInputError(f"{name} must be a number > 0, got {value!r}")
