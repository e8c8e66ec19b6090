"""A structure-aware description of the context, for the root model's first message.

The root model never sees the context, only this description. A character preview alone
hides the structure a question needs (measured on the embedded 0.5B model, issue 13: on a
CSV-like log it regexed the preview line; on a list of records it called
``context.splitlines()`` in every cell). So the description names the *shape* and shows how
to read it:

* ``str`` contexts are classified from their first :data:`HEAD_SCAN_CHARS` characters as
  ``delimited`` (a header and a delimiter that splits every sampled line into the same number
  of fields), ``json_lines`` (each line a JSON object: its fields and their types),
  ``log_lines`` (lines opening with a timestamp or carrying a level such as ``[WARN]``), or
  ``text`` (prose: paragraphs and lines). Record and line counts are exact (one C-speed
  ``str.count`` over the whole text); blank-line separated parts are located, so a second
  table further down is announced with its first line.
* ``list`` contexts: ``records`` (dicts: the fields, nested ``metadata`` fields flattened as
  ``metadata.year``, their types and, for fields with few values, the values seen),
  ``strings`` (item lengths), or mixed.
* ``dict`` contexts: ``documents`` (str values: sizes) or ``mapping`` (value types).

Every shape gets a sample of its first few records, each cut short. The description is a
small JSON-able dict (bounded by constants below, whatever the context's size: a 50 MB string
or a 1M-item list give a few KB), because it is stored in checkpointed state. Work is bounded
too: strings are scanned only in their head (plus ``str.count`` / ``str.find`` for counts);
lists and dicts are sampled (:data:`SAMPLE_ITEMS` items, evenly spread) except for their
lengths. :func:`format_description` renders it for the model, including a line of Python
that reads the shape (``rows = ...``): a generic recipe per shape, never per question.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "HEAD_SCAN_CHARS",
    "MAX_DESCRIPTION_CHARS",
    "delimited_read_code",
    "describe_context",
    "first_step",
    "format_description",
    "is_header",
    "json_objects",
    "read_hint",
]

HEAD_SCAN_CHARS = 20_000
"""Characters of a string context inspected to find its shape."""
SCAN_LINES = 40
"""Lines of the head used to decide the shape."""
SAMPLE_RECORDS = 3
"""Records (lines, items, documents) shown as a sample."""
SAMPLE_CHARS = 160
"""Characters kept of each sampled record."""
SAMPLE_ITEMS = 2_000
"""List items / dict values inspected for field types (evenly spread over the container)."""
MAX_FIELDS = 24
"""Fields (or keys) listed at most."""
MAX_FIELD_NAME = 40
"""Characters kept of a field or key name."""
FEW_VALUES = 8
"""A field with at most this many distinct values in the sample has them listed."""
MAX_VALUE_CHARS = 30
"""Characters kept of each listed value."""
MAX_PARTS = 4
"""Blank-line separated parts of a record text that are located and shown."""
EXACT_SIZE_ITEMS = 200_000
"""Up to this many items, a list's total characters are counted exactly (else estimated)."""
MAX_DESCRIPTION_CHARS = 6_000
"""Upper bound of ``len(json.dumps(description))`` (checked by the tests)."""

DELIMITERS = (",", "\t", ";", "|")
LEVEL_RE = re.compile(r"\b(TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|CRITICAL|FATAL)\b")
TIMESTAMP_RE = re.compile(
    r"^\s*\[?(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?|\d{2}:\d{2}:\d{2}|"
    r"[A-Z][a-z]{2} +\d{1,2} \d{2}:\d{2}:\d{2})"
)
LOG_SHARE = 0.6
"""Share of sampled lines that must look like log lines."""
JSON_SHARE = 0.8
"""Share of sampled lines that must be JSON objects."""
MIN_DELIMITED_LINES = 3
MAX_HEADER_WORDS = 4
"""A header field has at most this many words (prose split at commas has more)."""
MAX_BLANK_SHARE = 0.2
"""Records are not separated by blank lines: above this share of blank lines it is prose."""


# -- strings ---------------------------------------------------------------------------


