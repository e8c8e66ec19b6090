"""Chat models: resolving ``"provider:model"`` strings, naming, and calling with retries.

Every model call of a run (root turns, sub-calls, child RLMs) goes through
:func:`call_model` / :func:`acall_model`, which reserve the call against the tree-wide
budget, retry transient faults with exponential backoff, and settle token usage.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig

from langchain_rlm.usage import CHARS_PER_TOKEN, UsageMeter, usage_from_message

__all__ = [
    "KNOWN_CONTEXT_WINDOWS",
    "ModelCallError",
    "acall_model",
    "call_model",
    "context_window_chars",
    "is_context_overflow",
    "is_transient",
    "model_id",
    "resolve_model",
]

KNOWN_CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-5": 400_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "claude": 200_000,
    "qwen2.5-coder-0.5b": 8_192,
}
"""Input windows in tokens, matched by prefix, used by the sub-prompt size guard."""

MAX_RETRY_AFTER = 30.0
"""Longest server-requested ``Retry-After`` that is honoured, in seconds."""

_TRANSIENT_NAMES = frozenset(
    {
        "APITimeoutError",
        "APIConnectionError",
        "RateLimitError",
        "InternalServerError",
        "ServiceUnavailableError",
        "TimeoutError",
        "ConnectTimeout",
        "ReadTimeout",
        "ConnectError",
        "RemoteProtocolError",
    }
)


class ModelCallError(Exception):
    """A model call failed for good (a permanent fault, or retries ran out)."""

    def __init__(self, message: str, *, transient: bool, overflow: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.overflow = overflow


def resolve_model(model: BaseChatModel | str, *, role: str = "model") -> BaseChatModel:
    """A chat model from an instance or a ``"provider:model"`` string.

    ``"openai:NAME"`` works with the core install; other providers go through
    LangChain's ``init_chat_model`` (``pip install 'langchain-rlm[langchain]'``).
    """
    if isinstance(model, BaseChatModel):
        return model
    if not isinstance(model, str):
        raise TypeError(
            f"{role} must be a LangChain chat model or a 'provider:model' string such as "
            f"'openai:gpt-4o-mini', not {type(model).__name__}"
        )
    provider, _, name = model.partition(":")
    if not name or not provider:
        raise ValueError(
            f"unknown {role} string {model!r}: write it as 'provider:model', "
            "e.g. 'openai:gpt-4o-mini', or pass a chat model instance"
        )
    if provider == "openai":
        from langchain_openai import ChatOpenAI

        try:
            return ChatOpenAI(model=name)
        except Exception as error:  # the client refuses to start without a key
            raise ValueError(
                f"cannot create {role} {model!r}: {error}. Set OPENAI_API_KEY (and "
                "OPENAI_BASE_URL for a compatible server), or pass a chat model instance"
            ) from error
    try:
        from langchain.chat_models import init_chat_model
    except ImportError as error:
        raise ValueError(
            f"{role} {model!r} needs LangChain's init_chat_model: "
            "pip install 'langchain-rlm[langchain]', or pass a chat model instance"
        ) from error
    try:
        return init_chat_model(model)
    except Exception as error:
        raise ValueError(
            f"unknown {role} {model!r}: {error}. Use a provider LangChain knows "
            "('openai:...', 'anthropic:...') with its integration package installed"
        ) from error


def model_id(model: BaseChatModel) -> str:
    """A short, stable name for usage tables and traces."""
    for attribute in ("model_name", "model", "model_id"):
        value = getattr(model, attribute, None)
        if isinstance(value, str) and value:
            return value
    return model._llm_type


def context_window_chars(model: BaseChatModel) -> int | None:
    """The model's input window in characters (estimated), when known."""
    profile = getattr(model, "profile", None)
    tokens = profile.get("max_input_tokens") if isinstance(profile, dict) else None
    if not tokens:
        name = model_id(model)
        matches = [key for key in KNOWN_CONTEXT_WINDOWS if name.startswith(key)]
        tokens = KNOWN_CONTEXT_WINDOWS[max(matches, key=len)] if matches else None
    return int(tokens) * CHARS_PER_TOKEN if tokens else None


