"""Layer independence, portability fallbacks, process lifetime, determinism (issue 10).

* The OS layer alone: unvetted code run in the confined worker through a TEST-ONLY
  hook (``ProcessSandbox(test_raw_exec=True)``) cannot open files, use the network,
  start processes or signal anyone.
* The policy alone: with seccomp, namespaces, the privilege drop and ``prctl`` all
  off, the language policy still stops the same attacks (and the v2 bypasses).
* Missing platform pieces (``/proc``, ``memfd_create``, seccomp, namespaces) are
  simulated on Linux: the sandbox still starts, says ``SANDBOX DEGRADED`` once and
  reports what it lacks.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from langchain_rlm.sandbox import (
    LocalSandbox,
    ProcessSandbox,
    SandboxLimits,
    get_sandbox,
)
from langchain_rlm.sandbox import policy as policy_module
from langchain_rlm.sandbox import process as process_module
from langchain_rlm.sandbox.repl import ReplCore

from .conftest import CONTEXT, TEST_LIMITS, alive, assert_next_cell_works, host_functions
from .test_redteam import ATTEMPTS
from .test_redteam_v2 import NEW_ATTEMPTS

TARGET = str(Path(__file__).resolve().parents[2] / "pyproject.toml")
OFF = frozenset({"nproc", "prctl"})

# --------------------------------------------------------------------------- OS layer alone

OS_ATTACKS: dict[str, str] = {
    "open-file": f"result = open({TARGET!r}).read()",
    "os-open": f"import os\nresult = os.read(os.open({TARGET!r}, os.O_RDONLY), 100)",
    "listdir": "import os\nresult = os.listdir('/')",
    "proc-environ-of-host": "import os\nresult = open(f'/proc/{os.getppid()}/environ').read()",
    "import-socket": "import socket\nresult = socket.socket().connect(('127.0.0.1', 22))",
    "raw-socket-syscall": (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nfd = libc.socket(2, 1, 0)\n"
        "if fd < 0:\n    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))\n"
        "result = fd"
    ),
    "raw-clone-syscall": (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\npid = libc.syscall(57)\n"
        "if pid == 0:\n    os._exit(0)\n"
        "if pid < 0:\n    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))\n"
        "result = pid"
    ),
    "fork": "import os\nresult = os.fork()",
    "execve": "import os\nos.execv('/bin/sh', ['sh', '-c', 'true'])",
    "kill-host": "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)\nresult = 'sent'",
    "kill-init": "import os, signal\nos.kill(1, signal.SIGCONT)\nresult = 'sent'",
    "write-file": "result = open('/tmp/rlm-escape', 'w').write('x')",
    "write-stdout-fd": "import os\nresult = os.write(7, b'x')",
}


@pytest.fixture(scope="module")
def raw_session() -> Iterator[Any]:
    ex = ProcessSandbox(test_raw_exec=True).start(CONTEXT, host_functions(), TEST_LIMITS)
    try:
        yield ex
    finally:
        ex.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(OS_ATTACKS))
def test_os_layer_alone_contains_attack(raw_session: Any, name: str) -> None:
    reply = raw_session._raw_exec_for_tests(OS_ATTACKS[name])
    assert reply["error"] is not None, reply
    assert any(
        word in reply["error"]
        for word in ("PermissionError", "Operation not permitted", "ImportError", "No module")
    ), reply
    assert "build-system" not in reply["result"]
    assert not Path("/tmp/rlm-escape").exists()
    assert raw_session("1 + 1").stdout == "2\n"


def test_raw_hook_is_off_by_default(session: Any) -> None:
    with pytest.raises(RuntimeError, match="test hook"):
        session._raw_exec_for_tests("result = 1")


# --------------------------------------------------------------------------- policy alone


@pytest.fixture(scope="module")
def bare_session() -> Iterator[Any]:
    """Degraded mode with every OS piece off: the policy is all that is left."""
    ex = ProcessSandbox(
        seccomp=False, namespaces=False, simulate_missing=OFF, test_raw_exec=True
    ).start(CONTEXT, host_functions(), TEST_LIMITS)
    try:
        yield ex
    finally:
        ex.close()


def test_bare_session_really_has_no_os_layer(bare_session: Any) -> None:
    conf = bare_session.confinement
    assert not conf["seccomp"] and not conf["user_namespace"] and conf["no_fork"] == "none"
    reply = bare_session._raw_exec_for_tests(f"result = open({TARGET!r}).read()")
    assert "build-system" in reply["result"]  # the OS would let an escape through


POLICY_ATTEMPTS = [
    a for a in ATTEMPTS if not a[0].startswith(("cpu-", "memory-", "big-", "sum-", "catastrophic"))
] + NEW_ATTEMPTS


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("code", "check"),
    [(c, k) for _, c, k in POLICY_ATTEMPTS],
    ids=[i for i, _, _ in POLICY_ATTEMPTS],
)
def test_policy_alone_contains_attack(bare_session: Any, code: str, check: Any) -> None:
    out = bare_session(code.replace("{T!r}", repr(TARGET)))
    assert check(out), (out.stdout[-300:], out.error)
    assert "build-system" not in out.stdout and "build-system" not in (out.error or "")
    assert bare_session("1 + 1").stdout == "2\n"


# --------------------------------------------------------------------------- processes


@pytest.mark.timeout(60)
def test_forked_setsid_child_and_orphan_die_with_the_session() -> None:
    """Finding 8: with fork possible (no seccomp, no NPROC), nothing outlives close()."""
    ex = ProcessSandbox(
        seccomp=False, namespaces=False, simulate_missing=frozenset({"nproc"}), test_raw_exec=True
    ).start("ctx", {}, TEST_LIMITS)
    code = (
        "import os, time\n"
        "r, w = os.pipe()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    os.setsid()\n"
        "    grandchild = os.fork()\n"
        "    if grandchild == 0:\n"
        "        os.setsid()\n"
        "        while True:\n"
        "            time.sleep(1)\n"
        "    os.write(w, str(grandchild).encode())\n"
        "    os._exit(0)\n"  # the grandchild is orphaned: the subreaper worker adopts it
        "result = [child, int(os.read(r, 32))]\n"
    )
    try:
        reply = ex._raw_exec_for_tests(code)
        assert reply["error"] is None, reply
        child, grandchild = eval(reply["result"])
        assert alive(grandchild)
    finally:
        ex.close()
    deadline = time.monotonic() + 30
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)  # init reaps the killed orphan asynchronously
    assert not alive(grandchild) and not alive(child)


def test_degraded_mode_cannot_fork_as_root(tmp_path: Path) -> None:
    ex = ProcessSandbox(seccomp=False, namespaces=False, test_raw_exec=True).start(
        "ctx", {}, TEST_LIMITS
    )
    try:
        assert ex.confinement["no_fork"] in ("nproc", "seccomp")
        reply = ex._raw_exec_for_tests("import os\nresult = os.fork()")
        assert reply["error"] is not None and "BlockingIOError" in reply["error"]
    finally:
        ex.close()


# --------------------------------------------------------------------------- portability


@pytest.fixture()
def fresh_warning() -> Iterator[None]:
    saved = set(process_module._warned)
    process_module._warned.clear()
    yield
    process_module._warned.clear()
    process_module._warned.update(saved)


@pytest.mark.parametrize(
    ("missing", "kwargs", "word"),
    [
        (frozenset({"proc"}), {}, "proc"),
        (frozenset({"seccomp"}), {}, "seccomp"),
        (frozenset({"namespaces"}), {}, "user_namespace"),
        (frozenset({"host_proc"}), {}, "kill:process-group"),
        (frozenset(), {"seccomp": False, "namespaces": False}, "seccomp"),
    ],
    ids=["no-proc", "no-seccomp", "no-namespaces", "no-host-proc", "switched-off"],
)
def test_missing_piece_still_starts_and_reports(
    missing: frozenset[str], kwargs: dict[str, Any], word: str, fresh_warning: None
) -> None:
    ex = ProcessSandbox(simulate_missing=missing, **kwargs).start(
        CONTEXT, host_functions(), TEST_LIMITS
    )
    try:
        out = ex("import os")
        assert out.error is not None and "ImportError" in out.error
        summary = out.extra["confinement"]
        assert summary.startswith("DEGRADED") and word in summary
        assert ex("x = 'x' * 10**11").error.startswith("MemoryError")
        assert_next_cell_works(ex)
    finally:
        ex.close()


def test_no_memfd_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handover does not need memfd_create (macOS has none)."""
    monkeypatch.delattr(os, "memfd_create", raising=False)
    ex = ProcessSandbox().start(CONTEXT, host_functions(), TEST_LIMITS)
    try:
        assert_next_cell_works(ex)
        assert ex("sum(range(10**13))").restarted
        assert_next_cell_works(ex)  # restarted from the caller's object
    finally:
        ex.close()


