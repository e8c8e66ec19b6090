"""Every text the root model reads, kept together.

The root conversation is append-only: one system message, then the first user message
(query plus a *description* of the context, never the context), then pairs of
assistant replies and user messages carrying the (truncated) REPL output. A stable
prefix lets provider-side prompt caches hit.

The description is structure-aware (:mod:`langchain_rlm.describe`): the shape of the
context (delimited records, JSON lines, log lines, text, a list of records or texts, a
dict of documents), its fields, counts, a few sample records and one line of Python that
reads that shape. Both prompt styles then teach the same generic method: read the
records, select the ones matching every condition of the query, compute the answer in
Python and finish with the computed value; for questions about meaning, ask a sub-model
about every chunk with ``llm_query_batched``. No worked example uses a question of the
quality benchmark (``benchmarks/quality``), and no example ends in a literal number a
model could copy as its answer (issue 13: the 0.5B model copied ``FINAL(5)``-style counts
from a "How many" example).

The small style picks its worked examples by the described shape (a small model copies
the first code it sees, so that code must fit the data); pass ``description=`` to
:func:`render_system_prompt` (without it the shape is guessed from ``context_type``). The
first user message names the query first and last and ends with the first step that
suits the shape (for records: the exact line that reads them). Measurements and the
variants that were tried: ``benchmarks/RESULTS.md``, "Long-context quality".
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_rlm import describe, grounding

__all__ = [
    "DEFAULT_PREVIEW_CHARS",
    "DEFAULT_STOP_SEQUENCES",
    "PROMPT_STYLES",
    "SMALL_MODEL_PREFIXES",
    "SYSTEM_PROMPT",
    "SYSTEM_PROMPT_SMALL",
    "budget_note",
    "chunk_chars_for",
    "describe_context",
    "describe_tools",
    "finalize_prompt",
    "first_user_message",
    "format_description",
    "no_code_nudge",
    "prompt_style_for",
    "render_system_prompt",
    "repl_output_message",
    "small_examples",
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
1. Peek: the first message describes `context`: its shape (delimited records, JSON \
lines, log lines, text, a list of records or texts, a dict of documents), its fields, \
counts, a few sample records and a line of code that reads it. Print more only if that \
is not enough.
2. Records and lines (counts, totals, averages, most or least frequent, distinct \
values, filters): read them into Python values, select the records that match every \
condition of the query, and compute the answer in Python from the selection; print how \
many records you selected and a few of them to check the conditions. A list context is \
already parsed: loop over it (it has no `.splitlines()`); a dict: use its keys.
3. Search text: use `re` or string methods to find the parts that matter.
4. Meaning that key words cannot find: split the context into chunks and ask \
`llm_query_batched` one question per chunk (asking for "NONE" when a chunk has no \
answer); reduce the answers in Python.
5. Summarise hierarchically when everything matters: summarise chunks, then summaries.
6. Recurse with `recursive_lm` on a subset that needs its own exploration.
Compute exact answers (counts, sums, averages, dates) with Python, not by guessing, and \
take every name and value in your conditions from the query and the description, not \
from these instructions.

## Finishing
When you know the answer, call `FINAL(answer)` in code with the computed value (e.g. \
`FINAL(total)`), or write FINAL(answer) on its own line after your code block. Write the \
answer itself, never a description of it, and only a value you computed or saw in REPL \
output. Do not write the REPL output yourself; wait for it. You have {max_iterations} \
turns.\
"""

