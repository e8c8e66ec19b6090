"""The REPL core shared by the local sandbox and the process sandbox's worker.

:class:`ReplCore` owns one namespace and runs cells in it, REPL-style:

* the cell is vetted by :func:`policy.check_code`, then every statement runs; when the
  last statement is an expression its ``repr`` is printed (like Jupyter) unless it is
  ``None``;
* ``print`` writes into a capture capped at ``limits.max_captured_output`` characters
  (the head is kept, followed by a truncation marker);
* errors come back as ``"ExcType: message"`` followed by a short traceback that only
  shows lines of the model's own cells (never the sandbox's internals);
* **every cell re-injects** the REPL names (``context``, ``FINAL``, ``FINAL_VAR``,
  ``SHOW_VARS``), the host-function stubs, ``__builtins__`` and ``__name__``, and
  drops a namespace binding that shadows ``print``. Model code that deletes or rebinds
  them only affects the rest of that one cell.

``FINAL(answer)`` records ``str(answer)`` through the ``on_final`` callback *before*
raising :class:`FinalSignal` (a ``BaseException``), so an ``except BaseException`` in
model code cannot undo it. ``FINAL_VAR(name)``: a ``str`` naming a variable gives
``str(value)``; any non-``str`` argument gives ``str(argument)`` (models write
``FINAL_VAR(result)``); a ``str`` naming no variable raises ``NameError`` listing the
variables and sets nothing.

How a host function is reached (direct call or RPC) and how the cell timer works are
injected by the sandbox (``call_host`` and a :class:`CellTimer`), so the core has no
I/O of its own and imports nothing the worker would not import anyway. ``call_host``
pauses the timer itself (the process worker only after it converted the arguments).

Every function the core hands to model code (``print``, ``FINAL``, ``FINAL_VAR``,
``SHOW_VARS``, the host-function stubs) is rebuilt over the policy's scrubbed globals
(:func:`policy.expose`): their ``__globals__`` hold no ``builtins`` or ``sys``.

:func:`clean_text` / :func:`clean_value` replace unpaired surrogates by U+FFFD; the
sandboxes apply them to everything that leaves a session (stdout, errors, answers,
host-call arguments, variable values), so no prompt, checkpoint or trace gets a string
that cannot be encoded.
"""

from __future__ import annotations

import ast
import re
import types
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .names import REPL_FUNCTION_NAMES
from .policy import PolicyError, check_code, expose, make_safe_builtins

if TYPE_CHECKING:  # the worker imports this module without dataclasses (see .names)
    from .base import SandboxLimits

__all__ = [
    "NO_TIME_LEFT_ERROR",
    "CellResult",
    "CellTimeout",
    "CellTimer",
    "FinalSignal",
    "OutputCapture",
    "ReplCore",
    "SubcallBudget",
    "SubcallError",
    "clean_text",
    "clean_value",
    "format_exception",
]

TRUNCATION_MARKER = "\n... [output truncated: {dropped} more characters not shown]"
MAX_TRACEBACK_LINES = 8
MAX_ERROR_MESSAGE_CHARS = 2_000
SHOW_VARS_PREVIEW_CHARS = 60
MAX_SIZE_WALK_ITEMS = 1_000_000
"""Items (containers and scalars) one size check visits before it refuses the call."""
FLOAT_CHARS = 24
NO_TIME_LEFT_ERROR = "TimeoutError: no time is left in the run's budget; the cell did not run."
"""What a call with ``timeout <= 0`` returns (it does not run the cell)."""
REPLACEMENT_CHARACTER = "\ufffd"
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with every unpaired surrogate replaced by U+FFFD (a plain ``str``)."""
    text = str.__str__(text) if type(text) is not str else text
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub(REPLACEMENT_CHARACTER, text)
    return text


def clean_value(value: Any) -> Any:
    """A copy of a JSON-like value with :func:`clean_text` applied to every string.

    Iterative (no recursion limit); containers that hold no dirty string come back as
    they are.
    """
    if isinstance(value, str):
        return clean_text(value)
    if not isinstance(value, list | dict):
        return value
    root: list[Any] = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        parent, key = stack.pop()
        item = parent[key]
        if isinstance(item, str):
            cleaned = clean_text(item)
            if cleaned is not item:
                parent[key] = cleaned
        elif isinstance(item, list):
            copy = list(item)
            parent[key] = copy
            stack.extend((copy, index) for index in range(len(copy)))
        elif isinstance(item, dict):
            copy_dict = {clean_text(k) if isinstance(k, str) else k: v for k, v in item.items()}
            parent[key] = copy_dict
            stack.extend((copy_dict, k) for k in copy_dict)
    return root[0]


class FinalSignal(BaseException):
    """Stops a cell after ``FINAL`` / ``FINAL_VAR`` recorded the answer."""


class CellTimeout(BaseException):
    """Raised inside model code when the cell's (soft) time limit is reached."""


