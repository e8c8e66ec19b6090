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
default is :class:`~langchain_rlm.sandbox.process.ProcessSandbox`. Because of that,
it needs an explicit opt-in that names the risk: ``LocalSandbox(trust_model_code=True)``
or ``get_sandbox("local-trusted")``; ``LocalSandbox()`` and ``"local"`` raise.

Host functions are called directly, in the calling thread, with the same per-cell
limits the process sandbox enforces; a :class:`~.base.HostFunctionError` becomes a
``SubcallError`` in model code; any other ``Exception`` too, and it is also listed in
``extra["host_errors"]`` and logged; a ``BaseException`` (cancellation) propagates to
the caller after the cell. Text leaving a session is cleaned like the process
sandbox's (unpaired surrogates become U+FFFD).

``timeout`` (per call) shortens the soft timeout; like the soft timeout it cannot stop
code stuck in C (best effort). ``close()`` from another thread while a cell runs makes
the watchdog stop the cell at once (soft, as above); calls after ``close()`` raise
:class:`~.base.SandboxClosedError`.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from .base import CodeOutput, HostFunction, HostFunctionError, SandboxClosedError, SandboxLimits
from .policy import ALLOWED_MODULES
from .repl import (
    NO_TIME_LEFT_ERROR,
    CellTimeout,
    CellTimer,
    ReplCore,
    SubcallBudget,
    SubcallError,
    clean_text,
    clean_value,
)

logger = logging.getLogger("langchain_rlm.sandbox")

TRUST_ERROR = (
    "LocalSandbox runs model-written code inside your own process with no isolation "
    "(no memory limit, no hard timeout, your files, network and environment are "
    "reachable if the language policy is bypassed). Opt in explicitly with "
    "LocalSandbox(trust_model_code=True) or sandbox='local-trusted', or use the default "
    "sandbox='process'."
)

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
        self._depth = 0
        self._stop = threading.Event()

    def start(self, seconds: float) -> None:
        with self._lock:
            self._thread_id = threading.get_ident()
            self._deadline = time.monotonic() + seconds if seconds else float("inf")
            self._paused_at = None
            self._depth = 0
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
            self._depth += 1
            if self._active and self._depth == 1:
                self._paused_at = time.monotonic()

    def resume(self) -> None:
        with self._lock:
            if self._depth <= 0:
                return
            self._depth -= 1
            if self._active and self._depth == 0 and self._paused_at is not None:
                self._deadline += time.monotonic() - self._paused_at
                self._paused_at = None

    def expire(self) -> None:
        """Stop the running cell as soon as it is not inside a host function."""
        with self._lock:
            self._deadline = 0.0

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

    allowed_modules: tuple[str, ...] = tuple(sorted(ALLOWED_MODULES))

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
        self._host_errors: list[str] = []
        self._cancelled: BaseException | None = None
        self.confinement: dict[str, Any] = {"isolation": "none (in-process, trusted code only)"}
        self._timer = _WatchdogTimer()
        self._core = ReplCore(
            context,
            self._functions,
            self._call_host,
            limits,
            on_final=lambda _text: None,
            timer=self._timer,
            propagate=(KeyboardInterrupt, SystemExit),
        )

    def _call_host(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._budget.charge(name, args, kwargs)
        args = tuple(clean_value(list(args)))
        kwargs = clean_value(kwargs)
        self._timer.pause()
        try:
            return self._functions[name](*args, **kwargs)
        except HostFunctionError as exc:
            raise SubcallError(str(exc)) from None
        except Exception as exc:
            text = f"{name} failed on the host: {type(exc).__name__}: {exc}"
            self._host_errors.append(text)
            logger.error("host function %r raised inside a sandbox cell", name, exc_info=True)
            raise SubcallError(text) from None
        except BaseException as exc:
            self._cancelled = exc
            raise
        finally:
            self._timer.resume()

    def __call__(self, code: str, *, timeout: float | None = None) -> CodeOutput:
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        with self._lock:
            if self._closed:
                raise SandboxClosedError("this sandbox session is closed")
            if timeout is not None and timeout <= 0:
                return CodeOutput(
                    error=NO_TIME_LEFT_ERROR,
                    extra={"limit": "timeout", "sandbox": "local"},
                )
            self._budget.reset()
            self._host_errors = []
            self._cancelled = None
            started = time.perf_counter()
            soft = self.limits.cell_timeout
            if timeout is not None:
                soft = min(soft, timeout) if soft else timeout
            result = self._core.run_cell(code, soft_timeout=soft or 0)
            if self._cancelled is not None:
                raise self._cancelled
            if self._closed:
                raise SandboxClosedError("this sandbox session was closed while the cell ran")
            extra = {**result.extra, "subcalls": self._budget.used, "sandbox": "local"}
            if self._host_errors:
                extra["host_errors"] = list(self._host_errors)
            extra["confinement"] = self.confinement["isolation"]
            return CodeOutput(
                stdout=clean_text(result.stdout),
                error=None if result.error is None else clean_text(result.error),
                seconds=time.perf_counter() - started,
                final_answer=None
                if result.final_answer is None
                else clean_text(result.final_answer),
                extra=extra,
            )

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosedError("this sandbox session is closed")

    def get_variable(self, name: str) -> str | None:
        with self._lock:
            self._check_open()
            value = self._core.get_variable(name)
            return None if value is None else clean_text(value)

    def variable_names(self) -> list[str]:
        with self._lock:
            self._check_open()
            return [clean_text(name) for name in self._core.variable_names()]

    def set_variable(self, name: str, value: Any) -> None:
        with self._lock:
            self._check_open()
            self._core.set_variable(name, value)

    def close(self) -> None:
        """Idempotent; from another thread while a cell runs, the cell is stopped (soft)."""
        self._closed = True
        self._timer.expire()
        if self._lock.acquire(blocking=False):
            try:
                self._core.namespace.clear()
            finally:
                self._lock.release()


class LocalSandbox:
    """Starts in-process sessions. **No isolation: for trusted code only.**

    ``trust_model_code=True`` is required: it states that you accept running
    model-written code in your own process (see the module docstring).
    """

    name = "local"
    allowed_modules: tuple[str, ...] = tuple(sorted(ALLOWED_MODULES))
    """What ``import`` may load in this sandbox."""

    def __init__(self, *, trust_model_code: bool = False) -> None:
        if trust_model_code is not True:
            raise ValueError(TRUST_ERROR)
        self.trust_model_code = True

    def start(
        self,
        context: Any,
        functions: Mapping[str, HostFunction],
        limits: SandboxLimits | None = None,
    ) -> LocalExecutor:
        return LocalExecutor(context, functions, limits or SandboxLimits())