SYSTEM_PROMPT_SMALL = """\
You answer a query about data stored in the Python variable `context` ({context_type}). \
You cannot read it directly: the user message describes it (its shape, fields, first \
records and a line of code that reads it). Write Python code in a ```repl block; the \
REPL runs it and shows you what it printed (cut to {max_output_chars} characters). \
Variables persist between turns.

{examples}

Rules:
- Use the names, fields and values of the query and the description, not those of the \
example; put every condition of the query in your code.
- Compute numbers with code, never guess; finish with FINAL(variable) in code.
- If a search finds nothing, try fewer or other key words.
- Never repeat code whose output you have already seen.
- `llm_query(prompt)` asks a sub-model about text you put in the prompt (at most \
{sub_prompt_chars} characters); `llm_query_batched(prompts)` asks many at once.
- Modules you may import: {modules}.{tools}
- Wait for the REPL output before you answer; never write it yourself.
- When you know the answer, reply FINAL(answer) on its own line with the answer itself.
You have {max_iterations} turns.\
"""
"""The compact system prompt for small models (``prompt_style="small"``); ``{examples}`` is
filled with the worked examples that suit the context's shape (:func:`small_examples`).

Measured on the local Qwen2.5-Coder-0.5B (``benchmarks/RESULTS.md``). It copies the first
code it sees: with the default prompt it copied ``print(context[:500])`` turn after turn;
with a fact-search example first it ran that example's ``re.findall`` on CSV rows, JSON
lines and even on a list (``TypeError``), seven times in a row (issue 13). So the first
example is the one for the context's shape, chosen from the description, and each example
is headed by the kind of question it is for. No example ends in a literal number (the model
copied the count of a "How many" example as its answer on unrelated questions), and no
example uses a benchmark question's conditions."""

FACT_EXAMPLE = """\
Example for a question about a fact in a text:
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
FINAL(Turin)"""

RECORDS_QUESTIONS = {
    "count": ("How many parcels were sent to Oslo by air?", ""),
    "distinct": ("How many different cities received parcels by air?", "{city}"),
    "total": ("What is the total weight of the parcels sent to Oslo?", "float({weight})"),
    "average": ("What is the average weight of the parcels sent to Oslo?", "float({weight})"),
    "most_often": ("Which city received the most parcels by air?", "{city}"),
    "least_often": ("Which city received the fewest parcels by air?", "{city}"),
    "highest": ("Which parcel sent to Oslo is the heaviest? Give its id.", "float({weight})"),
    "lowest": ("Which parcel sent to Oslo is the lightest? Give its id.", "float({weight})"),
}
"""One worked question per operation of :data:`langchain_rlm.grounding.OPERATIONS` (which
gives the line that computes it), and the field it reads from the selected rows. The small
model copies the operation of the first example it sees (it answered "which page most
often" with ``len(set(...))``, the example before it), so the example for the question's
operation comes first."""
RECORDS_CONDITIONS = {
    "count": '{city} == "Oslo" and {transport} == "air"',
    "distinct": '{transport} == "air"',
    "most_often": '{transport} == "air"',
    "least_often": '{transport} == "air"',
}
RECORDS_TEMPLATE = """\
Example for "{question}" over the records:
User: Query: {question}
You:
```repl
{read}{imports}
sel = [r for r in rows if {conditions}]  # one test per condition of the query{values}
{result}
if sel:
    FINAL(result)
print("0 selected: fix the conditions")
```"""
FALLBACK_OPERATION = "total"
"""The records example shown when the question's wording names no operation."""


def records_example(operation: str, read: str, fields: Mapping[str, str]) -> str:
    """The worked records example for ``operation``, reading rows with ``read``."""
    question, field = RECORDS_QUESTIONS[operation]
    line = grounding.OPERATIONS[operation][1]
    if operation in ("highest", "lowest"):  # the best row, then its id
        values, result = line.format(key=field), 'result = best["id"]'
    else:
        values, result = (f"values = [{field} for r in sel]" if field else ""), line
    text = RECORDS_TEMPLATE.format(
        question=question,
        read=read,
        imports="\nfrom collections import Counter" if "Counter" in result else "",
        conditions=RECORDS_CONDITIONS.get(operation, '{city} == "Oslo"'),
        values=f"\n{values}" if values else "",
        result=result,
    )
    return text.format(**fields)


LINES_EXAMPLE = """\
Example for "How many ...?" over the lines:
User: Query: How many lines report a timeout?
You:
```repl
{read}
sel = [r for r in rows if "timeout" in r]  # one test per condition of the query
result = len(sel)
if sel:
    FINAL(result)
print("0 selected: fix the conditions")
```

Example for "How many different ...?" or "Which ... most often?" over the lines:
User: Query: How many different regions report a timeout?
You:
```repl
{read}
import re
from collections import Counter
sel = [r for r in rows if "timeout" in r]
values = [re.search(r"region=(\\S+)", r).group(1) for r in sel]
result = len(set(values))  # most often: Counter(values).most_common(1)[0][0]
if sel:
    FINAL(result)
print("0 selected: fix the conditions")
```
"""

