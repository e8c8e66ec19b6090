"""Test doubles for langchain-rlm: a scripted OpenAI-compatible server and FAKE chat models.

Nothing here is a real language model. :class:`ScriptedOpenAIServer` serves scripted
replies over the real OpenAI HTTP protocol on 127.0.0.1 (aiohttp's server: the ``testing``
extra); :class:`ScriptedChatModel` is an in-process fake ``BaseChatModel`` for unit tests.
This is the package's public testing toolkit, for this project's tests, benchmarks and examples
and for users testing their own chains, like ``langchain_core``'s fake chat models.
"""

from __future__ import annotations

from langchain_rlm.testing.fake_models import ScriptedCall, ScriptedChatModel, message_text
from langchain_rlm.testing.openai_server import (
    ChatMessage,
    ChatRequest,
    Fault,
    NoMatchingRuleError,
    RecordedResponse,
    Reply,
    Responder,
    ScriptedOpenAIServer,
    ScriptExhaustedError,
    apply_stop,
    echo_responder,
    estimate_tokens,
    replies_responder,
    rules_responder,
)

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "Fault",
    "NoMatchingRuleError",
    "RecordedResponse",
    "Reply",
    "Responder",
    "ScriptExhaustedError",
    "ScriptedCall",
    "ScriptedChatModel",
    "ScriptedOpenAIServer",
    "apply_stop",
    "echo_responder",
    "estimate_tokens",
    "message_text",
    "replies_responder",
    "rules_responder",
]
