"""Names every REPL session defines itself (shared by the host and the worker).

Kept apart from :mod:`~langchain_rlm.sandbox.base` so that the worker process, which needs
only these names and the REPL, does not import ``dataclasses`` (and with it ``inspect``):
about 3 ms of its start.
"""

from __future__ import annotations

__all__ = ["REPL_FUNCTION_NAMES"]

REPL_FUNCTION_NAMES = ("context", "FINAL", "FINAL_VAR", "SHOW_VARS")
"""Names every session defines itself, on top of the host functions."""
