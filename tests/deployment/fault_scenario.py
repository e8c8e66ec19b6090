"""The scripted run the fault-injection test kills at every point (FAKE models).

The "models" are scripted responders served by
:class:`~langchain_rlm.testing.openai_server.ScriptedOpenAIServer` on 127.0.0.1 (the real
OpenAI wire path), not language models. The run (``max_iterations=4``, ``max_depth=2``,
``max_concurrency=1`` so that its requests come one at a time, in one order):

1. ``parts = llm_query_batched([...4 slices...])``: 4 sub-calls;
2. ``kids = recursive_lm_batched([CHILD_QUERY] * 3, [...3 subsets...])``: 3 child RLMs at
   depth 1 (the same query, different subsets), each one root call (on the sub-model)
   whose cell makes one leaf ``llm_query`` and calls ``FINAL``: 6 sub-model requests;
3. two calls of the user tool ``save_note`` (it appends a line to a file, so a repeat is
   visible), then ``check = llm_query(...)``: 1 sub-call;
4. ``combined = llm_query(...)`` over ``' | '.join(set(parts))`` (its order depends on the
   worker's string hashing), ``final_answer = combined + ' (final)'``; no ``FINAL``;
5. ``max_iterations`` is reached: the finalize call answers with code,
   ``FINAL(final_answer)``, which needs the REPL's variables.

Root calls: 4 + finalize = 5; sub-model requests: 4 + 6 + 1 + 1 = 12; 17 requests and 2
tool calls in all, in a fixed order. Every reply is a function of its request, so a
repeated request gets the same reply.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_rlm.testing.openai_server import ChatRequest, Reply, ScriptedOpenAIServer
from tests.deployment.scenario import RequestHook, make_context, repl

ROOT_MODEL = "root"
SUB_MODEL = "sub"
QUERY = "FAULTS: what do the parts of the document say?"
CHILD_QUERY = "CHILD-Q: which part is this?"
CONTEXT_CHARS = 6_000
MAX_ITERATIONS = 4
MAX_DEPTH = 2
MAX_CONCURRENCY = 1
"""One request at a time: each kill point has exactly one request in flight."""
TOOL_NAME = "save_note"
FINAL_SUFFIX = " (final)"
SUB_REPLY_PREFIX = "S-"

ROOT_CELLS = (
    "parts = llm_query_batched(['Part %d: %s' % (i, context[i * 500:(i + 1) * 500])"
    " for i in range(4)])\nprint(len(parts), [p[:6] for p in parts])",
    f"kids = recursive_lm_batched([{CHILD_QUERY!r}] * 3,"
    " [context[i * 300:(i + 1) * 300] for i in range(3)])\nprint(kids)",
    f"n1 = {TOOL_NAME}('first ' + parts[0])\nn2 = {TOOL_NAME}('second ' + kids[1])\n"
    "check = llm_query('Check: ' + n1 + ' ' + n2)\nprint(n1, n2, check[:6])",
    "combined = llm_query('Combine: ' + ' | '.join(set(parts)) + ' / ' + ' | '.join(kids)"
    f" + ' / ' + check)\nfinal_answer = combined + {FINAL_SUFFIX!r}\nprint('working on it')",
)
FINALIZE_CODE = "FINAL(final_answer)"
CHILD_CELL = "d = llm_query('Digest: ' + context[:120])\nFINAL(d)"

ROOT_REQUESTS = MAX_ITERATIONS + 1
SUB_REQUESTS = 4 + 3 * 2 + 1 + 1
REQUESTS = ROOT_REQUESTS + SUB_REQUESTS
"""Requests of an uninterrupted run: every one of them is a kill point."""
TOOL_CALLS = 2
TOOL_KILL_WHEN = ("before", "after")
"""Kill points inside each tool call: before its side effect, after it (before returning)."""


def context() -> str:
    return make_context(CONTEXT_CHARS)


def _iteration(request: ChatRequest) -> int:
    """1 + the assistant messages after the query (the finalize call gets 5)."""
    start = min(
        (i for i, m in enumerate(request.messages) if m.role == "user" and QUERY in m.content),
        default=0,
    )
    return 1 + sum(1 for m in request.messages[start:] if m.role == "assistant")


def root_reply(request: ChatRequest) -> str:
    iteration = _iteration(request)
    if iteration <= len(ROOT_CELLS):
        return repl(ROOT_CELLS[iteration - 1])
    return repl(FINALIZE_CODE)


def sub_reply(request: ChatRequest) -> str:
    """A child RLM's root call gets the child cell; a leaf call a digest of its prompt."""
    if request.system_message and CHILD_QUERY in request.prompt_text:
        return repl(CHILD_CELL)
    digest = hashlib.sha256(request.last_user_message.encode()).hexdigest()[:12]
    return f"{SUB_REPLY_PREFIX}{digest}"


def describe(request: ChatRequest) -> str:
    """A short name for a request, for failure reports."""
    if request.model == ROOT_MODEL:
        iteration = _iteration(request)
        return "root finalize" if iteration > len(ROOT_CELLS) else f"root iteration {iteration}"
    if request.system_message and CHILD_QUERY in request.prompt_text:
        digest = hashlib.sha256(request.prompt_text.encode()).hexdigest()[:6]
        return f"child root call {digest}"
    return f"sub {request.last_user_message[:28]!r}"


def server(on_request: RequestHook | None = None) -> ScriptedOpenAIServer:
    """A (not started) server for the fault scenario; ``on_request`` runs first."""

    def respond(reply: Callable[[ChatRequest], str]) -> Callable[[ChatRequest], Reply]:
        def responder(request: ChatRequest) -> Reply:
            hooked = on_request(request) if on_request is not None else None
            return hooked or Reply(content=reply(request))

        return responder

    return ScriptedOpenAIServer({ROOT_MODEL: respond(root_reply), SUB_MODEL: respond(sub_reply)})


def note_tool(path: Path, kill_call: int | None = None, kill_when: str | None = None) -> Any:
    """The user tool: appends ``text`` as a line to ``path`` and returns a digest of it.

    ``kill_call`` / ``kill_when`` make this process SIGKILL itself inside the
    ``kill_call``-th call (1-based), ``"before"`` or ``"after"`` the line is written.
    """
    calls = [0]

    def save_note(text: str) -> str:
        """Save a note (appends a line to the notes file)."""
        calls[0] += 1
        killing = calls[0] == kill_call
        if killing and kill_when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        with path.open("a", encoding="utf-8") as notes:
            notes.write(text.replace("\n", " ") + "\n")
            notes.flush()
            os.fsync(notes.fileno())
        if killing and kill_when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return "noted-" + hashlib.sha256(text.encode()).hexdigest()[:8]

    return save_note


def rlm_options() -> dict[str, Any]:
    """The RLM settings of the scenario (models are ``"openai:root"`` / ``"openai:sub"``)."""
    return {
        "max_iterations": MAX_ITERATIONS,
        "max_depth": MAX_DEPTH,
        "max_concurrency": MAX_CONCURRENCY,
        "max_retries": 0,
    }
