"""The sub-call Runnable: what ``llm_query`` and ``recursive_lm`` do on the host.

Model code in the sandbox calls thin bridges; they land in :class:`SubCallRunner`, which
runs each sub-call as a named Runnable (``llm_query`` / ``recursive_lm``) under the
``execute`` node's config, so traces nest. A sub-call is either

* a leaf: one sub-model call, or
* a child RLM: at depth ``d`` with ``d + 1 < max_depth``, ``recursive_lm`` runs a child
  graph built by the same factory (``runtime.graph_factory``) over the context subset,
  with the sub-model as its root. Its result rolls up into the parent's record.

Before a call: the cancel flag, the tree-wide budget (reserved atomically), the
sub-prompt size guard and the per-run memo. Batches run concurrently, at most
``max_concurrency`` at a time, in order; a failed item becomes the string
``"ERROR: <reason>"`` instead of failing the batch. While a resumed run replays its
recorded cells, calls are answered from the records instead of the models.

Under ``invoke`` a batch runs in a bounded pool of context-carrying threads. Under
``ainvoke`` / ``astream`` (``runtime.loop`` set) the ``execute`` thread hands the batch
to the caller's event loop (``run_coroutine_threadsafe``), where it runs as
``model.ainvoke`` calls under a semaphore; the futures are tracked in
``runtime.in_flight`` so that cancelling the run cancels them and aborts their HTTP
requests. See ``docs/README_RECURSION.md``.

This module never imports ``graph.py``: the factory arrives through the runtime.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda, ensure_config, patch_config
from langchain_core.runnables.config import ContextThreadPoolExecutor

from langchain_rlm.context import ContextTypeError, normalize_context
from langchain_rlm.models import (
    ModelCallError,
    acall_model,
    call_model,
    context_window_chars,
    model_id,
)
from langchain_rlm.sandbox.base import HostFunction, HostFunctionError
from langchain_rlm.state import DEFAULT_SUB_PROMPT_CHARS, RLMRuntime, SubCallRecord
from langchain_rlm.usage import BudgetExceeded

__all__ = ["ERROR_PREFIX", "SubCallRunner", "prompt_hash"]

ERROR_PREFIX = "ERROR: "
"""How a failed item of a batch comes back to model code."""

CANCELLED_MESSAGE = "the run was cancelled"
"""The error of a sub-call stopped because the caller cancelled the run."""

PREVIEW_CHARS = 200
"""Characters of a sub-call prompt kept in its record."""

WINDOW_SHARE = 0.9
"""Share of the sub-model's window a prompt may fill (the rest is for the answer)."""


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class SubCallRunner:
    """Host side of the REPL's model functions for one RLM (one depth)."""

    def __init__(self, runtime: RLMRuntime) -> None:
        self.runtime = runtime

    # -- the functions model code sees ------------------------------------------------
    def host_functions(self) -> dict[str, HostFunction]:
        """The callables to expose in the REPL, user tools included."""
        functions: dict[str, HostFunction] = {
            "llm_query": self.llm_query,
            "llm_query_batched": self.llm_query_batched,
            "recursive_lm": self.recursive_lm,
            "recursive_lm_batched": self.recursive_lm_batched,
        }
        for name, tool in self.runtime.tools.items():
            functions[name] = _tool_bridge(tool)
        return functions

    def llm_query(self, prompt: Any) -> str:
        """One sub-model call. Raises HostFunctionError with a readable reason."""
        text = _require_str(prompt, "llm_query(prompt)")
        result = self._run_batch("llm_query", [(text, None)], ensure_config())[0]
        if result.startswith(ERROR_PREFIX):
            raise HostFunctionError(result[len(ERROR_PREFIX) :])
        return result

    def llm_query_batched(self, prompts: Any) -> list[str]:
        """Concurrent sub-model calls, at most ``max_concurrency`` at a time, in order.

        A failed item does not fail the batch: it comes back as the string
        ``"ERROR: <reason>"`` (:data:`ERROR_PREFIX`), the reason written for the model
        (budget spent, prompt too large, retries exhausted, cancelled...). Bad arguments
        (not a list of str) raise :class:`HostFunctionError` for the whole call.
        """
        items = _require_list(prompts, "llm_query_batched(prompts)")
        texts = [_require_str(p, f"llm_query_batched(prompts)[{i}]") for i, p in enumerate(items)]
        return self._run_batch("llm_query", [(text, None) for text in texts], ensure_config())

    def recursive_lm(self, query: Any, context_subset: Any = None) -> str:
        """A child RLM over ``context_subset`` (or a leaf call when depth is exhausted)."""
        text = _require_str(query, "recursive_lm(query, context_subset)")
        result = self._run_batch("recursive_lm", [(text, context_subset)], ensure_config())[0]
        if result.startswith(ERROR_PREFIX):
            raise HostFunctionError(result[len(ERROR_PREFIX) :])
        return result

    def recursive_lm_batched(self, queries: Any, context_subsets: Any = None) -> list[str]:
        """Concurrent ``recursive_lm`` calls, one per (query, subset) pair, in order.

        Failed items come back as ``"ERROR: <reason>"`` strings, like
        :meth:`llm_query_batched`; lists of different lengths raise for the whole call.
        """
        query_list = _require_list(queries, "recursive_lm_batched(queries, context_subsets)")
        subsets = (
            [None] * len(query_list)
            if context_subsets is None
            else _require_list(context_subsets, "recursive_lm_batched(..., context_subsets)")
        )
        if len(subsets) != len(query_list):
            raise HostFunctionError(
                f"recursive_lm_batched got {len(query_list)} queries but {len(subsets)} "
                "context subsets: pass lists of the same length"
            )
        pairs = [
            (_require_str(q, f"recursive_lm_batched(queries)[{i}]"), s)
            for i, (q, s) in enumerate(zip(query_list, subsets, strict=True))
        ]
        return self._run_batch("recursive_lm", pairs, ensure_config())

    # -- batches ------------------------------------------------------------------------
    def _run_batch(
        self, kind: str, items: Sequence[tuple[str, Any]], config: RunnableConfig
    ) -> list[str]:
        """Run items concurrently (bounded), keep their order, record them in order.

        Identical leaf items of one batch (same model, same prompt) are sent once when
        ``memoize`` is on; the copies are recorded as ``cached``. Under ``ainvoke`` /
        ``astream`` the batch runs on the caller's event loop (``model.ainvoke``), where
        cancelling the run cancels it; otherwise in a bounded pool of threads.
        """
        runtime = self.runtime
        keys = [self._dedup_key(kind, prompt, subset) for prompt, subset in items]
        first: dict[str, int] = {}
        unique: list[int] = []
        for index, key in enumerate(keys):
            if key is None or key not in first:
                if key is not None:
                    first[key] = index
                unique.append(index)
        todo = [items[index] for index in unique]
        if self._use_loop():
            done = self._records_on_loop(kind, todo, config)
        else:
            done = self._records_in_threads(kind, todo, config)
        by_index = dict(zip(unique, done, strict=True))
        records = [
            by_index[index] if index in by_index else _copy_record(by_index[first[key]])  # type: ignore[index]
            for index, key in enumerate(keys)
        ]
        with runtime.lock:
            runtime.cell_records.extend(records)
        return [_result_text(record) for record in records]

    def _dedup_key(self, kind: str, prompt: str, subset: Any) -> str | None:
        """Key of a leaf call for in-batch memoisation (``None``: never deduplicated)."""
        settings = self.runtime.settings
        if not settings.memoize:
            return None
        if kind == "llm_query":
            return prompt
        if self.runtime.depth + 1 >= settings.max_depth:
            try:
                return _leaf_prompt(prompt, subset)
            except (TypeError, ValueError):
                return None
        return None

    def _records_in_threads(
        self, kind: str, items: Sequence[tuple[str, Any]], config: RunnableConfig
    ) -> list[SubCallRecord]:
        """The sync path: a bounded pool of context-carrying threads."""
        if len(items) == 1:
            return [self._one(kind, items[0][0], items[0][1], config)]
        workers = max(1, min(self.runtime.settings.max_concurrency, len(items)))
        with ContextThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda item: self._one(kind, item[0], item[1], config), items))

    def _use_loop(self) -> bool:
        """True when the batch should run on the caller's event loop (async entry points)."""
        loop = self.runtime.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return False
        try:
            return asyncio.get_running_loop() is not loop
        except RuntimeError:  # no loop in this thread: the usual case (execute's thread)
            return True

    def _records_on_loop(
        self, kind: str, items: Sequence[tuple[str, Any]], config: RunnableConfig
    ) -> list[SubCallRecord]:
        """The async path: the batch runs on the caller's loop; this thread waits for it."""
        runtime = self.runtime
        assert runtime.loop is not None
        future = asyncio.run_coroutine_threadsafe(self._arecords(kind, items, config), runtime.loop)
        with runtime.in_flight_lock:
            runtime.in_flight.add(future)
        if runtime.cancelled.is_set():
            future.cancel()
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            return [self._cancelled_record(kind, prompt) for prompt, _ in items]
        finally:
            with runtime.in_flight_lock:
                runtime.in_flight.discard(future)

    async def _arecords(
        self, kind: str, items: Sequence[tuple[str, Any]], config: RunnableConfig
    ) -> list[SubCallRecord]:
        """Run on the loop: at most ``max_concurrency`` items at a time, in order."""
        semaphore = asyncio.Semaphore(self.runtime.settings.max_concurrency)

        async def guarded(prompt: str, subset: Any) -> SubCallRecord:
            async with semaphore:
                return await self._aone(kind, prompt, subset, config)

        return list(await asyncio.gather(*(guarded(prompt, subset) for prompt, subset in items)))

    def _cancelled_record(self, kind: str, prompt: str) -> SubCallRecord:
        record = _new_record(kind, self._sub_model_name(), self.runtime.depth, prompt)
        record["error"] = CANCELLED_MESSAGE
        return record

    def _open(
        self, kind: str, prompt: str, subset: Any, config: RunnableConfig
    ) -> tuple[SubCallRecord, SubCallRecord | None, RunnableConfig]:
        """A new record (or the replayed one) and the sub-call's config; emits the start."""
        runtime = self.runtime
        record = _new_record(kind, self._sub_model_name(), runtime.depth, prompt)
        replayed = self._from_replay(record)
        if replayed is not None:
            return record, replayed, config
        runtime.emit(
            {
                "type": "subcall_start",
                "id": record["id"],
                "kind": kind,
                "depth": runtime.depth,
                "prompt_preview": record["prompt_preview"],
            }
        )
        callbacks = config.get("callbacks")
        child_config = patch_config(config, run_name=kind, callbacks=callbacks)  # type: ignore[arg-type]
        child_config["metadata"] = {
            **child_config.get("metadata", {}),
            "depth": runtime.depth,
            "iteration": runtime.iteration,
            "subcall_id": record["id"],
        }
        return record, None, child_config

    def _close(self, record: SubCallRecord, started: float) -> SubCallRecord:
        record["seconds"] = round(time.monotonic() - started, 6)
        self.runtime.emit(
            {
                "type": "subcall_end",
                "id": record["id"],
                "kind": record["kind"],
                "depth": self.runtime.depth,
                "error": record["error"],
                "response_preview": (record["response"] or "")[:PREVIEW_CHARS],
                "seconds": record["seconds"],
            }
        )
        return record

    def _one(self, kind: str, prompt: str, subset: Any, config: RunnableConfig) -> SubCallRecord:
        """One sub-call, as a named Runnable; never raises for model-side problems."""
        record, replayed, child_config = self._open(kind, prompt, subset, config)
        if replayed is not None:
            return replayed
        started = time.monotonic()
        try:
            self._check_can_call(prompt, kind, subset)
            function = self._call_leaf if kind == "llm_query" else self._call_recursive
            payload = {"prompt": prompt, "subset": subset, "record": record}
            RunnableLambda(function, name=kind).invoke(payload, child_config)
        except Exception as error:
            record["error"] = _error_text(error)
        return self._close(record, started)

    async def _aone(
        self, kind: str, prompt: str, subset: Any, config: RunnableConfig
    ) -> SubCallRecord:
        """The async twin of :meth:`_one`, run on the caller's event loop."""
        record, replayed, child_config = self._open(kind, prompt, subset, config)
        if replayed is not None:
            return replayed
        started = time.monotonic()
        try:
            self._check_can_call(prompt, kind, subset)
            function = self._acall_leaf if kind == "llm_query" else self._acall_recursive
            payload = {"prompt": prompt, "subset": subset, "record": record}
            await RunnableLambda(function, name=kind).ainvoke(payload, child_config)
        except asyncio.CancelledError:
            record["error"] = CANCELLED_MESSAGE
            self._close(record, started)
            raise
        except Exception as error:
            record["error"] = _error_text(error)
        return self._close(record, started)

    # -- leaf and child -----------------------------------------------------------------
    def _call_leaf(self, payload: dict[str, Any], config: RunnableConfig) -> str:
        runtime = self.runtime
        record: SubCallRecord = payload["record"]
        prompt: str = payload["prompt"]
        cached = self._memo_hit(record, prompt)
        if cached is not None:
            return cached
        message = call_model(
            runtime.sub_model,
            [HumanMessage(prompt)],
            config,
            meter=runtime.meter,
            depth=runtime.depth + 1,
            root=False,
            max_retries=runtime.settings.max_retries,
            backoff=runtime.settings.retry_backoff,
        )
        return self._settle_leaf(record, prompt, message)

    async def _acall_leaf(self, payload: dict[str, Any], config: RunnableConfig) -> str:
        runtime = self.runtime
        record: SubCallRecord = payload["record"]
        prompt: str = payload["prompt"]
        cached = self._memo_hit(record, prompt)
        if cached is not None:
            return cached
        message = await acall_model(
            runtime.sub_model,
            [HumanMessage(prompt)],
            config,
            meter=runtime.meter,
            depth=runtime.depth + 1,
            root=False,
            max_retries=runtime.settings.max_retries,
            backoff=runtime.settings.retry_backoff,
        )
        return self._settle_leaf(record, prompt, message)

    def _memo_hit(self, record: SubCallRecord, prompt: str) -> str | None:
        """The run's memoised answer to this exact (model, prompt), if any."""
        runtime = self.runtime
        key = (record["model"], prompt)
        if runtime.settings.memoize and key in runtime.memo:
            record["response"] = runtime.memo[key]
            record["cached"] = True
            return record["response"]
        return None

    def _settle_leaf(self, record: SubCallRecord, prompt: str, message: Any) -> str:
        text = message.text if isinstance(message.text, str) else str(message.content)
        _fill_usage(record, message)
        record["response"] = text
        if self.runtime.settings.memoize:
            self.runtime.memo[(record["model"], prompt)] = text
        return text

    def _call_recursive(self, payload: dict[str, Any], config: RunnableConfig) -> str:
        runtime = self.runtime
        record: SubCallRecord = payload["record"]
        query: str = payload["prompt"]
        subset = payload["subset"]
        if runtime.depth + 1 >= runtime.settings.max_depth or runtime.graph_factory is None:
            return self._call_leaf({**payload, "prompt": _leaf_prompt(query, subset)}, config)
        child = self._child_runtime(subset)
        graph = runtime.graph_factory()
        try:
            state = graph.invoke({"query": query}, self._child_config(config, child), context=child)
        finally:
            child.close()
        return _record_child(record, state, child)

    async def _acall_recursive(self, payload: dict[str, Any], config: RunnableConfig) -> str:
        """The async twin of :meth:`_call_recursive` (the child graph runs on the loop)."""
        runtime = self.runtime
        record: SubCallRecord = payload["record"]
        query: str = payload["prompt"]
        subset = payload["subset"]
        if runtime.depth + 1 >= runtime.settings.max_depth or runtime.graph_factory is None:
            return await self._acall_leaf(
                {**payload, "prompt": _leaf_prompt(query, subset)}, config
            )
        child = self._child_runtime(subset)
        graph = runtime.graph_factory()
        try:
            state = await graph.ainvoke(
                {"query": query}, self._child_config(config, child), context=child
            )
        except asyncio.CancelledError:
            child.cancel_in_flight()
            _close_later(child)
            raise
        child.close()
        return _record_child(record, state, child)

    def _child_config(self, config: RunnableConfig, child: RLMRuntime) -> RunnableConfig:
        child_config = patch_config(config, run_name="RLM")
        child_config["metadata"] = {
            **child_config.get("metadata", {}),
            "depth": child.depth,
            "iteration": 0,
            "parent_iteration": self.runtime.iteration,
        }
        return child_config

    def _child_runtime(self, subset: Any) -> RLMRuntime:
        runtime = self.runtime
        try:
            context = normalize_context("" if subset is None else subset)
        except ContextTypeError as error:
            raise HostFunctionError(f"recursive_lm: {error}") from error
        return RLMRuntime(
            context=context,
            root_model=runtime.sub_model,
            sub_model=runtime.sub_model,
            sandbox=runtime.sandbox,
            settings=runtime.settings,
            meter=runtime.meter.child(),
            depth=runtime.depth + 1,
            tools=runtime.tools,
            graph_factory=runtime.graph_factory,
            memo=runtime.memo,
            cancelled=runtime.cancelled,
            writer=runtime.writer,
            loop=runtime.loop,
            in_flight=runtime.in_flight,
            in_flight_lock=runtime.in_flight_lock,
        )

    # -- checks -------------------------------------------------------------------------
    def _check_can_call(self, prompt: str, kind: str, subset: Any) -> None:
        runtime = self.runtime
        if runtime.cancelled.is_set():
            raise HostFunctionError(CANCELLED_MESSAGE)
        runtime.meter.check()
        child = kind == "recursive_lm" and runtime.depth + 1 < runtime.settings.max_depth
        if child:
            return
        if kind != "llm_query":
            prompt = _leaf_prompt(prompt, subset)
        limit = self.max_prompt_chars()
        if len(prompt) > limit:
            raise HostFunctionError(
                f"{kind} prompt has {len(prompt):,} characters, more than the sub-model "
                f"accepts (about {limit:,}). Split it into smaller chunks and use "
                "llm_query_batched."
            )

    def max_prompt_chars(self) -> int:
        """Largest prompt the sub-model takes (configured, known window, or default)."""
        configured = self.runtime.settings.sub_prompt_chars
        if configured:
            return configured
        window = context_window_chars(self.runtime.sub_model)
        return int(window * WINDOW_SHARE) if window else DEFAULT_SUB_PROMPT_CHARS

    def _sub_model_name(self) -> str:
        return model_id(self.runtime.sub_model)

    def _from_replay(self, record: SubCallRecord) -> SubCallRecord | None:
        """While replaying a resumed run: the recorded result of this call, if it matches.

        The first unused record with the same prompt hash and kind: the items of a batch
        run concurrently, so they may ask in another order than they were recorded.
        """
        queue = self.runtime.replay_queue
        if not queue:
            return None
        with self.runtime.lock:
            for index, recorded in enumerate(queue):
                if (recorded["prompt_hash"], recorded["kind"]) == (
                    record["prompt_hash"],
                    record["kind"],
                ):
                    return queue.pop(index)
        return None


