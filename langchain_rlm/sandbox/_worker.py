"""The process sandbox's worker: runs inside the confined child process.

Started by :mod:`.process` as ``python -s -P [-S] -c <bootstrap> <root> <seccomp_dir>
<cmd_fd> <reply_fd>`` with an environment that holds only ``PYTHONHASHSEED=0`` (``-s -P``
plus the empty environment keep what ``-I`` gave, while the fixed hash seed makes ``set``
iteration order, and so replays, deterministic; ``-S`` on the host's own interpreter, whose
``pyseccomp`` directory the bootstrap appends to ``sys.path``). The bootstrap registers bare
package stubs for ``langchain_rlm`` and ``langchain_rlm.sandbox`` so that only this module,
``names``, ``policy`` and ``repl`` load (never the project's heavy ``__init__`` modules, nor
``dataclasses``); the worker needs the standard library and, for seccomp, ``pyseccomp``.

Order of events:

1. read the configuration frame, then the context as a stream of frames on the
   command pipe (ended by an empty frame), in a thread while the main thread imports.
   A ``str`` arrives as its own buffer and is read straight into a preallocated
   ``str`` of the same kind (no second copy); JSON (and text where ``ctypes`` is
   missing) is decoded chunk by chunk. The host keeps no copy of its own: on a
   restart it streams the caller's object again;
2. import the allowed modules and their lazy imports (``_strptime``, codecs ...);
3. lock down: without seccomp, a root worker drops to ``nobody`` (so ``RLIMIT_NPROC`` = 0
   forbids ``fork``; root ignores it), ``PR_SET_NO_NEW_PRIVS`` and ``PR_SET_CHILD_SUBREAPER``
   (orphans of any child stay in the worker's tree, where the host's kill finds them),
   best-effort ``unshare`` of user + network namespaces, rlimits (address space = what
   is mapped now + ``memory_mb``; read from ``/proc/self/status`` or, without ``/proc``,
   estimated with ``resource``), then a seccomp allow-list whose default is ``EPERM``;
4. answer ``ready`` with what was applied, then serve commands until EOF.

The bridge (``llm_query`` & co.): arguments are converted to plain ``dict`` / ``list``
/ ``str`` / ``int`` / ``float`` / ``bool`` / ``None`` by :func:`to_plain` *before* the
JSON encoder sees them, using only C-level copies (``str.__str__``, ``list.copy``,
``dict.items``...), so no model-defined method (``items``, ``__hash__``, ``__len__``,
``__iter__``) runs while a call is in flight. During the exchange the soft timer is
paused (nesting-safe) and the garbage collector is off (no ``__del__``); a timer that
fires while a call is in flight ends the worker (the host restarts it and says so).

Protocol: frames of a 4-byte big-endian length and a UTF-8 JSON object. The JSON
encoder and scanner are C objects built at import time and kept in this module's
globals, which model code cannot reach, so rebinding ``json`` names or patching
``json`` classes in the namespace changes nothing here.
"""

from __future__ import annotations

import codecs
import contextlib
import gc
import os
import resource
import signal
import sys
from json import decoder as _json_decoder
from json import encoder as _json_encoder
from json import scanner as _json_scanner
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from .policy import prewarm_modules
from .repl import CellTimeout, CellTimer, ReplCore, SubcallError

if TYPE_CHECKING:  # not imported here: the worker stays free of dataclasses (see .names)
    from .base import SandboxLimits

HEADER_BYTES = 4
REFIRE_SECONDS = 0.1
"""After the soft timeout fired, it fires again this often (``except BaseException``)."""
CPU_GRACE_SECONDS = 2
MAX_VARIABLE_CHARS = 16_000_000
NOFILE_LIMIT = 16
MIB = 1024 * 1024
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
EXIT_PARENT_GONE = 72
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
NOBODY_ID = 65534
READ_CHUNK_BYTES = 64 * MIB
MAX_BRIDGE_DEPTH = 100
"""Nesting levels a value crossing the bridge may have (deeper: ``ValueError``)."""
NO_PROC_ADDRESS_SLACK = 1024 * MIB
"""Without ``/proc``, the address-space limit is max RSS + this + ``memory_mb``."""
EXIT_FATAL = 70
EXIT_BRIDGE_BROKEN = 71
"""Exit status when the soft timer (or an error) hit a bridge exchange in flight."""

