"""ProcessSandbox features: bridge, limits, FINAL semantics, variables, lifecycle."""

from __future__ import annotations

import contextvars
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from langchain_rlm.sandbox import (
    CodeOutput,
    LocalSandbox,
    ProcessExecutor,
    ProcessSandbox,
    PythonExecutor,
    SandboxLimits,
    SandboxStartError,
    get_sandbox,
)

from .conftest import CONTEXT, TEST_LIMITS, alive, assert_next_cell_works, host_functions

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


# --------------------------------------------------------------------------- bridge


def test_host_functions_positional_and_keyword_args(session: Any) -> None:
    out = session(
        "r = recursive_lm('q?', context_subset=context[:10])\nprint(r)\nllm_query(prompt='kw')"
    )
    assert out.error is None, out.error
    assert out.stdout == "child says hi\n'answer to kw'\n"
    assert out.extra["subcalls"] == 2


def test_host_function_runs_in_calling_thread_with_contextvars() -> None:
    seen: list[tuple[int, str]] = []

    def probe() -> str:
        seen.append((threading.get_ident(), REQUEST_ID.get()))
        return "ok"

    ex = ProcessSandbox().start("", {"probe": probe}, TEST_LIMITS)
    try:
        REQUEST_ID.set("req-42")
        assert ex("probe()").stdout == "'ok'\n"
    finally:
        ex.close()
    assert seen == [(threading.get_ident(), "req-42")]


def test_host_function_error_is_clean_in_model_code(session: Any) -> None:
    out = session("refuse('x')")
    assert out.error is not None
    assert out.error.startswith("SubcallError: budget exhausted: no more sub-calls")
    out = session(
        "try:\n  refuse()\nexcept RuntimeError as e:\n  print('caught', type(e).__name__, e)"
    )
    assert out.stdout == "caught SubcallError budget exhausted: no more sub-calls\n"


def test_unexpected_host_exception_reaches_model_and_extra(session: Any) -> None:
    out = session("crash()")
    assert out.error is not None and "ValueError: host bug" in out.error
    assert out.extra["host_errors"] == ["crash failed on the host: ValueError: host bug"]
    assert_next_cell_works(session)


def test_subcall_limit_is_per_cell_and_counts_batches(session: Any) -> None:
    out = session("llm_query_batched(['a'] * 6)\nllm_query_batched(['b'] * 4)\nprint('ten ok')")
    assert out.error is None and out.extra["subcalls"] == 10
    out = session("llm_query_batched(['c'] * 10)")
    assert out.error is None
    out = session("for i in range(11):\n  llm_query(str(i))")
    assert out.error is not None and "sub-call limit reached" in out.error
    assert out.extra["subcalls"] == 10


def test_subcall_chars_limit_per_prompt(session: Any) -> None:
    assert session("llm_query('x' * 1000)").error is None
    out = session("llm_query_batched(['x' * 10, 'y' * 1001])")
    assert out.error is not None and "exceeds the per-call limit of 1000" in out.error


def test_soft_timer_paused_during_host_calls() -> None:
    def slow() -> str:
        time.sleep(0.8)
        return "slow"

    limits = SandboxLimits(cell_timeout=1.0, memory_mb=256)
    ex = ProcessSandbox(grace_seconds=0.5).start("", {"slow": slow}, limits)
    try:
        out = ex("a = [slow() for _ in range(3)]\nlen(a)")
        assert out.error is None and out.stdout == "3\n", out.error
    finally:
        ex.close()


def test_keyboard_interrupt_in_host_function_propagates_and_session_recovers() -> None:
    def interrupt() -> str:
        raise KeyboardInterrupt

    ex = ProcessSandbox().start("ctx", {"interrupt": interrupt}, TEST_LIMITS)
    try:
        with pytest.raises(KeyboardInterrupt):
            ex("interrupt()")
        out = ex("print(context)")
        assert out.stdout == "ctx\n" and out.restarted
    finally:
        ex.close()


# --------------------------------------------------------------------------- FINAL


def test_final_records_str_and_stops_cell(session: Any) -> None:
    out = session("print('before')\nFINAL(42)\nprint('after')")
    assert out.final_answer == "42" and out.stdout == "before\n" and out.error is None


def test_final_inside_function_and_after_error_catching(session: Any) -> None:
    out = session(
        "def finish():\n  FINAL({'a': 1})\ntry:\n  finish()\nexcept Exception:\n  print('not reached')"
    )
    assert out.final_answer == "{'a': 1}" and out.stdout == ""


