"""Every text the root model reads, kept together.

The root conversation is append-only: one system message, then the first user message
(query plus a *description* of the context, never the context), then pairs of
assistant replies and user messages carrying the (truncated) REPL output. A stable
prefix lets provider-side prompt caches hit.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "DEFAULT_PREVIEW_CHARS",
    "DEFAULT_STOP_SEQUENCES",
    "PROMPT_STYLES",
    "SMALL_MODEL_PREFIXES",
    "SYSTEM_PROMPT",
    "SYSTEM_PROMPT_SMALL",
    "describe_context",
    "describe_tools",
    "finalize_prompt",
    "first_user_message",
    "no_code_nudge",
    "prompt_style_for",
    "render_system_prompt",
    "repl_output_message",
]

DEFAULT_PREVIEW_CHARS = 300
"""Characters of the context shown to the root model as a preview."""

DEFAULT_STOP_SEQUENCES: tuple[str, ...] = ("\nREPL output", "```output", "<|im_end|>", "\nUser:")
"""Where a reply is cut: these start invented tool output or dialogue. OpenAI allows 4."""

SYSTEM_PROMPT = """\
You answer a query about a context that is too large to read directly. The context is \
loaded in a Python REPL as the variable `context`; you only see its description. You \
explore it by writing Python code; the REPL runs it and shows you what it printed.

## The REPL
Write code in fenced blocks:
```repl
print(len(context))
print(context[:500])
```
Variables, imports and functions persist between turns. Output you see is cut to \
{max_output_chars} characters per turn, so print summaries and slices, not whole texts.

Available in the REPL:
- `context`: the data ({context_type}).
- `llm_query(prompt: str) -> str`: ask a sub-model (it has no access to `context`; put \
the text it needs into the prompt, at most about {sub_prompt_chars} characters).
- `llm_query_batched(prompts: list[str]) -> list[str]`: many sub-model calls at once, \
answers in the same order; much faster than a loop. A failed item comes back as a \
string starting with "ERROR:".
- `recursive_lm(query: str, context_subset) -> str`: {recursive_description}
- `recursive_lm_batched(queries: list[str], context_subsets: list) -> list[str]`: the \
batched form.
- `SHOW_VARS()`: list the variables you have defined.
- `FINAL(answer)`: finish with this answer. `FINAL_VAR(name)`: finish with the value of \
the variable called `name` (a string with the variable's name).
Modules you may import: {modules}. No files, network or subprocesses.{tools}

## How to work
1. Peek: print the length, the type and a short slice of `context` to see its structure.
2. Search: use `re` or string methods to find the parts that matter.
3. Partition and map: split big inputs into chunks and ask `llm_query_batched` one \
question per chunk; reduce the answers in Python.
4. Summarise hierarchically when everything matters: summarise chunks, then summaries.
5. Recurse with `recursive_lm` on a subset that needs its own exploration.
Compute exact answers (counts, sums, dates) with Python, not by guessing.

## Finishing
When you know the answer, call `FINAL(answer)` in code, or write FINAL(answer) on its \
own line after your code block. Write the answer itself, never a description of it. \
Do not write the REPL output yourself; wait for it. You have {max_iterations} turns.\
"""

SYSTEM_PROMPT_SMALL = """\
You answer a query about a long text stored in the Python variable `context` \
({context_type}). You cannot read it directly. Write Python code in a ```repl block; the \
REPL runs it and shows you what it printed (cut to {max_output_chars} characters). \
Variables persist between turns.

Example for a "What ...?" or "Which ...?" query (find a fact with re.findall):
User: Query: Which city hosted the chess final?
You:
```repl
import re
hits = re.findall(r"[^.\\n]*chess final[^.\\n]*", context, re.IGNORECASE)
print(len(hits), "matches")
print(hits[:5])
```
User: REPL output:
```
1 matches
['The chess final was held in Turin after the long winter']
```
You:
FINAL(Turin)

Example for a "How many ...?" query only (count lines with every condition):
User: Query: How many lines have the level [WARN] and come from the service 'disk'?
You:
```repl
hits = [line for line in context.splitlines() if "[WARN]" in line and "disk" in line]
print(len(hits), "matches")
print(hits[:5])
```
User: REPL output:
```
37 matches
['2024-01-01 10:00:00 [WARN] disk: almost full', ...]
```
You:
```repl
FINAL(len(hits))
```

Rules:
- Search with the key words of the query; never print the whole context.
- Count with code, never guess: put every condition of the query in the test; for \
"how many", finish with FINAL(len(hits)) in code.
- If a search finds nothing, try fewer or other key words.
- Never repeat code whose output you have already seen.
- `llm_query(prompt)` asks a sub-model about text you put in the prompt (at most \
{sub_prompt_chars} characters); `llm_query_batched(prompts)` asks many at once.
- Modules you may import: {modules}.{tools}
- Wait for the REPL output before you answer; never write it yourself.
- When you know the answer, reply FINAL(answer) on its own line with the answer itself.
You have {max_iterations} turns.\
"""
"""A compact system prompt with two worked examples, for small models
(``prompt_style="small"``). Measured on the local Qwen2.5-Coder-0.5B
(``benchmarks/RESULTS.md``): with the default prompt it copies the prompt's first
cell (``print(context[:500])``) turn after turn and never searches; a worked example that
appears after that cell is not enough, because the model copies the first code it sees. It
copies the nearest matching example, so each example is headed by the query type it is for;
without those headings it used the counting cell for fact questions (needle 7/10 instead of
10/10 at 100 k)."""

PROMPT_STYLES = ("default", "small")
"""``default``: :data:`SYSTEM_PROMPT`; ``small``: :data:`SYSTEM_PROMPT_SMALL`."""

SMALL_MODEL_PREFIXES = ("qwen2.5-coder-0.5b",)
"""Root models that get the ``small`` prompt under ``prompt_style="auto"`` (measured)."""


def prompt_style_for(model_name: str) -> str:
    """The prompt style ``auto`` picks for a root model: ``small`` for known small models."""
    return "small" if model_name.lower().startswith(SMALL_MODEL_PREFIXES) else "default"


RECURSIVE_AVAILABLE = (
    "start a sub-agent with its own REPL over `context_subset` (a string, list or dict) "
    "to answer `query`; use it for parts that need exploration of their own."
)
RECURSIVE_LEAF = (
    "ask a sub-model `query` with `context_subset` included in its prompt (no deeper "
    "recursion is available here, so keep the subset small)."
)

FIRST_USER_MESSAGE = """\
Query: {query}

The context is loaded as `context`:
{description}

Start by looking at the context; do not answer before you have seen the relevant parts. \
Reply with a ```repl block.\
"""

REPL_OUTPUT_MESSAGE = """\
REPL output{label}:
```
{output}
```
{budget}\
"""

NO_CODE_NUDGE = """\
Your reply had no ```repl code block and no FINAL(...). Write code to continue, or \
FINAL(answer) if you are done.{budget}\
"""

FINALIZE_PROMPT = """\
{reason} Based on everything above, give your best final answer to the query now: \
"{query}". Reply with FINAL(your answer) and nothing else.\
"""

NEXT_STEP_HINT = (
    "\nIf this output answers the query, reply FINAL(answer) with the answer itself; "
    "otherwise write new code in a ```repl block."
)
"""Closes every REPL output message (the budget note now opens it). Measured on the local 0.5B
model: with the budget note last and no hint, it often replied with the note's turn count
("4", or ``FINAL(3)``) instead of acting on the output."""