_TYPE_NAME = type.__dict__["__name__"].__get__
_copy_str = str.__str__
_copy_int = int.__int__
_copy_float = float.__float__
_copy_list = list.copy
_iter_tuple = tuple.__iter__
_dict_items = dict.items


def _json_default(value: Any) -> Any:
    raise TypeError(f"cannot send {_TYPE_NAME(type(value))} to the host")


_encode = _json_encoder.c_make_encoder(  # type: ignore[attr-defined]
    {}, _json_default, _json_encoder.encode_basestring, None, ":", ",", False, False, True
)
_scan = _json_scanner.c_make_scanner(_json_decoder.JSONDecoder())  # type: ignore[attr-defined]


def _plain_scalar(item: Any, kind: type) -> tuple[bool, Any]:
    """``(True, copy)`` for a str/int/float (or subclass), bool or None; else ``(False, None)``."""
    if kind is str or kind is int or kind is float or kind is bool or item is None:
        return True, item
    if issubclass(kind, str):
        return True, _copy_str(item)
    if issubclass(kind, int):
        return True, _copy_int(item)
    if issubclass(kind, float):
        return True, _copy_float(item)
    return False, None


def _refuse(kind: type) -> TypeError:
    return TypeError(
        "values crossing to the host must be JSON-like (str, int, float, bool, None, list, "
        f"dict); got {_TYPE_NAME(kind)}"
    )


def to_plain(value: Any, max_units: int) -> Any:
    """A copy of ``value`` made only of exact ``dict``/``list``/``str``/``int``/``float``/
    ``bool``/``None``, built without calling any method of the value.

    Subclasses are copied by their base type's C code; tuples become lists; anything
    else is refused with ``TypeError``. Iterative: nesting deeper than
    :data:`MAX_BRIDGE_DEPTH` (or a cycle) and values larger than ``max_units``
    (characters plus items) raise ``ValueError``.
    """
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 0)]
    units = 0
    while stack:
        item, parent, key, depth = stack.pop()
        kind = type(item)
        units += 1
        scalar, copy = _plain_scalar(item, kind)
        if scalar:
            if type(copy) is str:
                units += len(copy)
            parent[key] = copy
        elif depth >= MAX_BRIDGE_DEPTH:
            raise ValueError(
                f"the value is nested more than {MAX_BRIDGE_DEPTH} levels deep (or holds a cycle)"
            )
        elif kind is list or kind is tuple or issubclass(kind, list | tuple):
            items = (
                item
                if kind is list
                else list(_iter_tuple(item))
                if issubclass(kind, tuple)
                else _copy_list(item)
            )
            new_list: list[Any] = [None] * len(items)
            parent[key] = new_list
            stack.extend((child, new_list, index, depth + 1) for index, child in enumerate(items))
        elif issubclass(kind, dict):
            new_dict: dict[Any, Any] = {}
            parent[key] = new_dict
            for child_key, child in list(_dict_items(item)):
                ok, plain_key = _plain_scalar(child_key, type(child_key))
                if not ok:
                    key_type = _TYPE_NAME(type(child_key))
                    raise TypeError(f"dict keys crossing to the host must be str; got {key_type}")
                new_dict[plain_key] = None
                stack.append((child, new_dict, plain_key, depth + 1))
        else:
            raise _refuse(kind)
        if units > max_units:
            raise ValueError(f"the value is too large to send to the host ({max_units} units max)")
    return root[0]


def _dumps(value: Any) -> bytes:
    return "".join(_encode(value, 0)).encode("utf-8", "surrogatepass")


def _loads(data: bytes) -> Any:
    value, _end = _scan(data.decode("utf-8", "surrogatepass"), 0)
    return value