def test_final_var_semantics(session: Any) -> None:
    session("result = [1, 2]\nanswer_text = 'the answer'")
    assert session("FINAL_VAR('answer_text')").final_answer == "the answer"
    assert session("FINAL_VAR(' result ')").final_answer == "[1, 2]"
    assert session("FINAL_VAR(result)").final_answer == "[1, 2]"
    out = session("FINAL_VAR('missing_var')")
    assert out.final_answer is None
    assert out.error is not None and out.error.startswith("NameError: FINAL_VAR: no variable named")
    assert "answer_text" in out.error and "result" in out.error


def test_final_not_set_without_call(session: Any) -> None:
    out = session("x = 'FINAL(1)'\nprint(x)")
    assert out.final_answer is None


def test_show_vars(session: Any) -> None:
    session("show_me = [1, 2, 3]")
    out = session("SHOW_VARS()")
    assert "show_me: list, len=3" in out.stdout
    assert "context" not in out.stdout and "llm_query" not in out.stdout


# --------------------------------------------------------------------------- variables


def test_variables_roundtrip(fresh_session: Any) -> None:
    fresh_session("import json\nalpha = 1\nbeta = 'two'\ndef helper():\n  pass")
    names = fresh_session.variable_names()
    assert {"alpha", "beta", "helper"} <= set(names)
    assert "json" not in names and "context" not in names and "FINAL" not in names
    assert fresh_session.get_variable("beta") == "two"
    assert fresh_session.get_variable("nope") is None
    fresh_session.set_variable("gamma", {"k": [1, 2]})
    assert fresh_session("gamma['k'][1]").stdout == "2\n"
    with pytest.raises(ValueError):
        fresh_session.set_variable("FINAL", 1)
    with pytest.raises(ValueError):
        fresh_session.set_variable("__builtins__", 1)
    with pytest.raises(TypeError):
        fresh_session.set_variable("bad", object())


def test_set_context_survives_restart(fresh_session: Any) -> None:
    fresh_session.set_variable("context", ["new", "context"])
    assert fresh_session("context").stdout == "['new', 'context']\n"
    out = fresh_session("sum(range(10**13))")
    assert out.restarted
    assert fresh_session("context").stdout == "['new', 'context']\n"


@pytest.mark.parametrize(
    "context",
    [
        "",
        "ünïcödé ✓ \U0001f600",
        ["doc one", "doc two"],
        [{"id": "1", "text": "hello", "metadata": {"page": 3}}],
        {"a": [1, 2.5, None, True], "b": {"c": "d"}},
    ],
    ids=["empty", "unicode", "list-str", "records", "dict"],
)
def test_context_types_and_restart_keeps_context(context: Any) -> None:
    ex = ProcessSandbox().start(context, {}, TEST_LIMITS)
    try:
        assert ex("context").stdout == repr(context) + "\n"
        out = ex("sum(range(10**13))") if isinstance(context, dict) else None
        if out is not None:
            assert out.restarted
        assert ex("context").stdout == repr(context) + "\n"
    finally:
        ex.close()


def test_non_json_context_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="JSON-like"):
        ProcessSandbox().start([object()], {}, TEST_LIMITS)


# --------------------------------------------------------------------------- lifecycle


def test_close_leaves_no_process() -> None:
    ex = ProcessSandbox().start("x", {}, TEST_LIMITS)
    pid = ex.pid
    assert pid is not None and alive(pid)
    ex.close()
    ex.close()  # idempotent
    assert not alive(pid)
    with pytest.raises(RuntimeError, match="closed"):
        ex("1")