def _new_record(kind: str, model: str, depth: int, prompt: str) -> SubCallRecord:
    return SubCallRecord(
        id=str(uuid.uuid4()),
        kind=kind,
        model=model,
        depth=depth,
        prompt_chars=len(prompt),
        prompt_hash=prompt_hash(prompt),
        prompt_preview=prompt[:PREVIEW_CHARS],
        response=None,
        error=None,
        seconds=0.0,
        input_tokens=0,
        output_tokens=0,
        cached=False,
        child=None,
    )


def _copy_record(record: SubCallRecord) -> SubCallRecord:
    """A duplicate item of a batch: the same outcome, served without another call."""
    copy = SubCallRecord(**record)  # type: ignore[typeddict-item]
    copy["id"] = str(uuid.uuid4())
    copy["cached"] = True
    copy["seconds"] = 0.0
    copy["input_tokens"] = copy["output_tokens"] = 0
    return copy


def _result_text(record: SubCallRecord) -> str:
    """What model code gets for one item: the response, or ``"ERROR: <reason>"``."""
    if record["error"] is not None:
        return ERROR_PREFIX + record["error"]
    return record["response"] or ""


def _error_text(error: Exception) -> str:
    """The reason model code reads for a failed sub-call, naming what to do."""
    if isinstance(error, BudgetExceeded):
        return f"{error}. No more sub-calls: finish now with FINAL(best answer)."
    if isinstance(error, ModelCallError) and error.overflow:
        return (
            f"the prompt is too long for the sub-model ({error}). Split it into smaller "
            "chunks and use llm_query_batched."
        )
    if isinstance(error, HostFunctionError | ModelCallError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _record_child(record: SubCallRecord, state: Mapping[str, Any], child: RLMRuntime) -> str:
    """Roll a finished child RLM up into its parent's record; return its answer."""
    answer = state.get("answer") or ""
    record["response"] = answer
    record["child"] = {
        "answer": answer,
        "iterations": state.get("iteration", 0),
        "finished_reason": state.get("finished_reason"),
        "depth": child.depth,
        "repl_history": state.get("repl_history", []),
        "usage": child.meter.snapshot(),
    }
    return answer


def _close_later(runtime: RLMRuntime) -> None:
    """Close a cancelled child's session off the event loop (its cell may still hold it)."""
    threading.Thread(target=runtime.close, name="rlm-child-close", daemon=True).start()


def _fill_usage(record: SubCallRecord, message: Any) -> None:
    usage = getattr(message, "usage_metadata", None) or {}
    record["input_tokens"] = int(usage.get("input_tokens", 0))
    record["output_tokens"] = int(usage.get("output_tokens", 0))


def _leaf_prompt(query: str, subset: Any) -> str:
    if subset is None or subset == "":
        return query
    text = (
        subset if isinstance(subset, str) else json.dumps(subset, ensure_ascii=False, default=str)
    )
    return f"{query}\n\nContext:\n{text}"


def _require_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise HostFunctionError(f"{where} must be a str, not {type(value).__name__}")
    return value


def _require_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise HostFunctionError(f"{where} must be a list, not {type(value).__name__}")
    return list(value)


def _tool_bridge(tool: Callable[..., Any]) -> HostFunction:
    """A host function calling a user tool (a plain function or a LangChain BaseTool)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            if hasattr(tool, "invoke") and hasattr(tool, "args"):
                if args and not kwargs:
                    names = list(tool.args)
                    kwargs = dict(zip(names, args, strict=False))
                result = tool.invoke(kwargs, ensure_config())
            else:
                result = tool(*args, **kwargs)
        except HostFunctionError:
            raise
        except Exception as error:
            raise HostFunctionError(f"{type(error).__name__}: {error}") from error
        return _jsonable(result)

    return call


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value
