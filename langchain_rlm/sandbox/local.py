"""In-process sandbox: **for trusted code only**.

``LocalSandbox`` (name ``"local"``) runs cells in the host process with the same
language-level policy as the default process sandbox (see ``policy.py``), but with
**no real isolation**:

* no memory limit: a cell can exhaust the host's memory;
* no hard kill: code stuck in C (``10**10**10``, ``sum(range(10**13))``, a catastrophic
  regex) blocks the calling thread until it finishes;
* the timeout is *soft*: a watchdog thread injects :class:`CellTimeout` into the
  thread running the cell (``PyThreadState_SetAsyncExc``), which only stops code that
  executes Python bytecode, and model code can catch it with ``except BaseException``
  (the watchdog then re-injects it every ``REINJECT_SECONDS``);
* model code shares the host interpreter: it can monkey-patch attributes of shared
  stdlib classes (e.g. ``json.JSONEncoder``) and so affect the host.

Use it for tests, debugging and code you trust. Model-written code is hostile: the
default is :class:`~langchain_rlm.sandbox.process.ProcessSandbox`.

Host functions are called directly, in the calling thread, with the same per-cell
limits the process sandbox enforces; a :class:`~.base.HostFunctionError` becomes a
``SubcallError`` in model code.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Mapping
from typing import Any

from .base import CodeOutput, HostFunction, HostFunctionError, SandboxLimits
from .repl import CellTimeout, CellTimer, ReplCore, SubcallBudget, SubcallError

__all__ = ["LocalExecutor", "LocalSandbox"]

REINJECT_SECONDS = 0.1
"""How often the watchdog re-injects the timeout once a cell is over its limit."""

WATCHDOG_TICK = 0.02


def _inject(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


class _WatchdogTimer(CellTimer):
    """Soft timeout: inject ``CellTimeout`` into the cell's thread when it runs over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = False
        self._paused_at: float | None = None
        self._deadline = 0.0
        self._thread_id = 0
        self._stop = threading.Event()

    def start(self, seconds: float) -> None:
        with self._lock:
            self._thread_id = threading.get_ident()
            self._deadline = time.monotonic() + seconds
            self._paused_at = None
            self._active = True
            self._stop.clear()
        threading.Thread(target=self._watch, name="rlm-local-watchdog", daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            self._active = False
            self._stop.set()
            _inject(self._thread_id, None)  # drop an injection that did not land yet

    def pause(self) -> None:
        with self._lock:
            if self._active and self._paused_at is None:
                self._paused_at = time.monotonic()

    def resume(self) -> None:
        with self._lock:
            if self._active and self._paused_at is not None:
                self._deadline += time.monotonic() - self._paused_at
                self._paused_at = None

    def _watch(self) -> None:
        while not self._stop.wait(WATCHDOG_TICK):
            with self._lock:
                if not self._active:
                    return
                if self._paused_at is None and time.monotonic() >= self._deadline:
                    _inject(self._thread_id, CellTimeout)
                    self._deadline = time.monotonic() + REINJECT_SECONDS


class LocalExecutor:
    """One in-process REPL session (see the module docstring: trusted code only)."""

    def __init__(
        self,
        context: Any,
        functions: Mapping[str, HostFunction],
        limits: SandboxLimits,
    ) -> None:
        self.limits = limits
        self._functions = dict(functions)
        self._budget = SubcallBudget(limits)
        self._lock = threading.Lock()
        self._closed = False
        self.confinement: dict[str, Any] = {"isolation": "none (in-process, trusted code only)"}
        self._core = ReplCore(
            context,
            self._functions,
            self._call_host,
            limits,
            on_final=lambda _text: None,
            timer=_WatchdogTimer() if limits.cell_timeout else None,
            propagate=(KeyboardInterrupt, SystemExit),
        )

    def _call_host(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._budget.charge(name, args, kwargs)
        try:
            return self._functions[name](*args, **kwargs)
        except HostFunctionError as exc:
            raise SubcallError(str(exc)) from None

    def __call__(self, code: str) -> CodeOutput:
        with self._lock:
            if self._closed:
                raise RuntimeError("this sandbox session is closed")
            self._budget.reset()
            started = time.perf_counter()
            result = self._core.run_cell(code)
            return CodeOutput(
                stdout=result.stdout,
                error=result.error,
                seconds=time.perf_counter() - started,
                final_answer=result.final_answer,
                extra={**result.extra, "subcalls": self._budget.used, "sandbox": "local"},
            )

    def get_variable(self, name: str) -> str | None:
        with self._lock:
            return self._core.get_variable(name)

    def variable_names(self) -> list[str]:
        with self._lock:
            return self._core.variable_names()

    def set_variable(self, name: str, value: Any) -> None:
        with self._lock:
            self._core.set_variable(name, value)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._core.namespace.clear()


class LocalSandbox:
    """Starts in-process sessions. **No isolation: for trusted code only.**"""

    name = "local"

    def start(
        self,
        context: Any,
        functions: Mapping[str, HostFunction],
        limits: SandboxLimits | None = None,
    ) -> LocalExecutor:
        return LocalExecutor(context, functions, limits or SandboxLimits())