def _cut(text: str, limit: int = SAMPLE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _head_lines(text: str) -> list[str]:
    """Complete lines of the head (the last, possibly cut, line dropped if more follow)."""
    head = text[:HEAD_SCAN_CHARS]
    lines = head.split("\n")
    if len(text) > HEAD_SCAN_CHARS and len(lines) > 1:
        lines = lines[:-1]
    return lines[: SCAN_LINES + 1]


def _delimiter(lines: Sequence[str]) -> str | None:
    """A delimiter giving every sampled line the same number (>= 2) of fields."""
    rows = [line for line in lines if line.strip()]
    if len(rows) < MIN_DELIMITED_LINES or len(lines) - len(rows) > MAX_BLANK_SHARE * len(lines):
        return None
    for delimiter in DELIMITERS:
        counts = {line.count(delimiter) for line in rows}
        if len(counts) == 1 and counts.pop() >= 1:
            return delimiter
    return None


def json_objects(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The lines that are JSON objects, parsed (the others skipped)."""
    objects = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            objects.append(value)
    return objects


def _json_objects(lines: Sequence[str]) -> list[dict[str, Any]] | None:
    rows = [line for line in lines if line.strip()]
    objects = json_objects(rows)
    if rows and len(objects) >= JSON_SHARE * len(rows) and len(objects) >= 2:
        return objects
    return None


def is_header(fields: Sequence[str]) -> bool:
    """A header row: distinct, non-numeric, short names (a few words, no sentence end)."""
    names = [field.strip() for field in fields]
    return (
        len(set(names)) == len(names)
        and all(names)
        and not any(_is_number(name) for name in names)
        and all(len(name) <= MAX_FIELD_NAME for name in names)
        and all(len(name.split()) <= MAX_HEADER_WORDS for name in names)
        and not any(name.endswith((".", "!", "?")) for name in names)
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _value_type(text: str) -> str:
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return "int"
    if _is_number(text):
        return "float"
    return "str"


def _line_count(text: str) -> int:
    return text.count("\n") + 1 if text else 0


def _parts(text: str) -> list[dict[str, Any]]:
    """Where blank lines split the text, with the first line after each (bounded)."""
    parts: list[dict[str, Any]] = []
    start = text.find("\n\n")
    while start >= 0 and len(parts) < MAX_PARTS:
        begin = start + 2
        while begin < len(text) and text[begin] == "\n":
            begin += 1
        end = text.find("\n", begin)
        first = text[begin : end if end >= 0 else len(text)]
        if first:
            parts.append({"line": text.count("\n", 0, begin) + 1, "first_line": _cut(first)})
        start = text.find("\n\n", begin)
    return parts


def _describe_str(text: str, preview_chars: int) -> dict[str, Any]:
    lines = _head_lines(text)
    description: dict[str, Any] = {"type": "str", "total_chars": len(text)}
    total_lines = _line_count(text)
    blank_separated = text.count("\n\n")
    objects = _json_objects(lines)
    delimiter = None if objects else _delimiter(lines)
    if objects is not None:
        description |= {
            "kind": "json_lines",
            "lines": total_lines,
            "fields": _field_types(objects),
            "sample": [_cut(line) for line in lines if line.strip()][:SAMPLE_RECORDS],
        }
    elif delimiter is not None and is_header(lines[0].split(delimiter)):
        header = lines[0].split(delimiter)
        data = [line.split(delimiter) for line in lines[1:] if line.strip()]
        types = {
            _cut(name.strip(), MAX_FIELD_NAME): _column_type([row[i] for row in data])
            for i, name in enumerate(header[:MAX_FIELDS])
        }
        description |= {
            "kind": "delimited",
            "delimiter": delimiter,
            "header": _cut(lines[0], 400),
            "fields": types,
            "records": total_lines - 1 - blank_separated - text.endswith("\n"),
            "sample": [_cut(line) for line in lines[1:] if line.strip()][:SAMPLE_RECORDS],
        }
    elif _log_share(lines) >= LOG_SHARE:
        levels = Counter(m.group(1) for line in lines if (m := LEVEL_RE.search(line)))
        description |= {
            "kind": "log_lines",
            "lines": total_lines,
            "levels_seen": sorted(levels)[:FEW_VALUES],
            "sample": [_cut(line) for line in lines if line.strip()][:SAMPLE_RECORDS],
        }
    else:
        description |= {
            "kind": "text",
            "lines": total_lines,
            "paragraphs": blank_separated + 1 if text else 0,
            "preview": text[:preview_chars],
        }
        return description
    parts = _parts(text) if blank_separated else []
    if parts:
        description["parts"] = parts
    return description


def _log_share(lines: Sequence[str]) -> float:
    rows = [line for line in lines if line.strip()]
    if not rows:
        return 0.0
    hits = sum(1 for line in rows if TIMESTAMP_RE.match(line) or LEVEL_RE.search(line[:80]))
    return hits / len(rows)


def _column_type(values: Sequence[str]) -> str:
    kinds = {_value_type(value) for value in values}
    if kinds <= {"int"}:
        return "int"
    if kinds <= {"int", "float"}:
        return "float"
    return "str"


# -- lists and dicts -------------------------------------------------------------------


def _spread(count: int, limit: int = SAMPLE_ITEMS) -> range:
    """Indexes of at most ``limit`` items spread evenly over ``count``."""
    step = max(1, -(-count // limit))
    return range(0, count, step)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        inner = sorted({_json_type(item) for item in value[:20]})
        return f"list[{'|'.join(inner)}]" if inner else "list"
    return {int: "int", float: "float", str: "str", dict: "dict"}.get(type(value), "str")


def _flatten(record: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """``(field, value)`` pairs, one level of nested dicts flattened as ``outer.inner``."""
    for key, value in record.items():
        if isinstance(value, Mapping) and value:
            for inner, item in value.items():
                yield f"{key}.{inner}", item
        else:
            yield str(key), value


def _field_types(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Field -> type names (and the values, when the sample shows only a few)."""
    types: dict[str, set[str]] = {}
    values: dict[str, set[str]] = {}
    seen = 0
    for record in records:
        seen += 1
        for name, value in _flatten(record):
            if name not in types and len(types) >= MAX_FIELDS:
                continue
            types.setdefault(name, set()).add(_json_type(value))
            bucket = values.setdefault(name, set())
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, str | int | bool) and len(bucket) <= FEW_VALUES:
                    bucket.add(_cut(str(item), MAX_VALUE_CHARS))
    fields = {}
    for name, kinds in types.items():
        text = "|".join(sorted(kinds))
        few = values.get(name, set())
        if seen > FEW_VALUES and 1 < len(few) <= FEW_VALUES and "float" not in kinds:
            text += " (values seen: " + ", ".join(sorted(few)) + ")"
        fields[_cut(name, MAX_FIELD_NAME)] = text
    return fields


def _item_chars(item: Any) -> int:
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):
        return sum(_item_chars(value) for value in item.values())
    if isinstance(item, list):
        return sum(_item_chars(value) for value in item)
    return len(str(item))