def test_no_handover_copy_is_kept(session: Any) -> None:
    """Neither the host nor the worker keeps a memfd / temp file of the context."""
    for pid in (str(os.getpid()), str(session.pid)):
        links = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except FileNotFoundError:  # the descriptor listdir itself used
                continue
        assert links and not [link for link in links if "memfd" in link or "rlm-context" in link], (
            links
        )


def test_degraded_warning_is_said_once(
    caplog: pytest.LogCaptureFixture, fresh_warning: None
) -> None:
    with caplog.at_level(logging.WARNING, logger="langchain_rlm.sandbox"):
        for missing in (frozenset({"seccomp"}), frozenset({"namespaces"})):
            ProcessSandbox(simulate_missing=missing).start("", {}, TEST_LIMITS).close()
    said = [r for r in caplog.records if "SANDBOX DEGRADED" in r.getMessage()]
    assert len(said) == 1


def test_unknown_simulated_piece_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="valid"):
        ProcessSandbox(simulate_missing=frozenset({"gpu"})).start("", {}, TEST_LIMITS)


# --------------------------------------------------------------------------- determinism


def test_worker_hash_seed_is_fixed_across_sessions() -> None:
    code = "print(hash('abc'))\nprint('|'.join(set(['alpha', 'beta', 'gamma', 'delta', 'eps'])))"
    outputs = []
    for _ in range(2):
        ex = ProcessSandbox().start("", {}, TEST_LIMITS)
        try:
            outputs.append(ex(code).stdout)
        finally:
            ex.close()
    assert outputs[0] == outputs[1] and outputs[0].strip()