TRUNCATION_MARKER = "\n... [{omitted} more characters not shown; print smaller slices] ..."


def render_system_prompt(
    *,
    context_type: str,
    max_iterations: int,
    max_output_chars: int,
    sub_prompt_chars: int,
    can_recurse: bool,
    modules: Sequence[str],
    tools: Mapping[str, Callable[..., Any]] | None = None,
    style: str = "default",
) -> str:
    """The system prompt with this run's facts filled in (``style``: see :data:`PROMPT_STYLES`)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose from {', '.join(PROMPT_STYLES)}")
    template = SYSTEM_PROMPT_SMALL if style == "small" else SYSTEM_PROMPT
    return template.format(
        context_type=context_type,
        max_iterations=max_iterations,
        max_output_chars=max_output_chars,
        sub_prompt_chars=f"{sub_prompt_chars:,}",
        recursive_description=RECURSIVE_AVAILABLE if can_recurse else RECURSIVE_LEAF,
        modules=", ".join(modules),
        tools=describe_tools(tools or {}),
    )


def describe_context(context: Any, preview_chars: int = DEFAULT_PREVIEW_CHARS) -> dict[str, Any]:
    """A small, JSON-able description of the context: type, sizes, a preview.

    Cost is O(number of items), never O(characters) for a string, so a 100 MB string
    is described in microseconds.
    """
    if isinstance(context, str):
        return {
            "type": "str",
            "total_chars": len(context),
            "lines_hint": context.count("\n", 0, 1_000_000) if len(context) < 1_000_000 else None,
            "preview": context[:preview_chars],
        }
    if isinstance(context, list):
        lengths = [_item_chars(item) for item in context]
        first = context[0] if context else None
        return {
            "type": f"list[{_type_name(first)}]" if context else "list",
            "items": len(context),
            "total_chars": sum(lengths),
            "item_chars_min": min(lengths, default=0),
            "item_chars_max": max(lengths, default=0),
            "first_item_keys": sorted(first.keys())[:20] if isinstance(first, dict) else None,
            "preview": _preview(first, preview_chars),
        }
    if isinstance(context, dict):
        keys = list(context.keys())
        return {
            "type": "dict",
            "keys": len(keys),
            "first_keys": [str(key) for key in keys[:20]],
            "total_chars": sum(_item_chars(value) for value in context.values()),
            "preview": _preview(context, preview_chars),
        }
    raise TypeError(f"cannot describe a context of type {type(context).__name__}")


def _item_chars(item: Any) -> int:
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):
        return sum(_item_chars(value) for value in item.values())
    if isinstance(item, list):
        return sum(_item_chars(value) for value in item)
    return len(str(item))


def _type_name(item: Any) -> str:
    return type(item).__name__


def _preview(item: Any, limit: int) -> str:
    text = item if isinstance(item, str) else json.dumps(item, default=str)[: limit + 1]
    return text[:limit]


def format_description(description: Mapping[str, Any]) -> str:
    """The description as short ``key: value`` lines for the first user message."""
    lines = []
    for key, value in description.items():
        if value is None:
            continue
        if key == "preview":
            lines.append(f"- preview (first {len(value)} characters): {value!r}")
        elif isinstance(value, int) and not isinstance(value, bool):
            lines.append(f"- {key}: {value:,}")
        else:
            lines.append(f"- {key}: {value}")
    return "\n".join(lines)


def first_user_message(query: str, description: Mapping[str, Any]) -> str:
    return FIRST_USER_MESSAGE.format(query=query, description=format_description(description))


def truncate_output(text: str, limit: int) -> str:
    """Cut REPL output for the model; the history keeps the whole text."""
    if len(text) <= limit:
        return text
    return text[:limit] + TRUNCATION_MARKER.format(omitted=len(text) - limit)


def budget_note(iteration: int, max_iterations: int, extra: str = "") -> str:
    left = max_iterations - iteration
    note = f"[{left} of {max_iterations} turns left{extra}]"
    if left <= 1:
        note += " This is your last turn: call FINAL(answer) now."
    return "\n" + note


def repl_output_message(
    outputs: Sequence[str],
    *,
    limit: int,
    iteration: int,
    max_iterations: int,
    budget_extra: str = "",
) -> str:
    """The user message carrying the output of every block of one reply."""
    parts = []
    for index, output in enumerate(outputs, start=1):
        label = f" (block {index} of {len(outputs)})" if len(outputs) > 1 else ""
        shown = truncate_output(output, limit) if output else "(no output)"
        parts.append(REPL_OUTPUT_MESSAGE.format(label=label, output=shown, budget="").rstrip())
    # The budget note goes first: a small model otherwise answers with its last number.
    note = budget_note(iteration, max_iterations, budget_extra).lstrip("\n")
    return note + "\n" + "\n\n".join(parts) + NEXT_STEP_HINT


def no_code_nudge(iteration: int, max_iterations: int) -> str:
    return NO_CODE_NUDGE.format(budget=budget_note(iteration, max_iterations))


def finalize_prompt(query: str, reason: str) -> str:
    return FINALIZE_PROMPT.format(query=query, reason=reason)


def describe_tools(tools: Mapping[str, Callable[..., Any]]) -> str:
    """User tools as ``- name(signature): first docstring paragraph`` lines."""
    if not tools:
        return ""
    lines = ["", "User functions (call them like the others):"]
    for name, function in tools.items():
        lines.append(f"- `{name}{_signature(function)}`: {_summary(function)}")
    return "\n".join(lines)


def _signature(function: Callable[..., Any]) -> str:
    args_schema = getattr(function, "args", None)
    if isinstance(args_schema, dict) and hasattr(function, "invoke"):
        return "(" + ", ".join(f"{name}" for name in args_schema) + ")"
    try:
        return str(inspect.signature(function, eval_str=True))
    except (NameError, SyntaxError):  # annotations naming things not importable here
        return str(inspect.signature(function))
    except (TypeError, ValueError):
        return "(...)"


def _summary(function: Callable[..., Any]) -> str:
    text = getattr(function, "description", None) or inspect.getdoc(function) or ""
    return text.strip().split("\n\n")[0].replace("\n", " ") or "(no description)"
