"""The executor interface every sandbox implements.

A :class:`Sandbox` starts a :class:`PythonExecutor` (one REPL session) over a context.
The session keeps its variables between cells; the graph calls it once per code block
and gets a :class:`CodeOutput` back, in the spirit of smolagents' ``PythonExecutor``.

Host functions (``llm_query``, ``llm_query_batched``, ``recursive_lm``, user tools) are
plain callables that live on the host. A sandbox exposes each of them inside the REPL
under its name; calls from model code cross back to the host (an RPC for the process
sandbox, a direct call for the local one). Arguments and results are JSON-like values
(str, int, float, bool, None, list, dict). A host function raises
:class:`HostFunctionError` to send a clean error message back to model code.

``FINAL(answer)`` and ``FINAL_VAR(name)`` are provided by the sandbox itself: the answer
is recorded on the host the moment they are called (so no ``except:`` in model code can
undo it), then the cell stops with a ``BaseException`` subclass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .names import REPL_FUNCTION_NAMES

__all__ = [
    "DEFAULT_CELL_TIMEOUT",
    "DEFAULT_MAX_CAPTURED_OUTPUT",
    "DEFAULT_MAX_SUBCALLS_PER_CELL",
    "DEFAULT_MAX_SUBCALL_CHARS",
    "DEFAULT_MEMORY_MB",
    "REPL_FUNCTION_NAMES",
    "CodeOutput",
    "HostFunction",
    "HostFunctionError",
    "PythonExecutor",
    "Sandbox",
    "SandboxClosedError",
    "SandboxLimits",
]

DEFAULT_CELL_TIMEOUT = 60.0
"""Seconds one cell may run (sub-call time excluded) before it is stopped."""

DEFAULT_MEMORY_MB = 1024
"""Memory a worker may use on top of what the context itself needs."""

DEFAULT_MAX_CAPTURED_OUTPUT = 1_000_000
"""Characters of stdout kept per cell; the rest is dropped with a marker."""

DEFAULT_MAX_SUBCALLS_PER_CELL = 1_000
"""Sub-calls (each prompt of a batch counts) one cell may make."""

DEFAULT_MAX_SUBCALL_CHARS = 2_000_000
"""Characters one sub-call prompt may carry across the bridge."""

HostFunction = Callable[..., Any]


class HostFunctionError(Exception):
    """Raised by a host function to hand model code a clean error message."""


class SandboxClosedError(RuntimeError):
    """A session was used after :meth:`PythonExecutor.close` (or closed while in use).

    Every call on a closed session raises it; the run treats it as "cancelled".
    """


@dataclass(frozen=True)
class SandboxLimits:
    """Per-session limits. ``None`` disables a limit where the sandbox allows it."""

    cell_timeout: float = DEFAULT_CELL_TIMEOUT
    """Wall seconds per cell, not counting time spent inside host functions."""
    memory_mb: int | None = DEFAULT_MEMORY_MB
    """Extra memory in MiB on top of what the context needs."""
    max_captured_output: int = DEFAULT_MAX_CAPTURED_OUTPUT
    """Characters of stdout kept per cell."""
    max_subcalls_per_cell: int = DEFAULT_MAX_SUBCALLS_PER_CELL
    """Host-function calls (batch items counted one by one) per cell."""
    max_subcall_chars: int = DEFAULT_MAX_SUBCALL_CHARS
    """Characters of arguments one host-function call may send."""


@dataclass
class CodeOutput:
    """What one cell produced."""

    stdout: str = ""
    """Everything the cell printed, plus the repr of a trailing expression (like a REPL)."""
    error: str | None = None
    """``"ExcType: message"`` (with a short traceback) when the cell failed."""
    seconds: float = 0.0
    """Wall time of the cell."""
    final_answer: str | None = None
    """Set when the cell called ``FINAL`` / ``FINAL_VAR`` successfully."""
    restarted: bool = False
    """True when the worker had to be killed and restarted: variables are lost."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Sandbox-specific details (e.g. which limit was hit)."""


@runtime_checkable
class PythonExecutor(Protocol):
    """One persistent REPL session over a context."""

    def __call__(self, code: str, *, timeout: float | None = None) -> CodeOutput:
        """Run one cell and return what it produced. Never raises for model errors.

        ``timeout`` (seconds), when given, caps this cell: its deadline is
        ``min(cell_timeout, timeout)`` and the whole call (soft stop, hard kill) returns
        within ``timeout`` plus a small constant. Raises :class:`SandboxClosedError`
        after :meth:`close`.
        """
        ...

    def get_variable(self, name: str) -> str | None:
        """``str()`` of a REPL variable, or ``None`` when there is no such variable."""
        ...

    def variable_names(self) -> list[str]:
        """Names the model defined (REPL functions and modules excluded)."""
        ...

    def set_variable(self, name: str, value: Any) -> None:
        """Bind a JSON-like value in the REPL (used for a new ``context`` on a follow-up)."""
        ...

    def close(self) -> None:
        """Free the session. Idempotent, safe from any thread, also while a cell runs."""
        ...


@runtime_checkable
class Sandbox(Protocol):
    """Starts sessions. Stateless and reusable across runs."""

    name: str
    allowed_modules: tuple[str, ...]
    """What ``import`` may load in this sandbox's sessions (sorted)."""

    def start(
        self,
        context: Any,
        functions: Mapping[str, HostFunction],
        limits: SandboxLimits | None = None,
    ) -> PythonExecutor:
        """Start a session with ``context`` bound and ``functions`` callable from model code."""
        ...
