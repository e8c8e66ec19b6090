"""What model-written code may do: AST checks, guarded builtins and filtered modules.

This module is the *language-level* half of the sandbox. It is shared by the local
sandbox (where it is the only barrier, so the local sandbox is for trusted code only)
and by the process sandbox (where it is defence in depth on top of OS confinement:
rlimits, namespaces and seccomp, see ``process.py``).

Rules, and why:

* **No dunder attribute access** (``x.__class__.__bases__``, ``f.__globals__`` ...),
  except a short allow-list of names that give no power beyond the builtins
  (``__name__``, ``__class__`` == ``type(x)``, ``__init__`` for ``super().__init__()``,
  protocol methods such as ``__repr__``). ``__dict__``, ``__subclasses__``,
  ``__getattribute__``, ``__self__``, ``__func__``, ``__globals__``, ``__reduce__``
  ... are all refused. Dunder *method definitions* in class bodies are fine: they are
  function definitions, not attribute access.
* **No frame / code introspection** through non-dunder names: ``gi_frame``,
  ``cr_frame``, ``ag_frame``, ``tb_frame``, ``f_locals``, ``f_back``, ``co_code`` ...
  (a generator's ``gi_frame.f_locals`` leaked smolagents' allow-list).
* The same check applies to ``match`` class patterns (``case C(__class__=x)``), to
  ``getattr`` / ``setattr`` / ``delattr`` / ``hasattr`` (guarded versions, names
  NFKC-normalised like the parser does) and to ``str.format`` / ``format_map`` fields
  (``"{0.__class__}".format(x)``): every ``.format`` / ``.format_map`` attribute load
  is rewritten into a call to a guard that vets the format string first.
* ``mro`` is refused like a dunder (``C.mro()[1]`` reached a base class's unguarded
  method), two-argument ``super(T, obj)`` is allowed only for classes the model's own
  ``class`` statements created (a guarded ``__build_class__`` records them; zero-argument
  ``super()`` works as usual), and **positional class patterns** (``case C(a, b)``) are
  rewritten so the VM matches against a vetted stand-in class whose ``__match_args__``
  were read once and checked like attribute names.
* **Scrubbed globals**: every function the sandbox hands to model code (the guards,
  ``SafeFormatter``'s methods, the ``functools``/``typing`` replacements, the REPL
  functions in :mod:`.repl`) is rebuilt over a small globals dict (:data:`EXPOSED_GLOBALS`)
  whose ``__builtins__`` is the safe builtins mapping, so no ``__globals__`` /
  ``__builtins__`` of theirs holds the real ``builtins``, ``sys``, ``open``, ``eval`` or
  ``__import__``. Capabilities they need live in closures (``__closure__`` is refused).
  ``SafeFormatter`` re-implements ``string.Formatter``'s interface instead of
  subclassing it, so no route (``mro``, ``super``) leads to an unguarded ``get_field``.
* **Safe builtins**: no ``eval``, ``exec``, ``compile``, ``open``, ``input``,
  ``globals``, ``locals``, ``vars``, ``breakpoint``, ``help``, ``exit``; ``__import__``
  is a guarded import.
* **Import allow-list** (:data:`ALLOWED_MODULES`). Model code never gets a real module:
  it gets a fresh *proxy* (a new module object) holding only the public attributes,
  with sub-modules only when they are allowed themselves (so ``json.codecs``,
  ``re._compiler`` and ``random._os`` do not exist) and with vetted replacements for
  the few public back doors: ``functools.singledispatch`` (evaluates string
  annotations) is removed, ``functools.wraps`` / ``update_wrapper`` only copy the
  standard attributes, ``string.Formatter`` vets its fields. ``typing`` is a small
  shim: enough for annotations (``List[int]``, ``Optional[str]``), but no
  ``get_type_hints`` / ``ForwardRef`` (they evaluate strings).

Known limits of a language-level policy (why the process sandbox exists): model code
can still monkey-patch attributes of shared stdlib *classes* (``json.JSONEncoder``),
allocate memory and loop in C. In the process sandbox that only harms its own worker.
"""

from __future__ import annotations

