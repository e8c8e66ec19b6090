"""Red team v2 (issue 10): the classes of attack a fresh red team found after #3.

Timer re-entry and bridge-serialisation callbacks, blocking writes, MRO / super /
match routes to the real builtins, unpaired surrogates, deep nesting, confinement
spoofing, hangs between turns. Every attempt must end within its limit, with the host
alive, the next cell working and no process left behind. Deadlines in these tests are
"did not hang" guards (pytest-timeout), never speed assertions.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

from langchain_rlm.sandbox import ProcessSandbox, SandboxLimits
from langchain_rlm.sandbox import process as process_module

from .conftest import (
    CONTEXT,
    TEST_LIMITS,
    alive,
    assert_next_cell_works,
    descendants,
    host_functions,
)

Check = Callable[[Any], bool]


def errors(*fragments: str) -> Check:
    def check(out: Any) -> bool:
        return out.error is not None and any(f in out.error for f in fragments)

    return check


def prints(expected: str) -> Check:
    def check(out: Any) -> bool:
        return out.error is None and out.stdout == expected

    return check


def clean_and(check: Check) -> Check:
    """``check`` holds and every text field can be UTF-8 encoded (no lone surrogates)."""

    def both(out: Any) -> bool:
        for text in (out.stdout, out.error or "", out.final_answer or ""):
            text.encode("utf-8")
        json.dumps(out.extra).encode("utf-8")
        return check(out)

    return both


POLICY = errors("PolicyError")
EVIL_META = "class M(type):\n    def __instancecheck__(cls, obj):\n        return True\n"

# (id, code, check)
NEW_ATTEMPTS: list[tuple[str, str, Check]] = [
    # --- bridge serialisation callbacks: no model method runs while a call is in flight
    (
        "dict-subclass-items-reenters",
        "class D(dict):\n    def items(self):\n        llm_query('inner')\n        return super().items()\n"
        "    def keys(self):\n        llm_query('inner')\n        return super().keys()\n"
        "    def __iter__(self):\n        llm_query('inner')\n        return super().__iter__()\n"
        "print(echo(D(a='x')))",
        prints("{'args': [{'a': 'x'}], 'kwargs': {}}\n"),
    ),
    (
        "str-subclass-hash-len-del",
        "class S(str):\n    def __hash__(self):\n        return llm_query('h') and 1\n"
        "    def __len__(self):\n        llm_query('len')\n        return 1\n"
        "    def __del__(self):\n        llm_query('del')\n"
        "print(echo(S('v'), k=S('w')))",
        prints("{'args': ['v'], 'kwargs': {'k': 'w'}}\n"),
    ),
    (
        "str-subclass-as-dict-key",
        "class S(str):\n    def __eq__(self, o):\n        llm_query('eq')\n        return True\n"
        "    __hash__ = str.__hash__\n"
        "print(echo({S('k'): 1}))",
        prints("{'args': [{'k': 1}], 'kwargs': {}}\n"),
    ),
    (
        "list-subclass-iter",
        "class L(list):\n    def __iter__(self):\n        llm_query('iter')\n        return iter([666])\n"
        "    def __len__(self):\n        return 99\n"
        "print(echo(L([1, 2])))",
        prints("{'args': [[1, 2]], 'kwargs': {}}\n"),
    ),
    (
        "int-float-subclass-repr",
        "class I(int):\n    def __repr__(self):\n        llm_query('r')\n        return '7'\n"
        "    def __index__(self):\n        llm_query('i')\n        return 7\n"
        "class F(float):\n    def __repr__(self):\n        llm_query('r')\n        return '7'\n"
        "print(echo(I(3), F(0.5)))",
        prints("{'args': [3, 0.5], 'kwargs': {}}\n"),
    ),
    (
        "tuple-subclass-becomes-list",
        "from collections import namedtuple\nP = namedtuple('P', 'x y')\nprint(echo(P(1, 'b')))",
        prints("{'args': [[1, 'b']], 'kwargs': {}}\n"),
    ),
    (
        "del-during-bridge-gc",
        "class K:\n    def __del__(self):\n        llm_query('from del')\n"
        "for _ in range(3):\n    k = K()\n    k.me = k\ndel k\n"
        "out = [echo('x' * 10) for _ in range(5)]\nprint(len(out))",
        prints("5\n"),
    ),
    ("object-arg-refused", "echo(object())", errors("TypeError", "JSON-like")),
    ("set-arg-refused", "echo({1, 2})", errors("JSON-like")),
    ("bytes-arg-refused", "echo(b'x')", errors("JSON-like")),
    ("object-key-refused", "echo({(1, 2): 'v'})", errors("dict keys")),
    (
        "metaclass-name-property-refused",
        "class M(type):\n    @property\n    def __name__(cls):\n        llm_query('name')\n        return 'x'\n"
        "class C(metaclass=M):\n    pass\necho(C())",
        errors("JSON-like"),
    ),
    # --- size limits at any depth
    (
        "deep-22-3mb",
        "x = 'a' * 3_000_000\nfor _ in range(22):\n    x = [x]\nllm_query(x)",
        errors("per-call limit", "too large"),
    ),
    (
        "deep-dict-22",
        "x = {'k': 'a' * 5000}\nfor _ in range(22):\n    x = {'k': x}\nrecursive_lm('q', x)",
        errors("per-call limit"),
    ),
    (
        "deep-150",
        "x = 'a'\nfor _ in range(150):\n    x = [x]\necho(x)",
        errors("nested more than"),
    ),
    ("cycle", "a = {}\na['a'] = a\necho(a)", errors("nested more than")),
    (
        "dag-bomb",
        "a = ['x'] * 1000\nb = [a] * 1000\nc = [b] * 1000\necho(c)",
        errors("too large", "TimeoutError", "MemoryError"),
    ),
    (
        "batched-deep-item",
        "x = 'y' * 2000\nfor _ in range(30):\n    x = [x]\nllm_query_batched(['a', x])",
        errors("per-call limit"),
    ),
    # --- unpaired surrogates never leave the sandbox
    ("print-surrogate", "print('x\\ud800y')", clean_and(prints("x\ufffdy\n"))),
    ("chr-surrogate", "print(chr(0xD800) + 'z', end='')", clean_and(prints("\ufffdz"))),
    ("error-surrogate", "raise ValueError('bad \\udc80')", clean_and(errors("bad \ufffd"))),
    (
        "host-arg-surrogate",
        "print(echo('a\\ud800', k={'\\udc00': ['\\ud83d']}))",
        clean_and(prints("{'args': ['a\ufffd'], 'kwargs': {'k': {'\ufffd': ['\ufffd']}}}\n")),
    ),
    (
        "surrogate-pair-halves",
        "print('\\ud83d' + '\\ude00')",
        clean_and(prints("\ufffd\ufffd\n")),
    ),
    # --- MRO / super / match routes to the real builtins
    ("formatter-mro", "import string\nstring.Formatter.mro()[1]", POLICY),
    ("type-mro", "import string\ntype.mro(string.Formatter)", POLICY),
    ("getattr-mro", "import string\ngetattr(string.Formatter, 'mro')()", POLICY),
    ("format-mro", "import string\nprint('{0.mro}'.format(string.Formatter))", POLICY),
    (
        "formatter-get-field",
        "import string\nstring.Formatter().get_field('0.__globals__', [FINAL], {})",
        POLICY,
    ),
    (
        "formatter-vformat",
        "import string\nstring.Formatter().vformat('{0.__globals__}', [FINAL], {})",
        POLICY,
    ),
    (
        "two-arg-super-formatter",
        "import string\nf = string.Formatter()\nsuper(string.Formatter, f).get_field('0.__globals__', [FINAL], {})",
        POLICY,
    ),
    (
        "super-via-model-subclass",
        "import string\nclass X(string.Formatter):\n    pass\n"
        "super(X, X()).get_field('0.__globals__', [FINAL], {})",
        POLICY,
    ),
    (
        "super-on-typing-stub",
        "import typing\nsuper(type(typing.Any), typing.Any).__setattr__('name', 1)",
        POLICY,
    ),
    (
        "one-arg-super",
        "import string\nsuper(string.Formatter)",
        POLICY,
    ),
    (
        "match-positional-dunder",
        EVIL_META + "class C(metaclass=M):\n    __match_args__ = ('__globals__',)\n"
        "match FINAL:\n    case C(g):\n        print(g['__builtins__'])",
        POLICY,
    ),
    (
        "match-positional-type-call",
        EVIL_META + "C = M('C', (), {'__match_args__': ('__builtins__',)})\n"
        "match FINAL:\n    case C(b):\n        print(b)",
        POLICY,
    ),
    (
        "match-nested-in-sequence",
        EVIL_META + "class C(metaclass=M):\n    __match_args__ = ('gi_frame',)\n"
        "def g():\n    yield 1\nmatch [g()]:\n    case [C(f)]:\n        print(f)",
        POLICY,
    ),
    (
        "match-args-toctou-property",
        "class M(type):\n    n = 0\n    @property\n    def __match_args__(cls):\n"
        "        M.n += 1\n        return ('x',) if M.n == 1 else ('__globals__',)\n"
        "    def __instancecheck__(cls, obj):\n        return True\n"
        "class C(metaclass=M):\n    pass\n"
        "match FINAL:\n    case C(g):\n        print('leak', g)\n    case _:\n        print('no match')",
        prints("no match\n"),
    ),
    (
        "match-args-not-tuple",
        EVIL_META + "class C(metaclass=M):\n    __match_args__ = ['__globals__']\n"
        "match FINAL:\n    case C(g):\n        print(g)",
        errors("TypeError"),
    ),
    (
        "final-builtins-through-format",
        "print('{0.__builtins__}'.format(FINAL))",
        POLICY,
    ),
    # --- FINAL cannot be spoofed or broken
    ("final-surrogate", "FINAL('\\udfff')", lambda out: out.final_answer == "\ufffd"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("code", "check"),
    [(c, k) for _, c, k in NEW_ATTEMPTS],
    ids=[i for i, _, _ in NEW_ATTEMPTS],
)
def test_new_attempt_is_contained(session: Any, code: str, check: Check) -> None:
    out = session(code)
    assert check(out), (out.stdout[-500:], out.error, out.final_answer)
    pid = session.pid
    if pid is None:  # a hard limit stopped the worker: the next cell starts one
        session("pass")
        pid = session.pid
    assert pid is not None and descendants(pid) == []
    assert_next_cell_works(session)


def test_new_attempt_count() -> None:
    assert len(NEW_ATTEMPTS) >= 30
    assert len({i for i, _, _ in NEW_ATTEMPTS}) == len(NEW_ATTEMPTS)


def test_callbacks_never_reach_the_host() -> None:
    """The re-entrant methods above never ran: the host saw only the outer calls."""
    calls: list[Any] = []
    ex = ProcessSandbox().start(CONTEXT, host_functions(calls), TEST_LIMITS)
    try:
        for ident, code, _check in NEW_ATTEMPTS[:7]:
            out = ex(code)
            assert out.error is None, (ident, out.error)
        reentered = [c for c in calls if c[0] != "echo" and c[1] not in ("del", "from del")]
        assert reentered == []  # only __del__ calls, made in model context after the call
    finally:
        ex.close()


# --------------------------------------------------------------------------- deadlines


@pytest.mark.timeout(60)
def test_worker_that_does_not_drain_a_large_reply_is_killed() -> None:
    """Blocking write: the host's >64 KiB reply to a worker that stopped reading."""
    holder: dict[str, Any] = {}

    def big() -> str:
        os.kill(holder["ex"].pid, signal.SIGSTOP)  # the worker stops reading its pipe
        return "z" * 8_000_000

    limits = SandboxLimits(cell_timeout=1.0, memory_mb=256)
    ex = ProcessSandbox(grace_seconds=0.5).start("ctx", {"big": big}, limits)
    holder["ex"] = ex
    try:
        old = ex.pid
        out = ex("len(big())")
        assert out.restarted and out.error is not None and "TimeoutError" in out.error
        assert "variables were reset" in out.error
        assert old is not None and not alive(old)
        assert ex("len(context)").stdout == "3\n"
    finally:
        ex.close()