def test_worker_environment_holds_only_the_hash_seed(session: Any) -> None:
    environ = Path(f"/proc/{session.pid}/environ").read_bytes()
    assert environ.split(b"\0")[:-1] == [b"PYTHONHASHSEED=0"]


# --------------------------------------------------------------------------- scrubbed globals

FORBIDDEN_NAMES = ("open", "eval", "exec", "compile", "breakpoint", "input")


def _sandbox_functions(roots: list[Any]) -> list[types.FunctionType]:
    """Python functions defined by the sandbox package reachable from ``roots``."""
    found: list[types.FunctionType] = []
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            stack.extend(vars(obj).values())
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, types.MethodType | classmethod | staticmethod):
            stack.append(obj.__func__)
        elif hasattr(obj, "func") and type(obj).__name__ == "partial":
            stack.append(obj.func)
        elif isinstance(obj, type) and obj.__module__.startswith("langchain_rlm"):
            stack.extend(vars(obj).values())
        elif (
            isinstance(obj, types.FunctionType)
            and "langchain_rlm/sandbox" in obj.__code__.co_filename
        ):
            found.append(obj)
            stack.extend(v for v in obj.__globals__.values() if callable(v) or isinstance(v, type))
    return found


def _assert_scrubbed(func: types.FunctionType) -> None:
    import builtins
    import sys

    glb = func.__globals__
    for value in glb.values():
        assert value is not builtins and value is not sys, func
        assert value is not builtins.__dict__, func
    fb = func.__builtins__
    assert fb is not builtins.__dict__, func
    for name in FORBIDDEN_NAMES:
        assert name not in fb, (func, name)
    assert fb.get("__import__") is None, func


def test_no_reachable_sandbox_function_has_real_builtins_or_sys() -> None:
    core = ReplCore(CONTEXT, ["llm_query"], lambda *a: None, TEST_LIMITS, on_final=lambda t: None)
    roots: list[Any] = [core.namespace, core.builtins]
    importer = core.builtins["__import__"]
    roots.extend(importer(name) for name in sorted(policy_module.ALLOWED_MODULES))
    import string

    roots.append(importer("string").Formatter)
    functions = _sandbox_functions(roots)
    names = {f.__name__ for f in functions}
    for expected in (
        "FINAL",
        "FINAL_VAR",
        "SHOW_VARS",
        "llm_query",
        "print",
        "guarded_getattr",
        "guarded_import",
        "super",
        "build_class",
        "match_class_guard",
        "vformat",
        "_safe_wraps",
        "format_guard",
    ):
        assert expected in names, expected
    for func in functions:
        _assert_scrubbed(func)
    assert string.Formatter not in type.mro(importer("string").Formatter)


