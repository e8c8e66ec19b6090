"""The call journal: model and tool calls recorded as they complete, replayed by key.

A resumed run must give the answer of the uninterrupted one and must never pay twice for
a call whose response had arrived. Checkpoints are written when a node ends, so a run
killed inside ``execute`` (after 999 of 1,000 sub-calls) would re-pay everything that
step did. The journal closes that gap: every sub-model call, every root call of a child
RLM and every user-tool call is written, the moment it completes, as a *pending write*
of the checkpoint the step started from (``BaseCheckpointSaver.put_writes``: the
checkpointer's own mechanism for partial progress of a step, stored in the same
database). The writes use a channel no node reads and a task id no task has, so LangGraph
never applies them; :meth:`CallJournal.load` reads them back on resume.

Keys hold everything that determines a call: its kind, the model, the full prompt (for a
root call, the whole conversation; for ``recursive_lm``, the query and a canonical digest
of the subset), a tool's name and canonical arguments. Calls with the same key are
matched in order (the n-th occurrence gets the n-th record), so a batch of identical
queries over different subsets maps every answer to its own item, and a changed context
or prompt on resume is a miss that gets a real call. A call that differs on replay (code
that uses ``random`` without a seed, or the clock) is made again and logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver

__all__ = ["JOURNAL_CHANNEL", "CallJournal", "CheckpointSink", "journal_key"]

logger = logging.getLogger("langchain_rlm.journal")

JOURNAL_CHANNEL = "__rlm_journal__"
"""The pending-write channel journal entries are stored under (no node reads it)."""

TASK_PREFIX = "rlm-journal:"
"""Task id prefix of journal writes (no LangGraph task has such an id)."""


def journal_key(*parts: str) -> str:
    """A stable key from the parts that determine a call."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys: equal values give equal text."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


class CheckpointSink:
    """Writes journal entries as pending writes of the running step's checkpoint."""

    def __init__(self, checkpointer: BaseCheckpointSaver[Any]) -> None:
        self.checkpointer = checkpointer

    async def write(self, config: RunnableConfig, entry: Mapping[str, Any]) -> None:
        writes = [(JOURNAL_CHANNEL, dict(entry))]
        task_id = TASK_PREFIX + str(uuid.uuid4())
        try:
            await self.checkpointer.aput_writes(config, writes, task_id)
        except NotImplementedError:  # a sync-only saver (SqliteSaver, PostgresSaver)
            await asyncio.to_thread(self.checkpointer.put_writes, config, writes, task_id)

    def load(self, config: RunnableConfig) -> list[dict[str, Any]]:
        """The entries written against the thread's latest checkpoint."""
        saved = self.checkpointer.get_tuple(config)
        return _entries(saved.pending_writes if saved else None)

    async def aload(self, config: RunnableConfig) -> list[dict[str, Any]]:
        try:
            saved = await self.checkpointer.aget_tuple(config)
        except NotImplementedError:
            saved = await asyncio.to_thread(self.checkpointer.get_tuple, config)
        return _entries(saved.pending_writes if saved else None)


def _entries(pending: Iterable[tuple[str, str, Any]] | None) -> list[dict[str, Any]]:
    return [
        dict(value)
        for task_id, channel, value in pending or ()
        if channel == JOURNAL_CHANNEL
        and str(task_id).startswith(TASK_PREFIX)
        and isinstance(value, Mapping)
    ]


class CallJournal:
    """Recorded calls of a run: served by key on replay, appended as calls complete.

    A model call writes two entries: ``start`` before the request goes out and the result
    when it arrives. A call whose start was written but whose result was not was in
    flight at the kill: it may have been paid, so it counts as a call
    (:attr:`in_flight_usage`), and it is made again on resume.
    """

    def __init__(
        self,
        entries: Iterable[Mapping[str, Any]] = (),
        *,
        sink: CheckpointSink | None = None,
        config: RunnableConfig | None = None,
    ) -> None:
        self.loaded = [dict(entry) for entry in entries]
        """Entries read back on resume (their usage was paid before the kill)."""
        self.sink = sink
        self.config = config
        """The checkpoint new entries are written against (set by the running node)."""
        self._queues: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self._lock = threading.Lock()
        finished = {entry.get("call") for entry in self.loaded if not entry.get("start")}
        self.in_flight_usage = [
            dict(entry.get("usage") or {})
            for entry in self.loaded
            if entry.get("start") and entry.get("call") not in finished
        ]
        """Usage stubs (model, depth, root) of calls in flight at the kill."""
        self.completed = [entry for entry in self.loaded if not entry.get("start")]
        """Entries of calls that completed before the kill (paid, replayed)."""
        for entry in self.completed:
            self._queues[str(entry.get("key"))].append(entry)

    @property
    def active(self) -> bool:
        """True when calls are recorded or replayed (a checkpointer, or entries to serve).

        Callers compute keys only then: a run without a checkpointer pays nothing for the
        journal. The methods below take ``""`` for "no key" and do nothing with it.
        """
        return self.sink is not None or bool(self.completed)

    def take(self, key: str) -> dict[str, Any] | None:
        """The next unused recorded entry for ``key``, or ``None`` (a miss)."""
        if not key:
            return None
        with self._lock:
            queue = self._queues.get(key)
            return queue.popleft() if queue else None

    async def start(self, key: str, usage: Mapping[str, Any] | None = None) -> str:
        """Record that a call is about to be made; returns its id for :meth:`add`."""
        if not key or self.sink is None:
            return ""
        call = str(uuid.uuid4())
        await self._write({"key": key, "call": call, "start": True, "usage": dict(usage or {})})
        return call

    async def add(
        self, key: str, value: Any, usage: Mapping[str, Any] | None = None, call: str = ""
    ) -> None:
        """Record a completed call durably (when a checkpointer is configured)."""
        await self._write({"key": key, "call": call, "value": value, "usage": dict(usage or {})})

    async def _write(self, entry: dict[str, Any]) -> None:
        if self.sink is None or self.config is None or not entry["key"]:
            return
        try:
            await self.sink.write(self.config, entry)
        except Exception:  # the call itself is fine; only its durability is lost
            logger.exception("could not write a journal entry: a resume would repeat this call")