def _worker_args(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return handle.read().decode().split("\0")


def test_worker_on_the_hosts_interpreter_skips_site_and_keeps_seccomp() -> None:
    """No ``site`` in the worker (about 4 ms of its start): it still finds ``pyseccomp``."""
    ex = ProcessSandbox().start("x", {}, TEST_LIMITS)
    try:
        assert ex.pid is not None
        assert "-S" in _worker_args(ex.pid)
        assert ex.confinement["seccomp"] is True, ex.confinement["errors"]
        assert (
            ex("import json, hashlib, statistics; print(statistics.mean([1, 2]))").stdout == "1.5\n"
        )
    finally:
        ex.close()


def test_worker_on_another_interpreter_keeps_its_site() -> None:
    """Another interpreter path finds its packages through its own ``site``."""
    python = os.path.join(os.path.dirname(sys.executable), ".", os.path.basename(sys.executable))
    ex = ProcessSandbox(python=python).start("x", {}, TEST_LIMITS)
    try:
        assert ex.pid is not None
        args = _worker_args(ex.pid)
        assert args[0] == python and "-S" not in args
        assert ex.confinement["seccomp"] is True, ex.confinement["errors"]
        assert ex("print(len(context))").stdout == "1\n"
    finally:
        ex.close()


@pytest.mark.parametrize("package", [False, True])
def test_seccomp_path_is_the_directory_to_import_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: bool
) -> None:
    """``pyseccomp`` as a module file or as a package: the worker gets the directory that
    holds it (not the package's own directory)."""
    import importlib.machinery
    import importlib.util

    from langchain_rlm.sandbox import process

    origin = tmp_path / ("pyseccomp/__init__.py" if package else "pyseccomp.py")
    spec = importlib.machinery.ModuleSpec("pyseccomp", None, origin=str(origin), is_package=package)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    process._seccomp_path.cache_clear()
    try:
        assert process._seccomp_path() == str(tmp_path.resolve())
    finally:
        process._seccomp_path.cache_clear()


WORKER_SCRIPT_TIMEOUT = 120.0
"""A hang guard for :func:`_run_as_worker` (a failure, not a timing assertion)."""


