"""The sub-call Runnables: what ``llm_query``, ``recursive_lm`` and user tools do on the host.

Model code in the sandbox calls thin bridges (:meth:`SubCallRunner.host_functions`).
They run in the session's own thread, hand the work to the run's event loop and wait
for it; everything else here is asyncio. Each sub-call runs as a named Runnable
(``llm_query`` / ``recursive_lm``) under the ``execute`` node's config, so traces nest.
A sub-call is either

* a leaf: one sub-model call, or
* a child RLM: at depth ``d`` with ``d + 1 < max_depth``, ``recursive_lm`` runs a child
  graph (built by the factory the graph hands over, so this module never imports
  ``graph.py``) over the context subset, with the sub-model as its root. Its result
  rolls up into the parent's record.

Before a call: the cancel flag, the tree-wide budget (reserved atomically), the
sub-prompt size guard and the per-run memo. Batches run in the tree's lanes
(:class:`~langchain_rlm.concurrency.TreeLimiter`): one limit for every depth, results
in order, a failed item as the string ``"ERROR: <reason>"`` instead of a failed batch.
While a resumed run replays its recorded cells, calls are answered from the records.

Trace inputs hold what a model receives, never raw context: ``llm_query`` traces its
prompt; ``recursive_lm`` traces its query and a *description* of the subset (type, size,
sha256), and its child RLM shows the description too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda, patch_config
from langchain_core.tools import BaseTool
from langgraph.graph.state import CompiledStateGraph

try:
    from langgraph._internal._constants import CONFIG_KEY_DURABILITY
except ImportError:  # pragma: no cover - where LangGraph keeps it may move
    CONFIG_KEY_DURABILITY = "__pregel_durability"

from langchain_rlm.context import ContextTypeError, normalize_context
from langchain_rlm.journal import canonical_json, journal_key
from langchain_rlm.models import ModelCallError, acall_model, context_window_chars, model_id
from langchain_rlm.runtime import RLMClosedError, RLMRuntime
from langchain_rlm.sandbox.base import HostFunction, HostFunctionError
from langchain_rlm.state import DEFAULT_SUB_PROMPT_CHARS, SubCallRecord
from langchain_rlm.usage import BudgetExceeded

__all__ = ["ERROR_PREFIX", "SubCallRunner", "describe_subset", "prompt_hash"]

logger = logging.getLogger("langchain_rlm.recursion")

ERROR_PREFIX = "ERROR: "
"""How a failed item of a batch comes back to model code."""

CANCELLED_MESSAGE = "the run was cancelled"
"""The error of a sub-call stopped because the caller cancelled the run."""

TOOL_KIND = "tool"
"""Record kind of a user-tool call."""

PREVIEW_CHARS = 200
"""Characters of a sub-call prompt kept in its record."""

WINDOW_SHARE = 0.9
"""Share of the sub-model's window a prompt may fill (the rest is for the answer)."""

WAIT_SLICE_SECONDS = 0.25
"""How often a bridge waiting for the loop checks that the run is still going."""

ChildGraphFactory = Callable[[], CompiledStateGraph[Any, Any, Any, Any]]


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def subset_digest(subset: Any) -> str:
    """A canonical sha256 of a context subset (key order and spacing do not matter)."""
    if subset is None:
        subset = ""
    text = (
        subset
        if isinstance(subset, str)
        else json.dumps(subset, ensure_ascii=False, sort_keys=True, default=str)
    )
    return prompt_hash(text)


def describe_subset(subset: Any) -> dict[str, Any]:
    """What traces show of a context subset: type, size and digest, never the data."""
    size = len(subset) if isinstance(subset, str | list | dict) else 0
    return {"type": type(subset).__name__, "size": size, "sha256": subset_digest(subset)}


