"""Test doubles for langchain-rlm: a scripted OpenAI-compatible server and FAKE chat models.

Nothing here is a real language model. :class:`ScriptedOpenAIServer` serves scripted
replies over the real OpenAI HTTP protocol on 127.0.0.1; :class:`ScriptedChatModel` is an
in-process fake ``BaseChatModel`` for unit tests.
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
