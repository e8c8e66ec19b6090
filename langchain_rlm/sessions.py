"""REPL sessions an RLM keeps for its threads between calls (multi-turn).

A thread's session holds the variables its earlier queries computed, so a follow-up on
the same ``thread_id`` finds them without replaying anything. The cache is bounded:
at most ``max_size`` sessions (least recently used go first) and none older than
``ttl`` seconds of idleness. An evicted thread loses nothing that matters: its next
call replays the recorded cells from the checkpoint into a fresh session.

A thread runs one query at a time: :meth:`ThreadSessions.acquire` refuses a second
concurrent call on the same thread with :class:`RLMThreadBusyError`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from langchain_rlm.runtime import DepthState, RLMInputError

__all__ = [
    "DEFAULT_SESSION_CACHE_SIZE",
    "DEFAULT_SESSION_TTL",
    "RLMThreadBusyError",
    "ThreadSessions",
]

logger = logging.getLogger("langchain_rlm.sessions")

DEFAULT_SESSION_CACHE_SIZE = 8
"""Thread sessions an RLM keeps alive at most."""

DEFAULT_SESSION_TTL = 900.0
"""Seconds an idle thread session is kept."""


class RLMThreadBusyError(RLMInputError):
    """A thread already runs a query on this RLM."""


class ThreadSessions:
    """A bounded LRU + TTL cache of per-thread REPL state, with one call per thread."""

    def __init__(
        self,
        max_size: int = DEFAULT_SESSION_CACHE_SIZE,
        ttl: float = DEFAULT_SESSION_TTL,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_size = max_size
        self.ttl = ttl
        self._clock = clock
        self._idle: OrderedDict[str, tuple[DepthState, float]] = OrderedDict()
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def acquire(self, thread_id: str) -> DepthState | None:
        """Mark ``thread_id`` busy and take its kept state (``None`` if none is kept)."""
        evicted: list[DepthState] = []
        with self._lock:
            if thread_id in self._busy:
                raise RLMThreadBusyError(
                    f"thread {thread_id!r} is already running a query on this RLM: wait for "
                    "it to finish, or use another thread_id"
                )
            self._busy.add(thread_id)
            evicted = self._expire_locked()
            entry = self._idle.pop(thread_id, None)
        _close_all(evicted)
        return entry[0] if entry else None

    def release(self, thread_id: str, state: DepthState | None) -> None:
        """End a call: keep ``state`` for the thread (``None``: keep nothing)."""
        evicted: list[DepthState] = []
        with self._lock:
            self._busy.discard(thread_id)
            if state is not None:
                self._idle[thread_id] = (state, self._clock())
                self._idle.move_to_end(thread_id)
            evicted = self._expire_locked()
            while len(self._idle) > self.max_size:
                _, (old, _) = self._idle.popitem(last=False)
                evicted.append(old)
        _close_all(evicted)

    def discard(self, thread_id: str) -> None:
        """Close and forget a thread's kept state."""
        with self._lock:
            entry = self._idle.pop(thread_id, None)
        if entry is not None:
            entry[0].close()

    def clear(self) -> None:
        """Close every kept state."""
        with self._lock:
            states = [state for state, _ in self._idle.values()]
            self._idle.clear()
        _close_all(states)

    def __len__(self) -> int:
        return len(self._idle)

    def __contains__(self, thread_id: object) -> bool:
        return thread_id in self._idle

    def _expire_locked(self) -> list[DepthState]:
        now = self._clock()
        expired = [key for key, (_, used) in self._idle.items() if now - used > self.ttl]
        return [self._idle.pop(key)[0] for key in expired]


def _close_all(states: list[DepthState]) -> None:
    for state in states:
        try:
            state.close()
        except Exception:  # a session that fails to close must not break the caller
            logger.exception("closing an evicted thread session failed")