TEXT_LINES_EXAMPLE = """\
Example for "How many lines ...?" in a text:
User: Query: How many lines mention a timeout?
You:
```repl
rows = context.splitlines()
sel = [r for r in rows if "timeout" in r]  # one test per condition of the query
result = len(sel)
if sel:
    FINAL(result)
print("0 selected: fix the conditions")
```"""

DOCUMENTS_EXAMPLE = """\
Example for a question about named documents:
User: Query: Which deadline does the document 'canal-survey' give?
You:
```repl
import re
text = context["canal-survey"]
hits = re.findall(r"[^.]*deadline[^.]*", text, re.IGNORECASE)
print(hits[:5])
if len(hits) == 1:
    FINAL(hits[0].strip())
```
To find which document says something: \
`hits = [key for key, text in context.items() if "some words" in text]`."""
"""The sentence that holds the answer is the answer when it is the only one: the 0.5B model
resent this cell instead of answering from its output (a two-turn example), until the
finalizing turn."""

FIND_DOCUMENT_EXAMPLE = """\
Example for "Which document ...?":
User: Query: Which document says that the old bridge was closed?
You:
```repl
hits = [key for key, text in context.items() if "bridge was closed" in text]
print(hits)
if len(hits) == 1:
    FINAL(hits[0])
```"""
"""First for a question that names no document key: the 0.5B model copied the named-document
example's key (``context["canal-survey"]``, a ``KeyError``) six turns in a row."""

COMPUTE_HINTS = """\
Other answers: average: `sum(...) / len(sel)`; least often: \
`Counter(...).most_common()[-1][0]`; highest: `max(sel, key=lambda r: ...)`. If `context` is \
a list, it is already parsed: never call `.splitlines()` on it."""

MAP_REDUCE_EXAMPLE = """\
Example for a question about meaning that key words cannot find (ask a sub-model about \
every chunk):
```repl
text = context if isinstance(context, str) else "\\n".join(map(str, context))
chunks = [text[i:i + {chunk}] for i in range(0, len(text), {chunk})]
answers = llm_query_batched(["Does this text report that a parcel was lost? If so, \
name the parcel; if not, reply NONE.\\n\\n" + c for c in chunks])
print([a for a in answers if "NONE" not in a])
```"""

DICT_ROW_FIELDS = {"city": 'r["city"]', "weight": 'r["weight"]', "transport": 'r["transport"]'}
NESTED_ROW_FIELDS = {
    "city": 'r["metadata"]["city"]',
    "weight": 'r["metadata"]["weight"]',
    "transport": 'r["metadata"]["transport"]',
}
EXAMPLE_READ = {
    "delimited": describe.delimited_read_code(","),
    "json_lines": "import json; rows = [json.loads(line) for line in context.splitlines() "
    "if line.strip()]",
    "records": "rows = context",
    "log_lines": "import re; rows = context.splitlines()",
    "strings": "rows = context",
}
TYPE_KINDS = {"list[dict]": "records", "list[str]": "strings", "dict": "documents"}


COUNT_QUESTION = re.compile(r"^\W*(how many|count|what is the number|number of)\b", re.IGNORECASE)
"""A question that counts: in a text, the counting example goes first (the small model
copies the first example it sees)."""


