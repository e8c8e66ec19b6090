"""Compatibility re-export of :mod:`langchain_rlm.local` (the embedded local models).

The code lives in the :mod:`langchain_rlm.local` subpackage: ``files`` (model files, cache,
assembly, verification), ``server`` (:class:`LocalModelServer`) and ``defaults`` (the
default-model policy). Import from there; this module only keeps old imports working.
"""

from __future__ import annotations

from langchain_rlm.local import (
    DEFAULT_MODEL,
    LOCAL_EXTRA_HINT,
    MODEL_ALIAS,
    MODELS,
    LocalModelError,
    LocalModelServer,
    ModelPart,
    ModelSpec,
    default_cache_dir,
    default_chat_models,
    ensure_model_file,
    get_local_server,
    is_model_cached,
    llama_cpp_available,
    local_chat_models,
    model_file_path,
    shutdown_local_server,
)

__all__ = [
    "DEFAULT_MODEL",
    "LOCAL_EXTRA_HINT",
    "MODELS",
    "MODEL_ALIAS",
    "LocalModelError",
    "LocalModelServer",
    "ModelPart",
    "ModelSpec",
    "default_cache_dir",
    "default_chat_models",
    "ensure_model_file",
    "get_local_server",
    "is_model_cached",
    "llama_cpp_available",
    "local_chat_models",
    "model_file_path",
    "shutdown_local_server",
]
