"""The default sandbox: one confined worker process per session.

Design (measurements in ``benchmarks/RESULTS.md``):

* **Spawn**: ``python -s -P [-S] -c <bootstrap>`` (what ``-I`` gives minus ``-E``; ``-S``
  on the host's own interpreter, see :data:`NO_SITE_FLAG`) with an
  environment that holds only ``PYTHONHASHSEED=0`` (no API keys; a fixed hash seed so
  replays are deterministic), ``stdin``/``stdout``/``stderr`` on ``/dev/null``, its own
  session and process group (``setsid``), and only two inherited descriptors: the
  command pipe and the reply pipe (``close_fds``).
* **Context**: streamed once per worker start over the command pipe, in chunks, from
  the caller's own object: the host keeps a *reference*, never a copy, and holds at
  most one encoded chunk at a time; a ``str``'s own buffer (1, 2 or 4 bytes per
  character, read in place) lands directly in the worker's final string (see
  ``_worker.py``); lists and dicts go as JSON. Nothing is left in shared memory or a temporary
  file once the worker has it, and a restart streams the caller's object again. No
  ``memfd_create``, so the same path runs on every platform.
* **Confinement** (in the worker, after imports; see ``_worker.py``). What was applied
  comes back in the ``ready`` message, is validated into :attr:`ProcessExecutor.confinement`
  and its ``summary`` is put by the host into every ``CodeOutput.extra["confinement"]``
  (the worker's own ``extra`` keys are filtered by an allow-list, so it cannot overwrite
  it). A missing piece logs ``SANDBOX DEGRADED`` once per process.
* **Deadlines on every exchange**: the command pipe is non-blocking and every write,
  like every read, waits with ``poll`` until a deadline. A cell's deadline is
  ``min(cell_timeout, timeout)`` + grace, extended by time spent in host functions,
  and never later than ``timeout`` + grace when the caller passed ``timeout`` (so the
  whole call returns within ``timeout`` plus a small constant). Variable reads and
  writes get :data:`CONTROL_TIMEOUT`. A worker that misses one is killed; a new one is
  started lazily by the next call (so the killing call returns at once, and a closed
  session never starts one), with the context streamed again and the model told that
  its variables are gone.
* **Processes die with the session**: the kill stops, then ``SIGKILL``\\s, the worker's
  process group and every descendant found through ``/proc`` (the worker is a child
  subreaper, so orphans stay in its tree); seccomp (full mode) or ``RLIMIT_NPROC`` = 0
  as ``nobody`` (degraded mode) keep the worker from forking in the first place. The
  worker also dies with its host: ``PR_SET_PDEATHSIG`` asks the kernel for SIGKILL when
  the host thread that started it dies, which reaches it even while the kill has it
  stopped (a host killed between the two steps used to leave it stopped for good).
* **Bridge**: model code calling a host function sends ``call``; the host runs the
  function *in the thread that called the executor* (contextvars and LangChain
  callbacks carry over), enforcing ``max_subcalls_per_cell`` and ``max_subcall_chars``
  at any nesting depth, and answers ``result`` or ``error``.
* **Hostile bytes**: every frame from the worker is size-checked before it is read,
  JSON-decoded, validated field by field, and every string in it has unpaired
  surrogates replaced by U+FFFD (:func:`.repl.clean_text`) before it leaves this
  module. A malformed, oversized, out-of-sequence or unexpected message kills the
  worker. Only a ``final`` message can set the final answer.

Host functions: :class:`~.base.HostFunctionError` reaches model code as a clean
``SubcallError``; any other ``Exception`` reaches it as a ``SubcallError`` naming the
exception, is listed in ``extra["host_errors"]`` and logged (with traceback) on the
``langchain_rlm.sandbox`` logger; a ``BaseException`` that is not an ``Exception`` (a
cancellation) kills the worker and propagates.

After :meth:`ProcessExecutor.close` (from any thread, also while a cell runs: the
worker dies at once) every call raises :class:`~.base.SandboxClosedError`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .base import (
    CodeOutput,
    HostFunction,
    HostFunctionError,
    SandboxClosedError,
    SandboxLimits,
)
from .policy import ALLOWED_MODULES
from .repl import NO_TIME_LEFT_ERROR, SubcallBudget, SubcallError, clean_text, clean_value

__all__ = [
    "ProcessExecutor",
    "ProcessSandbox",
    "SandboxStartError",
    "WorkerProtocolError",
]

logger = logging.getLogger("langchain_rlm.sandbox")

DEFAULT_GRACE_SECONDS = 1.0
"""Extra seconds the host waits after the soft timeout before the hard kill."""
DEFAULT_START_TIMEOUT = 30.0
"""Seconds a worker may take to start, receive its context and lock down (plus the
context's size at :data:`MIN_HANDOVER_BYTES_PER_SECOND`)."""
CONTROL_TIMEOUT = 10.0
"""Seconds for ``variable_names`` / ``set_variable`` / writes without a cell deadline."""
MIN_HANDOVER_BYTES_PER_SECOND = 20_000_000
"""Slowest context transfer the deadlines allow for (the pipe does about 1 GB/s)."""
MIN_MAX_FRAME_BYTES = 64 * 1024 * 1024
HEADER_BYTES = 4
CONTEXT_CHUNK_CHARS = 1024 * 1024
CONTEXT_WRITE_BYTES = 4 * 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
WRITE_CHUNK_BYTES = 1024 * 1024
PIPE_BUFFER_BYTES = 1024 * 1024
F_SETPIPE_SZ = 1031
KILL_WAIT_SECONDS = 5.0
KILL_TREE_MAX_PASSES = 200
KILL_TREE_PAUSE = 0.005
WORKER_FLAGS = ("-s", "-P")
"""``-I`` minus ``-E``: no user site, no script directory on ``sys.path``; the
environment below is all the worker sees, so ``-E`` is not needed to ignore others."""
NO_SITE_FLAG = "-S"
"""Added when the worker runs the host's own interpreter: no ``site`` (nor ``.pth`` files,
nor an editable install's import hook) runs in the worker, which needs only the standard
library, this package's sandbox modules and ``pyseccomp``, whose directories the host
passes. Saves about 4 ms of the worker's start (more under an editable install, whose
import hook ``site`` loads); another interpreter keeps its ``site``."""
SEEDED_LIBRARIES = ("c", "seccomp")
"""Shared libraries the host looks up once and hands to every worker, so that importing
``pyseccomp`` there does not run ``ldconfig`` again (``ctypes.util.find_library``)."""
WORKER_ENV = {"PYTHONHASHSEED": "0"}
WORKER_EXTRA_KEYS = frozenset({"limit", "stdout_truncated_chars"})
"""The only ``extra`` keys the host accepts from the worker (the rest is host-made)."""
SIMULATABLE = frozenset({"proc", "seccomp", "namespaces", "nproc", "prctl", "host_proc"})
"""Pieces tests can pretend are missing (``ProcessSandbox(simulate_missing=...)``)."""
EXIT_BRIDGE_BROKEN = 71
_SUMMARY_LAYERS = ("seccomp", "user_namespace", "net_namespace")

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_BOOTSTRAP = (
    "import sys, types\n"
    "root = sys.argv[1]\n"
    "sys.path.extend(sys.argv[2:3] if sys.argv[2] else ())\n"
    "for name, sub in (('langchain_rlm', 'langchain_rlm'),"
    " ('langchain_rlm.sandbox', 'langchain_rlm/sandbox')):\n"
    "    module = types.ModuleType(name)\n"
    "    module.__path__ = [root + '/' + sub]\n"
    "    sys.modules[name] = module\n"
    "from langchain_rlm.sandbox._worker import main\n"
    "main(sys.argv[3:])\n"
)

_live_executors: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()
_warned: set[str] = set()
"""``"degraded"`` once the ``SANDBOX DEGRADED`` warning was logged in this process."""


class SandboxStartError(RuntimeError):
    """The worker process could not be started."""


class WorkerProtocolError(Exception):
    """The worker broke the protocol (hostile or dead); it is killed."""


class _WorkerDied(WorkerProtocolError):
    """The worker exited (memory limit, CPU limit, crash, a broken bridge)."""


class _Deadline(WorkerProtocolError):
    """A host deadline passed."""


# --------------------------------------------------------------------------- context


def _context_default(value: Any) -> Any:
    raise TypeError(
        "the sandbox context must be JSON-like (str, list, dict, int, float, bool, None); "
        f"convert {type(value).__name__} objects (e.g. documents) to dicts or strings first"
    )


RAW_CODECS: dict[str, str] = {
    "ascii": "ascii",
    "raw1": "latin-1",
    "raw2": "utf-16-le",
    "raw4": "utf-32-le",
}
"""Context kinds sent as the ``str``'s own buffer, and the codec those bytes equal."""
_STATE_PROBES = {"a": (1, 1, 1), "\xe9": (1, 1, 0), "\u0100": (2, 1, 0), "\U00010000": (4, 1, 0)}
_layout: dict[str, Any] = {}


def _str_state(text: str) -> tuple[int, int, int] | None:
    """``(bytes per char, compact, ascii)`` from a ``str``'s header, or ``None``.

    Reads CPython's ``PyASCIIObject.state`` bit field; the layout is checked once
    against strings of every kind, and anything unexpected (another Python, a
    free-threaded build) answers ``None`` so the caller encodes instead.
    """
    try:
        import ctypes
    except ImportError:  # pragma: no cover - no ctypes
        return None
    offset = 4 * ctypes.sizeof(ctypes.c_ssize_t)

    def read(value: str) -> tuple[int, int, int]:
        bits = ctypes.c_uint32.from_address(id(value) + offset).value
        return (bits >> 2) & 7, (bits >> 5) & 1, (bits >> 6) & 1

    if "ok" not in _layout:
        _layout["ok"] = all(read(chr(ord(p)) * 2) == want for p, want in _STATE_PROBES.items())
        _layout["header"] = sys.getsizeof(chr(0xE9) * 2) - 3
    return read(text) if _layout["ok"] else None


def _raw_view(text: str) -> tuple[str, memoryview] | None:
    """``(kind, read-only view)`` of a compact ``str``'s own buffer, or ``None``.

    Lets the host send the caller's string without encoding a copy (the worker puts
    the bytes straight into its own string). The caller's object stays referenced as
    long as the view is used. The first and last characters are compared with an
    encoded copy before the view is trusted.
    """
    if type(text) is not str or not text:
        return None
    state = _str_state(text)
    if state is None:
        return None
    width, compact, is_ascii = state
    if not compact or width not in (1, 2, 4):
        return None
    size = len(text)
    kind = "ascii" if is_ascii else f"raw{width}"
    offset = sys.getsizeof(text) - size - 1 if is_ascii else _layout["header"]
    try:
        import ctypes

        raw = (ctypes.c_char * (size * width)).from_address(id(text) + offset)
        view = memoryview(raw).cast("B").toreadonly()
    except Exception:
        return None
    probe = min(size, 64)
    codec = RAW_CODECS[kind]
    head = text[:probe].encode(codec, "surrogatepass")
    tail = text[size - probe :].encode(codec, "surrogatepass")
    if bytes(view[: len(head)]) != head or bytes(view[len(view) - len(tail) :]) != tail:
        return None
    return kind, view


def _context_kind(context: Any) -> str:
    if isinstance(context, str):
        raw = _raw_view(context)
        if raw is not None:
            return raw[0]
        return "ascii" if context.isascii() else "str"
    return "json"


def _context_chars(context: Any, kind: str) -> int:
    return len(context) if kind in RAW_CODECS else 0


def _context_chunks(context: Any, kind: str) -> Iterator[bytes | memoryview]:
    """The encoded context, one chunk at a time (the host never holds a second copy)."""
    if kind in RAW_CODECS and context:
        raw = _raw_view(context)
        if raw is not None and raw[0] == kind:
            view = raw[1]
            step = CONTEXT_CHUNK_CHARS
            for start in range(0, len(view), step):
                yield view[start : start + step]
            return
        if kind != "ascii":
            raise RuntimeError("the context's layout changed while it was sent")
    if kind in ("ascii", "str"):
        codec = "ascii" if kind == "ascii" else "utf-8"
        for start in range(0, len(context), CONTEXT_CHUNK_CHARS):
            yield context[start : start + CONTEXT_CHUNK_CHARS].encode(codec, "surrogatepass")
        return
    encoder = json.JSONEncoder(ensure_ascii=False, default=_context_default)
    buffer: list[str] = []
    pending = 0
    for piece in encoder.iterencode(context):
        buffer.append(piece)
        pending += len(piece)
        if pending >= CONTEXT_WRITE_BYTES:
            yield "".join(buffer).encode("utf-8", "surrogatepass")
            buffer, pending = [], 0
    if buffer:
        yield "".join(buffer).encode("utf-8", "surrogatepass")


def _size_estimate(context: Any) -> int:
    return len(context) if isinstance(context, str) else 0


def _validate_context(context: Any) -> None:
    """Raise the clear ``TypeError`` for a non-JSON context, without building a copy."""
    if isinstance(context, str):
        return
    for _piece in json.JSONEncoder(default=_context_default).iterencode(context):
        pass


def _earliest(*deadlines: float | None) -> float | None:
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None


# --------------------------------------------------------------------------- processes


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(child) for child in handle.read().split())
        except (OSError, ValueError):
            continue
    return found


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def _settled(pid: int) -> bool:
    """Stopped, a zombie, or gone: its children cannot change any more."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("T", "t", "Z", "X")


def _freeze_tree(root: int) -> list[int]:
    """``SIGSTOP`` ``root`` and all its descendants, until the tree stops changing.

    A process is stopped before its children are listed. A child that was exiting
    hands its own children to the subreaper worker (stopped, still alive), so passes
    repeat until one finds nothing new while every process found is stopped or dead.
    """
    frozen: list[int] = [root]
    seen = {root}
    for _ in range(KILL_TREE_MAX_PASSES):
        grown = False
        queue = list(frozen)
        while queue:
            current = queue.pop()
            _signal(current, signal.SIGSTOP)
            for child in _children(current):
                if child not in seen:
                    seen.add(child)
                    frozen.append(child)
                    queue.append(child)
                    grown = True
        if not grown and all(_settled(pid) for pid in frozen):
            break
        time.sleep(KILL_TREE_PAUSE)
    return frozen


def kill_process_tree(pid: int, use_proc: bool = True) -> list[int]:
    """Stop, then ``SIGKILL``, the process group of ``pid`` and every descendant.

    Each process is stopped before its children are listed, so a listed pid belongs to
    a child of a stopped process (it stays a zombie, its pid is not reused) and no one
    in the tree can fork meanwhile. Returns the pids that were signalled.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGSTOP)
    frozen = _freeze_tree(pid) if use_proc else [pid]
    for target in frozen:
        _signal(target, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return frozen


def _open_pidfd(pid: int) -> int:
    """A pidfd for the child ``pid`` just spawned (-1 where pidfds are missing: Linux < 5.3,
    other systems). Opened at once, it names this very process even after its pid is reaped
    and reused."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1


def _wait_pidfd(fd: int, timeout: float) -> None:
    """Block until the process behind ``fd`` has exited, or ``timeout`` passed.

    A pidfd wakes the moment the kernel is done with the process; ``Popen.wait`` with a
    timeout polls with growing sleeps and returned 2-3 ms late on every close.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll(math.ceil(timeout * 1000))


def _worker_command(python: str) -> list[str]:
    """The worker's command line up to its pipe descriptors."""
    if python != sys.executable:  # another interpreter finds its packages through site
        return [python, *WORKER_FLAGS, "-c", _BOOTSTRAP, _PACKAGE_ROOT, ""]
    return [python, *WORKER_FLAGS, NO_SITE_FLAG, "-c", _BOOTSTRAP, _PACKAGE_ROOT, _seccomp_path()]


@functools.cache
def _seccomp_path() -> str:
    """The directory ``pyseccomp`` imports from in this interpreter ("" when it does not)."""
    spec = importlib.util.find_spec("pyseccomp")
    if spec is None or not spec.origin:
        return ""
    origin = Path(spec.origin).resolve()  # a module file, or a package's __init__.py
    package = spec.submodule_search_locations is not None
    return str(origin.parent.parent if package else origin.parent)


@functools.cache
def _seeded_libraries() -> dict[str, str]:
    """``find_library`` answers for :data:`SEEDED_LIBRARIES`, looked up once per host."""
    try:
        import ctypes.util
    except ImportError:  # pragma: no cover - a Python built without ctypes
        return {}
    found = {name: ctypes.util.find_library(name) for name in SEEDED_LIBRARIES}
    return {name: path for name, path in found.items() if path}


class _WorkerProcess:
    """One spawned worker and the host ends of its pipes (all I/O with deadlines)."""

    def __init__(self, python: str, debug: bool, use_proc: bool) -> None:
        cmd_read, self.cmd_write = os.pipe()
        self.reply_read, reply_write = os.pipe()
        with contextlib.suppress(OSError, AttributeError):
            import fcntl

            fcntl.fcntl(self.cmd_write, F_SETPIPE_SZ, PIPE_BUFFER_BYTES)
        try:
            self.proc = subprocess.Popen(
                [
                    *_worker_command(python),
                    str(cmd_read),
                    str(reply_write),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None if debug else subprocess.DEVNULL,
                env=dict(WORKER_ENV),
                cwd="/",
                close_fds=True,
                pass_fds=(cmd_read, reply_write),
                start_new_session=True,
            )
        except OSError as exc:
            for fd in (cmd_read, reply_write, self.cmd_write, self.reply_read):
                os.close(fd)
            raise SandboxStartError(f"could not start the sandbox worker: {exc}") from exc
        os.close(cmd_read)
        os.close(reply_write)
        os.set_blocking(self.cmd_write, False)
        self.pid = self.proc.pid
        self._pidfd = _open_pidfd(self.pid)
        self._use_proc = use_proc
        self._buffer = bytearray()
        self._kill_lock = threading.Lock()
        self.killed = False
        self.signalled: list[int] = []

    # ---- frames

    def _wait(self, fd: int, events: int, deadline: float | None) -> None:
        if fd < 0:
            raise _WorkerDied("the worker's pipe is closed")
        poller = select.poll()
        poller.register(fd, events)
        while True:
            if deadline is None:
                timeout_ms = None
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Deadline("deadline")
                timeout_ms = math.ceil(remaining * 1000)
            if poller.poll(timeout_ms):
                return

    def _write(self, data: bytes | memoryview, deadline: float | None) -> None:
        if deadline is None:
            deadline = (
                time.monotonic() + CONTROL_TIMEOUT + len(data) / MIN_HANDOVER_BYTES_PER_SECOND
            )
        view = memoryview(data)
        while view:
            if self.cmd_write < 0:
                raise _WorkerDied("the worker's pipe is closed")
            try:
                written = os.write(self.cmd_write, view[:WRITE_CHUNK_BYTES])
            except BlockingIOError:
                self._wait(self.cmd_write, select.POLLOUT, deadline)
                continue
            except OSError as exc:
                raise _WorkerDied(f"the worker stopped reading ({exc})") from None
            view = view[written:]

    def send_frame(self, payload: bytes | memoryview, deadline: float | None) -> None:
        self._write(len(payload).to_bytes(HEADER_BYTES, "big"), deadline)
        if payload:
            self._write(payload, deadline)

    def send(self, message: dict[str, Any], deadline: float | None) -> None:
        payload = json.dumps(message, ensure_ascii=False, default=str)
        self.send_frame(payload.encode("utf-8", "surrogatepass"), deadline)

    def _fill(self, size: int, deadline: float | None) -> None:
        while len(self._buffer) < size:
            self._wait(self.reply_read, select.POLLIN, deadline)
            try:
                chunk = os.read(self.reply_read, max(READ_CHUNK_BYTES, size - len(self._buffer)))
            except OSError as exc:
                raise _WorkerDied(f"the worker's pipe failed ({exc})") from None
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
        if code == EXIT_BRIDGE_BROKEN:
            return "the worker broke off a sub-call exchange (its soft timer fired inside it)"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"the worker was killed by {name}"
        return f"the worker exited with code {code}"

    # ---- lifecycle

    def kill(self) -> None:
        """Kill the worker and everything it started. Safe from any thread; idempotent."""
        with self._kill_lock:
            if self.killed:
                return
            self.killed = True
            self.signalled = kill_process_tree(self.pid, self._use_proc)
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        pidfd, self._pidfd = self._pidfd, -1  # only the thread that killed gets here
        if pidfd >= 0:
            try:
                if self.proc.returncode is None:
                    _wait_pidfd(pidfd, KILL_WAIT_SECONDS)
            finally:
                os.close(pidfd)
        try:
            self.proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
            logger.error("sandbox worker %s did not die after SIGKILL", self.pid)

    def release(self) -> None:
        """Close the host's pipe ends (only by the thread that owns the executor)."""
        self.kill()
        for name in ("cmd_write", "reply_read"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                os.close(fd)


# --------------------------------------------------------------------------- confinement


def _clean_confinement(raw: Any, use_proc: bool) -> dict[str, Any]:
    """Validate the worker's (untrusted) report and derive what the host relies on."""
    if not isinstance(raw, dict):
        raise WorkerProtocolError("malformed ready message")
    rlimits = raw.get("rlimits")
    errors = raw.get("errors")
    missing_raw = raw.get("missing")
    uid = raw.get("uid")
    conf: dict[str, Any] = {name: raw.get(name) is True for name in (*_SUMMARY_LAYERS, "subreaper")}
    conf["uid"] = uid if isinstance(uid, int) and not isinstance(uid, bool) else -1
    conf["rlimits"] = (
        {
            clean_text(str(k))[:20]: v
            for k, v in list(rlimits.items())[:20]
            if isinstance(v, int) and not isinstance(v, bool)
        }
        if isinstance(rlimits, dict)
        else {}
    )
    conf["errors"] = (
        [clean_text(str(e))[:300] for e in errors[:20]] if isinstance(errors, list) else []
    )
    missing = [m for m in _SUMMARY_LAYERS if not conf[m]]
    if isinstance(missing_raw, list) and "proc" in missing_raw:
        missing.append("proc")
    if conf["seccomp"]:
        conf["no_fork"] = "seccomp"
    elif "NPROC" in conf["rlimits"] and conf["uid"] != 0:
        conf["no_fork"] = "nproc"
    else:
        conf["no_fork"] = "none"
        missing.append("no_fork")
    conf["kill"] = "process-tree" if use_proc else "process-group"
    if not use_proc:
        missing.append("host_proc")
    conf["missing"] = missing
    return conf


def _summarise(conf: Mapping[str, Any]) -> str:
    parts = [name for name in _SUMMARY_LAYERS if conf[name]]
    parts.append(f"no_fork:{conf['no_fork']}")
    parts.append(f"kill:{conf['kill']}")
    parts.append("rlimits:" + ",".join(sorted(conf["rlimits"])))
    if conf["missing"]:
        return "DEGRADED (missing " + ", ".join(conf["missing"]) + "): " + " + ".join(parts)
    return " + ".join(parts)


def _clean_extra(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    clean: dict[str, Any] = {}
    for key in WORKER_EXTRA_KEYS:
        value = raw.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            clean[key] = value
        elif isinstance(value, str) and len(value) <= 200:
            clean[key] = clean_text(value)
    return clean


# --------------------------------------------------------------------------- executor


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
        simulate_missing: frozenset[str] = frozenset(),
        test_raw_exec: bool = False,
    ) -> None:
        for name in functions:
            if not name.isidentifier() or name.startswith("__"):
                raise ValueError(f"invalid host function name: {name!r}")
        unknown = set(simulate_missing) - SIMULATABLE
        if unknown:
            raise ValueError(
                f"simulate_missing: unknown pieces {sorted(unknown)}; valid: {sorted(SIMULATABLE)}"
            )
        self.limits = limits
        self._functions = dict(functions)
        self._grace = grace_seconds
        self._start_timeout = start_timeout
        self._seccomp = seccomp
        self._namespaces = namespaces
        self._require = require_confinement
        self._python = python or sys.executable
        self._debug = debug
        self._simulate = frozenset(simulate_missing)
        self._use_proc = "host_proc" not in self._simulate and os.path.isdir("/proc/self/task")
        self._test_raw_exec = test_raw_exec
        self._lock = threading.RLock()
        self._seq = 0
        self._closed = False
        self._busy = 0
        self.max_frame = max(
            MIN_MAX_FRAME_BYTES, 8 * limits.max_captured_output + 8 * limits.max_subcall_chars
        )
        self.confinement: dict[str, Any] = {}
        self.restarts = 0
        self._context = context  # a reference to the caller's object, never a copy
        self._worker: _WorkerProcess | None = None
        self._start_worker(None)
        _live_executors.add(self)

    allowed_modules: tuple[str, ...] = tuple(sorted(ALLOWED_MODULES))

    # ----------------------------------------------------------------- lifecycle

    @property
    def pid(self) -> int | None:
        """The worker's process id (``None`` when no worker runs)."""
        worker = self._worker
        return worker.pid if worker is not None and not worker.killed else None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _config(self, kind: str) -> dict[str, Any]:
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
            "context_kind": kind,
            "context_chars": _context_chars(self._context, kind),
            "max_frame": self.max_frame,
            "seccomp": self._seccomp,
            "libraries": (
                _seeded_libraries() if self._seccomp and self._python == sys.executable else {}
            ),
            "unshare": self._namespaces,
            "simulate_missing": sorted(self._simulate),
            "test_raw_exec": self._test_raw_exec,
        }

    def _handover_deadline(self, base: float, abs_deadline: float | None) -> float:
        budget = base + _size_estimate(self._context) / MIN_HANDOVER_BYTES_PER_SECOND
        return min(time.monotonic() + budget, abs_deadline or float("inf"))

    def _start_worker(self, abs_deadline: float | None) -> _WorkerProcess:
        if self._closed:
            raise SandboxClosedError("this sandbox session is closed")
        worker = _WorkerProcess(self._python, self._debug, self._use_proc)
        self._worker = worker
        deadline = self._handover_deadline(self._start_timeout, abs_deadline)
        kind = _context_kind(self._context)
        try:
            worker.send(self._config(kind), deadline)
            for chunk in _context_chunks(self._context, kind):
                worker.send_frame(chunk, deadline)
            worker.send_frame(b"", deadline)
            message = worker.recv(deadline, self.max_frame)
            if message["t"] == "fatal":
                raise SandboxStartError(
                    f"the sandbox worker failed: {clean_text(str(message.get('error')))[:500]}"
                )
            if message["t"] != "ready":
                raise WorkerProtocolError(f"unexpected {message['t']!r} message at start")
            self.confinement = _clean_confinement(message.get("confinement"), self._use_proc)
        except WorkerProtocolError as exc:
            self._drop_worker()
            raise SandboxStartError(f"the sandbox worker did not start: {exc}") from exc
        except BaseException:
            self._drop_worker()
            raise
        self._report_confinement()
        return worker

    def _report_confinement(self) -> None:
        summary = _summarise(self.confinement)
        self.confinement["summary"] = summary
        if not summary.startswith("DEGRADED"):
            return
        if self._require:
            self._drop_worker()
            raise SandboxStartError(
                f"sandbox confinement incomplete and required: {summary}; "
                f"errors: {self.confinement['errors']}"
            )
        if "degraded" not in _warned:
            _warned.add("degraded")
            logger.warning(
                "SANDBOX DEGRADED: the worker runs with %s (errors: %s). Model code is held "
                "by the language policy, rlimits and the process kill, not by an OS-level "
                "syscall allow-list. Reported in CodeOutput.extra['confinement'].",
                summary,
                "; ".join(self.confinement["errors"]) or "none",
            )
        else:
            logger.debug("sandbox degraded: %s", summary)

    def _drop_worker(self) -> None:
        """Kill the worker and close its pipes (only the thread holding the lock)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.release()

    def _kill_worker(self, reason: str) -> None:
        if self._worker is not None:
            logger.warning("sandbox worker %s killed: %s", self._worker.pid, reason)
            self.restarts += 1
        self._drop_worker()

    def _restart(self) -> None:
        """Kill the worker and start a new one now (benchmarks; cells restart lazily)."""
        with self._lock:
            self._kill_worker("restart requested")
            self._start_worker(None)

    def close(self) -> None:
        """Kill the worker (and all it started) and forget the context. Idempotent.

        Safe from any thread, also while a cell runs: the worker dies at once, the
        running call raises :class:`SandboxClosedError`, and no worker is started again.
        """
        self._closed = True
        worker = self._worker
        if worker is not None:
            worker.kill()
        if self._lock.acquire(blocking=False):
            try:
                if not self._busy:
                    self._drop_worker()
                    self._context = None
            finally:
                self._lock.release()
        _live_executors.discard(self)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _enter(self, timeout: float | None) -> bool:
        if self._closed:
            raise SandboxClosedError("this sandbox session is closed")
        acquired = self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))
        if not acquired:
            return False
        if self._closed:
            self._lock.release()
            raise SandboxClosedError("this sandbox session is closed")
        self._busy += 1
        return True

    def _leave(self) -> None:
        self._busy -= 1
        try:
            if self._closed and not self._busy:
                self._drop_worker()
                self._context = None
        finally:
            self._lock.release()

    def _ensure_worker(self, abs_deadline: float | None) -> _WorkerProcess:
        if self._worker is None or self._worker.killed:
            if self._worker is not None:
                self._drop_worker()
            return self._start_worker(abs_deadline)
        return self._worker

    # ----------------------------------------------------------------- cells

    def __call__(self, code: str, *, timeout: float | None = None) -> CodeOutput:
        """Run one cell. ``timeout`` caps this call (see the module docstring)."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float)
        ):
            raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
        started = time.monotonic()
        abs_deadline = None if timeout is None else started + max(timeout, 0.0) + self._grace
        if not self._enter(timeout):
            return self._output(
                CodeOutput(
                    error="TimeoutError: the session was busy with another cell for the whole "
                    "time left; the cell did not run.",
                    extra={"limit": "timeout"},
                )
            )
        try:
            output = self._call_locked(code, timeout, abs_deadline)
        finally:
            self._leave()
        output.seconds = time.monotonic() - started
        return self._output(output)

    def _output(self, output: CodeOutput) -> CodeOutput:
        output.extra["confinement"] = self.confinement.get("summary", "")
        return output

    def _call_locked(
        self, code: str, timeout: float | None, abs_deadline: float | None
    ) -> CodeOutput:
        if timeout is not None and timeout <= 0:
            return CodeOutput(
                error=NO_TIME_LEFT_ERROR,
                extra={"limit": "timeout"},
            )
        restarted = self._worker is None or self._worker.killed
        try:
            worker = self._ensure_worker(abs_deadline)
        except SandboxStartError as exc:
            self._check_closed()
            return CodeOutput(
                error=f"SandboxError: the worker could not be started ({exc}).",
                restarted=True,
                extra={"limit": "start"},
            )
        output = self._run_cell(worker, code, timeout, abs_deadline)
        output.restarted = output.restarted or restarted
        return output

    def _check_closed(self) -> None:
        if self._closed:
            raise SandboxClosedError("this sandbox session was closed while the cell ran")

    def _soft_seconds(self, timeout: float | None) -> float | None:
        cell = self.limits.cell_timeout
        if timeout is None:
            return cell
        return min(cell, timeout) if cell else timeout

    def _run_cell(
        self,
        worker: _WorkerProcess,
        code: str,
        timeout: float | None,
        abs_deadline: float | None,
    ) -> CodeOutput:
        self._seq += 1
        seq = self._seq
        budget = SubcallBudget(self.limits)
        host_errors: list[str] = []
        final: str | None = None
        soft = self._soft_seconds(timeout)
        cell_deadline = time.monotonic() + soft + self._grace if soft else None
        try:
            worker.send(
                {"op": "exec", "seq": seq, "code": code, "soft": soft},
                _earliest(cell_deadline, abs_deadline),
            )
            while True:
                message = worker.recv(_earliest(cell_deadline, abs_deadline), self.max_frame)
                if message.get("seq") != seq:
                    raise WorkerProtocolError("message out of sequence")
                kind = message["t"]
                if kind == "final":
                    answer = message.get("answer")
                    if not isinstance(answer, str):
                        raise WorkerProtocolError("malformed final message")
                    if final is None:
                        final = clean_text(answer)
                elif kind == "call":
                    spent, payload = self._serve_call(message, budget, host_errors)
                    if cell_deadline is not None:
                        cell_deadline += spent
                    if abs_deadline is not None and time.monotonic() >= abs_deadline:
                        raise _Deadline("the run's time limit")
                    worker.send_frame(payload, _earliest(cell_deadline, abs_deadline))
                elif kind == "done":
                    return self._finish(message, final, budget, host_errors)
                else:
                    raise WorkerProtocolError(f"unexpected {kind!r} message")
        except _Deadline:
            self._check_closed()
            ran_out = abs_deadline is not None and (
                cell_deadline is None or abs_deadline <= cell_deadline
            )
            text = (
                f"TimeoutError: the run's time limit ended the cell (it had {timeout:g} s)."
                if ran_out and timeout is not None
                else f"TimeoutError: the cell did not stop within {soft:g} s (plus "
                f"{self._grace:g} s grace); it was probably stuck inside a single C-level "
                "operation (huge arithmetic, a catastrophic regex, a giant allocation) or "
                "did not read the host's messages."
            )
            return self._recover(
                final, text, "timeout" if ran_out else "cell_timeout_hard", budget, host_errors
            )
        except _WorkerDied as exc:
            self._check_closed()
            return self._recover(
                final,
                f"SandboxError: {exc} (likely the memory or CPU limit).",
                "worker_died",
                budget,
                host_errors,
            )
        except WorkerProtocolError as exc:
            self._check_closed()
            return self._recover(
                final,
                f"SandboxError: the worker sent an invalid message ({exc}).",
                "protocol",
                budget,
                host_errors,
            )

    def _recover(
        self,
        final: str | None,
        message: str,
        limit: str,
        budget: SubcallBudget,
        host_errors: list[str],
    ) -> CodeOutput:
        self._kill_worker(limit)
        note = (
            "The worker was stopped: all variables were reset (`context` is loaded again "
            "for the next cell)."
        )
        extra: dict[str, Any] = {"limit": limit, "subcalls": budget.used}
        if host_errors:
            extra["host_errors"] = host_errors
        return CodeOutput(
            error=f"{message} {note}", final_answer=final, restarted=True, extra=extra
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
        return CodeOutput(
            stdout=clean_text(stdout),
            error=None if error is None else clean_text(error),
            final_answer=final,
            extra=extra,
        )

    def _serve_call(
        self,
        message: dict[str, Any],
        budget: SubcallBudget,
        host_errors: list[str],
    ) -> tuple[float, bytes]:
        """Run one host function; ``(seconds spent, encoded reply)``."""
        name, args, kwargs = message.get("name"), message.get("args"), message.get("kwargs")
        if (
            not isinstance(name, str)
            or name not in self._functions
            or not isinstance(args, list)
            or not isinstance(kwargs, dict)
        ):
            raise WorkerProtocolError("malformed call message")
        args = clean_value(args)
        kwargs = clean_value(kwargs)
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
            logger.error("host function %r raised inside a sandbox cell", name, exc_info=True)
            reply = {"t": "error", "message": text}
        except BaseException:
            self._kill_worker("a host function was cancelled")
            raise
        spent = time.monotonic() - started
        try:
            payload = json.dumps(reply, ensure_ascii=False, default=str)
        except (TypeError, ValueError) as exc:
            payload = json.dumps(
                {"t": "error", "message": f"{name}: result could not be sent: {exc}"}
            )
        return spent, payload.encode("utf-8", "surrogatepass")

    # ----------------------------------------------------------------- variables

    def _control(self, message: dict[str, Any], timeout: float, stream: Any = None) -> Any:
        """One variable command with a deadline; a worker that misses it is killed."""
        if not self._enter(None):  # pragma: no cover - blocking acquire
            raise SandboxClosedError("this sandbox session is closed")
        try:
            worker = self._ensure_worker(None)
            self._seq += 1
            message["seq"] = self._seq
            deadline = time.monotonic() + timeout
            try:
                worker.send(message, deadline)
                if stream is not None:
                    for chunk in _context_chunks(stream, message["stream_kind"]):
                        worker.send_frame(chunk, deadline)
                    worker.send_frame(b"", deadline)
                reply = worker.recv(deadline, self.max_frame)
                if reply.get("t") != "value" or reply.get("seq") != self._seq:
                    raise WorkerProtocolError("unexpected reply")
                return clean_value(reply.get("value"))
            except WorkerProtocolError as exc:
                self._check_closed()
                self._kill_worker(f"{message['op']} failed ({exc})")
                raise
        finally:
            self._leave()

    def get_variable(self, name: str) -> str | None:
        """``str()`` of a variable (``None`` when missing or when the worker failed)."""
        timeout = (self.limits.cell_timeout or CONTROL_TIMEOUT) + self._grace
        try:
            value = self._control({"op": "get", "name": str(name)}, timeout)
        except WorkerProtocolError:
            return None
        return value if isinstance(value, str) else None

    def variable_names(self) -> list[str]:
        """Names the model defined (``[]`` when the worker failed)."""
        try:
            value = self._control({"op": "names"}, CONTROL_TIMEOUT + self._grace)
        except WorkerProtocolError:
            return []
        if not isinstance(value, list):
            return []
        return [name for name in value if isinstance(name, str)]

    def set_variable(self, name: str, value: Any) -> None:
        """Bind a JSON-like value; ``context`` also replaces what a restart streams."""
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("__"):
            raise ValueError(f"invalid variable name: {name!r}")
        if name in self._functions or name in ("FINAL", "FINAL_VAR", "SHOW_VARS"):
            raise ValueError(f"{name!r} is a REPL function and cannot be rebound")
        _validate_context(value)
        if self._closed:
            raise SandboxClosedError("this sandbox session is closed")
        if name == "context":
            self._context = value
            if self._worker is None or self._worker.killed:
                return  # the next start streams the new context
            kind = _context_kind(value)
            message = {
                "op": "set",
                "name": "context",
                "stream_kind": kind,
                "chars": _context_chars(value, kind),
            }
            timeout = CONTROL_TIMEOUT + _size_estimate(value) / MIN_HANDOVER_BYTES_PER_SECOND
            # on failure the worker is killed and the next start streams the new context
            with contextlib.suppress(WorkerProtocolError):
                self._control(message, timeout, stream=value)
            return
        try:
            self._control({"op": "set", "name": name, "value": value}, CONTROL_TIMEOUT)
        except WorkerProtocolError as exc:
            raise RuntimeError(f"could not set {name!r} in the sandbox: {exc}") from exc

    # ----------------------------------------------------------------- test hook

    def _raw_exec_for_tests(self, code: str, timeout: float = CONTROL_TIMEOUT) -> dict[str, Any]:
        """TEST ONLY: run unvetted ``code`` in the confined worker (policy bypassed).

        Needs ``ProcessSandbox(test_raw_exec=True)``; the worker refuses otherwise. The
        code may set ``result``; returns ``{"result": repr(result), "error": ...}``.
        """
        if not self._test_raw_exec:
            raise RuntimeError("raw execution is a test hook: start with test_raw_exec=True")
        value = self._control({"op": "raw", "code": code}, timeout)
        if not isinstance(value, dict):
            raise WorkerProtocolError("unexpected raw reply")
        return value


class ProcessSandbox:
    """Starts confined worker-process sessions (the default sandbox, name ``"process"``).

    ``seccomp`` / ``namespaces`` can be switched off (tests of the degraded mode,
    platforms without them); ``require_confinement=True`` refuses to run degraded.
    ``simulate_missing`` (tests) pretends pieces of the platform are absent: ``"proc"``
    (the worker's ``/proc``), ``"host_proc"``, ``"seccomp"`` (no ``pyseccomp``),
    ``"namespaces"``, ``"nproc"`` (no privilege drop / ``RLIMIT_NPROC``), ``"prctl"``.
    ``test_raw_exec`` enables the test-only hook that runs unvetted code in the worker.
    """

    name = "process"
    allowed_modules: tuple[str, ...] = tuple(sorted(ALLOWED_MODULES))
    """What ``import`` may load in this sandbox."""

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
        simulate_missing: frozenset[str] | set[str] | tuple[str, ...] = frozenset(),
        test_raw_exec: bool = False,
    ) -> None:
        self.grace_seconds = grace_seconds
        self.start_timeout = start_timeout
        self.seccomp = seccomp
        self.namespaces = namespaces
        self.require_confinement = require_confinement
        self.python = python
        self.debug = debug or bool(os.environ.get("RLM_SANDBOX_DEBUG"))
        self.simulate_missing = frozenset(simulate_missing)
        self.test_raw_exec = test_raw_exec

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
            simulate_missing=self.simulate_missing,
            test_raw_exec=self.test_raw_exec,
        )


@atexit.register
def _close_all() -> None:
    for executor in list(_live_executors):
        with contextlib.suppress(Exception):
            executor.close()