MAX_SAMPLE_DEPTH = 3
"""Nesting levels of a sampled record that are shown (deeper containers become "...")."""
SAMPLE_VALUE_CHARS = 40
"""Characters kept of each string inside a sampled record (so its other fields show)."""


def _shorten(value: Any, depth: int = 0) -> Any:
    """A record with long strings cut and long lists / dicts trimmed, for the sample."""
    if isinstance(value, str):
        return _cut(value, SAMPLE_VALUE_CHARS)
    if depth >= MAX_SAMPLE_DEPTH:
        return value if isinstance(value, int | float | bool) or value is None else "..."
    if isinstance(value, dict):
        return {
            _cut(str(k), MAX_FIELD_NAME): _shorten(v, depth + 1)
            for k, v in list(value.items())[:MAX_FIELDS]
        }
    if isinstance(value, list):
        return [_shorten(v, depth + 1) for v in value[:SAMPLE_RECORDS]]
    return value


def _sample_text(item: Any, limit: int = SAMPLE_CHARS * 2) -> str:
    """One sampled item: a str cut short, anything else as compact JSON with short fields."""
    if isinstance(item, str):
        return _cut(item)
    return _cut(json.dumps(_shorten(item), ensure_ascii=False, default=str), limit)


def _size_fields(lengths: Sequence[int], count: int, exact: bool) -> dict[str, Any]:
    total = sum(lengths) if exact else round(sum(lengths) / max(1, len(lengths)) * count)
    fields: dict[str, Any] = {
        "total_chars": total,
        "item_chars_min": min(lengths, default=0),
        "item_chars_max": max(lengths, default=0),
    }
    if not exact:
        fields["total_chars_estimated"] = True
    return fields


