"""A deterministic, scripted RLM run shared by the deployment tests and the benchmark.

Everything here is a **test double**: the "models" are scripted responders served by
:class:`~langchain_rlm.testing.openai_server.ScriptedOpenAIServer` (the real OpenAI wire
path on 127.0.0.1), not language models.

Turn 1 (the query contains :data:`TURN1_MARKER`) takes four root iterations:

1. ``parts = llm_query_batched([...two slices...])``
2. ``tail = llm_query(...last slice...)``
3. ``combined = llm_query(...parts and tail...)``
4. ``FINAL(combined)``

Turn 2 (:data:`TURN2_MARKER`, a follow-up on the same thread) answers in one iteration with
code that reads ``combined`` and ``parts``, variables defined only by turn 1's code.

The root responder picks its reply from the number of assistant messages after the last
query, so it gives the same reply again when a resumed run repeats a root call. The
sub-model answers ``S-<sha256(prompt)[:12]>``, so the final answer depends on the context.

:class:`KillSwitch` kills a client process from inside the server when that process sends
a chosen request (resume and fault-injection tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from langchain_rlm.testing.openai_server import ChatRequest, Reply, ScriptedOpenAIServer

ROOT_MODEL = "root"
"""Model name of the scripted root model."""
SUB_MODEL = "sub"
"""Model name of the scripted sub-model."""
TURN1_MARKER = "TURN-ONE"
TURN2_MARKER = "TURN-TWO"
TURN1_QUERY = f"{TURN1_MARKER}: summarize the document in one line."
TURN2_QUERY = f"{TURN2_MARKER}: which summary did you give, from how many parts?"
TURN1_ITERATIONS = 4
"""Root iterations turn 1 takes."""
SLICE_CHARS = 1_000
"""Characters of context in each sub-call prompt."""
SUB_REPLY_PREFIX = "S-"
SUB_PREFIXES = ("Summarize part", "Summarize the tail", "Combine")
"""How every sub-call prompt of the scenario starts."""

TURN1_CELLS = (
    "parts = llm_query_batched(['Summarize part %d: %s' % (i, context[i * 1000:(i + 1) * 1000])"
    " for i in range(2)])\nprint(len(parts), [p[:6] for p in parts])",
    "tail = llm_query('Summarize the tail: ' + context[-1000:])\nprint(tail[:6])",
    "combined = llm_query('Combine: ' + ' | '.join(parts) + ' | ' + tail)\nprint(combined[:6])",
    "FINAL(combined)",
)
TURN2_CELLS = ("FINAL('follow-up: ' + combined + ' from ' + str(len(parts)) + ' parts')",)

LINE_TEMPLATE = "line {index:09d}: the quick brown fox jumps over the lazy dog, checkpoint sizes.\n"


def make_context(n_bytes: int) -> str:
    """A deterministic ASCII document of exactly ``n_bytes`` characters."""
    line_chars = len(LINE_TEMPLATE.format(index=0))
    lines = [LINE_TEMPLATE.format(index=i) for i in range(n_bytes // line_chars + 1)]
    return "".join(lines)[:n_bytes]


def repl(code: str) -> str:
    """A root reply made of one ```repl block."""
    return f"```repl\n{code}\n```"


def _turn_and_iteration(request: ChatRequest) -> tuple[int, int]:
    """(turn, iteration) of a root request, from the conversation it carries."""
    last_query = max(
        (i for i, m in enumerate(request.messages) if m.role == "user" and _turn_of(m.content)),
        default=-1,
    )
    turn = _turn_of(request.messages[last_query].content) if last_query >= 0 else 1
    answered = sum(1 for m in request.messages[last_query + 1 :] if m.role == "assistant")
    return turn, answered + 1


def _turn_of(text: str) -> int:
    if TURN2_MARKER in text:
        return 2
    if TURN1_MARKER in text:
        return 1
    return 0


def root_reply(request: ChatRequest, *, print_chars: int = 0) -> Reply:
    """The scripted root model: the cell of the current (turn, iteration).

    ``print_chars`` > 0 makes every cell but the last also print that many characters
    (the checkpoint-size benchmark's "printed output per cell").
    """
    turn, iteration = _turn_and_iteration(request)
    cells = TURN1_CELLS if turn == 1 else TURN2_CELLS
    index = min(iteration, len(cells)) - 1
    code = cells[index]
    if print_chars and index < len(cells) - 1:
        code += f"\nprint('#' * {print_chars})"
    return Reply(content=repl(code))


def sub_reply(request: ChatRequest) -> str:
    """The scripted sub-model: a short digest of the prompt."""
    digest = hashlib.sha256(request.last_user_message.encode()).hexdigest()[:12]
    return f"{SUB_REPLY_PREFIX}{digest}"


RequestHook = Callable[[ChatRequest], Reply | None]
"""Runs first for every request; a Reply it returns replaces the scripted one."""


def scripted_server(
    *, on_request: RequestHook | None = None, print_chars: int = 0
) -> ScriptedOpenAIServer:
    """A (not started) ScriptedOpenAIServer serving the scenario's root and sub-model.

    ``on_request`` (e.g. a :class:`KillSwitch`) sees every request before it is answered;
    ``print_chars`` is passed to :func:`root_reply`.
    """

    def root(request: ChatRequest) -> Reply:
        hooked = on_request(request) if on_request is not None else None
        return hooked or root_reply(request, print_chars=print_chars)

    def sub(request: ChatRequest) -> Reply:
        hooked = on_request(request) if on_request is not None else None
        return hooked or Reply(content=sub_reply(request))

    return ScriptedOpenAIServer({ROOT_MODEL: root, SUB_MODEL: sub})


KILL_WAIT_SECONDS = 120.0
"""How long a kill switch waits for the test to name the process to kill."""


class KillSwitch:
    """SIGKILLs a client process from inside the server, when it sends a chosen request.

    A request hook for :func:`scripted_server`. :meth:`arm` picks the ``at``-th request
    (1-based, counted from the arming, among requests ``matching`` a predicate) and the
    process to kill. When that request arrives, the switch kills the process while the
    process waits for the reply, and never answers the request (it hangs until the dead
    client's socket closes). So the kill happens at a point the process itself signals,
    never after a sleep, and exactly one request is in flight.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: int | None = None
        self._target_set = threading.Event()
        self._at = 0
        self._seen = 0
        self._matching: Callable[[ChatRequest], bool] | None = None
        self.fired = threading.Event()
        self.killed_request: ChatRequest | None = None

    def arm(self, at: int, *, matching: Callable[[ChatRequest], bool] | None = None) -> None:
        """Kill at the ``at``-th (matching) request from now on; :meth:`target` names whom."""
        with self._lock:
            self._at, self._seen, self._matching = at, 0, matching
            self._target = None
            self._target_set.clear()
            self.fired.clear()
            self.killed_request = None

    def target(self, pid: int) -> None:
        """The process to kill (set it right after starting the process)."""
        with self._lock:
            self._target = pid
        self._target_set.set()

    def disarm(self) -> None:
        with self._lock:
            self._at = 0

    def __call__(self, request: ChatRequest) -> Reply | None:
        with self._lock:
            if not self._at or (self._matching is not None and not self._matching(request)):
                return None
            self._seen += 1
            if self._seen != self._at:
                return None
            self._at = 0
        if not self._target_set.wait(KILL_WAIT_SECONDS):
            raise RuntimeError("KillSwitch: no process to kill was named")
        assert self._target is not None
        self.killed_request = request
        os.kill(self._target, signal.SIGKILL)
        self.fired.set()
        return Reply.hanging()


def request_key(request: ChatRequest) -> str:
    """What determines a request: the model and every message (role and content)."""
    messages = [[m.role, m.content] for m in request.messages]
    return json.dumps([request.model, messages])


def expected_turn1_answer(context: str) -> str:
    """Turn 1's answer, computed the way the scripted run computes it."""

    def sub(prompt: str) -> str:
        return SUB_REPLY_PREFIX + hashlib.sha256(prompt.encode()).hexdigest()[:12]

    parts = [sub(f"Summarize part {i}: {context[i * 1000 : (i + 1) * 1000]}") for i in range(2)]
    tail = sub("Summarize the tail: " + context[-1000:])
    return sub("Combine: " + " | ".join(parts) + " | " + tail)


def sub_prompt_counts(requests: Iterable[ChatRequest]) -> Counter[str]:
    """How often the server saw each sub-call prompt."""
    return Counter(r.last_user_message for r in requests if r.model == SUB_MODEL)


def server_env(server: ScriptedOpenAIServer) -> dict[str, Any]:
    """Environment variables that point ``"openai:..."`` model strings at the server."""
    return {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "test-key"}


def checkpoint_bytes(db: Path) -> int:
    """Bytes a SqliteSaver database holds: checkpoints (blob and metadata) and writes."""
    with sqlite3.connect(db) as connection:
        checkpoints = connection.execute(
            "SELECT COALESCE(SUM(LENGTH(checkpoint) + LENGTH(metadata)), 0) FROM checkpoints"
        ).fetchone()[0]
        writes = connection.execute(
            "SELECT COALESCE(SUM(LENGTH(value)), 0) FROM writes"
        ).fetchone()[0]
    return int(checkpoints) + int(writes)


def measure_checkpoints(
    context_chars: int, db: Path, server: ScriptedOpenAIServer
) -> dict[str, Any]:
    """Run turn 1 over a context of ``context_chars`` with a SqliteSaver at ``db``.

    Returns the answer, the iterations, the checkpoint count and the stored bytes (total
    and per iteration). ``server`` must be a started :func:`scripted_server`.
    """
    from langgraph.checkpoint.sqlite import SqliteSaver

    from langchain_rlm import RLM

    context = make_context(context_chars)
    connection = sqlite3.connect(db, check_same_thread=False)
    try:
        rlm = RLM(
            server.chat_model(ROOT_MODEL),
            sub_model=server.chat_model(SUB_MODEL),
            checkpointer=SqliteSaver(connection),
        )
        with rlm:
            result = rlm.invoke(
                {"query": TURN1_QUERY, "context": context},
                {"configurable": {"thread_id": f"size-{context_chars}"}},
            )
        count = connection.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
    finally:
        connection.close()
    total = checkpoint_bytes(db)
    return {
        "context_chars": context_chars,
        "answer_ok": result.answer == expected_turn1_answer(context),
        "iterations": result.iterations,
        "checkpoints": int(count),
        "bytes": total,
        "bytes_per_iteration": total / max(1, result.iterations),
    }