def _status(error: BaseException) -> int | None:
    status = getattr(error, "status_code", None)
    if status is None:
        status = getattr(getattr(error, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def is_context_overflow(error: BaseException) -> bool:
    """A provider's "prompt too long" answer (HTTP 400 with a context-length message)."""
    text = str(error).lower()
    return _status(error) in (400, 413) and any(
        marker in text
        for marker in ("context_length", "context length", "too long", "too many tokens")
    )


def is_transient(error: BaseException) -> bool:
    """Worth retrying: 408/409/429/5xx, timeouts and dropped connections."""
    status = _status(error)
    if status is not None:
        return status in (408, 409, 429) or status >= 500
    return type(error).__name__ in _TRANSIENT_NAMES


def _retry_after(error: BaseException) -> float | None:
    """The server's requested wait: ``retry-after-ms`` (OpenAI's, precise) first, then
    ``retry-after`` in seconds; capped at :data:`MAX_RETRY_AFTER`."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return min(float(value) * scale, MAX_RETRY_AFTER)
        except ValueError:
            continue
    return None


def _backoff(attempt: int, first: float, error: BaseException) -> float:
    requested = _retry_after(error)
    if requested is not None:
        return requested
    return first * (2**attempt) * (0.75 + random.random() / 2)


def _retry_wait(meter: UsageMeter, attempt: int, first: float, error: BaseException) -> float:
    """The backoff before a retry, never past the run's timeout."""
    wait = _backoff(attempt, first, error)
    left = meter.seconds_left()
    return wait if left is None else min(wait, left)


def _settle(
    meter: UsageMeter,
    model: BaseChatModel,
    message: BaseMessage,
    prompt_chars: int,
    depth: int,
    root: bool,
) -> AIMessage:
    if not isinstance(message, AIMessage):
        raise ModelCallError(
            f"{model_id(model)} returned {type(message).__name__}", transient=False
        )
    input_tokens, output_tokens, estimated = usage_from_message(message, prompt_chars)
    meter.record(
        model_id(model),
        depth,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        estimated=estimated,
        root=root,
    )
    return message


def _prompt_chars(messages: Sequence[BaseMessage]) -> int:
    return sum(
        len(m.content) if isinstance(m.content, str) else len(str(m.content)) for m in messages
    )


def _failure(model: BaseChatModel, error: BaseException, attempts: int) -> ModelCallError:
    transient = is_transient(error)
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    return ModelCallError(
        f"{model_id(model)} call failed{tried}: {type(error).__name__}: {error}",
        transient=transient,
        overflow=is_context_overflow(error),
    )


def call_model(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    config: RunnableConfig | None,
    *,
    meter: UsageMeter,
    depth: int,
    root: bool,
    max_retries: int,
    backoff: float,
    stop: Sequence[str] | None = None,
) -> AIMessage:
    """One budgeted model call with retries. Raises BudgetExceeded or ModelCallError."""
    meter.reserve_call()
    kwargs: dict[str, Any] = {"stop": list(stop)} if stop else {}
    for attempt in range(max_retries + 1):
        try:
            message = model.invoke(list(messages), config, **kwargs)
        except Exception as error:
            if attempt >= max_retries or not is_transient(error) or is_context_overflow(error):
                raise _failure(model, error, attempt + 1) from error
            meter.check()
            time.sleep(_retry_wait(meter, attempt, backoff, error))
            meter.check()
            continue
        return _settle(meter, model, message, _prompt_chars(messages), depth, root)
    raise AssertionError("unreachable")


async def acall_model(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    config: RunnableConfig | None,
    *,
    meter: UsageMeter,
    depth: int,
    root: bool,
    max_retries: int,
    backoff: float,
    stop: Sequence[str] | None = None,
) -> AIMessage:
    """The async twin of :func:`call_model`."""
    meter.reserve_call()
    kwargs: dict[str, Any] = {"stop": list(stop)} if stop else {}
    for attempt in range(max_retries + 1):
        try:
            message = await model.ainvoke(list(messages), config, **kwargs)
        except Exception as error:
            if attempt >= max_retries or not is_transient(error) or is_context_overflow(error):
                raise _failure(model, error, attempt + 1) from error
            meter.check()
            await asyncio.sleep(_retry_wait(meter, attempt, backoff, error))
            meter.check()
            continue
        return _settle(meter, model, message, _prompt_chars(messages), depth, root)
    raise AssertionError("unreachable")