import _string  # type: ignore[import-not-found]
import ast
import builtins
import collections
import contextlib
import functools
import importlib
import sys
import types
import unicodedata
import weakref
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "ALLOWED_DUNDER_ATTRIBUTES",
    "ALLOWED_MODULES",
    "BLOCKED_ATTRIBUTES",
    "EXPOSED_GLOBALS",
    "PREWARM_MODULES",
    "PolicyError",
    "attribute_allowed",
    "check_code",
    "guarded_getattr",
    "make_import",
    "make_module_proxy",
    "make_safe_builtins",
]

ALLOWED_MODULES: frozenset[str] = frozenset(
    {
        "re",
        "json",
        "math",
        "statistics",
        "collections",
        "collections.abc",
        "itertools",
        "functools",
        "string",
        "textwrap",
        "datetime",
        "difflib",
        "heapq",
        "bisect",
        "random",
        "hashlib",
        "base64",
        "unicodedata",
        "fractions",
        "decimal",
        "typing",
    }
)
"""Modules model code may import (``typing`` is a vetted shim, see module docstring)."""

PREWARM_MODULES: tuple[str, ...] = (
    "_strptime",
    "time",
    "copyreg",
    "encodings.idna",
    "encodings.punycode",
    "encodings.utf_16",
    "encodings.utf_32",
    "encodings.latin_1",
    "encodings.ascii",
    "encodings.cp1252",
    "encodings.unicode_escape",
    "encodings.raw_unicode_escape",
    "encodings.base64_codec",
    "encodings.hex_codec",
)
"""Lazy imports of the allowed modules, done before a worker locks itself down."""

ALLOWED_DUNDER_ATTRIBUTES: frozenset[str] = frozenset(
    {
        "__name__",
        "__qualname__",
        "__doc__",
        "__module__",
        "__class__",
        "__init__",
        "__new__",
        "__repr__",
        "__str__",
        "__format__",
        "__hash__",
        "__bool__",
        "__len__",
        "__iter__",
        "__next__",
        "__contains__",
        "__getitem__",
        "__setitem__",
        "__delitem__",
        "__missing__",
        "__enter__",
        "__exit__",
        "__call__",
        "__eq__",
        "__ne__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
        "__add__",
        "__radd__",
        "__sub__",
        "__rsub__",
        "__mul__",
        "__rmul__",
        "__truediv__",
        "__floordiv__",
        "__mod__",
        "__neg__",
        "__abs__",
        "__post_init__",
    }
)
"""Dunder attributes that give nothing beyond the safe builtins (``type(x)``, calls)."""

BLOCKED_ATTRIBUTES: frozenset[str] = frozenset(
    {
        # generators, coroutines, async generators
        "gi_frame",
        "gi_code",
        "gi_yieldfrom",
        "cr_frame",
        "cr_code",
        "cr_await",
        "cr_origin",
        "ag_frame",
        "ag_code",
        "ag_await",
        # frames and tracebacks
        "f_locals",
        "f_globals",
        "f_builtins",
        "f_back",
        "f_code",
        "f_trace",
        "f_lasti",
        "tb_frame",
        "tb_next",
        "tb_lasti",
        # class internals by a non-dunder name: C.mro()[1] reaches a base's methods
        "mro",
    }
)
"""Non-dunder attribute names that lead to frames, code objects or class internals."""

_BLOCKED_PREFIXES = ("co_", "func_")
_FORMAT_METHODS = frozenset({"format", "format_map"})
_FORMAT_GUARD = "__rlm_format__"
_MATCH_GUARD = "__rlm_match__"
_MATCH_TEMP = "__rlm_match_class_{}__"
_ALLOWED_DUNDER_NAMES = frozenset({"__name__", "__doc__"})
_MAX_FORMAT_NESTING = 4
_REMOVED_ATTRIBUTES: dict[str, frozenset[str]] = {
    "functools": frozenset({"singledispatch", "singledispatchmethod"}),
}

