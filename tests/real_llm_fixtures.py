"""Pytest fixtures for tests that run the embedded local model (marker ``real_llm``).

Register them in ``tests/conftest.py``::

    pytest_plugins = ["tests.real_llm_fixtures"]

``local_model_server`` starts llama.cpp's server once per test session (assembling the model
file on first use, see ``langchain_rlm.local``) and stops it at the end. Without
llama-cpp-python the fixtures skip, unless ``RLM_REQUIRE_LOCAL_MODEL=1`` (set it in CI), which
turns a missing install into a failure instead of a silent skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from langchain_rlm.local import (
    LOCAL_EXTRA_HINT,
    LocalModelError,
    LocalModelServer,
    llama_cpp_available,
)

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

REQUIRE_ENV = "RLM_REQUIRE_LOCAL_MODEL"
TEST_MAX_TOKENS = 256
TEST_REQUEST_TIMEOUT_S = 300.0


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0", "false"):
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def local_model_server() -> Iterator[LocalModelServer]:
    """The local llama.cpp server, started once per session."""
    if not llama_cpp_available():
        _unavailable(f"llama-cpp-python is not installed: {LOCAL_EXTRA_HINT}")
    server = LocalModelServer()
    try:
        server.start()
    except LocalModelError as exc:
        _unavailable(f"the local model server did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def local_chat_model(local_model_server: LocalModelServer) -> ChatOpenAI:
    """A ``ChatOpenAI`` on the session's local server (temperature 0, short replies)."""
    return local_model_server.chat_model(max_tokens=TEST_MAX_TOKENS, timeout=TEST_REQUEST_TIMEOUT_S)
