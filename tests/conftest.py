"""Shared fixtures.

``models`` builds a root and a sub-model in one of two transports:

* ``fake``: :class:`ScriptedChatModel`, an in-process FAKE chat model;
* ``wire``: ``ChatOpenAI`` talking HTTP to :class:`ScriptedOpenAIServer` on 127.0.0.1,
  the real OpenAI client path with scripted replies.

Tests written against ``models`` run both ways and must give identical results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel

from langchain_rlm.testing import ScriptedChatModel, ScriptedOpenAIServer, replies_responder
from langchain_rlm.testing.fake_models import message_text

pytest_plugins = ["tests.real_llm_fixtures"]

SubResponder = Callable[[str], str]
"""Scripted sub-model: the prompt text in, the reply out."""


@dataclass
class ModelPair:
    """A root and a sub-model plus a way to count what each received."""

    root: BaseChatModel
    sub: BaseChatModel
    transport: str
    server: ScriptedOpenAIServer | None = None
    _fakes: list[ScriptedChatModel] = field(default_factory=list)

    def root_prompts(self) -> list[list[str]]:
        """Message texts of every root call, in order."""
        if self.server is not None:
            return [[m.content for m in r.messages] for r in self.server.requests_for("root")]
        return [[message_text(m) for m in call.messages] for call in self._fakes[0].calls]

    def sub_prompts(self) -> list[str]:
        """The prompt of every sub-call."""
        if self.server is not None:
            return [r.last_user_message for r in self.server.requests_for("sub")]
        return [message_text(call.messages[-1]) for call in self._fakes[1].calls]

    def root_stops(self) -> list[tuple[str, ...]]:
        if self.server is not None:
            return [r.stop for r in self.server.requests_for("root")]
        return [call.stop for call in self._fakes[0].calls]


ModelFactory = Callable[[Sequence[str], SubResponder], ModelPair]


@pytest.fixture(params=["fake", "wire"])
def models(request: pytest.FixtureRequest) -> Iterator[ModelFactory]:
    """A factory ``models(root_replies, sub_responder) -> ModelPair`` for both transports."""
    servers: list[ScriptedOpenAIServer] = []

    def factory(root_replies: Sequence[str], sub: SubResponder = lambda p: "ok") -> ModelPair:
        if request.param == "fake":
            root = ScriptedChatModel(replies=list(root_replies), model="root")
            sub_model = ScriptedChatModel(
                responder=lambda messages: sub(message_text(messages[-1])), model="sub"
            )
            return ModelPair(root, sub_model, "fake", _fakes=[root, sub_model])
        server = ScriptedOpenAIServer(
            {
                "root": replies_responder(list(root_replies)),
                "sub": lambda req: sub(req.last_user_message),
            }
        ).start()
        servers.append(server)
        return ModelPair(
            server.chat_model("root", max_retries=0),
            server.chat_model("sub", max_retries=0),
            "wire",
            server=server,
        )

    yield factory
    for server in servers:
        server.close()


def repl(code: str) -> str:
    """A root-model reply that is one ```repl block."""
    return f"```repl\n{code.strip()}\n```"


@pytest.fixture
def make_repl() -> Callable[[str], str]:
    return repl


def no_model_calls(*models: Any) -> bool:
    """True when none of the FAKE models was called."""
    return all(not model.calls for model in models)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ``RLM_NO_SKIPS=1`` (CI sets it), a skipped test fails the run.

    Optional pieces (the local model, LlamaIndex, the LangGraph CLI) skip when they are not
    installed, which is right on a developer's partial install and wrong in CI, where a
    skip would hide a missing install step.
    """
    if os.environ.get("RLM_NO_SKIPS") != "1" or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        print(f"\nRLM_NO_SKIPS=1: {len(skipped)} test(s) skipped; failing the run.")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _no_remote_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never send traces anywhere: only loopback traffic is allowed."""
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGSMITH_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
