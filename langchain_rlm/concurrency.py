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
the sync face of the graph's nodes) on the library's one long-lived bridge loop; the
calling thread only waits. :func:`stream_in_thread` runs a synchronous iterator
(``RLM.stream``: LangGraph's sync ``stream``) in a helper thread while the caller waits.
Context variables (LangChain's run tree) carry over. An interrupt of that wait (Ctrl-C)
cancels the work on the loop and propagates once the cancellation has finished: the
run's requests are aborted and its sandbox workers are being closed.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

__all__ = ["CancelScope", "TreeLimiter", "in_sync_entry", "run_sync", "stream_in_thread"]

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

    OpenAI model calls then use an HTTP connection pool of the bridge loop's own
    (:func:`langchain_rlm.models.without_sdk_retries`): provider clients such as OpenAI's
    cache one async HTTP client per process, bound to the first event loop that used it,
    so sharing it would break the caller's own later ``ainvoke`` on its loop (and the
    other way round).
    """
    return _SYNC_ENTRY.get()


class CancelScope:
    """The bridge calls started, in any thread, under one synchronous entry point.

    :func:`stream_in_thread` runs a synchronous iterator (LangGraph's sync ``stream``,
    which runs nodes in executor threads of its own) in a thread under a scope; on an
    interrupt, :meth:`cancel` cancels every bridge call of that scope, wherever it waits,
    and any bridge call started later under it is cancelled at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: set[_BridgeCall[Any]] = set()
        self.cancelled = False

    def add(self, call: _BridgeCall[Any]) -> None:
        with self._lock:
            self._calls.add(call)
            cancelled = self.cancelled
        if cancelled:
            call.request_cancel()

    def discard(self, call: _BridgeCall[Any]) -> None:
        with self._lock:
            self._calls.discard(call)

    def cancel(self) -> None:
        """Ask every call of the scope to stop (returns at once)."""
        with self._lock:
            self.cancelled = True
            calls = list(self._calls)
        for call in calls:
            call.request_cancel()


_CANCEL_SCOPE: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar(
    "langchain_rlm_cancel_scope", default=None
)


class _BridgeCall(Generic[T]):
    """A coroutine running as a task on a loop in another thread, awaited from this one.

    Unlike ``asyncio.run_coroutine_threadsafe``, an interrupted wait (``KeyboardInterrupt``
    in the waiting thread) cancels the task *and waits until it has finished*: its
    ``finally`` blocks and handlers (which abort sub-calls and start closing sandbox
    workers) have run when the interrupt propagates, and the next call never overlaps
    the tail of the cancelled one. A second interrupt during that wait ends the wait.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        coroutine: Coroutine[Any, Any, T],
        context: contextvars.Context,
    ) -> None:
        self._loop = loop
        self._finished = threading.Event()
        self._task: asyncio.Future[T] | None = None
        self._scope = _CANCEL_SCOPE.get()
        loop.call_soon_threadsafe(self._start, coroutine, context=context)
        if self._scope is not None:
            self._scope.add(self)

    def _start(self, coroutine: Coroutine[Any, Any, T]) -> None:
        self._task = asyncio.ensure_future(coroutine)  # in the caller's context (a copy)
        self._task.add_done_callback(self._done)

    def _done(self, _: object) -> None:
        self._finished.set()
        if self._scope is not None:
            self._scope.discard(self)

    def _cancel_task(self) -> None:
        assert self._task is not None  # callbacks run in order: _start came first
        self._task.cancel()

    def request_cancel(self) -> None:
        """Ask the task to stop (returns at once)."""
        if not self._finished.is_set():
            self._loop.call_soon_threadsafe(self._cancel_task)

    def cancel(self) -> None:
        """Cancel the task and block until it has finished (a no-op once it has)."""
        if not self._finished.is_set():
            self.request_cancel()
            self._finished.wait()

    def result(self) -> T:
        """Block until the task is done and return its result (or raise its exception).

        An interrupt of the wait cancels the task and propagates once it has finished.
        """
        try:
            self._finished.wait()
        except BaseException:
            self.cancel()
            raise
        assert self._task is not None
        return self._task.result()


def _bridge_context() -> contextvars.Context:
    """The caller's context variables plus the sync-entry flag, for a bridge task."""
    context = contextvars.copy_context()
    context.run(_SYNC_ENTRY.set, True)
    return context


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion from synchronous code and return its result.

    It runs on the library's bridge loop (see :func:`_bridge`); the caller's context
    variables (LangChain's run tree) travel with it. If the wait is interrupted (e.g. by
    ``KeyboardInterrupt``), the coroutine is cancelled and the interrupt propagates once
    its cancellation has finished (see :class:`_BridgeCall`). Called from the bridge loop's
    own thread (sync code nested in a running tree), it runs on a fresh loop in a helper
    thread.
    """
    loop = _bridge()
    context = _bridge_context()
    if threading.current_thread() is _bridge_thread:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlm-sync") as pool:
            return pool.submit(context.run, asyncio.run, coroutine).result()
    return _BridgeCall(loop, coroutine, context).result()


_END = object()
"""Marks the end of an iterator bridged by :func:`stream_in_thread`."""
STREAM_THREAD_NAME = "langchain-rlm-stream"


def stream_in_thread(make_iterator: Callable[[], Iterator[T]]) -> Generator[T, None, None]:
    """Iterate ``make_iterator()`` (a synchronous iterator) in a helper thread.

    The calling thread only waits on a queue, so Ctrl-C lands there and not in the
    iterator's own machinery: LangGraph's sync ``stream`` runs nodes in executor threads
    of its own and, on an interrupt, waits for them, and a node waiting for a hung
    sub-call would hang the interrupt. On an interrupt, or when the consumer leaves early
    (``break``, ``close()``), every bridge call of the iteration (:class:`CancelScope`)
    is cancelled and the helper thread is awaited before the exception propagates (a
    second interrupt ends that wait). The iterator's own errors propagate.
    """
    scope = CancelScope()
    items: queue.Queue[Any] = queue.Queue()
    context = contextvars.copy_context()
    context.run(_CANCEL_SCOPE.set, scope)

    def produce() -> None:
        try:
            for item in make_iterator():
                items.put((True, item))
        except BaseException as error:  # handed to the consumer
            items.put((False, error))
        else:
            items.put(_END)

    thread = threading.Thread(target=context.run, args=(produce,), name=STREAM_THREAD_NAME)
    thread.daemon = True
    thread.start()
    try:
        while (entry := items.get()) is not _END:
            ok, value = entry
            if not ok:
                raise value
            yield value
    except BaseException:  # interrupted, the consumer left (GeneratorExit), or an error
        scope.cancel()
        thread.join()
        raise
