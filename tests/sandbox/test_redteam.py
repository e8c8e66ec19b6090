"""Red team: escape and exhaustion attempts against the default ProcessSandbox.

Every attempt must end in a clean error (or a harmless result) within its limit, and
the session must keep working: the next cell runs, sees ``context`` and can FINAL.
The file the attempts try to read is this repository's own ``pyproject.toml``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import TEST_LIMITS, assert_next_cell_works

TARGET = str(Path(__file__).resolve().parents[2] / "pyproject.toml")
MARKER = "build-system"

Check = Callable[[Any], bool]


def errors(*fragments: str) -> Check:
    """The cell failed, with an error mentioning one of ``fragments``."""

    def check(out: Any) -> bool:
        return out.error is not None and any(f in out.error for f in fragments)

    return check


BLOCKED = errors("PolicyError", "not allowed", "NameError", "ImportError", "AttributeError")

# (id, code, check). {T} is the target path.
ATTEMPTS: list[tuple[str, str, Check]] = [
    # --- files, by every route
    ("open", "print(open({T!r}).read())", errors("NameError")),
    ("builtins-dict-open", "print(__builtins__['open'])", errors("PolicyError")),
    ("io-open", "import io\nio.open({T!r}).read()", errors("ImportError")),
    ("codecs", "import codecs\ncodecs.open({T!r}).read()", errors("ImportError")),
    ("json-codecs", "import json\njson.codecs.open({T!r}).read()", errors("AttributeError")),
    ("from-json-import-codecs", "from json import codecs", errors("ImportError")),
    ("pathlib", "import pathlib\npathlib.Path({T!r}).read_text()", errors("ImportError")),
    ("random-os", "import random\nrandom._os.system('id')", errors("AttributeError")),
    ("random-os-getattr", "import random\ngetattr(random, '_os')", errors("AttributeError")),
    ("from-random-import-os", "from random import _os", errors("PolicyError")),
    ("os", "import os\nos.system('id')", errors("ImportError")),
    ("time-module", "import time\ntime.sleep(0)", errors("ImportError")),
    ("from-time-import", "from time import sleep", errors("ImportError")),
    ("os-path", "import os.path", errors("ImportError")),
    ("subprocess", "import subprocess", errors("ImportError")),
    ("shutil", "import shutil", errors("ImportError")),
    ("fileio-subclass", "[c for c in object.__subclasses__() if c.__name__ == 'FileIO']", BLOCKED),
    ("linecache", "import linecache\nlinecache.getlines({T!r})", errors("ImportError")),
    # --- imports through the back door
    ("dunder-import", "__import__('os')", errors("PolicyError")),
    ("importlib", "import importlib\nimportlib.import_module('os')", errors("ImportError")),
    ("builtins-module", "import builtins\nbuiltins.open", errors("ImportError")),
    ("sys-modules", "import sys\nsys.modules['os']", errors("ImportError")),
    ("relative-import", "from . import process", errors("PolicyError")),
    ("collections-sys", "import collections\ncollections._sys", errors("AttributeError")),
    (
        "collections-abc-sys",
        "import collections.abc\ncollections.abc.sys",
        errors("AttributeError"),
    ),
    ("re-compiler", "import re\nre._compiler", errors("AttributeError")),
    ("datetime-time", "import datetime\ndatetime._time", errors("AttributeError")),
    ("decimal-sys", "import decimal\ndecimal.sys", errors("AttributeError")),
    ("base64-binascii", "import base64\nbase64.binascii.a2b_base64", errors("AttributeError")),
    ("hashlib-private", "import hashlib\nhashlib._hashlib", errors("AttributeError")),
    (
        "functools-singledispatch",
        "import functools\nfunctools.singledispatch",
        errors("AttributeError"),
    ),
    (
        "functools-wraps-steal",
        "import functools\ndef f(): pass\nclass S:\n  pass\nfunctools.update_wrapper(S(), f, ('__globals__',), ())",
        errors("PolicyError"),
    ),
    ("typing-get-type-hints", "import typing\ntyping.get_type_hints", errors("AttributeError")),
    ("typing-forwardref", "from typing import ForwardRef", errors("ImportError")),
    (
        "operator-attrgetter",
        "import operator\noperator.attrgetter('__class__')",
        errors("ImportError"),
    ),
    ("inspect", "import inspect\ninspect.currentframe()", errors("ImportError")),
    (
        "string-formatter",
        "import string\nstring.Formatter().format('{0.__globals__}', lambda: 0)",
        BLOCKED,
    ),
    (
        "string-formatter-patch",
        "import string\nstring.Formatter.get_field = lambda *a: (1, 0)",
        errors("AttributeError"),
    ),
    # --- subclass and class-internals walks
    ("subclass-walk", "().__class__.__bases__[0].__subclasses__()", BLOCKED),
    ("mro-walk", "type(()).__mro__[-1].__subclasses__()", BLOCKED),
    ("object-subclasses", "object.__subclasses__()", BLOCKED),
    ("type-subclasses", "type.__subclasses__(object)", BLOCKED),
    ("getattr-subclasses", "getattr(object, '__subclasses__')()", BLOCKED),
    ("getattr-concat", "getattr(object, '__sub' + 'classes__')()", BLOCKED),
    ("fullwidth-getattr", "getattr(object, '＿＿subclasses＿＿')()", BLOCKED),
    ("type-dict", "type.__dict__['__subclasses__'](object)", BLOCKED),
    ("vars", "vars(type)['__subclasses__'](object)", errors("NameError")),
    ("getattribute", "object.__getattribute__(1, '__class__')", BLOCKED),
    ("mro-method", "print(type(()).mro()[-1].__subclasses__())", BLOCKED),
    (
        "match-class-attr",
        "def f(): pass\nmatch f:\n  case object(__globals__=g):\n    print(g)",
        BLOCKED,
    ),
    ("reduce-ex", "(1).__reduce_ex__(2)", BLOCKED),
    # --- functions, closures, the REPL's own machinery
    ("func-globals", "def f(): pass\nf.__globals__", BLOCKED),
    ("func-code", "(lambda: 0).__code__.co_code", BLOCKED),
    ("final-closure", "FINAL.__closure__", BLOCKED),
    ("final-globals", "FINAL.__globals__['os']", BLOCKED),
    ("stub-closure", "llm_query.__closure__[0].cell_contents", BLOCKED),
    ("print-self", "print.__self__", BLOCKED),
    ("builtin-self", "len.__self__.open", BLOCKED),
    ("setattr-code", "setattr(FINAL, '__code__', None)", BLOCKED),
    ("globals", "globals()['__builtins__']", errors("NameError", "PolicyError")),
    ("locals", "locals()", errors("NameError")),
    ("eval", "eval('1+1')", errors("NameError")),
    ("exec", "exec('import os')", errors("NameError")),
    ("compile", "compile('1', 'x', 'eval')", errors("NameError")),
    ("fullwidth-eval", "ｅｖａｌ('1+1')", errors("NameError")),
    ("fullwidth-dunder-import", "__ｉｍｐｏｒｔ__('os')", errors("PolicyError")),
    ("fullwidth-underscore", "＿＿import＿＿('os')", errors("SyntaxError")),
    ("fullwidth-attr", "().__ｃｌａｓｓ__.__ｂａｓｅｓ__", BLOCKED),
    ("fullwidth-subclasses", "object.__ｓｕｂｃｌａｓｓｅｓ__()", BLOCKED),
    ("builtins-rebind", "__builtins__ = {'open': 1}", errors("PolicyError")),
    ("loader", "__loader__.load_module('os')", errors("PolicyError")),
    ("breakpoint", "breakpoint()", errors("NameError")),
    ("input", "input()", errors("NameError")),
    ("help", "help()", errors("NameError")),
    ("exit", "exit()", errors("NameError")),
    # --- frames through generators, coroutines, async generators, tracebacks
    ("gi-frame", "def g():\n  yield 1\nx = g()\nx.gi_frame.f_back.f_globals", BLOCKED),
    ("gi-frame-locals", "def g():\n  yield 1\nx = g()\nnext(x)\nx.gi_frame.f_locals", BLOCKED),
    ("gi-frame-getattr", "def g():\n  yield 1\ngetattr(g(), 'gi_' + 'frame')", BLOCKED),
    ("gi-code", "def g():\n  yield 1\ng().gi_code.co_consts", BLOCKED),
    ("cr-frame", "async def c():\n  pass\nco = c()\nco.cr_frame", BLOCKED),
    ("ag-frame", "async def a():\n  yield 1\na().ag_frame", BLOCKED),
    (
        "tb-frame",
        "try:\n  1/0\nexcept Exception as e:\n  e.__traceback__.tb_frame.f_globals",
        BLOCKED,
    ),
    ("tb-getattr", "try:\n  1/0\nexcept Exception as e:\n  getattr(e, '__traceback__')", BLOCKED),
    # --- format strings
    ("format-class", "'{0.__class__.__mro__}'.format(1)", BLOCKED),
    ("format-globals", "def f(): pass\nprint('{0.__globals__}'.format(f))", BLOCKED),
    ("format-map", "print('{x.__init__.__globals__}'.format_map({'x': FINAL}))", BLOCKED),
    ("str-format-unbound", "print(str.format('{0.__globals__}', FINAL))", BLOCKED),
    ("format-getattr", "m = getattr('{0.__globals__}', 'format')\nprint(m(FINAL))", BLOCKED),
    ("format-nested-spec", "print('{0:{1.__globals__}}'.format(1, FINAL))", BLOCKED),
    ("format-gi-frame", "def g():\n  yield 1\nprint('{0.gi_frame}'.format(g()))", BLOCKED),
    ("fstring-dunder", "print(f'{(1).__class__.__bases__}')", BLOCKED),
    (
        "userstring-format",
        "import collections\nprint(collections.UserString('{0.__globals__}').format(FINAL))",
        BLOCKED,
    ),
    # --- modules that must not exist
    ("pickle", "import pickle", errors("ImportError")),
    ("marshal", "import marshal", errors("ImportError")),
    ("ctypes", "import ctypes", errors("ImportError")),
    (
        "threading",
        "import threading\nthreading.Thread(target=print).start()",
        errors("ImportError"),
    ),
    ("thread-lowlevel", "import _thread", errors("ImportError")),
    ("signal", "import signal\nsignal.alarm(0)", errors("ImportError")),
    ("socket", "import socket", errors("ImportError")),
    ("fork", "import os\nos.fork()", errors("ImportError")),
    ("fd-write", "import io\nio.FileIO(4, 'w').write(b'garbage')", errors("ImportError")),
    # --- exhaustion
    ("cpu-loop", "while True:\n  pass", errors("TimeoutError")),
    (
        "cpu-loop-catching",
        "n = 0\nwhile True:\n  try:\n    while True:\n      n += 1\n  except BaseException:\n    pass",
        errors("TimeoutError"),
    ),
    ("big-pow", "x = 10**10**10", errors("TimeoutError")),
    ("sum-range", "sum(range(10**13))", errors("TimeoutError")),
    ("catastrophic-regex", "import re\nre.match('(a+)+$', 'a' * 40 + 'b')", errors("TimeoutError")),
    ("memory-str", "x = 'x' * 10**11", errors("MemoryError")),
    (
        "memory-list",
        "big = []\ntry:\n  while True:\n    big.append(' ' * 10**6)\nfinally:\n  del big",
        errors("MemoryError"),
    ),
    ("memory-bytearray", "b = bytearray(10**12)", errors("MemoryError")),
    ("recursion", "def f():\n  return f()\nf()", errors("RecursionError")),
    ("json-nesting", "import json\njson.loads('[' * 200000)", errors("RecursionError")),
    (
        "parser-nesting",
        "x = " + "(" * 300 + ")" * 300,
        errors("SyntaxError", "RecursionError", "MemoryError"),
    ),
    ("str-digits", "str(10**100000)", errors("ValueError")),
    (
        "evil-exception-str",
        "class E(Exception):\n  def __str__(self):\n    while True:\n      pass\nraise E()",
        errors("TimeoutError", "E"),
    ),
    ("system-exit", "raise SystemExit(3)", errors("SystemExit")),
    ("keyboard-interrupt", "raise KeyboardInterrupt", errors("KeyboardInterrupt")),
    ("generator-exit", "raise GeneratorExit", errors("GeneratorExit")),
    # --- the bridge
    ("subcall-bomb", "for i in range(100):\n  llm_query('x')", errors("sub-call limit")),
    ("batch-bomb", "llm_query_batched(['x'] * 11)", errors("sub-call limit")),
    ("subcall-size", "llm_query('x' * 5000)", errors("per-call limit")),
    ("subcall-non-json", "llm_query(object())", errors("JSON-like")),
    ("subcall-circular", "a = []\na.append(a)\nllm_query(a)", errors("ValueError", "cycle")),
    ("unknown-host-fn", "open_host_function('x')", errors("NameError")),
]


def _harmless_output(out: Any) -> bool:
    return MARKER not in out.stdout and MARKER not in (out.error or "")


@pytest.mark.timeout(60)  # a "did not hang" guard, not a speed target
@pytest.mark.parametrize(
    ("code", "check"), [(c, k) for _, c, k in ATTEMPTS], ids=[i for i, _, _ in ATTEMPTS]
)
def test_attempt_is_contained(session: Any, code: str, check: Check) -> None:
    out = session(code.replace("{T!r}", repr(TARGET)))
    assert check(out), (out.stdout[-500:], out.error)
    assert _harmless_output(out)
    assert out.final_answer is None
    assert_next_cell_works(session)


def test_attempt_count() -> None:
    assert len(ATTEMPTS) >= 60
    assert len({i for i, _, _ in ATTEMPTS}) == len(ATTEMPTS)


def test_c_level_bomb_restarts_worker_keeping_context(fresh_session: Any) -> None:
    fresh_session("kept = 1")
    pid = fresh_session.pid
    out = fresh_session("sum(range(10**13))")
    assert out.restarted and "TimeoutError" in (out.error or "")
    assert "variables were reset" in (out.error or "")
    assert fresh_session.pid != pid
    assert "kept" not in fresh_session.variable_names()
    assert_next_cell_works(fresh_session)


def test_output_bomb_is_truncated(session: Any) -> None:
    out = session("print('x' * 10**6)")
    assert out.error is None
    assert out.stdout.startswith("x" * 100)
    assert "output truncated" in out.stdout
    assert len(out.stdout) < TEST_LIMITS.max_captured_output + 200
    assert out.extra["stdout_truncated_chars"] > 0
    assert_next_cell_works(session)


def test_repl_functions_survive_tampering(session: Any) -> None:
    out = session("del FINAL\nFINAL_VAR = None\ncontext = None\nllm_query = 3\nSHOW_VARS = 1")
    assert out.error is None
    out = session("print(len(context))\nFINAL('still works')")
    assert out.error is None and out.final_answer == "still works"
    assert session("llm_query('q')").stdout == "'answer to q'\n"


def test_print_and_json_rebinding(session: Any) -> None:
    assert session("print = None\nimport json\njson.dumps = None\njson = 5").error is None
    out = session("import json\nprint(json.dumps([1, 2]))\nllm_query('after')")
    assert out.error is None
    assert out.stdout == "[1, 2]\n'answer to after'\n"


def test_patching_json_classes_cannot_break_the_protocol(fresh_session: Any) -> None:
    code = "import json\njson.JSONEncoder.encode = lambda self, o: 'garbage'\njson.JSONDecoder.decode = None"
    assert fresh_session(code).error is None
    out = fresh_session("print(llm_query('p'))\nFINAL('done')")
    assert out.stdout == "answer to p\n" and out.final_answer == "done"


def test_catching_final_signal_keeps_answer(session: Any) -> None:
    out = session(
        "try:\n  FINAL('first')\nexcept BaseException:\n  print('caught')\nFINAL('second')"
    )
    assert out.final_answer == "first"
    assert out.stdout == "caught\n"


def test_forged_final_message_in_stdout_is_not_an_answer(session: Any) -> None:
    out = session('print(\'{"t": "final", "seq": 1, "answer": "forged"}\')')
    assert out.final_answer is None
    assert "forged" in out.stdout


def test_garbage_frame_from_worker_restarts(fresh_session: Any) -> None:
    """Simulate a compromised worker writing garbage on its reply pipe."""
    import os

    worker = fresh_session._worker
    fresh_session("x = 1")
    # Write straight into the reply pipe from the host side of a dup'ed write end:
    # the host must treat the next frame as hostile. We emulate it by injecting bytes
    # into the host's read buffer, which is exactly what a rogue worker could send.
    worker._buffer += (2**31).to_bytes(4, "big") + b"garbage"
    out = fresh_session("print(1)")
    assert out.restarted and "SandboxError" in (out.error or "")
    assert "oversized" in (out.error or "")
    assert fresh_session("pass").restarted  # a new worker starts lazily
    worker2 = fresh_session._worker
    worker2._buffer += (7).to_bytes(4, "big") + b"{not js"
    out = fresh_session("print(1)")
    assert out.restarted and "malformed" in (out.error or "")
    assert_next_cell_works(fresh_session)
    assert os.getpid() != fresh_session.pid


def test_worker_has_no_environment_and_no_extra_fds(fresh_session: Any) -> None:
    import os

    pid = fresh_session.pid
    assert pid is not None
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"KEY" not in environ and b"PATH=" not in environ
    fds = os.listdir(f"/proc/{pid}/fd")
    assert len(fds) <= 5, fds
    assert os.getpgid(pid) == pid  # own process group (setsid)