class _Channel:
    """Frame I/O on the two pipe fds."""

    def __init__(self, read_fd: int, write_fd: int, max_frame: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.max_frame = max_frame

    def read_exact_into(self, view: memoryview) -> None:
        while view:
            count = os.readv(self.read_fd, [view[:READ_CHUNK_BYTES]])
            if not count:
                os._exit(0)  # the host went away
            view = view[count:]

    def _read_exact(self, size: int) -> bytes:
        buffer = bytearray(size)
        self.read_exact_into(memoryview(buffer))
        return bytes(buffer)

    def read_size(self) -> int:
        return int.from_bytes(self._read_exact(HEADER_BYTES), "big")

    def read_raw(self) -> bytes:
        return self._read_exact(self.read_size())

    def read(self) -> Any:
        return _loads(self.read_raw())

    def write_raw(self, payload: bytes) -> None:
        data = len(payload).to_bytes(HEADER_BYTES, "big") + payload
        view = memoryview(data)
        while view:
            written = os.write(self.write_fd, view)
            view = view[written:]

    def write(self, message: dict[str, Any]) -> None:
        self.write_raw(_dumps(to_plain(message, self.max_frame)))


# --------------------------------------------------------------------------- context


RAW_KINDS: dict[str, tuple[int, int, str]] = {
    "ascii": (1, 0x7F, "ascii"),
    "raw1": (1, 0xFF, "latin-1"),
    "raw2": (2, 0xFFFF, "utf-16-le"),
    "raw4": (4, 0x10FFFF, "utf-32-le"),
}
"""Kinds the host sends as a ``str``'s own buffer: bytes per char, max char, codec."""


def _prepared_str(size: int, width: int, maxchar: int) -> tuple[str, memoryview] | None:
    """A fresh ``str`` of ``size`` characters and a writable view of its buffer.

    The string is filled before anything else sees it (what CPython's own
    ``PyUnicode_New`` callers do), so the context needs no second copy. The host sends
    the buffer of a canonical string of the same kind, so the result is canonical too.
    ``None`` where ``ctypes`` is missing; the caller then decodes chunk by chunk.
    """
    try:
        import ctypes

        new = ctypes.pythonapi.PyUnicode_New
        new.restype = ctypes.py_object
        new.argtypes = (ctypes.c_ssize_t, ctypes.c_uint32)
        text = new(size, maxchar)
        if type(text) is not str or len(text) != size:
            return None
        offset = sys.getsizeof(text) - (size + 1) * width
        raw = (ctypes.c_char * (size * width)).from_address(id(text) + offset)
        return text, memoryview(raw).cast("B")
    except Exception:
        return None


def _fill(channel: _Channel, view: memoryview) -> None:
    position = 0
    total = len(view)
    while True:
        length = channel.read_size()
        if not length:
            break
        if position + length > total:
            raise ValueError("context stream longer than announced")
        channel.read_exact_into(view[position : position + length])
        position += length
    if position != total:
        raise ValueError("context stream shorter than announced")


def _read_context(channel: _Channel, kind: str, size: int) -> Any:
    """The context streamed after the configuration frame (see the module docstring)."""
    codec = "utf-8"
    if kind in RAW_KINDS and size > 0:
        width, maxchar, codec = RAW_KINDS[kind]
        prepared = _prepared_str(size, width, maxchar)
        if prepared is not None:
            text, view = prepared
            _fill(channel, view)
            view.release()
            return text
    decoder = codecs.getincrementaldecoder(codec)("surrogatepass")
    pieces: list[str] = []
    while True:
        chunk = channel.read_raw()
        if not chunk:
            break
        pieces.append(decoder.decode(chunk))
        del chunk
    pieces.append(decoder.decode(b"", final=True))
    text = "".join(pieces)
    del pieces
    if kind == "json":
        value, _end = _scan(text, 0)
        return value
    return text


# --------------------------------------------------------------------------- timer


class _AlarmTimer(CellTimer):
    """Soft timeout through ``setitimer``; paused (nesting-safe) during host exchanges."""

    def __init__(self) -> None:
        self.active = False
        self.depth = 0
        self.in_flight = False
        self._remaining = 0.0

    def start(self, seconds: float) -> None:
        self.depth = 0
        self.in_flight = False
        if seconds and seconds > 0:
            self.active = True
            signal.setitimer(signal.ITIMER_REAL, seconds, REFIRE_SECONDS)

    def stop(self) -> None:
        self.active = False
        self.depth = 0
        signal.setitimer(signal.ITIMER_REAL, 0)

    def pause(self) -> None:
        self.depth += 1
        if self.depth == 1 and self.active:
            self._remaining = signal.setitimer(signal.ITIMER_REAL, 0)[0]

    def resume(self) -> None:
        if self.depth <= 0:
            return
        self.depth -= 1
        if self.depth == 0 and self.active:
            signal.setitimer(signal.ITIMER_REAL, max(self._remaining, 0.001), REFIRE_SECONDS)

    def handler(self, _signum: int, _frame: Any) -> None:
        if self.in_flight:
            os._exit(EXIT_BRIDGE_BROKEN)  # fatal to the channel: the host restarts us
        if self.active and self.depth == 0:
            raise CellTimeout


# --------------------------------------------------------------------------- lockdown


def _simulated(config: dict[str, Any], piece: str) -> bool:
    return piece in config.get("simulate_missing", ())


def _address_space_bytes(config: dict[str, Any], confinement: dict[str, Any]) -> int:
    """What is mapped now: ``VmSize`` from ``/proc``, else an estimate from ``resource``."""
    if not _simulated(config, "proc"):
        try:
            with open("/proc/self/status", "rb") as status:
                for line in status:
                    if line.startswith(b"VmSize:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    confinement["errors"].append("/proc unavailable: address-space limit estimated")
    confinement["missing"].append("proc")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024
    return maxrss * scale + NO_PROC_ADDRESS_SLACK


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except Exception:
        return False


def _drop_privileges(config: dict[str, Any], confinement: dict[str, Any]) -> None:
    """Root becomes ``nobody``: ``RLIMIT_NPROC`` then forbids ``fork`` (root ignores it)."""
    if _simulated(config, "nproc") or not hasattr(os, "setuid") or os.geteuid() != 0:
        return
    try:
        os.setgroups([])
        os.setgid(NOBODY_ID)
        os.setuid(NOBODY_ID)
        confinement["uid"] = NOBODY_ID
    except OSError as exc:
        confinement["errors"].append(f"drop privileges: {exc}")


def _apply_rlimits(
    limits: SandboxLimits, config: dict[str, Any], mapped: int, confinement: dict[str, Any]
) -> None:
    applied: dict[str, int] = {}

    def setlimit(name: str, which: int, soft: int) -> None:
        try:
            resource.setrlimit(which, (soft, soft))
            applied[name] = soft
        except (ValueError, OSError) as exc:
            confinement["errors"].append(f"rlimit {name}: {exc}")

    if limits.memory_mb is not None:
        setlimit("AS", resource.RLIMIT_AS, mapped + limits.memory_mb * MIB)
    setlimit("FSIZE", resource.RLIMIT_FSIZE, 0)
    setlimit("CORE", resource.RLIMIT_CORE, 0)
    setlimit("NOFILE", resource.RLIMIT_NOFILE, NOFILE_LIMIT)
    if not _simulated(config, "nproc"):
        setlimit("NPROC", resource.RLIMIT_NPROC, 0)
    confinement["rlimits"] = applied


def _set_cpu_limit(seconds: float | None) -> None:
    if not seconds:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime)
    soft = used + int(seconds) + 1 + CPU_GRACE_SECONDS
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


def _unshare(config: dict[str, Any], confinement: dict[str, Any]) -> None:
    if _simulated(config, "namespaces"):
        confinement["errors"].append("unshare: not available (simulated)")
        return
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
    except Exception as exc:  # no ctypes / libc / unshare (macOS)
        confinement["errors"].append(f"unshare: {exc}")


def _load_seccomp(config: dict[str, Any]) -> Any:
    """Import ``pyseccomp``, its ``find_library`` lookups answered from the host's."""
    if _simulated(config, "seccomp"):
        raise ImportError("pyseccomp unavailable (simulated)")
    import ctypes.util

    seeded = config.get("libraries")
    known = {str(k): str(v) for k, v in seeded.items()} if isinstance(seeded, dict) else {}
    find_library = ctypes.util.find_library
    ctypes.util.find_library = lambda name: known.get(name) or find_library(name)
    try:
        import pyseccomp
    finally:
        ctypes.util.find_library = find_library
    return pyseccomp


SECCOMP_PLAIN_SYSCALLS = (
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
    "getppid",
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
)


def _seccomp(
    sc: Any, read_fd: int, write_fd: int, confinement: dict[str, Any]
) -> None:  # pragma: no cover - exercised in the worker
    try:
        import errno

        flt = sc.SyscallFilter(defaction=sc.ERRNO(errno.EPERM))
        pid = os.getpid()
        for name in SECCOMP_PLAIN_SYSCALLS:
            try:
                flt.add_rule(sc.ALLOW, name)
            except Exception:  # a syscall this architecture lacks
                continue
        for name in ("read", "readv"):
            flt.add_rule(sc.ALLOW, name, sc.Arg(0, sc.EQ, read_fd))
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
        "subreaper": False,
        "uid": os.geteuid() if hasattr(os, "geteuid") else -1,
        "rlimits": {},
        "errors": [],
        "missing": [],
    }
    seccomp_module: Any = None
    if config.get("seccomp", True):
        try:  # load libseccomp while files can still be opened
            seccomp_module = _load_seccomp(config)
        except Exception as exc:
            confinement["errors"].append(f"seccomp: pyseccomp unavailable ({exc})")
    else:
        confinement["errors"].append("seccomp: disabled by the host")
    mapped = _address_space_bytes(config, confinement)
    if not _simulated(config, "prctl"):
        confinement["subreaper"] = _prctl(PR_SET_CHILD_SUBREAPER, 1)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if seccomp_module is None:  # no syscall filter to forbid fork: rely on RLIMIT_NPROC
        _drop_privileges(config, confinement)
    if config.get("unshare", True):
        _unshare(config, confinement)
    else:
        confinement["errors"].append("unshare: disabled by the host")
    if not _simulated(config, "prctl"):
        _die_with_parent()
    _apply_rlimits(limits, config, mapped, confinement)
    if seccomp_module is not None:
        _seccomp(seccomp_module, read_fd, write_fd, confinement)
    return confinement


