"""Reading the root model's replies: code blocks and ``FINAL`` / ``FINAL_VAR`` in prose.

Real models (see the design notes) do three things this module must survive:

* they keep writing after their code, inventing a ``REPL output:`` section and then a
  ``FINAL(...)`` based on output that no execution produced. Everything from the first
  invented-output marker on is dropped before anything else is parsed;
* they write ``FINAL(some_variable)`` meaning a REPL variable: the caller resolves a bare
  identifier against the REPL after the code ran (:attr:`FinalDirective.is_identifier`);
* they quote their answer, ``FINAL("Blue")``: a single string literal is unquoted.
"""

from __future__ import annotations

import ast
import keyword
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "FinalDirective",
    "ParsedReply",
    "cut_at_stop",
    "is_variable_reference",
    "parse_reply",
]

_FENCE_RE = re.compile(
    r"^[ \t]*```[ \t]*(?P<lang>[A-Za-z0-9_+-]*)[^\n]*\n(?P<body>.*?)(?:^[ \t]*```[ \t]*$|\Z)",
    re.DOTALL | re.MULTILINE,
)
"""A fenced block; an unclosed last block (cut by a stop sequence) runs to the end."""

CODE_LANGUAGES = frozenset({"repl", "python", "py", "python3", ""})
"""Fence languages whose body is run as code. Other fences (``text``, ``output``) are prose."""

_INVENTED_OUTPUT_RE = re.compile(
    r"^[ \t>*_#]*(?:REPL[ _]output|Output|Execution (?:output|result)|Result|Observation|stdout)"
    r"[ \t*_]*:?[ \t*_]*(?:\n|$)"
    r"|^[ \t]*```[ \t]*(?:output|text|stdout|console)[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
"""A line where a model starts inventing the output of code it has not seen run yet."""

_FINAL_RE = re.compile(r"^[ \t>*_#`-]*(?P<kind>FINAL_VAR|FINAL)[ \t]*\(", re.MULTILINE)
"""``FINAL(`` or ``FINAL_VAR(`` at the start of a line (markdown decoration allowed)."""

_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class FinalDirective:
    """A ``FINAL(...)`` or ``FINAL_VAR(...)`` written in prose, outside code."""

    kind: Literal["FINAL", "FINAL_VAR"]
    """Which of the two forms the model wrote."""
    value: str
    """The text between the parentheses, with one level of string quotes removed."""

    @property
    def is_identifier(self) -> bool:
        """True when the value looks like a variable name (``FINAL(result)``)."""
        return bool(_IDENTIFIER_RE.match(self.value))


@dataclass(frozen=True)
class ParsedReply:
    """What one root-model reply asks for."""

    code_blocks: list[str] = field(default_factory=list)
    """Code to run, in order."""
    final: FinalDirective | None = None
    """A finishing directive in prose, honoured only after ``code_blocks`` ran cleanly."""
    invented_output: bool = False
    """True when the reply contained made-up REPL output that was discarded."""


def parse_reply(text: str) -> ParsedReply:
    """Split a root-model reply into code blocks and a prose ``FINAL`` directive."""
    kept, invented = _drop_invented_output(text)
    code_blocks: list[str] = []
    prose_parts: list[str] = []
    position = 0
    for match in _FENCE_RE.finditer(kept):
        prose_parts.append(kept[position : match.start()])
        position = match.end()
        body = match.group("body")
        if match.group("lang").lower() in CODE_LANGUAGES and body.strip():
            code_blocks.append(_dedent_block(body))
        else:
            prose_parts.append(body)
    prose_parts.append(kept[position:])
    bare = _STRAY_FENCE_RE.sub("", kept) if position == 0 else ""
    if bare and _is_bare_code(bare):  # no whole fence, but the reply is code
        return ParsedReply(code_blocks=[bare.strip()], final=None, invented_output=invented)
    final = _find_final("".join(prose_parts))
    return ParsedReply(code_blocks=code_blocks, final=final, invented_output=invented)


_STRAY_FENCE_RE = re.compile(r"^[ \t]*```[\w-]*[ \t]*$", re.MULTILINE)
"""A fence line left alone (the opening or the closing one missing)."""
_STATEMENTS = (
    ast.Assign,
    ast.AugAssign,
    ast.AnnAssign,
    ast.For,
    ast.While,
    ast.If,
    ast.Import,
    ast.ImportFrom,
    ast.With,
    ast.FunctionDef,
    ast.Try,
)


def _is_bare_code(text: str) -> bool:
    """A reply with no whole code fence that is Python with at least one statement (an
    assignment, a loop, an import, ...): Qwen2.5-Coder-1.5B often sends its code without
    the fence, and the 0.5B model sometimes without its opening line. Prose does not
    parse; a lone ``FINAL(x)`` or a name is an expression, not code, and stays a prose
    answer."""
    try:
        tree = ast.parse(text.strip())
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, _STATEMENTS) for node in tree.body)