def _describe_list(items: list[Any]) -> dict[str, Any]:
    count = len(items)
    exact = count <= EXACT_SIZE_ITEMS
    indexes = range(count) if exact else _spread(count, SAMPLE_ITEMS * 5)
    lengths = [_item_chars(items[i]) for i in indexes]
    sampled = [items[i] for i in _spread(count)]
    kinds = Counter(_json_type(item).split("[")[0] for item in sampled)
    main = kinds.most_common(1)[0][0] if kinds else ""
    description: dict[str, Any] = {
        "type": f"list[{main}]" if len(kinds) == 1 else "list",
        "items": count,
        **_size_fields(lengths, count, exact),
    }
    if len(kinds) == 1 and main == "dict":
        description["kind"] = "records"
        description["fields"] = _field_types(sampled)
    elif len(kinds) == 1 and main == "str":
        description["kind"] = "strings"
    else:
        description["kind"] = "mixed"
        description["item_types"] = dict(kinds.most_common(FEW_VALUES))
    description["sample"] = [_sample_text(item) for item in items[:SAMPLE_RECORDS]]
    return description


def _describe_dict(mapping: dict[str, Any]) -> dict[str, Any]:
    keys = list(mapping)
    sampled = [mapping[keys[i]] for i in _spread(len(keys))]
    kinds = Counter(_json_type(value).split("[")[0] for value in sampled)
    lengths = [_item_chars(mapping[key]) for key in keys]
    description: dict[str, Any] = {
        "type": "dict",
        "keys": len(keys),
        "first_keys": [_cut(str(key), MAX_FIELD_NAME) for key in keys[:MAX_FIELDS]],
        "total_chars": sum(lengths),
        "value_chars_min": min(lengths, default=0),
        "value_chars_max": max(lengths, default=0),
    }
    if kinds and set(kinds) == {"str"}:
        description["kind"] = "documents"
    else:
        description["kind"] = "mapping"
        description["value_types"] = dict(kinds.most_common(FEW_VALUES))
        records = [value for value in sampled if isinstance(value, dict)]
        if records:
            description["value_fields"] = _field_types(records)
    description["sample"] = [
        _cut(f"{key!s}: {_sample_text(mapping[key])}") for key in keys[:SAMPLE_RECORDS]
    ]
    return description


def describe_context(context: Any, preview_chars: int) -> dict[str, Any]:
    """The description of ``context`` (a str, list or dict): small, JSON-able, bounded."""
    if isinstance(context, str):
        return _describe_str(context, preview_chars)
    if isinstance(context, list):
        return _describe_list(context)
    if isinstance(context, dict):
        return _describe_dict(context)
    raise TypeError(
        f"cannot describe a context of type {type(context).__name__}: pass a str, list or dict"
    )


# -- rendering -------------------------------------------------------------------------

KIND_NAMES = {
    "delimited": "delimited records (a header line, then one record per line)",
    "json_lines": "JSON lines (one JSON object per line)",
    "log_lines": "log lines (one event per line)",
    "text": "text",
    "records": "a list of records (dicts)",
    "strings": "a list of texts (str)",
    "mixed": "a list of mixed items",
    "documents": "a dict of documents (key -> text)",
    "mapping": "a dict",
}


def delimited_read_code(delimiter: str) -> str:
    """Read delimited records into dicts, numbers as ``float`` (the 0.5B model compared
    the ``str`` values with numbers, a ``TypeError`` it never fixed)."""
    return (
        f"fields = context.splitlines()[0].split({delimiter!r}); rows = [dict(zip(fields, "
        "[float(v) if v.replace('.', '', 1).isdigit() else v for v in "
        f"line.split({delimiter!r})])) for line in context.splitlines()[1:] if line]"
    )


def delimited_tables_read_code(delimiter: str) -> str:
    """Read tables separated by blank lines, each with its own header row, into dicts (the
    one-header line gave a second table's rows the first table's field names)."""
    return (
        f"rows = [dict(zip(t.splitlines()[0].split({delimiter!r}), "
        "[float(v) if v.replace('.', '', 1).isdigit() else v for v in "
        f"line.split({delimiter!r})])) for t in context.split('\\n\\n') "
        "for line in t.splitlines()[1:] if line]"
    )


