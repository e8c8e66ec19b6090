"""FAKE, scripted in-process chat models for unit tests. They are not language models.

:class:`ScriptedChatModel` answers from a list of canned replies or from a responder
callable, deterministically, without any network. It mimics what matters of a real chat
model for the code under test: ``stop`` sequences cut the reply, ``usage_metadata`` is
reported (estimated as ``ceil(chars / 4)``), ``response_metadata["model_name"]`` is set,
calls are recorded, concurrent calls are safe, and faults can be injected on the Nth call.

For tests that must exercise the real OpenAI HTTP path use
:class:`langchain_rlm.testing.openai_server.ScriptedOpenAIServer` instead.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from langchain_rlm.testing.openai_server import ScriptExhaustedError, apply_stop, estimate_tokens

__all__ = ["ScriptExhaustedError", "ScriptedCall", "ScriptedChatModel", "message_text"]

DEFAULT_FAKE_MODEL_NAME = "scripted-chat-model"
LLM_TYPE = "scripted-chat"

MessagesResponder = Callable[[list[BaseMessage]], str]
"""A FAKE model's reply source: ``(messages) -> reply text``."""


def message_text(message: Any) -> str:
    """The text of a message: ``BaseMessage.text``, or the same reading of any object with
    a ``content`` (the scripted server's wire messages)."""
    if isinstance(message, BaseMessage):
        return message.text
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content)


@dataclass(frozen=True)
class ScriptedCall:
    """One recorded call of a :class:`ScriptedChatModel` (``index`` is 1-based)."""

    index: int
    messages: tuple[BaseMessage, ...]
    stop: tuple[str, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        """All message texts joined by newlines."""
        return "\n".join(message_text(m) for m in self.messages)


class ScriptedChatModel(BaseChatModel):
    """FAKE chat model for unit tests: replies come from a script, not from a model.

    Give either ``replies`` (handed out in order, thread-safe; :class:`ScriptExhaustedError`
    when they run out unless ``cycle=True``) or ``responder`` (``(messages) -> str``).
    ``failures`` maps 1-based call numbers to exceptions raised on that call
    (``fail_on_call`` + ``fail_with`` is a shortcut for one). ``latency`` sleeps before
    answering (``asyncio.sleep`` on the async path).

    Example::

        model = ScriptedChatModel(replies=["a", "b"], model_name="sub")
        model.invoke("hi").content  # "a"
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    replies: list[str] = Field(default_factory=list)
    responder: MessagesResponder | None = None
    model_name: str = Field(default=DEFAULT_FAKE_MODEL_NAME, alias="model")
    cycle: bool = False
    latency: float = 0.0
    failures: dict[int, BaseException] = Field(default_factory=dict)
    fail_on_call: int | None = None
    fail_with: BaseException | None = None

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _calls: list[ScriptedCall] = PrivateAttr(default_factory=list)
    _cursor: int = PrivateAttr(default=0)
    _in_flight: int = PrivateAttr(default=0)
    _peak_in_flight: int = PrivateAttr(default=0)

    @model_validator(mode="after")
    def _merge_fail_shortcut(self) -> ScriptedChatModel:
        if self.fail_on_call is not None:
            error = self.fail_with or RuntimeError(f"scripted failure on call {self.fail_on_call}")
            self.failures = {**self.failures, self.fail_on_call: error}
        return self

    # ------------------------------------------------------------------ BaseChatModel API

    @property
    def _llm_type(self) -> str:
        return LLM_TYPE

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._begin(messages, stop, kwargs)
        try:
            if self.latency > 0:
                time.sleep(self.latency)
            return self._answer(call)
        finally:
            self._end()

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._begin(messages, stop, kwargs)
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            return self._answer(call)
        finally:
            self._end()

    # ------------------------------------------------------------------ recordings

    @property
    def calls(self) -> list[ScriptedCall]:
        """A snapshot of the recorded calls, in call order."""
        with self._lock:
            return list(self._calls)

    @property
    def call_count(self) -> int:
        """Number of calls so far (including failed ones)."""
        with self._lock:
            return len(self._calls)

    @property
    def peak_in_flight(self) -> int:
        """The highest number of calls running at the same time."""
        with self._lock:
            return self._peak_in_flight

    # ------------------------------------------------------------------ internals

    def _begin(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> ScriptedCall:
        """Record the call and count it in flight (atomically numbered)."""
        with self._lock:
            call = ScriptedCall(len(self._calls) + 1, tuple(messages), tuple(stop or ()), kwargs)
            self._calls.append(call)
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        return call

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _answer(self, call: ScriptedCall) -> ChatResult:
        if (error := self.failures.get(call.index)) is not None:
            raise error
        raw = self._next_reply(call)
        text, _ = apply_stop(raw, call.stop)
        usage = UsageMetadata(
            input_tokens=sum(estimate_tokens(message_text(m)) for m in call.messages),
            output_tokens=estimate_tokens(text),
            total_tokens=0,
        )
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        metadata = {"model_name": self.model_name, "finish_reason": "stop"}
        message = AIMessage(content=text, usage_metadata=usage, response_metadata=metadata)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _next_reply(self, call: ScriptedCall) -> str:
        if self.responder is not None:
            return self.responder(list(call.messages))
        with self._lock:
            position = self._cursor
            self._cursor += 1
        if self.cycle and self.replies:
            return self.replies[position % len(self.replies)]
        if position >= len(self.replies):
            raise ScriptExhaustedError(
                f"ScriptedChatModel {self.model_name!r}: {len(self.replies)} scripted replies "
                f"exhausted on call {call.index}"
            )
        return self.replies[position]
