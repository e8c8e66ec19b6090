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
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable
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


def root_reply(
    request: ChatRequest, *, slow_iteration: int | None = None, latency: float = 0.0
) -> Reply:
    """The scripted root model: the cell of the current (turn, iteration)."""
    turn, iteration = _turn_and_iteration(request)
    cells = TURN1_CELLS if turn == 1 else TURN2_CELLS
    content = repl(cells[min(iteration, len(cells)) - 1])
    slow = turn == 1 and iteration == slow_iteration
    return Reply(content=content, latency=latency if slow else 0.0)


def sub_reply(request: ChatRequest) -> str:
    """The scripted sub-model: a short digest of the prompt."""
    digest = hashlib.sha256(request.last_user_message.encode()).hexdigest()[:12]
    return f"{SUB_REPLY_PREFIX}{digest}"


def scripted_server(
    *, slow_iteration: int | None = None, root_latency: float = 0.0, sub_latency: float = 0.0
) -> ScriptedOpenAIServer:
    """A (not started) ScriptedOpenAIServer serving the scenario's root and sub-model.

    ``slow_iteration`` delays turn 1's root call of that iteration by ``root_latency``
    seconds, the first time only (a window in which a test kills the process);
    ``sub_latency`` delays every sub-call.
    """
    slowed: list[int] = []
    lock = threading.Lock()

    def root(request: ChatRequest) -> Reply:
        with lock:
            slow = slow_iteration if not slowed else None
            reply = root_reply(request, slow_iteration=slow, latency=root_latency)
            if reply.latency:
                slowed.append(request.index)
        return reply

    def sub(request: ChatRequest) -> Reply:
        return Reply(content=sub_reply(request), latency=sub_latency)

    return ScriptedOpenAIServer({ROOT_MODEL: root, SUB_MODEL: sub})


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