def _has_second_table(description: Mapping[str, Any], delimiter: str) -> bool:
    """A blank line is followed by another header row (a second table)."""
    return any(
        delimiter in part["first_line"] and is_header(part["first_line"].split(delimiter))
        for part in description.get("parts") or ()
    )


def read_hint(description: Mapping[str, Any]) -> str | None:
    """One line of Python that reads the described shape, or ``None`` (plain text).

    Pure code with at most a trailing ``#`` comment: the 0.5B model copies this line
    verbatim, and an annotation in parentheses became a ``SyntaxError`` in every cell.
    """
    kind = description.get("kind")
    if kind == "delimited":
        delimiter = str(description.get("delimiter", ","))
        if _has_second_table(description, delimiter):
            return delimited_tables_read_code(delimiter)
        return delimited_read_code(delimiter)
    if kind == "json_lines":
        return (
            "import json; rows = [json.loads(line) for line in context.splitlines() "
            "if line.strip()]"
        )
    if kind == "log_lines":
        return "import re; rows = context.splitlines()  # each row is one line (a str)"
    if kind == "records":
        nested = next((name for name in description.get("fields") or {} if "." in name), None)
        example = (
            "; a nested field: r" + "".join(f"[{part!r}]" for part in nested.split(".", 1))
            if nested
            else ""
        )
        return f"rows = context  # already a list of dicts (no .splitlines()){example}"
    if kind == "strings":
        return "rows = context  # already a list of str: loop over it"
    if kind == "documents":
        return "for key, text in context.items(): ...  # or context[key] for one document"
    return None


def format_description(description: Mapping[str, Any]) -> str:
    """The description as short ``- name: value`` lines for the first user message."""
    lines = []
    kind = description.get("kind")
    if isinstance(kind, str):
        lines.append(f"- shape: {KIND_NAMES.get(kind, kind)}")
    for key, value in description.items():
        if value is None or key in ("kind", "sample", "preview", "parts", "fields"):
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            lines.append(f"- {key}: {value:,}")
        else:
            lines.append(f"- {key}: {value}")
    fields = description.get("fields")
    if isinstance(fields, Mapping):
        lines.append("- fields: " + "; ".join(f"{name}: {kind}" for name, kind in fields.items()))
    for part in description.get("parts") or ():
        lines.append(f"- a blank line; line {part['line']:,} starts: {part['first_line']!r}")
    sample = description.get("sample")
    if sample:
        lines.append(f"- first {len(sample)} records:")
        lines.extend(f"    {item}" for item in sample)
    preview = description.get("preview")
    if preview is not None:
        lines.append(f"- preview (first {len(preview)} characters): {preview!r}")
    hint = read_hint(description)
    if hint:
        lines.append(f"- read it with: {hint}")
    return "\n".join(lines)


RECORD_KINDS = frozenset({"delimited", "json_lines", "log_lines", "records", "strings"})
SELECT_STEP = (
    "Start your code with this line:\n{read}\nthen select the rows that match every "
    "condition of the query (only the query's names and values, not those of the sample "
    "records), compute the answer from them, print it with the number of selected rows, "
    "and call FINAL with it when rows were selected."
)
DOCUMENTS_STEP = (
    "Take a document the query names with context[key]; to find which document says "
    "something, loop over context.items() and search each text."
)
TEXT_STEP = "Start by searching the text for the key words of the query."


MEANING_STEP = (
    "If key words cannot find what the query asks, ask a sub-model about every chunk of the "
    "texts with llm_query_batched (the query in each prompt), then answer from the replies."
)


def first_step(description: Mapping[str, Any], operation: str | None = "") -> str:
    """The first step that suits the described shape; a list of texts with a question
    that computes nothing (``operation`` ``None``, see
    :func:`langchain_rlm.grounding.question_operation`) gets the map-reduce step."""
    kind = description.get("kind")
    if kind == "strings" and operation is None:
        return MEANING_STEP
    if kind in RECORD_KINDS:
        return SELECT_STEP.format(read=read_hint(description))
    if kind == "documents":
        return DOCUMENTS_STEP
    return TEXT_STEP