SAFE_BUILTIN_NAMES: frozenset[str] = frozenset(
    {
        "abs",
        "aiter",
        "all",
        "anext",
        "any",
        "ascii",
        "bin",
        "bool",
        "bytearray",
        "bytes",
        "callable",
        "chr",
        "classmethod",
        "complex",
        "dict",
        "dir",
        "divmod",
        "enumerate",
        "filter",
        "float",
        "format",
        "frozenset",
        "hash",
        "hex",
        "id",
        "int",
        "isinstance",
        "issubclass",
        "iter",
        "len",
        "list",
        "map",
        "max",
        "memoryview",
        "min",
        "next",
        "object",
        "oct",
        "ord",
        "pow",
        "print",
        "property",
        "range",
        "repr",
        "reversed",
        "round",
        "set",
        "slice",
        "sorted",
        "staticmethod",
        "str",
        "sum",
        "super",
        "tuple",
        "type",
        "zip",
        "__build_class__",
        "True",
        "False",
        "None",
        "Ellipsis",
        "NotImplemented",
    }
)
"""Builtins passed through unchanged (plus every exception class)."""


class PolicyError(Exception):
    """Code that breaks the sandbox policy (reported to the model as ``PolicyError``)."""


def _normalise(name: str) -> str:
    return unicodedata.normalize("NFKC", name)


def attribute_allowed(name: str) -> bool:
    """Whether model code may read / write attribute ``name`` (NFKC-normalised)."""
    name = _normalise(name)
    if name in ALLOWED_DUNDER_ATTRIBUTES:
        return True
    if name.startswith("__") and name.endswith("__"):
        return False
    if name in BLOCKED_ATTRIBUTES:
        return False
    return not name.startswith(_BLOCKED_PREFIXES)


def _attribute_error(name: str) -> PolicyError:
    return PolicyError(f"access to attribute {name!r} is not allowed in the sandbox")


# --------------------------------------------------------------------------- AST check


class _Checker(ast.NodeTransformer):
    """Refuses forbidden names / attributes and routes ``.format`` through a guard."""

    def __init__(self) -> None:
        self._class_depth = 0
        self._match_count = 0

    def _fail(self, node: ast.AST, message: str) -> PolicyError:
        line = getattr(node, "lineno", None)
        where = f" (line {line})" if line else ""
        return PolicyError(f"{message}{where}")

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if not attribute_allowed(node.attr):
            raise self._fail(node, f"access to attribute {node.attr!r} is not allowed")
        self.generic_visit(node)
        if node.attr in _FORMAT_METHODS and isinstance(node.ctx, ast.Load):
            call = ast.Call(
                func=ast.Name(id=_FORMAT_GUARD, ctx=ast.Load()),
                args=[node.value, ast.Constant(value=node.attr)],
                keywords=[],
            )
            return ast.copy_location(call, node)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        name = node.id
        if name.startswith("__") and name.endswith("__") and name not in _ALLOWED_DUNDER_NAMES:
            in_class_store = self._class_depth > 0 and isinstance(node.ctx, ast.Store)
            if not in_class_store:
                raise self._fail(node, f"use of the name {name!r} is not allowed")
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self._class_depth += 1
        try:
            self.generic_visit(node)
        finally:
            self._class_depth -= 1
        return node

    def _visit_function(self, node: ast.AST) -> ast.AST:
        depth, self._class_depth = self._class_depth, 0
        try:
            self.generic_visit(node)
        finally:
            self._class_depth = depth
        return node

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function
    visit_Lambda = _visit_function

    def visit_MatchClass(self, node: ast.MatchClass) -> ast.AST:
        for attr in node.kwd_attrs:
            if not attribute_allowed(attr):
                raise self._fail(node, f"matching on attribute {attr!r} is not allowed")
        self.generic_visit(node)
        return node

    def visit_Match(self, node: ast.Match) -> ast.AST | list[ast.stmt]:
        """Positional class patterns match against a vetted stand-in class.

        ``case C(a, b)`` makes the VM read ``C.__match_args__`` and fetch those
        attributes with a raw getattr, so a model class can name any dunder there. Each
        such ``C`` is evaluated once, before the ``match``, by the match guard, which
        checks the names like attribute accesses and returns a stand-in whose
        ``__match_args__`` is that checked snapshot (see :func:`match_class_guard`).
        """
        self.generic_visit(node)
        guards: list[ast.stmt] = []
        for case in node.cases:
            for pattern in ast.walk(case.pattern):
                if not (isinstance(pattern, ast.MatchClass) and pattern.patterns):
                    continue
                temp = _MATCH_TEMP.format(self._match_count)
                self._match_count += 1
                call = ast.Call(
                    func=ast.Name(id=_MATCH_GUARD, ctx=ast.Load()),
                    args=[pattern.cls, ast.Constant(value=len(pattern.patterns))],
                    keywords=[],
                )
                assign = ast.Assign(targets=[ast.Name(id=temp, ctx=ast.Store())], value=call)
                guards.append(ast.copy_location(assign, node))
                pattern.cls = ast.copy_location(ast.Name(id=temp, ctx=ast.Load()), pattern.cls)
        return [*guards, node] if guards else node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        if node.level:
            raise self._fail(node, "relative imports are not available")
        for alias in node.names:
            if alias.name != "*" and alias.name.startswith("_"):
                raise self._fail(node, f"importing the private name {alias.name!r} is not allowed")
        return node