def small_examples(
    kind: str | None,
    sub_prompt_chars: int,
    query: str = "",
    hints: Sequence[str] = (),
    read: str | None = None,
) -> str:
    """The worked examples for a context of this shape (``kind`` from the description);
    first the one for the question's kind: its operation for rows, count or fact in a text,
    a named document or a search over documents (``hints`` from
    :func:`langchain_rlm.grounding.ground_query`). ``read`` is the description's line that
    reads this context (its code, without the comment); the examples use it."""
    map_reduce = MAP_REDUCE_EXAMPLE.replace("{chunk}", str(chunk_chars_for(sub_prompt_chars)))
    operation = grounding.question_operation(query)
    read_line = (read or "").split("  #", 1)[0].strip() or EXAMPLE_READ.get(kind or "", "")
    if kind in ("delimited", "json_lines", "records"):
        fields = NESTED_ROW_FIELDS if kind == "records" else DICT_ROW_FIELDS
        first = records_example(operation or FALLBACK_OPERATION, read_line, fields)
        return f"{first}\n\n{COMPUTE_HINTS}"
    if kind in ("log_lines", "strings"):
        example = LINES_EXAMPLE.replace("{read}", read_line)
        if operation not in (None, "count"):  # the example that extracts values first
            head, _, tail = example.partition("\n\nExample for ")
            example = f"Example for {tail.strip()}\n\n{head}"
        if kind == "strings" and operation is None:  # a question about meaning: map-reduce
            return "\n\n".join([map_reduce, example, COMPUTE_HINTS])
        parts = [example, COMPUTE_HINTS] + ([map_reduce] if kind == "strings" else [])
        return "\n\n".join(parts)
    if kind == "documents":
        if any(hint.startswith(grounding.DOCUMENT_NAMED) for hint in hints):
            return f"{DOCUMENTS_EXAMPLE}\n\n{map_reduce}"
        return f"{FIND_DOCUMENT_EXAMPLE}\n\n{DOCUMENTS_EXAMPLE}\n\n{map_reduce}"
    if COUNT_QUESTION.search(query):
        return f"{TEXT_LINES_EXAMPLE}\n\n{FACT_EXAMPLE}\n\n{map_reduce}"
    return f"{FACT_EXAMPLE}\n\n{TEXT_LINES_EXAMPLE}\n\n{map_reduce}"


PROMPT_STYLES = ("default", "small")
"""``default``: :data:`SYSTEM_PROMPT`; ``small``: :data:`SYSTEM_PROMPT_SMALL`."""

SMALL_MODEL_PREFIXES = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
"""Root models that get the ``small`` prompt under ``prompt_style="auto"`` (both embedded
models were measured with it: ``benchmarks/RESULTS.md``, "Query grounding")."""


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
{hints}
{next_step} Do not answer before you have seen the relevant parts.
Query: {query}
Reply with a ```repl block.\
"""
"""The query comes first and again last: the description's sample records sit in between,
and the 0.5B model took its search key from a sample record instead of the query."""

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
"{query}". Reply with FINAL(...) around the answer itself, and nothing else.\
"""

NEXT_STEP_HINT = (
    "\nIf this output answers the query, reply FINAL(answer) with the answer itself; "
    "otherwise write new code in a ```repl block."
)
"""Closes every REPL output message (the budget note now opens it). Measured on the local 0.5B
model: with the budget note last and no hint, it often replied with the note's turn count
("4", or ``FINAL(3)``) instead of acting on the output. A longer hint ("Your variables still
exist: never run the same code again ...", issue 13) made it worse: on a found needle it
re-ran its search cell without ``FINAL`` (this wording: the same cell plus ``FINAL(code)``),
so needle runs took 7 calls instead of 2 (``benchmarks/RESULTS.md``)."""

TRUNCATION_MARKER = "\n... [{omitted} more characters not shown; print smaller slices] ..."


CHUNK_SHARE = 0.75
"""Share of the sub-prompt budget one chunk fills in the map-reduce example."""
MIN_CHUNK_CHARS = 1_000