# --------------------------------------------------------------------------- contract


def test_every_sandbox_describes_its_modules() -> None:
    expected = tuple(sorted(policy_module.ALLOWED_MODULES))
    assert ProcessSandbox.allowed_modules == expected
    assert get_sandbox().allowed_modules == expected
    assert LocalSandbox(trust_model_code=True).allowed_modules == expected


def test_local_sandbox_needs_an_opt_in_that_names_the_risk() -> None:
    with pytest.raises(ValueError, match="trust_model_code=True"):
        LocalSandbox()
    with pytest.raises(ValueError, match="local-trusted"):
        get_sandbox("local")
    assert isinstance(get_sandbox("local-trusted"), LocalSandbox)


@pytest.mark.parametrize("kind", ["process", "local-trusted"])
def test_host_function_bug_is_reported_logged_and_listed(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    ex = get_sandbox(kind).start(CONTEXT, host_functions(), TEST_LIMITS)
    try:
        with caplog.at_level(logging.ERROR, logger="langchain_rlm.sandbox"):
            out = ex("crash()")
        assert out.error is not None and "ValueError: host bug" in out.error
        assert out.extra["host_errors"] == ["crash failed on the host: ValueError: host bug"]
        records = [r for r in caplog.records if r.name == "langchain_rlm.sandbox"]
        assert records and records[0].levelno == logging.ERROR and records[0].exc_info
        out = ex("refuse()")
        assert (
            out.error.startswith("SubcallError: budget exhausted")
            and "host_errors" not in out.extra
        )
    finally:
        ex.close()


def test_local_cancel_in_host_function_propagates() -> None:
    def cancel() -> None:
        raise KeyboardInterrupt

    ex = LocalSandbox(trust_model_code=True).start("ctx", {"cancel": cancel}, TEST_LIMITS)
    try:
        with pytest.raises(KeyboardInterrupt):
            ex("try:\n    cancel()\nexcept BaseException:\n    pass")
        assert ex("len(context)").stdout == "3\n"
    finally:
        ex.close()


@pytest.mark.parametrize(
    "code",
    [
        "print('x\\ud800y')",
        "FINAL('\\udfff')",
        "raise ValueError('\\udc80')",
        "v = '\\ud800'",
    ],
)
def test_local_sandbox_cleans_text_too(code: str) -> None:
    ex = LocalSandbox(trust_model_code=True).start("ctx", {}, TEST_LIMITS)
    try:
        out = ex(code)
        for text in (out.stdout, out.error or "", out.final_answer or ""):
            text.encode("utf-8")
        value = ex.get_variable("v")
        assert value is None or value == "\ufffd"
    finally:
        ex.close()


def test_local_deep_nesting_size_check() -> None:
    ex = LocalSandbox(trust_model_code=True).start("", host_functions(), TEST_LIMITS)
    try:
        out = ex("x = 'a' * 3_000_000\nfor _ in range(5000):\n    x = [x]\nllm_query(x)")
        assert out.error is not None and "per-call limit" in out.error
        out = ex("a = []\na.append(a)\nllm_query(a)")
        assert out.error is not None and "cycle" in out.error
    finally:
        ex.close()


def test_local_timeout_and_close() -> None:
    from langchain_rlm.sandbox import SandboxClosedError

    ex = LocalSandbox(trust_model_code=True).start("", {}, SandboxLimits(cell_timeout=60))
    out = ex("while True:\n    pass", timeout=0.3)
    assert out.extra["limit"] == "cell_timeout"
    ex.close()
    ex.close()
    with pytest.raises(SandboxClosedError):
        ex("1")


def test_process_variable_values_are_clean(fresh_session: Any) -> None:
    fresh_session("bad = 'a\\ud800'\nbad_list = ['\\udc00']")
    assert fresh_session.get_variable("bad") == "a\ufffd"
    assert fresh_session.get_variable("bad_list") == "['\\udc00']"  # repr escapes it
    fresh_session("globals_like = {'\\ud800': 1}")
    names = fresh_session.variable_names()
    for name in names:
        name.encode("utf-8")


def test_sigkill_of_stopped_worker_is_prompt() -> None:
    """A worker that is SIGSTOPped still dies on close (no hang in the kill path)."""
    ex = ProcessSandbox().start("ctx", {}, TEST_LIMITS)
    pid = ex.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    ex.close()
    assert not alive(pid)
