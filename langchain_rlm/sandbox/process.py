"""The default sandbox: one confined worker process per session.

Design (measurements in ``benchmarks/RESULTS.md``):

* **Spawn**: ``python -I -c <bootstrap>`` with an *empty* environment (no API keys),
  ``stdin``/``stdout``/``stderr`` on ``/dev/null``, its own session and process group
  (``setsid``), and only three inherited descriptors: the command pipe, the reply pipe
  and the context's memfd (``close_fds``). The worker imports only the sandbox's own
  stdlib-only modules (see ``_worker.py``).
* **Context**: written once per session into a ``memfd_create`` file (chunked, so the
  host never holds a second full copy) and decoded once by the worker; a restarted
  worker maps the same memfd again. It never travels on a command line or per cell.
* **Confinement** (in the worker, after imports): rlimits, best-effort user+network
  namespaces, seccomp allow-list with default ``EPERM``. What was applied comes back
  in the ``ready`` message, is kept in :attr:`ProcessExecutor.confinement`, summarised
  in ``CodeOutput.extra["confinement"]``, and a missing piece is logged as a warning.
* **Time**: the worker's soft ``setitimer`` timeout stops Python loops and keeps the
  session; the host waits for at most ``cell_timeout + grace`` seconds (time inside
  host functions excluded), then kills the process group and restarts the worker
  (``CodeOutput.restarted``), which is what stops code stuck in C.
* **Bridge**: model code calling a host function sends ``call``; the host runs the
  function *in the thread that called the executor* (contextvars and LangChain
  callbacks carry over), enforcing ``max_subcalls_per_cell`` and
  ``max_subcall_chars``, and answers ``result`` or ``error``.
* **Hostile bytes**: every frame from the worker is size-checked before it is read,
  JSON-decoded, and validated field by field; a malformed, oversized, out-of-sequence
  or unexpected message kills and restarts the worker. Only a ``final`` message can set
  the final answer (and it is what ``FINAL`` sends, so forging one gains nothing).

Non-``HostFunctionError`` exceptions from a host function reach model code as a
``SubcallError`` naming the exception (and are listed in ``extra["host_errors"]``);
a ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``, a
cancellation) kills the worker and propagates to the caller.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import CodeOutput, HostFunction, HostFunctionError, SandboxLimits
from .repl import SubcallBudget, SubcallError

__all__ = ["ProcessExecutor", "ProcessSandbox", "SandboxStartError", "WorkerProtocolError"]

logger = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 1.0
"""Extra seconds the host waits after ``cell_timeout`` before the hard kill."""
DEFAULT_START_TIMEOUT = 30.0
"""Seconds a worker may take to decode its context and lock down."""
CONTROL_TIMEOUT = 10.0
"""Seconds for ``variable_names`` / ``set_variable`` replies."""
MIN_MAX_FRAME_BYTES = 64 * 1024 * 1024
HEADER_BYTES = 4
CONTEXT_CHUNK_CHARS = 8 * 1024 * 1024
CONTEXT_WRITE_BYTES = 4 * 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
MAX_EXTRA_KEYS = 16
KILL_WAIT_SECONDS = 5.0

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_BOOTSTRAP = (
    "import sys, types\n"
    "root = sys.argv[1]\n"
    "for name, sub in (('langchain_rlm', 'langchain_rlm'),"
    " ('langchain_rlm.sandbox', 'langchain_rlm/sandbox')):\n"
    "    module = types.ModuleType(name)\n"
    "    module.__path__ = [root + '/' + sub]\n"
    "    sys.modules[name] = module\n"
    "from langchain_rlm.sandbox._worker import main\n"
    "main(sys.argv[2:])\n"
)

_live_executors: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()
_warned: set[str] = set()


class SandboxStartError(RuntimeError):
    """The worker process could not be started."""


class WorkerProtocolError(Exception):
    """The worker broke the protocol (hostile or dead); it is killed and restarted."""


class _WorkerDied(WorkerProtocolError):
    """The worker exited (memory limit, CPU limit, crash)."""


class _Deadline(WorkerProtocolError):
    """The host's hard deadline passed."""


