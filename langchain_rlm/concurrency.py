"""One concurrency limit for a whole RLM tree, and running coroutines from sync code.

:class:`TreeLimiter` bounds the sub-calls in flight across every depth of one run.
A batch runs in *lanes*: each lane takes the next item of the batch until none is left.
A lane needs one of the tree's ``limit`` slots, with one exception: an RLM that already
holds a slot (every child RLM does: its parent's lane runs it) also runs its own batch in
a lane of its own, on the slot it holds. That lane always makes progress, so a child
waiting for free slots can never deadlock the tree, and the number of sub-calls (model
requests and child RLMs, hence sandbox workers) in flight stays at most ``limit`` plus
the top-level RLM, whatever the depth. No thread is involved: lanes are asyncio tasks.

:func:`run_sync` runs a coroutine to completion from synchronous code (``RLM.invoke``,
``RLM.stream``, the sync face of the graph's nodes): on a fresh event loop in the
calling thread, or, when that thread already runs a loop (a notebook, an async caller),
on a fresh loop in a helper thread. Context variables (LangChain's run tree) carry over.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["TreeLimiter", "in_sync_entry", "run_sync"]

T = TypeVar("T")


class TreeLimiter:
    """At most ``limit`` concurrent sub-calls in one RLM tree (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the concurrency limit must be >= 1, got {limit}")
        self.limit = limit
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._semaphores = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _semaphore(self) -> asyncio.Semaphore:
        """The slots, on the running loop (one loop runs a whole tree)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            semaphore = self._semaphores.get(loop)
            if semaphore is None:
                semaphore = self._semaphores[loop] = asyncio.Semaphore(self.limit)
            return semaphore

    async def map(
        self, count: int, work: Callable[[int], Awaitable[T]], *, holds_slot: bool
    ) -> list[T]:
        """``[await work(0), ..., await work(count - 1)]``, run in lanes, in order.

        ``work`` must not raise (failed items report their failure as values), except for
        cancellation, which cancels every lane. ``holds_slot``: the caller already holds
        a slot, so one lane runs on it without waiting.
        """
        results: dict[int, T] = {}
        indices = iter(range(count))
        started: set[asyncio.Task[None]] = set()

        async def drain() -> None:
            for index in indices:
                results[index] = await work(index)

        async def lane() -> None:
            async with self._semaphore():
                task = asyncio.current_task()
                assert task is not None
                started.add(task)
                await drain()

        extra = max(0, min(count, self.limit) - (1 if holds_slot else 0))
        lanes = [asyncio.ensure_future(lane()) for _ in range(extra)]
        try:
            if holds_slot:
                await drain()
                for task in lanes:  # every item is taken: lanes still queued are not needed
                    if task not in started:
                        task.cancel()
            outcomes = await asyncio.gather(*lanes, return_exceptions=True)
        except BaseException:
            for task in lanes:
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            raise
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):
                raise outcome
        return [results[index] for index in range(count)]


BRIDGE_THREAD_NAME = "langchain-rlm-sync-bridge"
BRIDGE_EXECUTOR_THREADS = 64
"""Threads for models without native async on the bridge loop (LangChain runs their sync
code in the loop's default executor, which would otherwise have ``cpu + 4`` threads)."""

_bridge_lock = threading.Lock()
_bridge_loop: asyncio.AbstractEventLoop | None = None
_bridge_thread: threading.Thread | None = None


def _bridge() -> asyncio.AbstractEventLoop:
    """One long-lived event loop in a daemon thread, for every sync entry point.

    One loop for the process, not ``asyncio.run`` per call: HTTP clients (OpenAI's async
    client) pool keep-alive connections per loop, and a connection made on a loop that was
    closed since breaks the next request ("Event loop is closed").
    """
    global _bridge_loop, _bridge_thread
    with _bridge_lock:
        if _bridge_loop is None or _bridge_thread is None or not _bridge_thread.is_alive():
            loop = asyncio.new_event_loop()
            loop.set_default_executor(
                ThreadPoolExecutor(BRIDGE_EXECUTOR_THREADS, thread_name_prefix=BRIDGE_THREAD_NAME)
            )
            thread = threading.Thread(target=loop.run_forever, name=BRIDGE_THREAD_NAME, daemon=True)
            thread.start()
            _bridge_loop, _bridge_thread = loop, thread
        return _bridge_loop


_SYNC_ENTRY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "langchain_rlm_sync_entry", default=False
)


def in_sync_entry() -> bool:
    """True inside a coroutine that :func:`run_sync` runs for a synchronous caller.

    Model calls then use the model's sync API (in an executor thread): provider clients
    such as OpenAI's cache one async HTTP client per process, bound to the first event loop
    that used it, so async calls from the bridge loop would break the caller's own later
    ``ainvoke`` on its loop (and the other way round).
    """
    return _SYNC_ENTRY.get()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion from synchronous code and return its result.

    It runs on the library's bridge loop (see :func:`_bridge`); the caller's context
    variables (LangChain's run tree) travel with it. If the wait is interrupted (e.g. by
    ``KeyboardInterrupt``), the coroutine is cancelled. Called from the bridge loop's own
    thread (sync code nested in a running tree), it runs on a fresh loop in a helper thread.
    """
    loop = _bridge()
    token = _SYNC_ENTRY.set(True)
    try:
        if threading.current_thread() is _bridge_thread:
            context = contextvars.copy_context()
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlm-sync") as pool:
                return pool.submit(context.run, asyncio.run, coroutine).result()
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)  # carries the flag
    finally:
        _SYNC_ENTRY.reset(token)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise
