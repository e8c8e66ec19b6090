"""Chat models: resolving ``"provider:model"`` strings, naming, and calling with retries.

Every model call of a run (root turns, sub-calls, child RLMs) goes through
:func:`acall_model` (or its sync front :func:`call_model`), the one place that talks to a
model. For each HTTP attempt it:

1. reserves one call against the tree-wide budgets (``UsageMeter.reserve_call``), so
   ``max_llm_calls`` counts attempts, retries included;
2. sends the request, bounded by the run's ``timeout``: at the deadline the attempt is
   cancelled (its HTTP request aborted) and :class:`~langchain_rlm.usage.BudgetExceeded`
   ``("timeout")`` is raised;
3. on success settles the usage; on failure counts a failed attempt
   (``UsageMeter.record_failure``) and retries transient faults with exponential backoff
   (honouring ``Retry-After``), never past the timeout.

**Exactly one retry layer.** The library's retry above is the only one for OpenAI models:
for any ``BaseChatOpenAI`` (``ChatOpenAI``, ``AzureChatOpenAI``, ...) the call goes through a
shallow copy of the model whose OpenAI clients come from
``root_client.with_options(max_retries=0)`` / ``root_async_client.with_options(max_retries=0)``
(:func:`without_sdk_retries`). The user's model object is not changed, and its own
``max_retries`` still applies when the user calls it directly. The retry-free clients are
cached per client object (weakly); the model copy is made per call (about 2 µs), so later
changes to the user's model are honoured. **Other model classes keep their own retries**:
LangChain offers no common way to turn them off, so a call may then make up to
``(max_retries + 1) x (the model's own attempts)`` requests, and only the library's attempts
are metered. This is logged once per model class at INFO; set the model's own retries to 0
(e.g. ``ChatAnthropic(max_retries=0)``) to keep one layer.

Logging goes to ``logging.getLogger("langchain_rlm.models")``: each attempt at DEBUG, each
retry at WARNING, each call that fails for good at ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig

from langchain_rlm.concurrency import in_sync_entry
from langchain_rlm.usage import CHARS_PER_TOKEN, UsageMeter, usage_from_message

__all__ = [
    "KNOWN_CONTEXT_WINDOWS",
    "ModelCallError",
    "acall_model",
    "context_window_chars",
    "is_context_overflow",
    "is_transient",
    "model_id",
    "resolve_model",
    "without_sdk_retries",
]

logger = logging.getLogger(__name__)


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
    if provider == "local":  # an embedded model: "local:qwen2.5-coder-1.5b"
        from langchain_rlm.local import chat_model_from_string

        return chat_model_from_string(model, role=role)
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


def _retry_wait(meter: UsageMeter, retry: int, first: float, error: BaseException) -> float:
    """The backoff before retry number ``retry`` (0-based), never past the run's timeout."""
    wait = _backoff(retry, first, error)
    left = meter.seconds_left()
    return wait if left is None else min(wait, left)


# -- one retry layer ---------------------------------------------------------------------
_NO_RETRY_CLIENTS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
"""OpenAI client -> the same client with ``max_retries=0`` (kept while the client lives)."""
_BRIDGE_CLIENTS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
"""Async OpenAI client -> a copy with its own connection pool, for the bridge loop."""

_OWN_RETRIES_NOTED: set[type] = set()
"""Model classes already logged as keeping their own retries."""

_CACHE_LOCK = threading.Lock()

_OPENAI_CLIENT_FIELDS = (("root_client", "client"), ("root_async_client", "async_client"))
"""``BaseChatOpenAI`` fields: the OpenAI client, and the resource the model calls on it."""


def _openai_chat_class() -> type | None:
    """``BaseChatOpenAI`` if ``langchain_openai`` is loaded (a model of it implies it is),
    without importing it (about 2 s)."""
    module = sys.modules.get("langchain_openai.chat_models.base")
    return getattr(module, "BaseChatOpenAI", None)


def _no_retry_client(client: Any) -> Any:
    """``client`` with ``max_retries=0``; an async client used by a synchronous entry point
    also gets its own HTTP connection pool (see :func:`_bridge_http_client`)."""
    bridge = in_sync_entry() and type(client).__name__.startswith("Async")
    cache = _BRIDGE_CLIENTS if bridge else _NO_RETRY_CLIENTS
    with _CACHE_LOCK:
        quiet = cache.get(client)
        if quiet is None:
            if bridge:
                quiet = client.with_options(max_retries=0, http_client=_bridge_http_client())
            elif client.max_retries == 0:
                quiet = client
            else:
                quiet = client.with_options(max_retries=0)
            cache[client] = quiet
        return quiet


_bridge_http: Any = None


def _bridge_http_client() -> Any:
    """The HTTP client of OpenAI calls made on the library's bridge loop (sync callers).

    langchain-openai shares one async HTTP client per base URL in the process, and its
    pooled connections belong to the event loop that first used them. Calls of a
    synchronous ``RLM.invoke`` run on the library's long-lived bridge loop, so they use a
    pool of their own: a caller's later ``ainvoke`` on its own loop (or an earlier one)
    never meets a connection of another loop. Called under ``_CACHE_LOCK``.
    """
    global _bridge_http
    if _bridge_http is None:
        from openai import DefaultAsyncHttpxClient

        _bridge_http = DefaultAsyncHttpxClient()
    return _bridge_http


def _note_own_retries(model: BaseChatModel) -> None:
    with _CACHE_LOCK:
        if type(model) in _OWN_RETRIES_NOTED:
            return
        _OWN_RETRIES_NOTED.add(type(model))
    logger.info(
        "%s keeps its own retries: langchain_rlm cannot turn them off, so its retries "
        "(max_retries) multiply with the model's; set the model's own retries to 0 for "
        "one retry layer",
        type(model).__name__,
    )


def without_sdk_retries(model: BaseChatModel) -> BaseChatModel:
    """The model to call so that the library's retry is the only one.

    For a ``BaseChatOpenAI`` (``ChatOpenAI``, ``AzureChatOpenAI``, ...): a shallow copy whose
    OpenAI clients have ``max_retries=0``; ``model`` itself is not changed. Any other model
    is returned as it is (it keeps its own retries; logged once per class at INFO).
    """
    openai_chat = _openai_chat_class()
    if openai_chat is None or not isinstance(model, openai_chat):
        _note_own_retries(model)
        return model
    update: dict[str, Any] = {}
    for root_field, resource_field in _OPENAI_CLIENT_FIELDS:
        client = getattr(model, root_field, None)
        if client is not None and hasattr(client, "with_options"):
            quiet = _no_retry_client(client)
            update[root_field] = quiet
            update[resource_field] = quiet.chat.completions
    if not update:  # built with its own ``client=`` objects: nothing we can reach
        _note_own_retries(model)
        return model
    if all(value is getattr(model, name) for name, value in update.items()):
        return model  # its clients already make no retries
    return model.model_copy(update=update)


# -- the call ----------------------------------------------------------------------------
def _settle(
    meter: UsageMeter,
    model: BaseChatModel,
    message: BaseMessage,
    prompt: Sequence[BaseMessage],
    depth: int,
    root: bool,
) -> AIMessage:
    if not isinstance(message, AIMessage):
        raise ModelCallError(
            f"{model_id(model)} returned {type(message).__name__}", transient=False
        )
    input_tokens, output_tokens, estimated = usage_from_message(message, prompt)
    meter.record(
        model_id(model),
        depth,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        estimated=estimated,
        root=root,
    )
    return message


def _failure(model: BaseChatModel, error: BaseException, attempts: int) -> ModelCallError:
    transient = is_transient(error)
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    return ModelCallError(
        f"{model_id(model)} call failed{tried}: {type(error).__name__}: {error}",
        transient=transient,
        overflow=is_context_overflow(error),
    )


def _is_final(error: BaseException, attempt: int, attempts: int) -> bool:
    """No retry: the last attempt, a permanent fault, or a prompt too long for the model."""
    return attempt >= attempts or not is_transient(error) or is_context_overflow(error)


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
    """One budgeted model call: up to ``max_retries + 1`` HTTP attempts, each reserved,
    bounded by the run's timeout, counted and logged (see the module docstring).

    Raises :class:`~langchain_rlm.usage.BudgetExceeded` (a budget, including ``timeout``
    for an attempt cut in flight) or :class:`ModelCallError` (a permanent fault, or
    retries ran out).
    """
    name = model_id(model)
    target = without_sdk_retries(model)
    prompt = list(messages)
    kwargs: dict[str, Any] = {"stop": list(stop)} if stop else {}
    attempts = max_retries + 1
    for attempt in range(1, attempts + 1):
        meter.reserve_call(model=name)
        logger.debug("%s attempt %d of %d (depth %d)", name, attempt, attempts, depth)
        deadline = asyncio.timeout(meter.seconds_left())
        try:
            async with deadline:
                message = await target.ainvoke(prompt, config, **kwargs)
            return _settle(meter, model, message, prompt, depth, root)
        except BaseException as error:
            meter.record_failure(name, depth, root=root)
            if deadline.expired():
                logger.error("%s call cut by the run's timeout (attempt %d)", name, attempt)
                raise meter.expire() from error
            if not isinstance(error, Exception):
                raise  # cancellation
            if isinstance(error, ModelCallError):  # a reply that is not a message
                logger.error("%s", error)
                raise
            if _is_final(error, attempt, attempts):
                failure = _failure(model, error, attempt)
                logger.error("%s", failure)
                raise failure from error
            wait = _retry_wait(meter, attempt - 1, backoff, error)
            logger.warning(
                "%s attempt %d of %d failed (%s: %s); retrying in %.2f s",
                name,
                attempt,
                attempts,
                type(error).__name__,
                error,
                wait,
            )
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")