def check_code(source: str, filename: str = "<cell>") -> ast.Module:
    """Parse ``source`` and return the vetted (rewritten) module AST.

    Raises ``SyntaxError`` for bad syntax and :class:`PolicyError` for forbidden code.
    Identifiers are already NFKC-normalised by the parser (``ｅｖａｌ`` is ``eval``).
    """
    tree = ast.parse(source, filename=filename, mode="exec")
    tree = _Checker().visit(tree)
    ast.fix_missing_locations(tree)
    return tree


# --------------------------------------------------------------------------- guards


def _check_format_string(fmt: str, depth: int = 0) -> None:
    if depth > _MAX_FORMAT_NESTING:
        raise PolicyError("format string nested too deeply")
    for _literal, field, spec, _conv in _string.formatter_parser(fmt):
        if field is not None:
            _first, rest = _string.formatter_field_name_split(field)
            for is_attr, key in rest:
                if is_attr and not attribute_allowed(str(key)):
                    raise PolicyError(
                        f"format field {field!r} accesses a forbidden attribute {key!r}"
                    )
        if spec:
            _check_format_string(spec, depth + 1)


def _format_of_string(template: str, method: str) -> Callable[..., str]:
    real = getattr(str, method)

    def guarded(*args: Any, **kwargs: Any) -> str:
        _check_format_string(template)
        return real(template, *args, **kwargs)  # type: ignore[no-any-return]

    guarded.__name__ = method
    return guarded


def _format_of_str_type(method: str) -> Callable[..., str]:
    real = getattr(str, method)

    def guarded(template: Any, *args: Any, **kwargs: Any) -> str:
        if isinstance(template, str):
            _check_format_string(template)
        return real(template, *args, **kwargs)  # type: ignore[no-any-return]

    guarded.__name__ = method
    return guarded


def format_guard(obj: Any, method: str) -> Any:
    """What ``obj.format`` / ``obj.format_map`` evaluates to inside the sandbox."""
    if isinstance(obj, str):
        return _format_of_string(str(obj), method)
    if isinstance(obj, collections.UserString):
        return _format_of_string(str(obj.data), method)
    if isinstance(obj, type) and issubclass(obj, str | collections.UserString):
        return _format_of_str_type(method)
    return getattr(obj, method)


def _check_attr_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"attribute name must be string, not '{type(name).__name__}'")
    if not attribute_allowed(name):
        raise _attribute_error(name)
    return name


_MISSING = object()


def guarded_getattr(obj: Any, name: Any, default: Any = _MISSING) -> Any:
    """``getattr`` that refuses forbidden names and guards ``format``."""
    name = _check_attr_name(name)
    try:
        if name in _FORMAT_METHODS:
            return format_guard(obj, name)
        return getattr(obj, name)
    except AttributeError:
        if default is _MISSING:
            raise
        return default


def guarded_hasattr(obj: Any, name: Any) -> bool:
    """``hasattr`` that answers ``False`` for forbidden names."""
    if isinstance(name, str) and not attribute_allowed(name):
        return False
    return hasattr(obj, name)


def guarded_setattr(obj: Any, name: Any, value: Any) -> None:
    """``setattr`` that refuses forbidden names."""
    setattr(obj, _check_attr_name(name), value)


def guarded_delattr(obj: Any, name: Any) -> None:
    """``delattr`` that refuses forbidden names."""
    delattr(obj, _check_attr_name(name))


# --------------------------------------------------------------------------- classes


_TYPE_NAME: Callable[[type], str] = type.__dict__["__name__"].__get__
"""The raw name of a class (never runs a metaclass's ``__name__`` property)."""