def chunk_chars_for(sub_prompt_chars: int) -> int:
    """Chunk size for the map-reduce example: most of a sub-prompt, in round thousands."""
    return max(MIN_CHUNK_CHARS, int(sub_prompt_chars * CHUNK_SHARE) // 1000 * 1000)


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
    description: Mapping[str, Any] | None = None,
    query: str = "",
    hints: Sequence[str] = (),
) -> str:
    """The system prompt with this run's facts filled in (``style``: see :data:`PROMPT_STYLES`).

    ``description`` (from :func:`describe_context`) picks the small style's worked examples
    by the context's shape; without it the shape is guessed from ``context_type``.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose from {', '.join(PROMPT_STYLES)}")
    template = SYSTEM_PROMPT_SMALL if style == "small" else SYSTEM_PROMPT
    kind = description.get("kind") if description else TYPE_KINDS.get(context_type)
    return template.format(
        examples=small_examples(
            kind,
            sub_prompt_chars,
            query,
            hints,
            describe.read_hint(description) if description else None,
        ),
        context_type=context_type,
        max_iterations=max_iterations,
        max_output_chars=max_output_chars,
        sub_prompt_chars=f"{sub_prompt_chars:,}",
        chunk_chars=chunk_chars_for(sub_prompt_chars),
        recursive_description=RECURSIVE_AVAILABLE if can_recurse else RECURSIVE_LEAF,
        modules=", ".join(modules),
        tools=describe_tools(tools or {}),
    )


def describe_context(context: Any, preview_chars: int = DEFAULT_PREVIEW_CHARS) -> dict[str, Any]:
    """A small, JSON-able, structure-aware description of the context.

    See :func:`langchain_rlm.describe.describe_context`: the shape, fields, counts and a
    sample of a few records, bounded in size whatever the context's size.
    """
    return describe.describe_context(context, preview_chars)


def format_description(description: Mapping[str, Any]) -> str:
    """The description as short lines for the first user message (with a read hint)."""
    return describe.format_description(description)


QUERY_HINTS_HEADER = "What the query's words are in the data:"
QUERY_DRAFT_HEADER = "A draft of the code from the query's words (check it against the data):"


def _render_hints(hints: Sequence[str], kind: Any) -> str:
    """Document hints as a list; for rows, the draft's code lines indented."""
    if not hints:
        return ""
    if kind == "documents":
        return f"\n{QUERY_HINTS_HEADER}" + "".join(f"\n- {hint}" for hint in hints) + "\n"
    return f"\n{QUERY_DRAFT_HEADER}" + "".join(f"\n    {hint}" for hint in hints) + "\n"


def first_user_message(
    query: str, description: Mapping[str, Any], hints: Sequence[str] = ()
) -> str:
    """The query, the context's description, the query's grounding
    (:func:`langchain_rlm.grounding.ground_query`) and the first step suited to the shape."""
    return FIRST_USER_MESSAGE.format(
        query=query,
        description=format_description(description),
        hints=_render_hints(hints, description.get("kind")),
        next_step=describe.first_step(description, grounding.question_operation(query)),
    )


def truncate_output(text: str, limit: int) -> str:
    """Cut REPL output for the model; the history keeps the whole text."""
    if len(text) <= limit:
        return text
    return text[:limit] + TRUNCATION_MARKER.format(omitted=len(text) - limit)


LAST_TURN_NOTE = " Your next reply is your last turn: reply FINAL(answer) in it."
NO_TURN_NOTE = " No turns are left."


def budget_note(iteration: int, max_iterations: int, extra: str = "") -> str:
    """``[k of n turns left]``; "last turn" only when exactly one reply is left."""
    left = max(0, max_iterations - iteration)
    note = f"[{left} of {max_iterations} turns left{extra}]"
    if left == 1:
        note += LAST_TURN_NOTE
    elif left == 0:
        note += NO_TURN_NOTE
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


# -- accepting an answer (graph.execute) ---------------------------------------------------
FINAL_AFTER_ERROR = (
    "Your {kind}(...) was not accepted because your code raised an error. "
    "Fix the code first; answer only from output you have seen."
)

FINAL_OF_UNDEFINED = (
    "{kind}({name}) was not accepted: there is no variable named {name!r} "
    "(defined: {names}). Compute it in code first, or write FINAL with the answer text "
    "itself in quotes."
)

VERIFY_ANSWER = (
    "Your answer {answer!r} does not appear in any output you have seen in this run. "
    "Check it with code first: print the lines or values it comes from. Then answer "
    "again with FINAL(...)."
)

OUTPUT_SCHEMA_NOTE = (
    "Your FINAL value was not accepted: {error}\n"
    "Call FINAL(value) again with a dict (or list) that matches this JSON schema:\n{schema}"
)