def _run_as_worker(body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh ``python -S`` that imports the sandbox modules the way the
    worker's bootstrap does (no ``langchain_rlm/__init__``)."""
    script = (
        "import sys, types\n"
        "for name, sub in (('langchain_rlm', 'langchain_rlm'),"
        " ('langchain_rlm.sandbox', 'langchain_rlm/sandbox')):\n"
        "    module = types.ModuleType(name)\n"
        "    module.__path__ = [sys.argv[1] + '/' + sub]\n"
        "    sys.modules[name] = module\n"
    ) + body
    root = str(Path(__file__).resolve().parents[2])
    return subprocess.run(
        [sys.executable, "-S", "-c", script, root],
        capture_output=True,
        text=True,
        check=True,
        timeout=WORKER_SCRIPT_TIMEOUT,
    )


def test_worker_imports_stay_light() -> None:
    """The worker's own imports and the allowed modules load neither ``dataclasses`` nor
    ``inspect`` (about 3 ms of the worker's start)."""
    out = _run_as_worker(
        "import langchain_rlm.sandbox._worker\n"
        "from langchain_rlm.sandbox.policy import prewarm_modules\n"
        "prewarm_modules()\n"
        "print(sorted({'dataclasses', 'inspect'} & set(sys.modules)))\n"
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_worker_waits_until_the_kernel_removed_its_reader_thread() -> None:
    """``unshare(CLONE_NEWUSER)`` fails (EINVAL) while a second thread still exists, and
    ``Thread.join`` returns before the kernel removed it: the worker waits for one thread."""
    out = _run_as_worker(
        "import os, threading\n"
        "from langchain_rlm.sandbox import _worker\n"
        "release = threading.Event()\n"
        "threading.Thread(target=release.wait, daemon=True).start()\n"
        "print(len(os.listdir('/proc/self/task')), _worker.wait_single_threaded(0.05))\n"
        "release.set()\n"
        "print(_worker.wait_single_threaded(60.0), len(os.listdir('/proc/self/task')))\n"
        # and the context reader is waited for that way before the lockdown
        "calls = []\n"
        "_worker.wait_single_threaded = lambda timeout: calls.append(timeout) or True\n"
        "_worker.prewarm_modules = lambda: None\n"
        "_worker._read_context = lambda channel, kind, chars: 'ctx'\n"
        "config = {'context_kind': 'str', 'context_chars': 0}\n"
        "print(_worker._receive_while_importing(None, config), len(calls))\n"
    )
    assert out.stdout.split() == ["2", "False", "True", "1", "ctx", "1"], out.stdout + out.stderr


def test_closing_and_restarting_leave_no_descriptor_behind() -> None:
    """Each worker's pipes and pidfd are closed with it (a worker that died on its own,
    reaped before the close, included)."""
    ex = ProcessSandbox().start("x", {}, TEST_LIMITS)
    ex.close()  # the first start loads what stays loaded
    gc.collect()  # sessions other tests dropped close now, not during the count
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        ex = ProcessSandbox().start("x", {}, TEST_LIMITS)
        pid = ex.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # dies on its own: the next cell restarts it
        assert ex("print(1)").restarted
        ex.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_restart_does_not_leave_the_old_worker() -> None:
    ex = ProcessSandbox(grace_seconds=0.3).start(
        "x", {}, SandboxLimits(cell_timeout=0.5, memory_mb=256)
    )
    try:
        old = ex.pid
        assert old is not None
        assert ex("sum(range(10**13))").restarted
        assert not alive(old)
    finally:
        ex.close()


def test_one_session_many_threads_is_serialised(session: Any) -> None:
    results: list[CodeOutput] = []

    def run(i: int) -> None:
        results.append(session(f"v{i} = {i}\nv{i} * 2"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.stdout for r in results) == ["0\n", "2\n", "4\n", "6\n"]


def test_protocols_and_get_sandbox() -> None:
    sandbox = get_sandbox()
    assert isinstance(sandbox, ProcessSandbox) and sandbox.name == "process"
    assert isinstance(get_sandbox("local-trusted"), LocalSandbox)
    custom = LocalSandbox(trust_model_code=True)
    assert get_sandbox(custom) is custom
    with pytest.raises(ValueError, match="'process', 'local-trusted'"):
        get_sandbox("docker")
    ex = sandbox.start("", {}, TEST_LIMITS)
    try:
        assert isinstance(ex, PythonExecutor) and isinstance(ex, ProcessExecutor)
    finally:
        ex.close()


def test_full_confinement_applied_here(session: Any) -> None:
    """On these Linux machines every layer applies; the summary says what ran."""
    conf = session.confinement
    assert conf["seccomp"] and conf["user_namespace"] and conf["net_namespace"]
    assert {"AS", "FSIZE", "NOFILE", "CORE"} <= set(conf["rlimits"])
    assert session("1").extra["confinement"] == conf["summary"]
    with open(f"/proc/{session.pid}/status") as status:
        assert "Seccomp:\t2" in status.read()


def test_degraded_mode_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="langchain_rlm.sandbox.process"):
        ex = ProcessSandbox(seccomp=False, namespaces=False).start(
            "ctx", host_functions(), TEST_LIMITS
        )
    try:
        assert ex.confinement["seccomp"] is False
        assert ex.confinement["summary"].startswith("DEGRADED")
        out = ex("import os")
        assert out.extra["confinement"].startswith("DEGRADED")
        assert out.error is not None and "ImportError" in out.error  # policy still applies
        assert ex("while True: pass").extra["limit"] == "cell_timeout"  # rlimits/timer still apply
    finally:
        ex.close()
    with pytest.raises(SandboxStartError, match="required"):
        ProcessSandbox(seccomp=False, require_confinement=True).start("", {}, TEST_LIMITS)


def test_local_sandbox_basics() -> None:
    ex = LocalSandbox(trust_model_code=True).start(
        CONTEXT, host_functions(), SandboxLimits(cell_timeout=0.5, max_subcalls_per_cell=2)
    )
    try:
        assert ex("len(context)").stdout == f"{len(CONTEXT)}\n"
        assert ex("while True:\n  pass").extra["limit"] == "cell_timeout"
        assert ex("refuse()").error.startswith("SubcallError: budget exhausted")
        assert "sub-call limit" in ex("for i in range(3):\n  llm_query('x')").error
        assert ex("try:\n  FINAL('a')\nexcept BaseException:\n  pass").final_answer == "a"
        assert "PolicyError" in ex("().__class__.__bases__").error
        assert ex("x = 1").error is None and ex.variable_names() == ["i", "x"]
    finally:
        ex.close()


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii",
        "caf\xe9 cr\xe8me",
        "\u2019quoted\u2019 \u20ac",
        "emoji \U0001f600 \u00e9",
        "x\ud800y",
    ],
    ids=["ascii", "latin1", "ucs2", "ucs4", "surrogate"],
)
def test_context_buffer_handover_gives_a_canonical_string(text: str) -> None:
    """The worker's context equals, hashes and compares like a string built there."""
    ex = ProcessSandbox().start(text * 3, {}, TEST_LIMITS)
    try:
        code = (
            f"built = {text!r} * 3\n"
            "print(context == built, hash(context) == hash(built), {built: 1}.get(context),"
            " context[-1] == built[-1], len(context))"
        )
        out = ex(code)
        assert out.error is None and out.stdout == f"True True 1 True {len(text) * 3}\n"
        ex.set_variable("context", text)
        assert ex(f"print(context == {text!r})").stdout == "True\n"
    finally:
        ex.close()