# --------------------------------------------------------------------------- context


def _context_default(value: Any) -> Any:
    raise TypeError(
        "the sandbox context must be JSON-like (str, list, dict, int, float, bool, None); "
        f"convert {type(value).__name__} objects (e.g. documents) to dicts or strings first"
    )


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _ContextFile:
    """The context, encoded once into an anonymous memory file shared with workers."""

    def __init__(self, context: Any) -> None:
        self.fd = os.memfd_create("rlm-context", os.MFD_CLOEXEC)
        self.kind = "str" if isinstance(context, str) else "json"
        self.size = 0
        self._context = context

    def fill(self) -> None:
        """Write the encoded context (called while the first worker boots)."""
        context, self._context = self._context, None
        if isinstance(context, str):
            for start in range(0, len(context), CONTEXT_CHUNK_CHARS):
                chunk = context[start : start + CONTEXT_CHUNK_CHARS]
                self._write(chunk.encode("utf-8", "surrogatepass"))
            return
        encoder = json.JSONEncoder(ensure_ascii=False, default=_context_default)
        buffer: list[str] = []
        pending = 0
        for piece in encoder.iterencode(context):
            buffer.append(piece)
            pending += len(piece)
            if pending >= CONTEXT_WRITE_BYTES:
                self._write("".join(buffer).encode("utf-8", "surrogatepass"))
                buffer, pending = [], 0
        self._write("".join(buffer).encode("utf-8", "surrogatepass"))

    def _write(self, data: bytes) -> None:
        _write_all(self.fd, data)
        self.size += len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def encode_context_bytes(value: Any) -> tuple[str, bytes]:
    """``(kind, bytes)`` for a context sent over the pipe (``set_variable``)."""
    if isinstance(value, str):
        return "str", value.encode("utf-8", "surrogatepass")
    text = json.dumps(value, ensure_ascii=False, default=_context_default)
    return "json", text.encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------- worker