class SubCallRunner:
    """Host side of the REPL's model functions and tools for one RLM (one depth)."""

    def __init__(self, runtime: RLMRuntime, child_graph: ChildGraphFactory | None = None) -> None:
        self.runtime = runtime
        self.child_graph = child_graph

    # -- the functions model code sees (run in the session's thread) -------------------
    def host_functions(self) -> dict[str, HostFunction]:
        """The callables to expose in the REPL, user tools included."""
        functions: dict[str, HostFunction] = {
            "llm_query": self.llm_query,
            "llm_query_batched": self.llm_query_batched,
            "recursive_lm": self.recursive_lm,
            "recursive_lm_batched": self.recursive_lm_batched,
        }
        for name, tool in self.runtime.config.tools.items():
            functions[name] = functools.partial(self.call_tool, tool)
        return functions

    def llm_query(self, prompt: Any) -> str:
        """One sub-model call. Raises HostFunctionError with a readable reason."""
        text = _require_str(prompt, "llm_query(prompt)")
        return _single(self._blocking(self.abatch("llm_query", [(text, None)])))

    def llm_query_batched(self, prompts: Any) -> list[str]:
        """Concurrent sub-model calls, in order; a failed item is ``"ERROR: <reason>"``.

        Bad arguments (not a list of str) raise :class:`HostFunctionError` for the whole
        call; budget spent, prompt too large, retries exhausted or cancelled fail items.
        """
        items = _require_list(prompts, "llm_query_batched(prompts)")
        texts = [_require_str(p, f"llm_query_batched(prompts)[{i}]") for i, p in enumerate(items)]
        return self._blocking(self.abatch("llm_query", [(text, None) for text in texts]))

    def recursive_lm(self, query: Any, context_subset: Any = None) -> str:
        """A child RLM over ``context_subset`` (or a leaf call when depth is exhausted)."""
        text = _require_str(query, "recursive_lm(query, context_subset)")
        return _single(self._blocking(self.abatch("recursive_lm", [(text, context_subset)])))

    def recursive_lm_batched(self, queries: Any, context_subsets: Any = None) -> list[str]:
        """Concurrent ``recursive_lm`` calls, one per (query, subset) pair, in order."""
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
        return self._blocking(self.abatch("recursive_lm", pairs))

    def call_tool(self, tool: BaseTool, *args: Any, **kwargs: Any) -> Any:
        """A user tool called from model code (positional arguments map to its fields)."""
        if args:
            names = list(tool.args)
            if len(args) > len(names):
                raise HostFunctionError(
                    f"{tool.name}() takes {len(names)} arguments ({', '.join(names)}), "
                    f"{len(args)} given"
                )
            kwargs = {**dict(zip(names, args, strict=False)), **kwargs}
        return self._blocking(self._atool(tool, kwargs))

    def _blocking(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the run's loop from the session's thread and wait for it.

        The wait never outlives the run: a cancelled run or a closed loop ends it.
        """
        run = self.runtime.run
        loop = run.loop
        if loop is None or loop.is_closed() or run.cancelled.is_set():
            coroutine.close()
            raise HostFunctionError(CANCELLED_MESSAGE)
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        with run.in_flight_lock:
            run.in_flight.add(future)
        try:
            while True:
                try:
                    return future.result(timeout=WAIT_SLICE_SECONDS)
                except concurrent.futures.TimeoutError:
                    if run.cancelled.is_set() or loop.is_closed():
                        future.cancel()
                        raise HostFunctionError(CANCELLED_MESSAGE) from None
                except concurrent.futures.CancelledError:
                    raise HostFunctionError(CANCELLED_MESSAGE) from None
        finally:
            with run.in_flight_lock:
                run.in_flight.discard(future)

    # -- batches (on the loop) -----------------------------------------------------------
    async def abatch(self, kind: str, items: Sequence[tuple[str, Any]]) -> list[str]:
        """Run items in the tree's lanes, keep their order, record them in order.

        Identical leaf items of one batch (same model, same prompt) are sent once when
        ``memoize`` is on; the copies are recorded as ``cached``.
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
        done = await runtime.run.limiter.map(
            len(todo),
            lambda i: self._one(kind, todo[i][0], todo[i][1]),
            holds_slot=runtime.depth > 0,
        )
        by_index = dict(zip(unique, done, strict=True))
        records = [
            by_index[index] if index in by_index else _copy_record(by_index[first[key]])  # type: ignore[index]
            for index, key in enumerate(keys)
        ]
        with runtime.local.lock:
            runtime.local.cell_records.extend(records)
        return [_result_text(record) for record in records]

    def _dedup_key(self, kind: str, prompt: str, subset: Any) -> str | None:
        """Key of a leaf call for in-batch memoisation (``None``: never deduplicated)."""
        settings = self.runtime.settings
        if not settings.memoize:
            return None
        if kind == "llm_query":
            return prompt
        if not self._spawns_child():
            try:
                return _leaf_prompt(prompt, subset)
            except (TypeError, ValueError):
                return None
        return None

    async def _one(self, kind: str, prompt: str, subset: Any) -> SubCallRecord:
        """One sub-call, as a named Runnable; never raises except when cancelled."""
        runtime = self.runtime
        record = _new_record(kind, self._sub_model_name(), runtime.depth, prompt, subset)
        replayed = self._from_replay(record)
        if replayed is not None:
            return replayed
        config = self._subcall_config(kind, record)
        await runtime.emit(
            {
                "type": "subcall_start",
                "id": record["id"],
                "kind": kind,
                "prompt_preview": record["prompt_preview"],
            },
            config,
        )
        started = time.monotonic()
        try:
            self._check_can_call(prompt, kind, subset)
            if kind == "llm_query":  # the record's hash is the prompt's: hash it once
                call = functools.partial(self._leaf, record, prompt, digest=record["prompt_hash"])
                trace_input: dict[str, Any] = {"prompt": prompt}
            else:
                call = functools.partial(self._recursive, record, prompt, subset)
                trace_input = {"query": prompt, "context_subset": describe_subset(subset)}
            await RunnableLambda(_ignore_input(call), name=kind).ainvoke(trace_input, config)
        except asyncio.CancelledError:
            record["error"] = CANCELLED_MESSAGE
            await self._close(record, started, config)
            raise
        except (HostFunctionError, ModelCallError, BudgetExceeded, RLMClosedError) as error:
            record["error"] = _error_text(error)
        except Exception as error:  # a bug on the host: tell the model, log it loudly
            logger.exception("%s failed on the host", kind)
            record["error"] = f"{kind} failed on the host: {type(error).__name__}: {error}"
        await self._close(record, started, config)
        return record

    def _subcall_config(self, kind: str, record: SubCallRecord) -> RunnableConfig:
        runtime = self.runtime
        config = patch_config(runtime.local.node_config or {}, run_name=kind)
        config["metadata"] = {
            **config.get("metadata", {}),
            "depth": runtime.depth,
            "iteration": runtime.local.iteration,
            "subcall_id": record["id"],
        }
        return config

    async def _close(self, record: SubCallRecord, started: float, config: RunnableConfig) -> None:
        record["seconds"] = round(time.monotonic() - started, 6)
        await self.runtime.emit(
            {
                "type": "subcall_end",
                "id": record["id"],
                "kind": record["kind"],
                "error": record["error"],
                "response_preview": (record["response"] or "")[:PREVIEW_CHARS],
                "seconds": record["seconds"],
            },
            config,
        )

    # -- leaf, child, tool ---------------------------------------------------------------
    async def _leaf(
        self, record: SubCallRecord, prompt: str, config: RunnableConfig, digest: str = ""
    ) -> str:
        """One sub-model call (``digest``: the prompt's sha256 when the caller has it)."""
        runtime = self.runtime
        digest = digest or prompt_hash(prompt)
        memo_key = (record["model"], digest)
        if runtime.settings.memoize and memo_key in runtime.run.memo:
            answer = runtime.run.memo[memo_key]
            record["response"] = answer
            record["cached"] = True
            return answer
        journal = runtime.run.journal
        key = journal_key("llm_query", record["model"], digest) if journal.active else ""
        entry = runtime.run.journal.take(key)
        if entry is not None:  # paid before a kill: replayed, not bought again
            text = str(entry.get("value") or "")
            usage = entry.get("usage") or {}
            record["input_tokens"] = int(usage.get("input_tokens", 0))
            record["output_tokens"] = int(usage.get("output_tokens", 0))
        else:
            usage = _journal_usage(record, runtime.depth + 1)
            call = await runtime.run.journal.start(key, usage)
            message = await acall_model(
                runtime.config.sub_model,
                [HumanMessage(prompt)],
                config,
                meter=runtime.meter,
                depth=runtime.depth + 1,
                root=False,
                max_retries=runtime.settings.max_retries,
                backoff=runtime.settings.retry_backoff,
            )
            text = message.text
            _fill_usage(record, message)
            usage = _journal_usage(record, runtime.depth + 1)
            await runtime.run.journal.add(key, text, usage, call)
        record["response"] = text
        if runtime.settings.memoize:
            runtime.run.memo[memo_key] = text
        return text

    async def _recursive(
        self, record: SubCallRecord, query: str, subset: Any, config: RunnableConfig
    ) -> str:
        if not self._spawns_child():
            return await self._leaf(record, _leaf_prompt(query, subset), config)
        assert self.child_graph is not None
        try:
            context = normalize_context("" if subset is None else subset)
        except ContextTypeError as error:
            raise HostFunctionError(f"recursive_lm: {error}") from error
        child = self.runtime.child(context)
        child_config = _without_durability(patch_config(config, run_name="RLM"))
        child_config["metadata"] = {
            **child_config.get("metadata", {}),
            "depth": child.depth,
            "iteration": 0,
            "parent_iteration": self.runtime.local.iteration,
        }
        try:
            state = await self.child_graph().ainvoke({"query": query}, child_config, context=child)
        except BaseException:
            child.close_soon()
            raise
        await child.aclose()
        return _record_child(record, state, child)

    async def _atool(self, tool: BaseTool, arguments: dict[str, Any]) -> Any:
        """A tool call, recorded like a sub-call: replays and resumes never run it again."""
        runtime = self.runtime
        call = f"{tool.name}({canonical_json(arguments)})"
        record = _new_record(TOOL_KIND, tool.name, runtime.depth, call, None)
        recorded = self._from_replay(record)
        entry = None if recorded else runtime.run.journal.take(record["prompt_hash"])
        if recorded is not None:
            record["response"] = recorded["response"]
        elif entry is not None:
            record["response"] = str(entry.get("value"))
        else:
            config = patch_config(runtime.local.node_config or {}, run_name=tool.name)
            started = time.monotonic()
            try:
                result = await tool.ainvoke(arguments, config)
            except HostFunctionError:
                raise
            except Exception as error:
                logger.warning("tool %s failed: %s: %s", tool.name, type(error).__name__, error)
                raise HostFunctionError(f"{type(error).__name__}: {error}") from error
            record["response"] = canonical_json(_jsonable(result))
            record["seconds"] = round(time.monotonic() - started, 6)
            await runtime.run.journal.add(record["prompt_hash"], record["response"])
        with runtime.local.lock:
            runtime.local.cell_records.append(record)
        return json.loads(record["response"] or "null")

    # -- checks -------------------------------------------------------------------------
    def _spawns_child(self) -> bool:
        """True when ``recursive_lm`` starts a child RLM at this depth."""
        runtime = self.runtime
        return runtime.depth + 1 < runtime.settings.max_depth and self.child_graph is not None

    def _check_can_call(self, prompt: str, kind: str, subset: Any) -> None:
        runtime = self.runtime
        if runtime.run.cancelled.is_set():
            raise HostFunctionError(CANCELLED_MESSAGE)
        runtime.meter.check()
        if kind == "recursive_lm" and self._spawns_child():
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
        window = context_window_chars(self.runtime.config.sub_model)
        return int(window * WINDOW_SHARE) if window else DEFAULT_SUB_PROMPT_CHARS

    def _sub_model_name(self) -> str:
        return model_id(self.runtime.config.sub_model)

    def _from_replay(self, record: SubCallRecord) -> SubCallRecord | None:
        """While replaying a resumed run: the recorded result of this call, if it matches.

        The first unused record with the same key (kind, prompt hash; the subset's digest
        for ``recursive_lm``): the items of a batch run concurrently, so they may ask in
        another order than they were recorded.
        """
        local = self.runtime.local
        with local.lock:
            queue = local.replay_queue
            if queue is None:  # not replaying
                return None
            for index, recorded in enumerate(queue):
                if (recorded["prompt_hash"], recorded["kind"]) == (
                    record["prompt_hash"],
                    record["kind"],
                ):
                    found = queue.pop(index)
                    break
            else:
                logger.warning(
                    "a replayed cell made a %s call that was not recorded (the cell diverged: "
                    "randomness, the clock, or another context?); it is made again: %r",
                    record["kind"],
                    record["prompt_preview"][:80],
                )
                return None
        if found["kind"] == "llm_query" and found["error"] is None and found["response"]:
            self.runtime.run.memo[(found["model"], found["prompt_hash"])] = found["response"]
        return found


def _ignore_input(call: Callable[[RunnableConfig], Any]) -> Callable[..., Any]:
    """A RunnableLambda body that traces its input but takes its data from a closure."""

    async def body(_input: Any, config: RunnableConfig) -> Any:
        return await call(config)

    return body


def _without_durability(config: RunnableConfig) -> RunnableConfig:
    """A child graph's config without the parent's durability mode.

    Child graphs have no checkpointer; LangGraph hands a parent's ``durability="sync"``
    down through the config, and a graph without a checkpointer cannot honour it.
    """
    configurable = {
        key: value
        for key, value in config.get("configurable", {}).items()
        if key != CONFIG_KEY_DURABILITY
    }
    return {**config, "configurable": configurable}


def _journal_usage(record: SubCallRecord, depth: int) -> dict[str, Any]:
    return {
        "model": record["model"],
        "depth": depth,
        "root": False,
        "input_tokens": record["input_tokens"],
        "output_tokens": record["output_tokens"],
    }


def _single(results: list[str]) -> str:
    result = results[0]
    if result.startswith(ERROR_PREFIX):
        raise HostFunctionError(result[len(ERROR_PREFIX) :])
    return result


def _new_record(kind: str, model: str, depth: int, prompt: str, subset: Any) -> SubCallRecord:
    key = prompt if kind == "llm_query" else f"{prompt}\x00{subset_digest(subset)}"
    return SubCallRecord(
        id=str(uuid.uuid4()),
        kind=kind,
        model=model,
        depth=depth,
        prompt_chars=len(prompt),
        prompt_hash=prompt_hash(key),
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
    if isinstance(error, RLMClosedError):
        return CANCELLED_MESSAGE
    return str(error)


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


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value
