"""The process sandbox's worker: runs inside the confined child process.

Started by :mod:`.process` as ``python -I -c <bootstrap> <root> <cmd_fd> <reply_fd>
<context_fd>``. The bootstrap registers bare package stubs for ``langchain_rlm`` and
``langchain_rlm.sandbox`` so that only this module, ``base``, ``policy`` and ``repl``
load (never the project's heavy ``__init__`` modules); the worker needs the standard
library and, for seccomp, ``pyseccomp``.

Order of events:

1. read the configuration frame (limits, host-function names, context kind and size);
2. map the context's memfd and decode it once (``str``: raw UTF-8; else JSON), close it;
3. import the allowed modules and their lazy imports (``_strptime``, codecs ...);
4. lock down: rlimits (address space = what is mapped now + ``memory_mb``, CPU,
   FSIZE 0, NOFILE, CORE 0), best-effort ``unshare`` of user + network namespaces,
   then a seccomp allow-list whose default is ``EPERM`` (no ``open*``, ``socket``,
   ``clone``/``fork``, ``execve``, ``ptrace``; ``kill``/``tgkill`` only to itself;
   ``read`` only from the command pipe, ``write`` only to the reply pipe and 1/2);
5. answer ``ready`` with what was applied, then serve commands until EOF.

Protocol: frames of a 4-byte big-endian length and a UTF-8 JSON object. The JSON
encoder and scanner are C objects built at import time and kept in this module's
globals, which model code cannot reach (no ``__globals__``), so rebinding ``json``
names or patching ``json`` classes in the namespace changes nothing here. The pipe
fds are plain integers in closures of this module, never in the namespace.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import resource
import signal
import sys
from json import decoder as _json_decoder
from json import encoder as _json_encoder
from json import scanner as _json_scanner
from typing import Any

from .base import SandboxLimits
from .policy import prewarm_modules
from .repl import CellTimeout, CellTimer, ReplCore, SubcallError

HEADER_BYTES = 4
REFIRE_SECONDS = 0.1
"""After the soft timeout fired, it fires again this often (``except BaseException``)."""
CPU_GRACE_SECONDS = 2
MAX_VARIABLE_CHARS = 16_000_000
NOFILE_LIMIT = 16
MIB = 1024 * 1024
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CONTEXT_CHUNK_BYTES = 64 * MIB


def _json_default(value: Any) -> Any:
    raise TypeError(
        f"values crossing to the host must be JSON-like (str, int, float, bool, None, "
        f"list, dict); got {type(value).__name__}"
    )


_encode = _json_encoder.c_make_encoder(  # type: ignore[attr-defined]
    {}, _json_default, _json_encoder.encode_basestring, None, ":", ",", False, False, True
)
_scan = _json_scanner.c_make_scanner(_json_decoder.JSONDecoder())  # type: ignore[attr-defined]


def _dumps(value: Any) -> bytes:
    return "".join(_encode(value, 0)).encode("utf-8", "surrogatepass")


def _loads(data: bytes) -> Any:
    value, _end = _scan(data.decode("utf-8", "surrogatepass"), 0)
    return value


class _Channel:
    """Frame I/O on the two pipe fds."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd

    def _read_exact(self, size: int) -> bytes:
        chunks: list[bytes] = []
        remaining = size
        while remaining:
            chunk = os.read(self.read_fd, min(remaining, CONTEXT_CHUNK_BYTES))
            if not chunk:
                os._exit(0)  # the host went away
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def read_raw(self) -> bytes:
        size = int.from_bytes(self._read_exact(HEADER_BYTES), "big")
        return self._read_exact(size)

    def read(self) -> Any:
        return _loads(self.read_raw())

    def write_raw(self, payload: bytes) -> None:
        data = len(payload).to_bytes(HEADER_BYTES, "big") + payload
        view = memoryview(data)
        while view:
            written = os.write(self.write_fd, view)
            view = view[written:]

    def write(self, message: dict[str, Any]) -> None:
        self.write_raw(_dumps(message))


class _AlarmTimer(CellTimer):
    """Soft timeout through ``setitimer``; paused while the host runs a sub-call."""

    def __init__(self) -> None:
        self.active = False
        self._paused = False
        self._remaining = 0.0

    def start(self, seconds: float) -> None:
        if seconds and seconds > 0:
            self.active = True
            self._paused = False
            signal.setitimer(signal.ITIMER_REAL, seconds, REFIRE_SECONDS)

    def stop(self) -> None:
        self.active = False
        self._paused = False
        signal.setitimer(signal.ITIMER_REAL, 0)

    def pause(self) -> None:
        if self.active and not self._paused:
            self._paused = True
            self._remaining = signal.setitimer(signal.ITIMER_REAL, 0)[0]

    def resume(self) -> None:
        if self.active and self._paused:
            self._paused = False
            signal.setitimer(signal.ITIMER_REAL, max(self._remaining, 0.001), REFIRE_SECONDS)

    def handler(self, _signum: int, _frame: Any) -> None:
        if self.active and not self._paused:
            raise CellTimeout


