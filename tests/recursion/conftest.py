"""Helpers for the recursion tests: scripted roots, sub-model responders, servers.

Every model here is a FAKE (``ScriptedChatModel``) or ``ChatOpenAI`` talking to the
scripted loopback server (``ScriptedOpenAIServer``): replies are canned, not generated.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage

from langchain_rlm.sandbox.base import HostFunction, PythonExecutor, SandboxLimits
from langchain_rlm.sandbox.process import ProcessSandbox
from langchain_rlm.testing import ScriptedOpenAIServer
from langchain_rlm.testing.fake_models import message_text
from langchain_rlm.testing.openai_server import ChatRequest, Reply
from tests.conftest import process_alive

FAST_LATENCY = 0.05
"""Seconds of scripted latency where a test needs calls to overlap."""

FAST_BACKOFF = 0.01
"""First retry backoff in tests (seconds)."""


def repl(code: str) -> str:
    """A root-model reply made of one ```repl block."""
    return f"```repl\n{code.strip()}\n```"


def first_user_text(messages: list[BaseMessage]) -> str:
    """The first human message of a conversation (holds the query of an RLM)."""
    return next((message_text(m) for m in messages if m.type == "human"), "")


def is_rlm_root(messages: list[BaseMessage]) -> bool:
    """True when a sub-model is called as the root of a child RLM (it has a system prompt)."""
    return bool(messages) and isinstance(messages[0], SystemMessage)


def turns_taken(messages: list[BaseMessage]) -> int:
    """Replies the model already gave in this conversation."""
    return sum(isinstance(m, AIMessage) for m in messages)


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (gone, or a zombie awaiting its reaper)."""
    return not process_alive(pid)


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ScriptedOpenAIServer]]:
    """Start scripted loopback servers; every one is closed after the test."""
    servers: list[ScriptedOpenAIServer] = []

    def start(*args: object, **kwargs: object) -> ScriptedOpenAIServer:
        server = ScriptedOpenAIServer(*args, **kwargs).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def sub_text(request: ChatRequest) -> str:
    """The prompt of a leaf sub-call as the server saw it."""
    return request.last_user_message


__all__ = [
    "FAST_BACKOFF",
    "FAST_LATENCY",
    "Reply",
    "first_user_text",
    "is_rlm_root",
    "process_gone",
    "repl",
    "sub_text",
    "turns_taken",
]


class CountingSandbox:
    """The default process sandbox, remembering every session it starts."""

    name = "process"

    def __init__(self) -> None:
        self.inner = ProcessSandbox()
        self.sessions: list[Any] = []
        self.lock = threading.Lock()
        self.live = 0
        self.peak_live = 0

    @property
    def allowed_modules(self) -> tuple[str, ...]:
        from langchain_rlm.sandbox.policy import ALLOWED_MODULES

        return tuple(sorted(ALLOWED_MODULES))

    def start(
        self,
        context: Any,
        functions: Mapping[str, HostFunction],
        limits: SandboxLimits | None = None,
    ) -> PythonExecutor:
        session = self.inner.start(context, functions, limits)
        with self.lock:
            self.sessions.append(session)
            self.live = sum(1 for s in self.sessions if s.pid is not None)
            self.peak_live = max(self.peak_live, self.live)
        return session

    def pids(self) -> list[int]:
        return [s.pid for s in self.sessions if s.pid is not None]