_PARENT = os.getppid()
"""The host, as it was when the worker started."""


def _die_with_parent() -> None:
    """SIGKILL from the kernel when the host's spawning thread dies, even while stopped.

    A host that died between the two steps of a tree kill (SIGSTOP, then SIGKILL) left the
    worker stopped and orphaned for good. Set after the privilege drop and the namespaces
    (credential changes clear it); a host already gone means exit now."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _PARENT:
        os._exit(EXIT_PARENT_GONE)


# --------------------------------------------------------------------------- worker


class _Worker:
    """Serves the host's commands over one channel."""

    def __init__(self, channel: _Channel, config: dict[str, Any], context: Any) -> None:
        self.channel = channel
        self.limits = cast("SandboxLimits", SimpleNamespace(**config["limits"]))
        self.max_frame = int(config["max_frame"])
        self.raw_exec = config.get("test_raw_exec") is True
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

    def _exchange(self, payload: bytes, expect_reply: bool) -> Any:
        """Write one frame (and read the reply) with the timer paused and gc off.

        Anything that interrupts the exchange leaves the channel in an unknown state,
        so it ends the worker; the host sees it die, restarts it and tells the model.
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        self.timer.pause()
        try:
            self.timer.in_flight = True
            self.channel.write_raw(payload)
            reply = self.channel.read() if expect_reply else None
            self.timer.in_flight = False
        except BaseException:
            os._exit(EXIT_BRIDGE_BROKEN)
        finally:
            self.timer.resume()
            if gc_was_enabled:
                gc.enable()
        return reply

    def _on_final(self, text: str) -> None:
        message = {"t": "final", "seq": self.seq, "answer": text}
        self._exchange(_dumps(to_plain(message, self.max_frame)), expect_reply=False)

    def _call_host(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        message = {"t": "call", "seq": self.seq, "name": name, "args": list(args), "kwargs": kwargs}
        try:
            payload = _dumps(to_plain(message, self.max_frame))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        except TypeError as exc:
            raise TypeError(f"{name}: {exc}") from None
        if len(payload) > self.max_frame:
            raise SubcallError(
                f"{name}: the arguments ({len(payload)} bytes) are too large to send to the "
                "host in one call; send smaller pieces"
            )
        reply = self._exchange(payload, expect_reply=True)
        if type(reply) is dict and reply.get("t") == "result":
            return reply.get("value")
        message_text = reply.get("message") if type(reply) is dict else None
        raise SubcallError(str(message_text or "sub-call failed"))

    def _run(self, message: dict[str, Any]) -> None:
        self.seq = int(message["seq"])
        soft = message.get("soft")
        seconds = float(soft) if isinstance(soft, int | float) else self.limits.cell_timeout
        _set_cpu_limit(seconds)
        result = self.core.run_cell(str(message["code"]), soft_timeout=seconds)
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
        if value is not None:
            value = _copy_str(value)
            if len(value) > MAX_VARIABLE_CHARS:
                value = value[:MAX_VARIABLE_CHARS] + "... [truncated]"
        self.channel.write({"t": "value", "seq": message["seq"], "value": value})

    def _set(self, message: dict[str, Any]) -> None:
        if message.get("stream_kind"):
            value = _read_context(
                self.channel, str(message["stream_kind"]), int(message.get("chars", 0))
            )
        else:
            value = message.get("value")
        self.core.set_variable(str(message["name"]), value)
        self.channel.write({"t": "value", "seq": message["seq"], "value": None})

    def _raw(self, message: dict[str, Any]) -> None:
        """TEST HOOK (only when the host asked for it at start): run unvetted code.

        Layer-independence tests use it to attack the OS confinement with the language
        policy out of the way. Production hosts never enable it.
        """
        namespace: dict[str, Any] = {"__name__": "__raw__", "read_fd": self.channel.read_fd}
        namespace["write_fd"] = self.channel.write_fd
        error = None
        try:
            exec(str(message["code"]), namespace)
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
        result = namespace.get("result")
        self.channel.write(
            {"t": "value", "seq": message["seq"], "value": {"result": repr(result), "error": error}}
        )

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
            elif op == "raw" and self.raw_exec:
                self._raw(message)
            elif op == "close":
                os._exit(0)
            else:
                os._exit(EXIT_FATAL)


SINGLE_THREAD_WAIT_SECONDS = 1.0
"""How long the worker waits for the kernel to remove its finished reader thread."""


def wait_single_threaded(timeout: float) -> bool:
    """Wait until the kernel has removed every other thread of this process.

    ``Thread.join`` returns once the thread's Python code is done, a moment before the
    kernel has removed the thread, and ``unshare(CLONE_NEWUSER)`` fails with ``EINVAL``
    while a process has two threads: a restart under load came up DEGRADED ("unshare:
    Invalid argument") when the context reader finished last. False when ``/proc`` is
    missing or ``timeout`` passed (the lockdown then reports what failed).
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            if len(os.listdir("/proc/self/task")) <= 1:
                return True
        except OSError:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.0002)