_MATCH_SELF_TYPES: tuple[type, ...] = (
    bool,
    bytearray,
    bytes,
    dict,
    float,
    frozenset,
    int,
    list,
    set,
    str,
    tuple,
)
"""Builtins whose single positional class pattern matches the subject itself."""


class _MatchMeta(type):
    """Metaclass of match stand-ins: ``isinstance`` is the real class's."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, cls._rlm_target)  # type: ignore[attr-defined]


def match_class_guard(cls: Any, count: int) -> Any:
    """The class a positional class pattern really matches against (see ``visit_Match``).

    Builtins that match themselves come back unchanged. For any other class,
    ``__match_args__`` is read once, must be a tuple of allowed attribute names, and the
    VM gets a stand-in class carrying that snapshot, so a metaclass property cannot
    answer differently when the VM reads it again.
    """
    for builtin_type in _MATCH_SELF_TYPES:
        if cls is builtin_type:
            return cls
    if not isinstance(cls, type):
        return cls  # the VM raises "called match pattern must be a class"
    name = _TYPE_NAME(cls)
    match_args = getattr(cls, "__match_args__", None)
    bases: tuple[type, ...] = ()
    if match_args is None:
        for builtin_type in _MATCH_SELF_TYPES:
            if issubclass(cls, builtin_type):
                bases = (builtin_type,)
                break
        else:
            raise TypeError(f"{name}() accepts 0 positional sub-patterns ({count} given)")
        namespace: dict[str, Any] = {"_rlm_target": cls}
    else:
        if type(match_args) is not tuple:
            raise TypeError(f"{name}.__match_args__ must be a tuple")
        checked: list[str] = []
        for attr in match_args:
            if type(attr) is not str:
                raise TypeError(f"{name}.__match_args__ elements must be str")
            if not attribute_allowed(attr):
                raise PolicyError(f"matching on attribute {attr!r} is not allowed")
            checked.append(attr)
        namespace = {"_rlm_target": cls, "__match_args__": tuple(checked)}
    return _MatchMeta(name, bases, namespace)


def _make_class_guards() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(__build_class__, super)`` for one session.

    ``__build_class__`` records every class a model ``class`` statement creates;
    two-argument (or one-argument) ``super`` is allowed only on those, so it cannot skip
    a sandbox class's guarded method. Zero-argument ``super()`` resolves the caller's
    ``__class__`` cell and first argument, as CPython does.
    """
    model_classes: dict[int, weakref.ref[type]] = {}
    real_build_class = builtins.__build_class__
    real_super = builtins.super
    getframe = sys._getframe
    make_ref = weakref.ref

    def forget(ref: weakref.ref[type], key: int) -> None:
        if model_classes.get(key) is ref:
            del model_classes[key]

    def build_class(func: Any, name: Any, *bases: Any, **kwargs: Any) -> Any:
        cls = real_build_class(func, name, *bases, **kwargs)
        if isinstance(cls, type):
            key = id(cls)
            model_classes[key] = make_ref(cls, functools.partial(forget, key=key))
        return cls

    def super(*args: Any) -> Any:
        if not args:
            frame = getframe(1)
            code = frame.f_code
            if not code.co_argcount:
                raise RuntimeError("super(): no arguments")
            local_values = frame.f_locals
            del frame
            if "__class__" not in local_values:
                raise RuntimeError("super(): __class__ cell not found")
            if code.co_varnames[0] not in local_values:
                raise RuntimeError("super(): arg[0] deleted")
            return real_super(local_values["__class__"], local_values[code.co_varnames[0]])
        ref = model_classes.get(id(args[0]))
        if ref is None or ref() is not args[0]:
            raise PolicyError(
                "super() with explicit arguments is allowed only for classes defined in "
                "your own code; inside a method use super() without arguments"
            )
        return real_super(*args)

    return build_class, super