class _WorkerProcess:
    """One spawned worker and the host ends of its pipes."""

    def __init__(self, python: str, context_fd: int, debug: bool) -> None:
        cmd_read, self.cmd_write = os.pipe()
        self.reply_read, reply_write = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [
                    python,
                    "-I",
                    "-c",
                    _BOOTSTRAP,
                    _PACKAGE_ROOT,
                    str(cmd_read),
                    str(reply_write),
                    str(context_fd),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None if debug else subprocess.DEVNULL,
                env={},
                cwd="/",
                close_fds=True,
                pass_fds=(cmd_read, reply_write, context_fd),
                start_new_session=True,
            )
        except OSError as exc:
            for fd in (cmd_read, reply_write, self.cmd_write, self.reply_read):
                os.close(fd)
            raise SandboxStartError(f"could not start the sandbox worker: {exc}") from exc
        os.close(cmd_read)
        os.close(reply_write)
        self.pid = self.proc.pid
        self._buffer = bytearray()
        self.alive = True

    # ---- frames

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(json.dumps(message, ensure_ascii=False, default=str).encode("utf-8"))

    def send_raw(self, payload: bytes) -> None:
        try:
            _write_all(self.cmd_write, len(payload).to_bytes(HEADER_BYTES, "big"))
            _write_all(self.cmd_write, payload)
        except OSError as exc:
            raise _WorkerDied(f"the worker stopped reading ({exc})") from None

    def _fill(self, size: int, deadline: float | None) -> None:
        while len(self._buffer) < size:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise _Deadline("deadline")
            ready, _, _ = select.select([self.reply_read], [], [], timeout)
            if not ready:
                raise _Deadline("deadline")
            chunk = os.read(self.reply_read, max(READ_CHUNK_BYTES, size - len(self._buffer)))
            if not chunk:
                raise _WorkerDied(self._death_reason())
            self._buffer += chunk

    def recv(self, deadline: float | None, max_frame: int) -> dict[str, Any]:
        self._fill(HEADER_BYTES, deadline)
        size = int.from_bytes(self._buffer[:HEADER_BYTES], "big")
        if size > max_frame:
            raise WorkerProtocolError(f"oversized message ({size} bytes > {max_frame})")
        self._fill(HEADER_BYTES + size, deadline)
        payload = bytes(self._buffer[HEADER_BYTES : HEADER_BYTES + size])
        del self._buffer[: HEADER_BYTES + size]
        try:
            message = json.loads(payload.decode("utf-8", "surrogatepass"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise WorkerProtocolError(f"malformed message ({type(exc).__name__})") from None
        if not isinstance(message, dict) or not isinstance(message.get("t"), str):
            raise WorkerProtocolError("malformed message (not an object with a type)")
        return message

    def _death_reason(self) -> str:
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "the worker closed its pipe"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"the worker was killed by {name}"
        return f"the worker exited with code {code}"

    # ---- lifecycle

    def kill(self) -> None:
        if self.alive:
            self.alive = False
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            try:
                self.proc.wait(timeout=KILL_WAIT_SECONDS)
            except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
                logger.error("sandbox worker %s did not die after SIGKILL", self.pid)
        for name in ("cmd_write", "reply_read"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


# --------------------------------------------------------------------------- executor


def _summarise(confinement: Mapping[str, Any]) -> str:
    parts = [name for name in ("seccomp", "user_namespace", "net_namespace") if confinement[name]]
    parts.append("rlimits:" + ",".join(sorted(confinement["rlimits"])))
    missing = [n for n in ("seccomp", "user_namespace", "net_namespace") if not confinement[n]]
    if missing:
        return "DEGRADED (missing " + ", ".join(missing) + "): " + " + ".join(parts)
    return " + ".join(parts)


def _clean_confinement(raw: Any) -> dict[str, Any]:
    """Validate the worker's (untrusted) report of what it applied."""
    if not isinstance(raw, dict):
        raise WorkerProtocolError("malformed ready message")
    rlimits = raw.get("rlimits")
    errors = raw.get("errors")
    return {
        "seccomp": raw.get("seccomp") is True,
        "user_namespace": raw.get("user_namespace") is True,
        "net_namespace": raw.get("net_namespace") is True,
        "rlimits": {str(k)[:20]: v for k, v in rlimits.items() if isinstance(v, int)}
        if isinstance(rlimits, dict)
        else {},
        "errors": [str(e)[:300] for e in errors[:20]] if isinstance(errors, list) else [],
    }


def _clean_extra(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    clean: dict[str, Any] = {}
    for key, value in list(raw.items())[:MAX_EXTRA_KEYS]:
        if isinstance(value, int | float | bool) or (isinstance(value, str) and len(value) <= 200):
            clean[str(key)[:50]] = value
    return clean


class ProcessExecutor:
    """One REPL session in a confined worker process (see the module docstring)."""

    def __init__(
        self,
        context: Any,
        functions: Mapping[str, HostFunction],
        limits: SandboxLimits,
        *,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        seccomp: bool = True,
        namespaces: bool = True,
        require_confinement: bool = False,
        python: str | None = None,
        debug: bool = False,
    ) -> None:
        for name in functions:
            if not name.isidentifier() or name.startswith("__"):
                raise ValueError(f"invalid host function name: {name!r}")
        self.limits = limits
        self._functions = dict(functions)
        self._grace = grace_seconds
        self._start_timeout = start_timeout
        self._seccomp = seccomp
        self._namespaces = namespaces
        self._require = require_confinement
        self._python = python or sys.executable
        self._debug = debug
        self._lock = threading.RLock()
        self._seq = 0
        self._closed = False
        self._released = False
        self.max_frame = max(
            MIN_MAX_FRAME_BYTES, 8 * limits.max_captured_output + 8 * limits.max_subcall_chars
        )
        self.confinement: dict[str, Any] = {}
        self.restarts = 0
        self._context = _ContextFile(context)
        self._worker: _WorkerProcess | None = None
        try:
            self._start_worker(fill_context=True)
        except BaseException:
            self._context.close()
            raise
        _live_executors.add(self)

    # ----------------------------------------------------------------- lifecycle

    @property
    def pid(self) -> int | None:
        """The worker's process id (``None`` when no worker runs)."""
        return self._worker.pid if self._worker is not None and self._worker.alive else None

    def _config(self) -> dict[str, Any]:
        limits = self.limits
        return {
            "limits": {
                "cell_timeout": limits.cell_timeout,
                "memory_mb": limits.memory_mb,
                "max_captured_output": limits.max_captured_output,
                "max_subcalls_per_cell": limits.max_subcalls_per_cell,
                "max_subcall_chars": limits.max_subcall_chars,
            },
            "functions": list(self._functions),
            "context_kind": self._context.kind,
            "context_size": self._context.size,
            "max_frame": self.max_frame,
            "seccomp": self._seccomp,
            "unshare": self._namespaces,
        }

    def _start_worker(self, fill_context: bool = False) -> None:
        worker = _WorkerProcess(self._python, self._context.fd, self._debug)
        self._worker = worker
        try:
            if fill_context:
                self._context.fill()
            worker.send(self._config())
            deadline = time.monotonic() + self._start_timeout
            message = worker.recv(deadline, self.max_frame)
            if message["t"] == "fatal":
                raise SandboxStartError(f"the sandbox worker failed: {message.get('error')}")
            if message["t"] != "ready":
                raise WorkerProtocolError(f"unexpected {message['t']!r} message at start")
            self.confinement = _clean_confinement(message.get("confinement"))
        except WorkerProtocolError as exc:
            worker.kill()
            self._worker = None
            raise SandboxStartError(f"the sandbox worker did not start: {exc}") from exc
        except BaseException:
            worker.kill()
            self._worker = None
            raise
        self._report_confinement()

    def _report_confinement(self) -> None:
        summary = _summarise(self.confinement)
        self.confinement["summary"] = summary
        if not summary.startswith("DEGRADED"):
            return
        if self._require:
            self._kill_worker()
            raise SandboxStartError(
                f"sandbox confinement incomplete and required: {summary}; "
                f"errors: {self.confinement['errors']}"
            )
        if summary not in _warned:
            _warned.add(summary)
            logger.warning(
                "SANDBOX DEGRADED: the worker runs with %s (errors: %s). Model code is still "
                "limited by the import policy and rlimits, but not by the OS-level allow-list.",
                summary,
                "; ".join(self.confinement["errors"]) or "none",
            )

    def _kill_worker(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker = None

    def _restart(self) -> None:
        self._kill_worker()
        if self._closed:  # closed from another thread while a cell ran: stay down
            raise SandboxStartError("the session was closed")
        self.restarts += 1
        self._start_worker()

    def _ensure_worker(self) -> _WorkerProcess:
        if self._closed:
            raise RuntimeError("this sandbox session is closed")
        if self._worker is None or not self._worker.alive:
            self._start_worker()
        assert self._worker is not None
        return self._worker

    def close(self) -> None:
        """Kill the worker's process group and free the context. Idempotent.

        Safe to call from another thread while a cell runs (a cancelled run): the worker
        is killed at once, and the cell returns an error instead of restarting it.
        """
        if not self._lock.acquire(blocking=False):
            self._closed = True
            worker = self._worker
            if worker is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(worker.pid, signal.SIGKILL)
            self._lock.acquire()
        try:
            if self._released:
                return
            self._released = True
            self._closed = True
            if self._worker is not None:
                try:
                    if self._worker.alive:
                        self._worker.send({"op": "close"})
                except WorkerProtocolError:
                    pass
            self._kill_worker()
            self._context.close()
            _live_executors.discard(self)
        finally:
            self._lock.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- cells

    def __call__(self, code: str) -> CodeOutput:
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        with self._lock:
            started = time.perf_counter()
            restarted = self._worker is None or not self._worker.alive
            worker = self._ensure_worker()
            output = self._run_cell(worker, code)
            output.restarted = output.restarted or restarted
            output.seconds = time.perf_counter() - started
            output.extra.setdefault("confinement", self.confinement.get("summary", ""))
            return output

    def _run_cell(self, worker: _WorkerProcess, code: str) -> CodeOutput:
        self._seq += 1
        seq = self._seq
        budget = SubcallBudget(self.limits)
        host_errors: list[str] = []
        final: str | None = None
        timeout = self.limits.cell_timeout
        deadline = time.monotonic() + timeout + self._grace if timeout else None
        try:
            worker.send({"op": "exec", "seq": seq, "code": code})
            while True:
                message = worker.recv(deadline, self.max_frame)
                if message.get("seq") != seq:
                    raise WorkerProtocolError("message out of sequence")
                kind = message["t"]
                if kind == "final":
                    answer = message.get("answer")
                    if not isinstance(answer, str):
                        raise WorkerProtocolError("malformed final message")
                    if final is None:
                        final = answer
                elif kind == "call":
                    spent = self._serve_call(worker, message, budget, host_errors)
                    if deadline is not None:
                        deadline += spent
                elif kind == "done":
                    return self._finish(message, final, budget, host_errors)
                else:
                    raise WorkerProtocolError(f"unexpected {kind!r} message")
        except _Deadline:
            return self._recover(
                final,
                f"TimeoutError: the cell did not stop within {timeout:g} s (plus "
                f"{self._grace:g} s grace); it was probably stuck inside a single C-level "
                "operation (huge arithmetic, a catastrophic regex, a giant allocation).",
                "cell_timeout_hard",
                budget,
            )
        except _WorkerDied as exc:
            return self._recover(
                final,
                f"SandboxError: {exc} (likely the memory or CPU limit).",
                "worker_died",
                budget,
            )
        except WorkerProtocolError as exc:
            return self._recover(
                final,
                f"SandboxError: the worker sent an invalid message ({exc}).",
                "protocol",
                budget,
            )

    def _recover(
        self, final: str | None, message: str, limit: str, budget: SubcallBudget
    ) -> CodeOutput:
        try:
            self._restart()
            note = "The worker was restarted: all variables were reset (`context` is loaded again)."
        except SandboxStartError as exc:
            note = f"The worker could not be restarted ({exc})."
        return CodeOutput(
            error=f"{message} {note}",
            final_answer=final,
            restarted=True,
            extra={"limit": limit, "subcalls": budget.used},
        )

    def _finish(
        self,
        message: dict[str, Any],
        final: str | None,
        budget: SubcallBudget,
        host_errors: list[str],
    ) -> CodeOutput:
        stdout = message.get("stdout")
        error = message.get("error")
        if not isinstance(stdout, str) or not (error is None or isinstance(error, str)):
            raise WorkerProtocolError("malformed done message")
        limit = self.limits.max_captured_output
        if len(stdout) > limit + 200:
            stdout = stdout[:limit] + "\n... [output truncated by the host]"
        extra = _clean_extra(message.get("extra"))
        extra["subcalls"] = budget.used
        if host_errors:
            extra["host_errors"] = host_errors
        return CodeOutput(stdout=stdout, error=error, final_answer=final, extra=extra)

    def _serve_call(
        self,
        worker: _WorkerProcess,
        message: dict[str, Any],
        budget: SubcallBudget,
        host_errors: list[str],
    ) -> float:
        name, args, kwargs = message.get("name"), message.get("args"), message.get("kwargs")
        if (
            not isinstance(name, str)
            or name not in self._functions
            or not isinstance(args, list)
            or not isinstance(kwargs, dict)
        ):
            raise WorkerProtocolError("malformed call message")
        started = time.monotonic()
        try:
            budget.charge(name, tuple(args), kwargs)
            value = self._functions[name](*args, **kwargs)
            reply: dict[str, Any] = {"t": "result", "value": value}
        except (HostFunctionError, SubcallError) as exc:
            reply = {"t": "error", "message": str(exc)}
        except Exception as exc:
            text = f"{name} failed on the host: {type(exc).__name__}: {exc}"
            host_errors.append(text)
            reply = {"t": "error", "message": text}
        except BaseException:
            self._kill_worker()
            raise
        try:
            payload = json.dumps(reply, ensure_ascii=False, default=str).encode("utf-8")
        except (TypeError, ValueError) as exc:
            payload = json.dumps(
                {"t": "error", "message": f"{name}: result could not be sent: {exc}"}
            ).encode("utf-8")
        worker.send_raw(payload)
        return time.monotonic() - started

    # ----------------------------------------------------------------- variables

    def _control(self, message: dict[str, Any], raw: bytes | None = None) -> Any:
        worker = self._ensure_worker()
        self._seq += 1
        message["seq"] = self._seq
        timeout = (self.limits.cell_timeout or CONTROL_TIMEOUT) + self._grace
        try:
            worker.send(message)
            if raw is not None:
                worker.send_raw(raw)
            reply = worker.recv(time.monotonic() + timeout, self.max_frame)
            if reply.get("t") != "value" or reply.get("seq") != self._seq:
                raise WorkerProtocolError("unexpected reply")
            return reply.get("value")
        except WorkerProtocolError as exc:
            logger.warning("sandbox worker failed on %s (%s); restarting it", message["op"], exc)
            self._restart()
            raise

    def get_variable(self, name: str) -> str | None:
        with self._lock:
            try:
                value = self._control({"op": "get", "name": str(name)})
            except WorkerProtocolError:
                return None
            return value if isinstance(value, str) else None

    def variable_names(self) -> list[str]:
        with self._lock:
            try:
                value = self._control({"op": "names"})
            except WorkerProtocolError:
                return []
            if not isinstance(value, list):
                return []
            return [str(name) for name in value if isinstance(name, str)]

    def set_variable(self, name: str, value: Any) -> None:
        """Bind a JSON-like value; ``context`` also replaces what a restart reloads."""
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("__"):
            raise ValueError(f"invalid variable name: {name!r}")
        if name in self._functions or name in ("FINAL", "FINAL_VAR", "SHOW_VARS"):
            raise ValueError(f"{name!r} is a REPL function and cannot be rebound")
        with self._lock:
            if name == "context":
                self._replace_context(value)
                return
            json.dumps(value, default=_context_default)  # clear TypeError for non-JSON values
            try:
                self._control({"op": "set", "name": name, "value": value})
            except WorkerProtocolError as exc:
                raise RuntimeError(f"could not set {name!r} in the sandbox: {exc}") from exc

    def _replace_context(self, value: Any) -> None:
        new_file = _ContextFile(value)
        new_file.fill()
        old, self._context = self._context, new_file
        old.close()
        kind, raw = encode_context_bytes(value)
        # on failure, the restart in _control already loaded the new context
        with contextlib.suppress(WorkerProtocolError):
            self._control({"op": "set", "name": "context", "raw_kind": kind}, raw)


class ProcessSandbox:
    """Starts confined worker-process sessions (the default sandbox, name ``"process"``).

    ``seccomp`` / ``namespaces`` can be switched off (tests of the degraded mode,
    platforms without them); ``require_confinement=True`` refuses to run degraded.
    """

    name = "process"

    def __init__(
        self,
        *,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        seccomp: bool = True,
        namespaces: bool = True,
        require_confinement: bool = False,
        python: str | None = None,
        debug: bool = False,
    ) -> None:
        self.grace_seconds = grace_seconds
        self.start_timeout = start_timeout
        self.seccomp = seccomp
        self.namespaces = namespaces
        self.require_confinement = require_confinement
        self.python = python
        self.debug = debug or bool(os.environ.get("RLM_SANDBOX_DEBUG"))

    def start(
        self,
        context: Any,
        functions: Mapping[str, HostFunction],
        limits: SandboxLimits | None = None,
    ) -> ProcessExecutor:
        return ProcessExecutor(
            context,
            functions,
            limits or SandboxLimits(),
            grace_seconds=self.grace_seconds,
            start_timeout=self.start_timeout,
            seccomp=self.seccomp,
            namespaces=self.namespaces,
            require_confinement=self.require_confinement,
            python=self.python,
            debug=self.debug,
        )


@atexit.register
def _close_all() -> None:
    for executor in list(_live_executors):
        with contextlib.suppress(Exception):
            executor.close()
