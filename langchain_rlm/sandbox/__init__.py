"""Sandboxes that run model-written Python: the default confined process, or local.

``get_sandbox("process")`` (the default) runs each session in a confined worker
process (see :mod:`.process`); ``get_sandbox("local-trusted")`` runs in-process and is
for trusted code only (see :mod:`.local`): the name states the opt-in, and a bare
``"local"`` raises an error that says so.
"""

from __future__ import annotations

from typing import Any

from .base import (
    CodeOutput,
    HostFunction,
    HostFunctionError,
    PythonExecutor,
    Sandbox,
    SandboxClosedError,
    SandboxLimits,
)
from .local import TRUST_ERROR, LocalExecutor, LocalSandbox
from .process import ProcessExecutor, ProcessSandbox, SandboxStartError

__all__ = [
    "SANDBOX_NAMES",
    "CodeOutput",
    "HostFunction",
    "HostFunctionError",
    "LocalExecutor",
    "LocalSandbox",
    "ProcessExecutor",
    "ProcessSandbox",
    "PythonExecutor",
    "Sandbox",
    "SandboxClosedError",
    "SandboxLimits",
    "SandboxStartError",
    "get_sandbox",
]

SANDBOX_NAMES = ("process", "local-trusted")
"""Names :func:`get_sandbox` accepts; the first is the default."""


def get_sandbox(name_or_instance: str | Sandbox | None = "process") -> Sandbox:
    """A sandbox by name (``"process"``, the default, or ``"local-trusted"``) or as given.

    An object with a ``start`` method is returned unchanged, so callers can pass their
    own :class:`Sandbox` implementation.
    """
    if name_or_instance is None:
        name_or_instance = SANDBOX_NAMES[0]
    if isinstance(name_or_instance, str):
        key = name_or_instance.strip().lower()
        if key == "process":
            return ProcessSandbox()
        if key == "local-trusted":
            return LocalSandbox(trust_model_code=True)
        if key == "local":
            raise ValueError(TRUST_ERROR)
        raise ValueError(
            f"unknown sandbox {name_or_instance!r}; valid choices: "
            + ", ".join(repr(n) for n in SANDBOX_NAMES)
            + " (or a Sandbox instance)"
        )
    start: Any = getattr(name_or_instance, "start", None)
    if callable(start):
        return name_or_instance
    raise ValueError(
        f"expected a sandbox name ({', '.join(SANDBOX_NAMES)}) or a Sandbox instance, "
        f"got {type(name_or_instance).__name__}"
    )
