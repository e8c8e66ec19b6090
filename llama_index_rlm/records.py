"""Nodes as REPL records, and which records actually informed an answer.

The RLM's REPL runs in a separate sandbox process, so what model code *read* cannot be
observed. What can be observed on the host is what left the sandbox:

* everything the code printed (``ReplStep.stdout``, whole, for the top level and for child
  RLMs),
* every sub-call prompt, in full, and every ``recursive_lm`` context subset: a LangChain
  callback handler (:class:`SubCallRecorder`) passed in the run's config sees the inputs of
  the ``llm_query`` / ``recursive_lm`` runs (the records in the result keep only a
  200-character preview),
* the answers given with ``FINAL``.

A record counts as a source when a distinctive piece of its text shows up there: any
piece of at least :data:`MIN_MATCH_CHARS` characters (found through windows of
:data:`WINDOW_CHARS` characters taken every :data:`WINDOW_STRIDE` characters), or the
whole text when it is shorter (and at least :data:`MIN_SHORT_TEXT_CHARS` long), or its id
(ids of at least :data:`MIN_ID_CHARS` characters that are not plain words, e.g. UUIDs or
``doc-0042``, as a whole token). Whitespace is collapsed and the escapes
``repr``/``json.dumps`` add when printing a dict are undone before matching.

Distinctiveness: a record whose matched pieces all occur in the text of a record that
matched better (shared boilerplate, the overlap of adjacent chunks, a duplicate) does not
count. Score = the share of the record's windows found (an id mention scores at least
:data:`ID_MENTION_SCORE`).

Gap: code that reads records and prints only a derived value (a count, a sum) leaves no
trace of which records it used; such runs report fewer (or no) source nodes.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from llama_index.core.instrumentation.events.base import BaseEvent
from llama_index.core.schema import BaseNode, NodeWithScore

from langchain_rlm.context import record_from_document
from langchain_rlm.result import ReplStep, RLMResult

__all__ = [
    "ID_MENTION_SCORE",
    "MIN_MATCH_CHARS",
    "RLMStepEvent",
    "SourceMatch",
    "SubCallRecorder",
    "evidence_texts",
    "match_sources",
    "node_records",
]

MIN_MATCH_CHARS = 40
"""A shared piece of at least this many characters makes a record a source."""
WINDOW_CHARS = 32
WINDOW_STRIDE = MIN_MATCH_CHARS - WINDOW_CHARS + 1
"""Any shared piece of ``WINDOW_CHARS + WINDOW_STRIDE - 1`` characters holds a whole window."""
MIN_SHORT_TEXT_CHARS = 16
"""Texts shorter than this are not distinctive; only their id can match."""
MIN_ID_CHARS = 8
"""Shorter ids ("0", "12") are everywhere in output; only longer ones are matched."""
_WORDLIKE_ID_RE = re.compile(r"[A-Za-z]+")
"""Ids that are plain words ("selectors") also occur in other records' text: not matched."""
ID_MENTION_SCORE = 0.5
"""Score floor of a record whose id was printed or sent to a sub-call."""

SUBCALL_RUN_NAMES = frozenset({"llm_query", "recursive_lm"})
"""Run names of the RLM's sub-call Runnables (see ``langchain_rlm.recursion``)."""
STEP_EVENT_NAME = "rlm_step"
"""Name of the LangChain custom events the RLM dispatches per step."""

_SPACE_RE = re.compile(r"\s+")
_UNICODE_ESCAPE_RE = re.compile(r"\\u([0-9a-fA-F]{4})")
_SIMPLE_ESCAPES = (("\\n", "\n"), ("\\t", "\t"), ("\\r", "\r"), ("\\'", "'"), ('\\"', '"'))


class RLMStepEvent(BaseEvent):
    """One RLM step (code, output, sub-call start/end, answer) as a LlamaIndex event.

    ``step`` is the event dict the RLM emits (see ``langchain_rlm.events``), e.g.
    ``{"type": "code", "iteration": 1, "code": "...", "depth": 0}``.
    """

    step: dict[str, Any]

    @classmethod
    def class_name(cls) -> str:
        return "RLMStepEvent"


# -- nodes -> records --------------------------------------------------------------------
def node_records(
    nodes: Iterable[BaseNode | NodeWithScore],
) -> tuple[list[dict[str, Any]], list[BaseNode]]:
    """``(records, nodes)``: one ``{"id", "text", "metadata"}`` per distinct node id.

    The text is the node's content without metadata (metadata is its own field, so model
    code can filter on it). Nodes with an id seen before are skipped.
    """
    records: list[dict[str, Any]] = []
    kept: list[BaseNode] = []
    seen: set[str] = set()
    for item in nodes:
        node = item.node if isinstance(item, NodeWithScore) else item
        record = record_from_document(node, len(records))
        if record["id"] in seen:
            continue
        seen.add(record["id"])
        records.append(record)
        kept.append(node)
    return records, kept