def _decode_context(fd: int, kind: str, size: int) -> Any:
    if size == 0:
        os.close(fd)
        return "" if kind == "str" else None
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
        text = str(view, "utf-8", "surrogatepass")
    os.close(fd)
    if kind == "str":
        return text
    value, _end = _scan(text, 0)
    return value


def _vm_size_bytes() -> int:
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _apply_rlimits(limits: SandboxLimits, confinement: dict[str, Any]) -> None:
    applied: dict[str, int] = {}

    def setlimit(name: str, which: int, soft: int, hard: int | None = None) -> None:
        try:
            resource.setrlimit(which, (soft, soft if hard is None else hard))
            applied[name] = soft
        except (ValueError, OSError) as exc:
            confinement["errors"].append(f"rlimit {name}: {exc}")

    if limits.memory_mb is not None:
        setlimit("AS", resource.RLIMIT_AS, _vm_size_bytes() + limits.memory_mb * MIB)
    setlimit("FSIZE", resource.RLIMIT_FSIZE, 0)
    setlimit("CORE", resource.RLIMIT_CORE, 0)
    setlimit("NOFILE", resource.RLIMIT_NOFILE, NOFILE_LIMIT)
    setlimit("NPROC", resource.RLIMIT_NPROC, 0)
    confinement["rlimits"] = applied


def _set_cpu_limit(limits: SandboxLimits) -> None:
    if not limits.cell_timeout:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime)
    soft = used + int(limits.cell_timeout) + CPU_GRACE_SECONDS
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


def _unshare(confinement: dict[str, Any]) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
            confinement["user_namespace"] = confinement["net_namespace"] = True
            return
        errno_value = ctypes.get_errno()
        if libc.unshare(CLONE_NEWUSER) == 0:
            confinement["user_namespace"] = True
        confinement["errors"].append(f"unshare: {os.strerror(errno_value)}")
    except Exception as exc:  # pragma: no cover - no ctypes / libc
        confinement["errors"].append(f"unshare: {exc}")


def _seccomp(read_fd: int, write_fd: int, confinement: dict[str, Any]) -> None:
    try:
        import errno

        import pyseccomp as sc
    except Exception as exc:
        confinement["errors"].append(f"seccomp: pyseccomp unavailable ({exc})")
        return
    try:
        flt = sc.SyscallFilter(defaction=sc.ERRNO(errno.EPERM))
        pid = os.getpid()
        plain = [
            "close",
            "fstat",
            "lseek",
            "mmap",
            "munmap",
            "mremap",
            "mprotect",
            "brk",
            "madvise",
            "rt_sigaction",
            "rt_sigprocmask",
            "rt_sigreturn",
            "sigaltstack",
            "getpid",
            "gettid",
            "setitimer",
            "getitimer",
            "clock_gettime",
            "clock_getres",
            "gettimeofday",
            "time",
            "nanosleep",
            "clock_nanosleep",
            "futex",
            "sched_yield",
            "getrandom",
            "poll",
            "ppoll",
            "select",
            "pselect6",
            "exit",
            "exit_group",
            "getrusage",
            "times",
            "getrlimit",
            "setrlimit",
            "restart_syscall",
            "getuid",
            "geteuid",
            "getgid",
            "getegid",
        ]
        for name in plain:
            try:
                flt.add_rule(sc.ALLOW, name)
            except Exception:  # a syscall this architecture lacks
                continue
        flt.add_rule(sc.ALLOW, "read", sc.Arg(0, sc.EQ, read_fd))
        for fd in (1, 2, write_fd):
            flt.add_rule(sc.ALLOW, "write", sc.Arg(0, sc.EQ, fd))
        flt.add_rule(sc.ALLOW, "kill", sc.Arg(0, sc.EQ, pid))
        flt.add_rule(sc.ALLOW, "tgkill", sc.Arg(0, sc.EQ, pid))
        flt.add_rule(sc.ALLOW, "prlimit64", sc.Arg(0, sc.EQ, 0))
        flt.load()
        confinement["seccomp"] = True
    except Exception as exc:
        confinement["errors"].append(f"seccomp: {exc}")