class SubcallError(RuntimeError):
    """A host function refused or failed; raised in model code with a clean message."""


class CellTimer:
    """Soft per-cell timer hooks; the default does nothing (no timeout)."""

    def start(self, seconds: float) -> None:
        """Arm the timer for one cell."""

    def stop(self) -> None:
        """Disarm the timer at the end of the cell."""

    def pause(self) -> None:
        """Stop counting (host-function calls are not cell time)."""

    def resume(self) -> None:
        """Count again after :meth:`pause`."""


class CellResult:
    """What :meth:`ReplCore.run_cell` produced (a plain class: see :mod:`.names`)."""

    __slots__ = ("error", "extra", "final_answer", "stdout")

    def __init__(
        self,
        stdout: str = "",
        error: str | None = None,
        final_answer: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.stdout = stdout
        self.error = error
        self.final_answer = final_answer
        self.extra: dict[str, Any] = {} if extra is None else extra

    def _fields(self) -> tuple[Any, ...]:
        return (self.stdout, self.error, self.final_answer, self.extra)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CellResult):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaced

    def __repr__(self) -> str:
        return (
            f"CellResult(stdout={self.stdout!r}, error={self.error!r}, "
            f"final_answer={self.final_answer!r}, extra={self.extra!r})"
        )


class OutputCapture:
    """Collects printed text up to ``limit`` characters, then counts what it drops."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self._parts: list[str] = []
        self._size = 0
        self.dropped = 0

    def write(self, text: str) -> None:
        room = self.limit - self._size
        if room >= len(text):
            self._parts.append(text)
            self._size += len(text)
            return
        if room > 0:
            self._parts.append(text[:room])
            self._size += room
        self.dropped += len(text) - max(room, 0)

    def getvalue(self) -> str:
        text = "".join(self._parts)
        if self.dropped:
            text += TRUNCATION_MARKER.format(dropped=self.dropped)
        return text


def _chars(value: Any, limit: int) -> int:
    """Characters in a JSON-like value at any nesting depth (iterative walk).

    Stops counting once ``limit`` is passed (the caller refuses the call anyway) and
    refuses values with more than :data:`MAX_SIZE_WALK_ITEMS` items (a cycle, a bomb).
    """
    total = 0
    visited = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        visited += 1
        if visited > MAX_SIZE_WALK_ITEMS:
            raise SubcallError(
                f"the arguments hold more than {MAX_SIZE_WALK_ITEMS} items (or a cycle); "
                "send smaller pieces"
            )
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, bool) or item is None:
            total += 4
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, float):
            total += FLOAT_CHARS
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        if total > limit:
            return total
    return total


def _batch_items(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[Any] | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, list | tuple):
            return list(value)
    return None


class SubcallBudget:
    """Per-cell sub-call accounting: counts calls (batch items one by one) and sizes."""

    def __init__(self, limits: SandboxLimits) -> None:
        self.limits = limits
        self.used = 0

    def reset(self) -> None:
        self.used = 0

    def charge(self, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
        """Account for one host call; raise :class:`SubcallError` when it breaks a limit."""
        items = _batch_items(args, kwargs) if name.endswith("_batched") else None
        limit = self.limits.max_subcall_chars
        sizes = (
            [_chars(item, limit) for item in items]
            if items is not None
            else [_chars([args, kwargs], limit)]
        )
        count = len(sizes)
        maximum = self.limits.max_subcalls_per_cell
        if self.used + count > maximum:
            raise SubcallError(
                f"{name}: sub-call limit reached: this cell may make at most {maximum} "
                f"sub-calls (each prompt of a batch counts) and already made {self.used}; "
                f"this call needs {count}. Do more work per call or continue in the next cell."
            )
        biggest = max(sizes, default=0)
        if biggest > self.limits.max_subcall_chars:
            raise SubcallError(
                f"{name}: a prompt of {biggest} characters exceeds the per-call limit of "
                f"{self.limits.max_subcall_chars} characters; split it into smaller pieces."
            )
        self.used += count
        return count


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except BaseException as exc:  # model-defined __str__ may do anything
        if isinstance(exc, KeyboardInterrupt):
            raise
        return f"<str() failed: {type(exc).__name__}>"


def format_exception(exc: BaseException, sources: Mapping[str, list[str]]) -> str:
    """``"ExcType: message"`` plus the traceback lines that belong to model cells."""
    if isinstance(exc, SyntaxError) and not isinstance(exc, PolicyError):
        where = f" (line {exc.lineno})" if exc.lineno else ""
        head = f"{type(exc).__name__}: {exc.msg}{where}"
        if exc.text:
            head += f"\n    {exc.text.strip()}"
        return head
    message = _safe_str(exc)
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS] + "..."
    head = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    lines: list[str] = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        cell_lines = sources.get(code.co_filename)
        if cell_lines is not None:
            lineno = tb.tb_lineno
            text = cell_lines[lineno - 1].strip() if 0 < lineno <= len(cell_lines) else ""
            lines.append(f"  {code.co_filename}, line {lineno}, in {code.co_name}: {text}")
        tb = tb.tb_next
    if not lines:
        return head
    if len(lines) > MAX_TRACEBACK_LINES:
        half = MAX_TRACEBACK_LINES // 2
        lines = [*lines[:half], "  ...", *lines[-half:]]
    return head + "\nTraceback (model code only, most recent call last):\n" + "\n".join(lines)


def _describe(value: Any) -> str:
    kind = type(value).__name__
    try:
        size = f", len={len(value)}"
    except Exception:
        size = ""
    preview = _safe_str(value) if isinstance(value, int | float | bool) else ""
    return f"{kind}{size}" + (f" = {preview[:SHOW_VARS_PREVIEW_CHARS]}" if preview else "")


class ReplCore:
    """One REPL namespace over a context, with FINAL / FINAL_VAR / SHOW_VARS."""

    def __init__(
        self,
        context: Any,
        host_functions: Iterable[str],
        call_host: Callable[[str, tuple[Any, ...], dict[str, Any]], Any],
        limits: SandboxLimits,
        on_final: Callable[[str], None],
        timer: CellTimer | None = None,
        propagate: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.limits = limits
        self.context = context
        self._call_host = call_host
        self._on_final = on_final
        self.timer = timer or CellTimer()
        self._propagate = propagate
        self._capture = OutputCapture(limits.max_captured_output)
        self._final: str | None = None
        self._cell_count = 0
        self.sources: dict[str, list[str]] = {}
        self.builtins = make_safe_builtins(self._make_print())
        self.host_names = tuple(host_functions)
        self._injected: dict[str, Any] = {
            "FINAL": self._make_final(),
            "FINAL_VAR": self._make_final_var(),
            "SHOW_VARS": self._make_show_vars(),
        }
        for name in self.host_names:
            self._injected[name] = self._make_stub(name)
        self.reserved = frozenset({*REPL_FUNCTION_NAMES, *self.host_names})
        self.namespace: dict[str, Any] = {}
        self._reinject()

    # ----------------------------------------------------------------- REPL functions

    def _make_print(self) -> Callable[..., None]:
        core = self

        def print(
            *args: Any, sep: Any = " ", end: Any = "\n", file: Any = None, flush: Any = False
        ) -> None:
            """Print into the cell's captured output (or into ``file.write``)."""
            if sep is not None and not isinstance(sep, str):
                raise TypeError(f"sep must be None or a string, not {type(sep).__name__}")
            if end is not None and not isinstance(end, str):
                raise TypeError(f"end must be None or a string, not {type(end).__name__}")
            sep = " " if sep is None else sep
            end = "\n" if end is None else end
            if file is not None:
                file.write(sep.join([str(arg) for arg in args]) + end)
                return
            capture = core._capture
            for index, arg in enumerate(args):
                if index:
                    capture.write(sep)
                capture.write(str(arg))
            capture.write(end)

        return expose(print)

    def _print(self, *args: Any, **kwargs: Any) -> None:
        self.builtins["print"](*args, **kwargs)

    def _record_final(self, text: str) -> None:
        if self._final is None:
            self._final = text
            self.timer.pause()
            try:
                self._on_final(text)
            finally:
                self.timer.resume()
        raise FinalSignal

    def _make_final(self) -> Callable[..., None]:
        record = self._record_final

        def FINAL(answer: Any = "") -> None:
            """Finish the run with ``str(answer)``."""
            record(str(answer))

        return expose(FINAL)

    def _make_final_var(self) -> Callable[..., None]:
        core = self

        def FINAL_VAR(name: Any) -> None:
            """Finish the run with ``str()`` of the variable called ``name``."""
            if not isinstance(name, str):
                core._record_final(str(name))
            key = name.strip()
            if key not in core.namespace or key.startswith("__"):
                available = ", ".join(core.variable_names()) or "(none)"
                raise NameError(
                    f"FINAL_VAR: no variable named {key!r}; available variables: {available}"
                )
            core._record_final(str(core.namespace[key]))

        return expose(FINAL_VAR)

    def _make_show_vars(self) -> Callable[[], None]:
        core = self
        describe = _describe

        def SHOW_VARS() -> None:
            """Print the variables defined so far with their types and sizes."""
            names = core.variable_names()
            if not names:
                core._print("No variables defined yet.")
            for name in names:
                core._print(f"{name}: {describe(core.namespace[name])}")

        return expose(SHOW_VARS)

    def _make_stub(self, name: str) -> Callable[..., Any]:
        call_host = self._call_host

        def stub(*args: Any, **kwargs: Any) -> Any:
            return call_host(name, args, kwargs)

        stub.__name__ = stub.__qualname__ = name
        return expose(stub)

    # ----------------------------------------------------------------- namespace

    def _reinject(self) -> None:
        ns = self.namespace
        ns["__builtins__"] = self.builtins
        ns["__name__"] = "__main__"
        ns.pop("print", None)
        ns.update(self._injected)
        ns["context"] = self.context

    def variable_names(self) -> list[str]:
        """Names the model defined (REPL functions, host functions and modules excluded)."""
        return [
            name
            for name, value in self.namespace.items()
            if not (name.startswith("__") and name.endswith("__"))
            and name not in self.reserved
            and not isinstance(value, types.ModuleType)
        ]

    def get_variable(self, name: str) -> str | None:
        if name.startswith("__") or name not in self.namespace:
            return None
        return _safe_str(self.namespace[name])

    def set_variable(self, name: str, value: Any) -> None:
        if not name.isidentifier() or name.startswith("__"):
            raise ValueError(f"invalid variable name: {name!r}")
        if name in self.reserved and name != "context":
            raise ValueError(f"{name!r} is a REPL function and cannot be rebound")
        if name == "context":
            self.context = value
        self.namespace[name] = value

    # ----------------------------------------------------------------- cells

    def _compile(self, source: str) -> tuple[types.CodeType | None, types.CodeType | None]:
        self._cell_count += 1
        filename = f"<cell-{self._cell_count}>"
        tree = check_code(source, filename)
        self.sources[filename] = source.splitlines()
        trailing: ast.Expression | None = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body.pop()
            assert isinstance(last, ast.Expr)
            trailing = ast.Expression(body=last.value)
            ast.copy_location(trailing, last)
        body = compile(tree, filename, "exec") if tree.body else None
        expr = compile(trailing, filename, "eval") if trailing is not None else None
        return body, expr

    def run_cell(self, source: str, soft_timeout: float | None = None) -> CellResult:
        """Run one cell; never raises for model errors (see ``propagate``).

        The soft timer covers the cell *and* the formatting of its result or error, since
        both can run model code (``__repr__``, ``__str__`` of an exception). It runs for
        ``soft_timeout`` seconds when given (the caller's remaining budget), else for
        ``limits.cell_timeout``.
        """
        seconds = self.limits.cell_timeout if soft_timeout is None else soft_timeout
        self._reinject()
        self._capture = OutputCapture(self.limits.max_captured_output)
        self._final = None
        result = CellResult()
        try:
            body, expr = self._compile(source)
        except (SyntaxError, PolicyError, ValueError, RecursionError, MemoryError) as exc:
            result.error = format_exception(exc, self.sources)
            return result
        self.timer.start(seconds)
        try:
            try:
                self._execute(body, expr)
            except FinalSignal:
                pass
            except BaseException as exc:
                if isinstance(exc, CellTimeout) or (
                    self._propagate and isinstance(exc, self._propagate)
                ):
                    raise
                result.error = self._describe_error(exc, result)
        except CellTimeout:
            result.error = (
                f"TimeoutError: the cell ran longer than {seconds:g} s "
                "(time inside sub-calls not counted) and was stopped; variables are kept."
            )
            result.extra["limit"] = "cell_timeout"
        finally:
            self.timer.stop()
        result.final_answer = self._final
        result.stdout = self._capture.getvalue()
        if self._capture.dropped:
            result.extra["stdout_truncated_chars"] = self._capture.dropped
        return result

    def _execute(self, body: types.CodeType | None, expr: types.CodeType | None) -> None:
        if body is not None:
            exec(body, self.namespace)
        if expr is not None:
            value = eval(expr, self.namespace)
            if value is not None:
                self._capture.write(repr(value) + "\n")

    def _describe_error(self, exc: BaseException, result: CellResult) -> str:
        text = format_exception(exc, self.sources)
        if isinstance(exc, MemoryError):
            result.extra["limit"] = "memory"
            text += (
                f"\n(The sandbox memory limit is {self.limits.memory_mb} MiB on top of the "
                "context; `del` large variables you no longer need.)"
            )
        return text