def _receive_while_importing(channel: _Channel, config: dict[str, Any]) -> Any:
    """Read the context in a thread while the main thread imports the allowed modules.

    The reader spends its time in ``readv`` (GIL released), so the transfer overlaps
    the imports. The thread has ended before the lockdown (seccomp applies per thread).
    """
    import threading

    box: dict[str, Any] = {}

    def receive() -> None:
        try:
            box["value"] = _read_context(
                channel, config["context_kind"], int(config["context_chars"])
            )
        except BaseException as exc:
            box["error"] = exc

    reader = threading.Thread(target=receive, name="rlm-context-reader")
    reader.start()
    try:
        prewarm_modules()
    finally:
        reader.join()
        wait_single_threaded(SINGLE_THREAD_WAIT_SECONDS)
    if "error" in box:
        raise box["error"]
    return box.pop("value")


def main(argv: list[str]) -> None:
    read_fd, write_fd = (int(arg) for arg in argv[:2])
    channel = _Channel(read_fd, write_fd, 1 << 30)
    try:
        config = channel.read()
        channel.max_frame = int(config["max_frame"])
        context = _receive_while_importing(channel, config)
        worker = _Worker(channel, config, context)
        del context
        signal.signal(signal.SIGALRM, worker.timer.handler)
        sys.setrecursionlimit(int(config.get("recursion_limit", 1000)))
        confinement = _lock_down(worker.limits, config, read_fd, write_fd)
        channel.write({"t": "ready", "confinement": confinement})
    except BaseException as exc:  # report and exit: the host restarts a worker
        try:
            channel.write({"t": "fatal", "error": f"{type(exc).__name__}: {exc}"})
        finally:
            os._exit(EXIT_FATAL)
    try:
        worker.serve()
    except BaseException:
        os._exit(EXIT_FATAL)