class _Frozen(type):
    """Metaclass of classes the sandbox hands out: model code cannot patch them."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise AttributeError(f"cannot set attributes of the sandbox class {cls.__name__}")

    def __delattr__(cls, name: str) -> None:
        raise AttributeError(f"cannot delete attributes of the sandbox class {cls.__name__}")


class SafeFormatter(metaclass=_Frozen):
    """``string.Formatter``'s interface, re-implemented over vetted format strings.

    It wraps ``str.format`` instead of subclassing ``string.Formatter``: no ``mro`` or
    ``super`` route leads from it to an unguarded ``get_field``. Overriding methods in a
    subclass does not change how :meth:`vformat` formats.
    """

    def format(self, format_string: str, /, *args: Any, **kwargs: Any) -> str:
        return self.vformat(format_string, args, kwargs)

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        if not isinstance(format_string, str):
            raise TypeError(f"format string must be str, not {type(format_string).__name__}")
        _check_format_string(format_string)
        return str.format(format_string, *args, **kwargs)

    def parse(self, format_string: str) -> Any:
        return _string.formatter_parser(format_string)

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        _check_format_string("{" + field_name + "}")
        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = guarded_getattr(obj, key) if is_attr else obj[key]
        return obj, first

    def get_value(self, key: Any, args: Any, kwargs: Any) -> Any:
        return args[key] if isinstance(key, int) else kwargs[key]

    def check_unused_args(self, used_args: Any, args: Any, kwargs: Any) -> None:
        return None

    def format_field(self, value: Any, format_spec: str) -> str:
        return format(value, format_spec)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is None:
            return value
        if conversion == "s":
            return str(value)
        if conversion == "r":
            return repr(value)
        if conversion == "a":
            return ascii(value)
        raise ValueError(f"Unknown conversion specifier {conversion!s}")


def _safe_update_wrapper(wrapper: Any, wrapped: Any, *args: Any, **kwargs: Any) -> Any:
    """``functools.update_wrapper`` restricted to its default, harmless attributes."""
    if args or kwargs:
        raise PolicyError("functools.update_wrapper/wraps: custom attribute lists are not allowed")
    for attr in functools.WRAPPER_ASSIGNMENTS:
        try:
            value = getattr(wrapped, attr)
        except AttributeError:
            continue
        if attr == "__annotations__" or isinstance(value, str):
            setattr(wrapper, attr, value)
    if isinstance(wrapped, types.FunctionType) and isinstance(wrapper, types.FunctionType):
        wrapper.__dict__.update(wrapped.__dict__)
    wrapper.__wrapped__ = wrapped
    return wrapper


def _safe_wraps(wrapped: Any, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    if args or kwargs:
        raise PolicyError("functools.wraps: custom attribute lists are not allowed")
    return functools.partial(_safe_update_wrapper, wrapped=wrapped)


class _TypingStub(metaclass=_Frozen):
    """A subscriptable placeholder for ``typing`` special forms (annotations only)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getitem__(self, item: Any) -> _TypingStub:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> _TypingStub:
        return _TypingStub(str(args[0]) if args else self.name)

    def __or__(self, other: Any) -> _TypingStub:
        return self

    __ror__ = __or__

    def __repr__(self) -> str:
        return f"typing.{self.name}"


class _GenericStub(metaclass=_Frozen):
    """Base for ``Generic[T]`` / ``Protocol`` in the typing shim."""

    def __class_getitem__(cls, item: Any) -> type:
        return cls


def _typing_cast(_type: Any, value: Any) -> Any:
    return value


def _typing_identity(func: Any) -> Any:
    return func


def _typing_shim() -> dict[str, Any]:
    import collections.abc as cabc

    forms = ("Any", "Optional", "Union", "Literal", "Final", "ClassVar", "NoReturn", "Annotated")
    shim: dict[str, Any] = {name: _TypingStub(name) for name in forms}
    shim.update(
        List=list,
        Dict=dict,
        Tuple=tuple,
        Set=set,
        FrozenSet=frozenset,
        Type=type,
        DefaultDict=collections.defaultdict,
        Counter=collections.Counter,
        Deque=collections.deque,
        OrderedDict=collections.OrderedDict,
        Callable=cabc.Callable,
        Iterable=cabc.Iterable,
        Iterator=cabc.Iterator,
        Generator=cabc.Generator,
        Sequence=cabc.Sequence,
        MutableSequence=cabc.MutableSequence,
        Mapping=cabc.Mapping,
        MutableMapping=cabc.MutableMapping,
        Hashable=cabc.Hashable,
        Sized=cabc.Sized,
        Generic=_GenericStub,
        Protocol=_GenericStub,
        TypeVar=_TypingStub("TypeVar"),
        TYPE_CHECKING=False,
        cast=exposed("_typing_cast"),
        overload=exposed("_typing_identity"),
        no_type_check=exposed("_typing_identity"),
    )
    return shim