# -- what left the sandbox ---------------------------------------------------------------
class SubCallRecorder(BaseCallbackHandler):
    """Collects the full prompt and context subset of every sub-call of an RLM run.

    Pass it in the run's config callbacks; it sees the inputs of the ``llm_query`` and
    ``recursive_lm`` Runnables at every depth. ``on_step`` (optional) receives each
    ``rlm_step`` event dict.
    """

    run_inline = True
    """Called in the thread of the run, so nothing is lost or reordered."""

    def __init__(self, on_step: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._texts: list[str] = []
        self._on_step = on_step

    @property
    def texts(self) -> list[str]:
        """The sub-call prompts and subsets seen so far, as text."""
        with self._lock:
            return list(self._texts)

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: dict[str, Any],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("name") not in SUBCALL_RUN_NAMES or not isinstance(inputs, Mapping):
            return
        if "subcall_id" not in (metadata or {}):
            return
        found = [inputs.get("prompt"), inputs.get("subset")]
        texts = [_as_text(value) for value in found if value not in (None, "")]
        with self._lock:
            self._texts.extend(texts)

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if name == STEP_EVENT_NAME and self._on_step is not None and isinstance(data, dict):
            self._on_step(data)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def evidence_texts(result: RLMResult, recorded: Sequence[str] = ()) -> list[str]:
    """Everything of a run that left the sandbox: stdout, sub-call prompts, answers."""
    texts = list(recorded)
    texts.extend(_steps_evidence(result.repl_history))
    if result.answer:
        texts.append(result.answer)
    return texts


def _steps_evidence(steps: Iterable[ReplStep]) -> Iterable[str]:
    for step in steps:
        if step.stdout:
            yield step.stdout
        if step.final_answer:
            yield step.final_answer
        for call in step.sub_calls:
            if call.prompt_preview:
                yield call.prompt_preview
            if call.child is not None:
                yield from _steps_evidence(call.child.repl_history)


# -- matching ----------------------------------------------------------------------------
def _normalize(text: str) -> str:
    return _SPACE_RE.sub(" ", text).strip()


def _unescape(text: str) -> str:
    for escaped, plain in _SIMPLE_ESCAPES:
        text = text.replace(escaped, plain)
    text = _UNICODE_ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return text.replace("\\\\", "\\")


def _windows(text: str) -> list[str]:
    if len(text) <= MIN_MATCH_CHARS:
        return [text] if len(text) >= MIN_SHORT_TEXT_CHARS else []
    last = len(text) - WINDOW_CHARS
    starts = list(range(0, last + 1, WINDOW_STRIDE))
    if starts[-1] != last:
        starts.append(last)
    return [text[i : i + WINDOW_CHARS] for i in starts]


@dataclass
class SourceMatch:
    """How one record matched the evidence."""

    index: int
    """Position of the record in the context."""
    score: float
    matched: list[str] = field(default_factory=list)
    """The record's windows found in the evidence."""
    id_mentioned: bool = False
    text: str = ""


_ID_TOKEN_RE = re.compile(r"[\w-]+")
_PLAIN_ID_RE = re.compile(r"[\w-]+")


def _id_mentioned(identifier: str, tokens: set[str], haystack: str) -> bool:
    """An id printed on its own (``doc-1`` does not match ``doc-12``)."""
    if len(identifier) < MIN_ID_CHARS or _WORDLIKE_ID_RE.fullmatch(identifier):
        return False
    if _PLAIN_ID_RE.fullmatch(identifier):
        return identifier in tokens
    return identifier in haystack


class _WindowIndex:
    """Answers "does this window occur in the evidence?" in O(1) per window.

    Indexes whichever side is smaller: every window-length piece of the evidence (by its
    64-bit hash; a false match needs a hash collision), or the records' own windows (then
    the evidence is scanned once).
    """

    def __init__(self, haystack: str, windows: Sequence[Sequence[str]]) -> None:
        positions = max(0, len(haystack) - WINDOW_CHARS + 1)
        total_windows = sum(len(w) for w in windows)
        self._haystack = haystack
        self._hashes: set[int] | None = None
        self._found: set[str] = set()
        if positions <= total_windows:
            self._hashes = {hash(haystack[i : i + WINDOW_CHARS]) for i in range(positions)}
        else:
            wanted = {w for ws in windows for w in ws if len(w) == WINDOW_CHARS}
            for i in range(positions):
                piece = haystack[i : i + WINDOW_CHARS]
                if piece in wanted:
                    self._found.add(piece)

    def __contains__(self, window: str) -> bool:
        if len(window) != WINDOW_CHARS:  # a short record's whole text
            return window in self._haystack
        if self._hashes is not None:
            return hash(window) in self._hashes
        return window in self._found


def match_sources(
    records: Sequence[Mapping[str, Any]], evidence: Sequence[str]
) -> list[SourceMatch]:
    """The records that informed a run, best first (ties in context order)."""
    raw = "\n\x00\n".join(evidence)
    haystack = _normalize(raw)
    unescaped = _normalize(_unescape(raw))
    if unescaped != haystack:
        haystack = f"{haystack}\n\x00\n{unescaped}"
    texts = [_normalize(str(record.get("text") or "")) for record in records]
    windows = [_windows(text) for text in texts]
    index = _WindowIndex(haystack, windows)
    tokens = set(_ID_TOKEN_RE.findall(haystack))
    candidates: list[SourceMatch] = []
    for position, record in enumerate(records):
        matched = [w for w in windows[position] if w in index]
        mentioned = _id_mentioned(str(record.get("id") or ""), tokens, haystack)
        if not matched and not mentioned:
            continue
        count = len(windows[position])
        score = len(matched) / count if count else 0.0
        if mentioned:
            score = max(score, ID_MENTION_SCORE)
        candidates.append(
            SourceMatch(position, round(score, 6), matched, mentioned, texts[position])
        )
    candidates.sort(key=lambda m: (-len(m.matched), -m.score, m.index))
    kept: list[SourceMatch] = []
    for candidate in candidates:
        if candidate.id_mentioned or not any(
            all(w in other.text for w in candidate.matched) for other in kept
        ):
            kept.append(candidate)
    kept.sort(key=lambda m: (-m.score, m.index))
    return kept