def _lock_down(
    limits: SandboxLimits, config: dict[str, Any], read_fd: int, write_fd: int
) -> dict[str, Any]:
    confinement: dict[str, Any] = {
        "seccomp": False,
        "user_namespace": False,
        "net_namespace": False,
        "rlimits": {},
        "errors": [],
    }
    if config.get("seccomp", True):
        with contextlib.suppress(Exception):  # load libseccomp while files can be opened
            import pyseccomp  # noqa: F401
    if config.get("unshare", True):
        _unshare(confinement)
    else:
        confinement["errors"].append("unshare: disabled by the host")
    _apply_rlimits(limits, confinement)
    if config.get("seccomp", True):
        _seccomp(read_fd, write_fd, confinement)
    else:
        confinement["errors"].append("seccomp: disabled by the host")
    return confinement


class _Worker:
    """Serves the host's commands over one channel."""

    def __init__(self, channel: _Channel, config: dict[str, Any], context: Any) -> None:
        self.channel = channel
        self.limits = SandboxLimits(**config["limits"])
        self.max_frame = int(config["max_frame"])
        self.timer = _AlarmTimer()
        self.seq = 0
        self.core = ReplCore(
            context,
            list(config["functions"]),
            self._call_host,
            self.limits,
            on_final=self._on_final,
            timer=self.timer,
        )

    def _on_final(self, text: str) -> None:
        self.channel.write({"t": "final", "seq": self.seq, "answer": text})

    def _call_host(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        message = {"t": "call", "seq": self.seq, "name": name, "args": list(args), "kwargs": kwargs}
        try:
            payload = _dumps(message)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}: {exc}") from None
        if len(payload) > self.max_frame:
            raise SubcallError(
                f"{name}: the arguments ({len(payload)} bytes) are too large to send to the "
                "host in one call; send smaller pieces"
            )
        self.channel.write_raw(payload)
        reply = self.channel.read()
        if reply.get("t") == "result":
            return reply.get("value")
        raise SubcallError(str(reply.get("message", "sub-call failed")))

    def _run(self, message: dict[str, Any]) -> None:
        self.seq = int(message["seq"])
        _set_cpu_limit(self.limits)
        result = self.core.run_cell(str(message["code"]))
        self.channel.write(
            {
                "t": "done",
                "seq": self.seq,
                "stdout": result.stdout,
                "error": result.error,
                "extra": result.extra,
            }
        )

    def _get(self, message: dict[str, Any]) -> None:
        self.timer.start(self.limits.cell_timeout)
        try:
            value = self.core.get_variable(str(message["name"]))
        except CellTimeout:
            value = None
        finally:
            self.timer.stop()
        if value is not None and len(value) > MAX_VARIABLE_CHARS:
            value = value[:MAX_VARIABLE_CHARS] + "... [truncated]"
        self.channel.write({"t": "value", "seq": message["seq"], "value": value})

    def _set(self, message: dict[str, Any]) -> None:
        if message.get("raw_kind"):
            raw = self.channel.read_raw()
            text = raw.decode("utf-8", "surrogatepass")
            del raw
            value = text if message["raw_kind"] == "str" else _scan(text, 0)[0]
        else:
            value = message.get("value")
        self.core.set_variable(str(message["name"]), value)
        self.channel.write({"t": "value", "seq": message["seq"], "value": None})

    def serve(self) -> None:
        while True:
            message = self.channel.read()
            op = message.get("op")
            if op == "exec":
                self._run(message)
            elif op == "get":
                self._get(message)
            elif op == "names":
                names = self.core.variable_names()
                self.channel.write({"t": "value", "seq": message["seq"], "value": names})
            elif op == "set":
                self._set(message)
            elif op == "close":
                os._exit(0)


def main(argv: list[str]) -> None:
    read_fd, write_fd, context_fd = (int(arg) for arg in argv[:3])
    channel = _Channel(read_fd, write_fd)
    try:
        config = channel.read()
        context = _decode_context(context_fd, config["context_kind"], config["context_size"])
        prewarm_modules()
        worker = _Worker(channel, config, context)
        del context
        signal.signal(signal.SIGALRM, worker.timer.handler)
        sys.setrecursionlimit(int(config.get("recursion_limit", 1000)))
        confinement = _lock_down(worker.limits, config, read_fd, write_fd)
        channel.write({"t": "ready", "confinement": confinement})
        worker.serve()
    except BaseException as exc:  # report and exit: the host restarts a worker
        try:
            channel.write({"t": "fatal", "error": f"{type(exc).__name__}: {exc}"})
        finally:
            os._exit(70)