# --------------------------------------------------------------------------- modules


def _module_attributes(name: str) -> dict[str, Any]:
    if name == "typing":
        return _typing_shim()
    module = importlib.import_module(name)
    removed = _REMOVED_ATTRIBUTES.get(name, frozenset())
    attrs: dict[str, Any] = {}
    for attr in dir(module):
        if attr.startswith("_") or attr in removed:
            continue
        value = getattr(module, attr)
        if isinstance(value, types.ModuleType):
            full = f"{name}.{attr}"
            if full in ALLOWED_MODULES:
                attrs[attr] = make_module_proxy(full)
            continue
        attrs[attr] = value
    if name == "string":
        attrs["Formatter"] = SafeFormatter
    elif name == "functools":
        attrs["update_wrapper"] = exposed("_safe_update_wrapper")
        attrs["wraps"] = exposed("_safe_wraps")
    return attrs


def make_module_proxy(name: str) -> types.ModuleType:
    """A fresh module object with only the vetted public attributes of ``name``."""
    if name not in ALLOWED_MODULES:
        raise ImportError(_import_refusal(name))
    proxy = types.ModuleType(name)
    for attr, value in _module_attributes(name).items():
        setattr(proxy, attr, value)
    return proxy


def _import_refusal(name: str) -> str:
    allowed = ", ".join(sorted(ALLOWED_MODULES))
    return f"import of {name!r} is not allowed in the sandbox (allowed modules: {allowed})"


INTERNAL_C_IMPORTS: frozenset[str] = frozenset({"time", "_strptime", "copyreg"})
"""Modules C code of allowed modules imports for itself (``datetime.strftime`` imports
``time``). C code calls ``__import__`` with a *list* ``fromlist``, which model code
cannot produce (``import`` statements pass ``None`` or a tuple, ``__import__`` itself
is unreachable), so those calls get the real module without exposing it to the model."""


def make_import() -> Callable[..., types.ModuleType]:
    """The guarded ``__import__``: allowed modules only, each import a fresh proxy."""
    import_module = importlib.import_module
    proxy = make_module_proxy

    def guarded_import(
        name: str,
        globals: Any = None,
        locals: Any = None,
        fromlist: Iterable[str] | None = (),
        level: int = 0,
    ) -> types.ModuleType:
        if level:
            raise ImportError("relative imports are not available in the sandbox")
        if type(fromlist) is list and name in INTERNAL_C_IMPORTS:
            return import_module(name)
        if not isinstance(name, str) or name not in ALLOWED_MODULES:
            raise ImportError(_import_refusal(str(name)))
        if fromlist or "." not in name:
            return proxy(name)
        return proxy(name.split(".", 1)[0])

    return expose(guarded_import)


def prewarm_modules() -> None:
    """Import every allowed module and their lazy imports (before a lockdown)."""
    for name in sorted(ALLOWED_MODULES):
        if name != "typing":
            importlib.import_module(name)
    for name in PREWARM_MODULES:
        with contextlib.suppress(ImportError):  # a platform without that codec
            importlib.import_module(name)
    import datetime
    import hashlib

    moment = datetime.datetime.strptime("2024-01-02", "%Y-%m-%d")
    moment.strftime("%A %d %B %Y %H:%M:%S %Z")
    moment.timestamp()
    for algorithm in ("md5", "sha1", "sha256", "sha512"):
        hashlib.new(algorithm, b"")
    "x".encode("idna")


# --------------------------------------------------------------------------- scrubbed globals