@pytest.mark.timeout(60)
def test_timer_firing_inside_a_bridge_call_is_fatal_to_the_channel() -> None:
    """SIGALRM while a call is in flight: the worker ends, the model is told."""
    holder: dict[str, Any] = {}
    hit = threading.Event()

    def poke() -> str:
        os.kill(holder["ex"].pid, signal.SIGALRM)
        hit.set()
        return "r" * 200_000

    ex = ProcessSandbox().start("ctx", {"poke": poke}, TEST_LIMITS)
    holder["ex"] = ex
    try:
        ex("kept = 1")
        out = ex("x = poke()\nprint('not reached?', len(x))")
        assert hit.is_set()
        assert out.restarted and out.error is not None
        assert "broke off a sub-call exchange" in out.error
        assert "kept" not in ex.variable_names()
        assert_next_cell_works_ctx(ex)
    finally:
        ex.close()


def assert_next_cell_works_ctx(ex: Any) -> None:
    out = ex("FINAL(len(context))")
    assert out.error is None and out.final_answer == "3", out


@pytest.mark.timeout(60)
def test_stuck_worker_between_turns_does_not_block_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The multi-turn hang: a worker that stopped answering after a cell."""
    monkeypatch.setattr(process_module, "CONTROL_TIMEOUT", 0.5)
    ex = ProcessSandbox(grace_seconds=0.5).start(
        "ctx", {}, SandboxLimits(cell_timeout=1.0, memory_mb=256)
    )
    try:
        ex("a = 1")
        pid = ex.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(RuntimeError, match="could not set"):
            ex.set_variable("b", "x" * 5_000_000)  # bigger than the pipe: the write blocks
        assert ex.pid is None  # killed, not restarted yet
        ex("pass")
        pid = ex.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        assert ex.get_variable("a") is None
        ex("pass")
        os.kill(ex.pid, signal.SIGSTOP)
        assert ex.variable_names() == []
        ex.set_variable("context", "new context")  # stored; the next start streams it
        assert ex("print(context)").stdout == "new context\n"
    finally:
        ex.close()


@pytest.mark.timeout(60)
def test_call_timeout_soft_stop_keeps_variables(session: Any) -> None:
    session("kept_v2 = 5")
    out = session("while True:\n    pass", timeout=0.5)
    assert out.error is not None and "TimeoutError" in out.error
    assert out.extra["limit"] == "cell_timeout" and not out.restarted
    assert session("kept_v2").stdout == "5\n"


@pytest.mark.timeout(60)
def test_call_timeout_hard_stop_in_c_code() -> None:
    ex = ProcessSandbox(grace_seconds=0.5).start(
        "ctx", {}, SandboxLimits(cell_timeout=60.0, memory_mb=256)
    )
    try:
        out = ex("sum(range(10**13))", timeout=0.5)
        assert out.restarted and out.extra["limit"] == "timeout"
        assert "run's time limit" in (out.error or "")
        assert ex("1 + 1").stdout == "2\n"
    finally:
        ex.close()


@pytest.mark.timeout(60)
def test_call_timeout_counts_host_function_time() -> None:
    """The run's budget includes sub-calls (the cell timeout does not)."""
    release = threading.Event()

    def slow() -> str:
        release.wait(0.4)
        return "s"

    ex = ProcessSandbox(grace_seconds=0.2).start(
        "", {"slow": slow}, SandboxLimits(cell_timeout=60.0, memory_mb=256)
    )
    try:
        out = ex("for _ in range(50):\n    slow()", timeout=1.0)
        assert out.extra["limit"] == "timeout" and out.restarted
        assert 0 < out.extra["subcalls"] < 50
    finally:
        ex.close()


def test_call_with_no_time_left_does_not_run(session: Any) -> None:
    out = session("print('ran')", timeout=0)
    assert out.stdout == "" and out.extra["limit"] == "timeout"


# --------------------------------------------------------------------------- close


def _run_in_thread(ex: Any, code: str) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``code`` in another thread; what it raised lands in the returned list."""
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            ex(code)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.timeout(60)
def test_close_while_cell_runs_kills_at_once_and_starts_nothing() -> None:
    from langchain_rlm.sandbox import SandboxClosedError

    started = threading.Event()

    def ready() -> None:
        started.set()

    ex = ProcessSandbox().start(
        "ctx", {"ready": ready}, SandboxLimits(cell_timeout=60.0, memory_mb=256)
    )
    pid = ex.pid
    assert pid is not None
    thread, outcome = _run_in_thread(ex, "ready()\nwhile True:\n    pass")
    assert started.wait(30)
    ex.close()
    thread.join(30)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], SandboxClosedError)
    assert not alive(pid)
    assert ex.pid is None
    with pytest.raises(SandboxClosedError):
        ex("1")
    with pytest.raises(SandboxClosedError):
        ex.variable_names()
    assert ex.pid is None


@pytest.mark.timeout(60)
def test_close_while_host_function_blocks_kills_worker_first() -> None:
    from langchain_rlm.sandbox import SandboxClosedError

    entered = threading.Event()
    release = threading.Event()

    def block() -> str:
        entered.set()
        release.wait(30)
        return "late"

    ex = ProcessSandbox().start("ctx", {"block": block}, TEST_LIMITS)
    pid = ex.pid
    assert pid is not None
    thread, outcome = _run_in_thread(ex, "block()")
    assert entered.wait(30)
    ex.close()  # returns although the host function still blocks
    assert not alive(pid)
    release.set()
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], SandboxClosedError)
    assert ex.pid is None


# --------------------------------------------------------------------------- spoofing


def test_worker_cannot_overwrite_confinement_record(fresh_session: Any) -> None:
    fresh_session("pass")
    worker = fresh_session._worker
    forged = {
        "t": "done",
        "seq": fresh_session._seq + 1,
        "stdout": "",
        "error": None,
        "extra": {"confinement": "FULLY CONFINED", "subcalls": 0, "limit": "x"},
    }
    payload = json.dumps(forged).encode()
    worker._buffer += len(payload).to_bytes(4, "big") + payload
    out = fresh_session("print('real')")
    assert out.extra["confinement"] == fresh_session.confinement["summary"]
    assert "FULLY CONFINED" not in json.dumps(out.extra)
    # the real "done" frame is now stale: the next cell sees it out of sequence
    out = fresh_session("print(1)")
    assert out.extra["confinement"] == fresh_session.confinement["summary"]
    assert_next_cell_works(fresh_session)


def test_confinement_is_a_host_string_on_every_output(session: Any) -> None:
    out = session("pass")
    assert isinstance(out.extra["confinement"], str)
    assert out.extra["confinement"] == session.confinement["summary"]
    assert "seccomp" in out.extra["confinement"]