OUTPUT_SCHEMA_INSTRUCTIONS = (
    "\n\nAnswer format: finish with FINAL(value), where value is a dict (or list) that "
    "matches this JSON schema (build it in code, then call FINAL on it):\n{schema}"
)


def final_after_error(kind: str) -> str:
    return FINAL_AFTER_ERROR.format(kind=kind)


def final_of_undefined(kind: str, name: str, names: Sequence[str]) -> str:
    return FINAL_OF_UNDEFINED.format(kind=kind, name=name, names=", ".join(names) or "none")


def verify_answer_note(answer: str) -> str:
    return VERIFY_ANSWER.format(answer=answer)


def output_schema_note(error: str, schema: Mapping[str, Any]) -> str:
    return OUTPUT_SCHEMA_NOTE.format(error=error, schema=json.dumps(schema, indent=1))


def output_schema_instructions(schema: Mapping[str, Any]) -> str:
    """Appended to the first user message of a query when an output schema is set."""
    return OUTPUT_SCHEMA_INSTRUCTIONS.format(schema=json.dumps(schema, indent=1))


REPEATED_CODE = (
    "You sent the same code as in your previous turn, so it was not run again. Its output "
    "was:\n```\n{output}\n```\nIf that output answers the query, reply FINAL(answer) with "
    "the answer itself; otherwise write different code."
)
"""The 0.5B model resent a cell whose output held the answer, turn after turn; the output
is shown again here. A third copy in a row ends the turns (``finished_reason="stalled"``)
and the finalizing turn asks for the answer."""


def repeated_code_note(output: str) -> str:
    return REPEATED_CODE.format(output=output.strip() or "(nothing printed)")


ERROR_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"NameError: name '(Final|final)' is not defined"), "Write FINAL in capitals."),
    (
        re.compile(r"NameError: name 'Counter' is not defined"),
        "Add `from collections import Counter` to your code.",
    ),
    (
        re.compile(r"NameError: name '(re|json|math|statistics|collections)' is not defined"),
        "Add `import {0}` to your code.",
    ),
    (
        re.compile(r"'list' object has no attribute '(splitlines|split|lower)'"),
        "`context` (or that variable) is already a list: loop over its items.",
    ),
    (
        re.compile(r"'NoneType' object (has no attribute 'group'|is not subscriptable)"),
        "re.search found no match in some rows: keep only the rows where it matches.",
    ),
    (
        re.compile(r"not supported between instances of '(str|int|float)' and '(str|int|float)'"),
        "Some values are text: convert them with float(...) before comparing.",
    ),
    (
        re.compile(r"(max|min)\(\) (arg|iterable argument) is an empty sequence|ZeroDivisionError"),
        "No row was selected: check each condition against the sample records.",
    ),
)
"""Generic explanations of errors the small model could not read on its own (it resent
the failing cell unchanged): one line, added after the error in the REPL output message."""
MAX_LISTED_NAMES = 12


def error_hint(error: str | None, description: Mapping[str, Any]) -> str | None:
    """A one-line explanation of a common error, with the fix (or ``None``)."""
    if not error:
        return None
    key = re.search(r"KeyError: ['\"]?([^'\"\n]*)", error)
    if key:
        return _key_error_hint(key.group(1), description)
    for pattern, hint in ERROR_HINTS:
        match = pattern.search(error)
        if match:
            return hint.format(*match.groups())
    return None


def _key_error_hint(key: str, description: Mapping[str, Any]) -> str:
    fields = description.get("fields")
    if isinstance(fields, Mapping) and fields:
        names = ", ".join(list(fields)[:MAX_LISTED_NAMES])
        return f"{key!r} is not a field of the rows; their fields are: {names}."
    keys = description.get("first_keys")
    if isinstance(keys, Sequence) and keys:
        names = ", ".join(repr(name) for name in list(keys)[:MAX_LISTED_NAMES])
        return f"{key!r} is not a key of `context`; its keys include: {names}."
    return f"{key!r} is not a key there: print the keys first."