def _plain_safe_builtins() -> dict[str, Any]:
    """The safe builtin names (and every exception class), unguarded."""
    safe: dict[str, Any] = {name: getattr(builtins, name) for name in SAFE_BUILTIN_NAMES}
    for name in dir(builtins):
        value = getattr(builtins, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            safe[name] = value
    return safe


_SCRUBBED_BUILTINS: dict[str, Any] = _plain_safe_builtins()
_SCRUBBED_BUILTINS.update(
    getattr=getattr, hasattr=hasattr, setattr=setattr, delattr=delattr, PolicyError=PolicyError
)

EXPOSED_GLOBALS: dict[str, Any] = {
    "__builtins__": _SCRUBBED_BUILTINS,
    "__name__": "langchain_rlm.sandbox.exposed",
}
"""The only globals of every function the sandbox hands to model code (see the module
docstring): no ``builtins``, ``sys``, ``open``, ``eval``, ``exec`` or ``__import__``."""


def expose(func: Callable[..., Any]) -> Callable[..., Any]:
    """A copy of ``func`` over :data:`EXPOSED_GLOBALS` (same code, defaults, closure)."""
    if not isinstance(func, types.FunctionType):
        return func
    new = types.FunctionType(
        func.__code__, EXPOSED_GLOBALS, func.__name__, func.__defaults__, func.__closure__
    )
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__ = func.__qualname__
    new.__doc__ = func.__doc__
    return new


def _expose_class(cls: type) -> type:
    for name, value in list(vars(cls).items()):
        if isinstance(value, types.FunctionType):
            type.__setattr__(cls, name, expose(value))
        elif isinstance(value, classmethod | staticmethod):
            type.__setattr__(cls, name, type(value)(expose(value.__func__)))
    return cls


def _populate_exposed_globals() -> None:
    ns = EXPOSED_GLOBALS
    ns.update(
        _string=types.SimpleNamespace(
            formatter_parser=_string.formatter_parser,
            formatter_field_name_split=_string.formatter_field_name_split,
        ),
        unicodedata=types.SimpleNamespace(normalize=unicodedata.normalize),
        functools=types.SimpleNamespace(
            WRAPPER_ASSIGNMENTS=functools.WRAPPER_ASSIGNMENTS, partial=functools.partial
        ),
        types=types.SimpleNamespace(FunctionType=types.FunctionType),
        collections=types.SimpleNamespace(UserString=collections.UserString),
        ALLOWED_MODULES=ALLOWED_MODULES,
        ALLOWED_DUNDER_ATTRIBUTES=ALLOWED_DUNDER_ATTRIBUTES,
        BLOCKED_ATTRIBUTES=BLOCKED_ATTRIBUTES,
        INTERNAL_C_IMPORTS=INTERNAL_C_IMPORTS,
        PolicyError=PolicyError,
        _BLOCKED_PREFIXES=_BLOCKED_PREFIXES,
        _FORMAT_METHODS=_FORMAT_METHODS,
        _MAX_FORMAT_NESTING=_MAX_FORMAT_NESTING,
        _MATCH_SELF_TYPES=_MATCH_SELF_TYPES,
        _MISSING=_MISSING,
        _TYPE_NAME=_TYPE_NAME,
        _MatchMeta=_MatchMeta,
        _TypingStub=_TypingStub,
    )
    for func in (
        _normalise,
        attribute_allowed,
        _attribute_error,
        _check_format_string,
        _format_of_string,
        _format_of_str_type,
        format_guard,
        _check_attr_name,
        guarded_getattr,
        guarded_hasattr,
        guarded_setattr,
        guarded_delattr,
        _safe_update_wrapper,
        _safe_wraps,
        _typing_cast,
        _typing_identity,
        match_class_guard,
        _import_refusal,
    ):
        ns[func.__name__] = expose(func)
    for cls in (_Frozen, _MatchMeta, SafeFormatter, _TypingStub, _GenericStub):
        _expose_class(cls)


_populate_exposed_globals()


def exposed(name: str) -> Any:
    """The scrubbed copy of the module-level function ``name``."""
    return EXPOSED_GLOBALS[name]


def make_safe_builtins(print_function: Callable[..., None]) -> dict[str, Any]:
    """The ``__builtins__`` mapping model code runs with (one per session)."""
    safe = _plain_safe_builtins()
    build_class, guarded_super = _make_class_guards()
    safe.update(
        print=print_function,
        getattr=exposed("guarded_getattr"),
        hasattr=exposed("guarded_hasattr"),
        setattr=exposed("guarded_setattr"),
        delattr=exposed("guarded_delattr"),
        __import__=make_import(),
        __build_class__=expose(build_class),
        super=expose(guarded_super),
        PolicyError=PolicyError,
    )
    safe[_FORMAT_GUARD] = exposed("format_guard")
    safe[_MATCH_GUARD] = exposed("match_class_guard")
    return safe