def _drop_invented_output(text: str) -> tuple[str, bool]:
    """Cut the reply at the first invented-output marker that follows some code."""
    for match in _INVENTED_OUTPUT_RE.finditer(text):
        before = text[: match.start()]
        # A marker inside an open code fence is part of the code (e.g. print("Output:")).
        if before.count("```") % 2 == 1:
            continue
        if "```" in before:
            return before, True
    return text, False


def _find_final(prose: str) -> FinalDirective | None:
    """The first ``FINAL(...)`` / ``FINAL_VAR(...)`` in prose, or None."""
    match = _FINAL_RE.search(prose)
    if match is None:
        return None
    kind: Literal["FINAL", "FINAL_VAR"] = (
        "FINAL_VAR" if match.group("kind") == "FINAL_VAR" else "FINAL"
    )
    inner = _balanced_argument(prose, match.end())
    return FinalDirective(kind=kind, value=_unquote(inner.strip()))


CONVENTIONAL_RESULT_NAMES = frozenset(
    {"result", "results", "answer", "final_answer", "final", "output", "res", "ans", "out"}
    | {"count", "total", "value", "summary", "response", "answer_text", "final_result"}
)
"""Names models give the variable that holds their answer."""


def is_variable_reference(value: str, code: str = "") -> bool:
    """True when a prose ``FINAL(value)`` names a variable rather than giving text.

    A bare identifier is a variable reference when the model's own ``code`` uses that
    name, or when it is one of :data:`CONVENTIONAL_RESULT_NAMES`. Any other word, such as
    ``FINAL(Paris)`` or ``FINAL(yes)``, is a one-word answer.
    """
    name = value.strip()
    if not name.isidentifier() or keyword.iskeyword(name):
        return False
    return name in CONVENTIONAL_RESULT_NAMES or re.search(rf"\b{name}\b", code) is not None


MAX_LITERAL_CANDIDATES = 64
"""Closing parentheses tried when looking for a FINAL argument that is Python."""


def _balanced_argument(text: str, start: int) -> str:
    """Text from ``start`` to the parenthesis that closes the one before it.

    First the shortest argument that is a Python expression (so ``FINAL("a (b")`` and
    ``FINAL(f(x))`` work); else the parentheses are counted in the text as prose, where
    a quote is an apostrophe (``FINAL(The author's name is Bob)``). When they never
    balance, the rest of the line is taken: a truncated answer beats none.
    """
    python = _python_argument(text, start)
    if python is not None:
        return python
    depth = 1
    for index in range(start, len(text)):
        char = text[index]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return text[start:index]
    line = text[start:].split("\n", 1)[0]
    return line[: line.rfind(")")] if ")" in line else line


def _python_argument(text: str, start: int) -> str | None:
    """The shortest ``text[start:i]`` (``text[i] == ")"``) that parses as an expression."""
    position = start
    for _ in range(MAX_LITERAL_CANDIDATES):
        index = text.find(")", position)
        if index < 0:
            return None
        candidate = text[start:index]
        if candidate.strip():
            try:
                ast.parse(candidate.strip(), mode="eval")
            except (SyntaxError, ValueError):
                pass
            else:
                return candidate
        position = index + 1
    return None


def _unquote(value: str) -> str:
    """Remove one level of Python string quoting, when the value is exactly one literal."""
    if len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]:
        try:
            literal = ast.literal_eval(value)
        except (SyntaxError, ValueError):
            return value
        if isinstance(literal, str):
            return literal
    return value


def _dedent_block(body: str) -> str:
    """Strip a common indentation (models sometimes indent fenced code)."""
    lines = body.splitlines()
    indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    common = min(indents, default=0)
    return "\n".join(line[common:] for line in lines).strip("\n")


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """``(text cut at the earliest stop sequence, whether one was found)``.

    The stop sequence itself is dropped; empty stop strings are ignored, as servers do.
    The one copy of this cut (the scripted server and the LlamaIndex adapter use it).
    """
    positions = [pos for s in stop or () if s and (pos := text.find(s)) >= 0]
    if not positions:
        return text, False
    return text[: min(positions)], True
