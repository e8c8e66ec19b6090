"""Ground a query in its context: what the query's words are in the data.

The description (:mod:`langchain_rlm.describe`) says what the context looks like; it never
reads the query. A small model then has to map the query's words onto the data's fields by
itself, and the 0.5B model got that wrong more often than anything else (issue 13): it
tested a list field with ``==``, searched the worked example's key word instead of the
query's, or counted distinct values for "which ... most often".

:func:`ground_query` reads the query next to a bounded sample of the context and states,
for any question and any data of a known shape:

* which words of the query are values of which field, as a runnable test
  (``r["event"] == "purchase"``, ``"reviewed" in r["tags"]``), and comparisons written out
  in words (``a rating of at least 3.0`` -> ``r["rating"] >= 3.0``);
* which fields the query names;
* which document keys the query names, and in how many documents its phrases occur;
* which operation the question asks for (count, distinct count, total, average, most or
  least often, highest or lowest), from its wording alone.

It never answers: it reports no record, no count of matching records and no document that
a phrase was found in. Every hint is bounded (:data:`MAX_HINTS`) and the scan reads at most
:data:`MAX_SAMPLE_ROWS` records or :data:`MAX_SCAN_CHARS` characters of any context.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_rlm.describe import is_header, json_objects

__all__ = ["DOCUMENT_NAMED", "OPERATIONS", "ground_query", "question_operation"]

MAX_SAMPLE_ROWS = 20_000
"""Records read from the context to learn the values of its fields."""
MAX_SCAN_CHARS = 1_000_000
"""Characters of a string context read for that (in :data:`SCAN_WINDOWS` windows)."""
SCAN_WINDOWS = 8
MAX_VALUES_PER_FIELD = 5_000
"""Distinct values kept per field (a field of free text is not a key)."""
MAX_VALUE_CHARS = 60
MIN_VALUE_CHARS = 2
MAX_NGRAM = 4
"""Longest run of query words looked up as one value ("New York City", "desk lamp")."""
MAX_HINTS = 8
MAX_DOCUMENT_SCAN = 2_000
"""Documents of a dict context searched for the query's phrases."""
MAX_DOCUMENT_CHARS = 4_000_000
"""Characters of those documents searched, in all."""

STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "by",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "in",
        "into",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "the",
        "that",
        "their",
        "there",
        "these",
        "this",
        "those",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whose",
        "with",
        "many",
        "much",
        "most",
        "least",
        "more",
        "less",
        "same",
        "each",
        "every",
        "one",
        "all",
        "give",
        "name",
        "number",
        "answer",
        "only",
    ]
)

COMPARISONS = (
    (re.compile(r"\bat least\s+(-?\d+(?:\.\d+)?)"), ">="),
    (re.compile(r"(-?\d+(?:\.\d+)?)\s+or (?:more|higher|greater|above|over)\b"), ">="),
    (re.compile(r"\b(?:more|greater|higher) than\s+(-?\d+(?:\.\d+)?)"), ">"),
    (re.compile(r"\b(?:over|above)\s+(-?\d+(?:\.\d+)?)"), ">"),
    (re.compile(r"\bat most\s+(-?\d+(?:\.\d+)?)"), "<="),
    (re.compile(r"(-?\d+(?:\.\d+)?)\s+or (?:less|fewer|lower|below|under)\b"), "<="),
    (re.compile(r"\b(?:less|fewer|lower) than\s+(-?\d+(?:\.\d+)?)"), "<"),
    (re.compile(r"\b(?:under|below)\s+(-?\d+(?:\.\d+)?)"), "<"),
)
"""Comparisons written in words, number captured; the field is the one named before it."""
COMPARISON_FIELD_WORDS = 4
"""How many words before a comparison may name its field ("a rating of at least 3")."""
EQUALITY_FIELD_WORDS = 2
"""How many words before a number may name the field it equals ("the year 2016")."""
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")

OPERATIONS: dict[str, tuple[re.Pattern[str], str]] = {
    "distinct": (
        re.compile(r"\b(how many|number of|count)\b.*\b(distinct|different|unique)\b"),
        "result = len(set(values))",
    ),
    "average": (re.compile(r"\b(average|mean)\b"), "result = round(sum(values) / len(values), 2)"),
    "count": (re.compile(r"\b(how many|number of|count)\b"), "result = len(sel)"),
    "total": (re.compile(r"\b(total|sum|combined|altogether)\b"), "result = sum(values)"),
    "least_often": (
        re.compile(r"\b(fewest|least (often|common|frequent)|the least)\b"),
        "result = Counter(values).most_common()[-1][0]",
    ),
    "most_often": (
        re.compile(r"\b(most (often|common|frequent)|the most|most)\b"),
        "result = Counter(values).most_common(1)[0][0]",
    ),
    "highest": (
        re.compile(r"\b(highest|largest|biggest|maximum|greatest|longest|heaviest|latest)\b"),
        "best = max(sel, key=lambda r: {key})",
    ),
    "lowest": (
        re.compile(r"\b(lowest|smallest|minimum|shortest|lightest|earliest|cheapest)\b"),
        "best = min(sel, key=lambda r: {key})",
    ),
}
"""What a question asks for, tried in :data:`OPERATION_ORDER` (the first match wins), with
the line of code that computes it from ``sel`` (the selected rows) or ``values``. Only the
question's wording decides."""
VALUE_OPERATIONS = frozenset({"distinct", "average", "total", "least_often", "most_often"})
NUMERIC_OPERATIONS = frozenset({"average", "total", "highest", "lowest"})
OPERATION_ORDER = (
    "distinct",
    "average",
    "highest",
    "lowest",
    "least_often",
    "most_often",
    "count",
    "total",
)

WORD_RE = re.compile(r"[\w@./:=+-]*\w|'[^']+'|\"[^\"]+\"")
DOCUMENT_NAMED = "the document the query names"
ROW_KINDS = frozenset({"records", "json_lines", "delimited"})


def question_operation(query: str) -> str | None:
    """The operation the question's wording asks for (a key of :data:`OPERATIONS`)."""
    text = _strip_comparisons(query.lower())
    for name in OPERATION_ORDER:
        if OPERATIONS[name][0].search(text):
            return name
    return None


def ground_query(query: str, context: Any, description: Mapping[str, Any]) -> list[str]:
    """Short lines that tie the query's words to the context (empty when none apply).

    For rows (records, JSON lines, delimited records, log lines) they are a draft of the
    code: ``sel = [...]`` with the conditions found, ``values = [...]`` with the field the
    query asks about, and the line that computes the operation it asks for.
    """
    kind = description.get("kind")
    operation = question_operation(query)
    if kind == "documents" and isinstance(context, Mapping):
        return _document_hints(query, context)[:MAX_HINTS]
    if kind in ROW_KINDS:
        grounded = _row_grounding(query, _sample_rows(context, description))
    elif kind == "log_lines":
        grounded = _log_grounding(query, context)
    elif kind == "strings" and isinstance(context, list):
        if operation is None:  # nothing to compute: a question about meaning
            return _map_reduce_draft(query, context)
        grounded = Grounded([], [])
    elif kind == "text" and isinstance(context, str) and operation is None:
        return _bridge_draft(query, context)
    else:
        return []
    return _draft(operation, grounded)[:MAX_HINTS]


MAX_TEXT_SEARCH_CHARS = 50_000_000
"""Texts up to this size are searched whole for the query's phrases (one pass each)."""
NAME_RE = re.compile(r"(?<!^)\b[A-Z][\w-]*(?:\s+[A-Z][\w-]*)+")
"""A name of two or more capitalised words (not the query's first word)."""


def _bridge_draft(query: str, text: str) -> list[str]:
    """Two facts chained through a name: the sentences of a name the query gives (the
    first fact), then the sentences of another phrase of the query that mention a new
    capitalised word of the first ones (the second fact). Only when the text has both a
    two-word name of the query and another of its phrases; otherwise no draft."""
    if len(text) > MAX_TEXT_SEARCH_CHARS:
        return []
    name = next((n for n in NAME_RE.findall(query) if n in text), None)
    if name is None:
        return []
    words = [w for w in _words(query) if w not in STOPWORDS and len(w) > 2]
    skip = set(name.lower().split())
    pairs = [f"{a} {b}" for a, b in itertools.pairwise(words) if not {a, b} & skip]
    other = next((pair for pair in pairs if pair in text), None)
    if other is None:
        return []
    first = f'r"[^.\\n]*{re.escape(name)}[^.\\n]*"'
    second = f'r"[^.\\n]*{re.escape(other)}[^.\\n]*"'
    capitalised = 'r"\\b[A-Z]\\w+"'
    asked = json.dumps(query)
    return [
        "import re",
        f"first = re.findall({first}, context)",
        "print(first)",
        f'new = [w for w in re.findall({capitalised}, " ".join(first)) if w not in {asked}]',
        f"second = [s for s in re.findall({second}, context) if any(w in s for w in new)]",
        "print(second)",
        "if len(second) == 1:",
        "    FINAL(second[0].strip())",
    ]


MAP_CHUNK_CHARS = 8_000
"""Characters of texts per sub-model prompt in the map-reduce draft (fits a small window)."""


def _map_reduce_draft(query: str, texts: Sequence[Any]) -> list[str]:
    """Ask a sub-model the query about every chunk of the texts; keep the answers."""
    sample = texts[:: max(1, len(texts) // MAX_SAMPLE_ROWS)]
    mean = sum(len(str(text)) for text in sample) / max(1, len(sample))
    per_chunk = max(1, int(MAP_CHUNK_CHARS // max(1.0, mean)))
    question = json.dumps(f"{query} If these texts do not say, reply NONE.\n\n")
    return [
        f"chunks = [context[i:i + {per_chunk}] for i in range(0, len(context), {per_chunk})]",
        f'answers = llm_query_batched([{question} + "\\n".join(c) for c in chunks])',
        'found = [a for a in answers if "NONE" not in a]',
        "print(found)",
    ]


# -- the query's words -------------------------------------------------------------------


def _strip_comparisons(text: str) -> str:
    """The text without its written comparisons ("at least 3" is not "the least")."""
    for pattern, _ in COMPARISONS:
        text = pattern.sub(" ", text)
    return text


def _words(query: str) -> list[str]:
    """The query's words, lower-cased, quotes and sentence punctuation removed."""
    return [word.strip("'\"").lower() for word in WORD_RE.findall(query)]


def _ngrams(words: Sequence[str]) -> Iterator[tuple[int, str]]:
    """``(start, phrase)`` for every run of up to :data:`MAX_NGRAM` words, longest first."""
    for size in range(MAX_NGRAM, 0, -1):
        for start in range(len(words) - size + 1):
            yield start, " ".join(words[start : start + size])


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("es") and word[:-2].endswith(("s", "x", "ch", "sh")):
        return word[:-2]
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


# -- fields ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A field of the rows: the word that names it and the code of its value in row ``r``."""

    name: str
    code: str
    is_list: bool = False
    numeric: bool = False
    shapes: frozenset[int] = frozenset()
    """The row shapes (sets of keys) it occurs in; empty: every row."""
    key: str | None = None
    """Its key in the row when it is not nested (a table column), else ``None``."""


HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
_METHODS = "|".join(HTTP_METHODS)
LOG_TOKENS = (
    (
        "ip",
        (".",),
        re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"),
        r're.search(r"\d+\.\d+\.\d+\.\d+", r)[0]',
    ),
    ("path", ("/",), re.compile(r"\s/\S*"), r're.search(r"\s(/\S*)", r)[1]'),
    (
        "method",
        HTTP_METHODS,
        re.compile(rf"\b(?:{_METHODS})\b"),
        rf're.search(r"\b({_METHODS})\b", r)[1]',
    ),
)
"""Tokens of a log line with a conventional name: an IPv4 address, a path, an HTTP method;
each with the literals one of which every match contains (a plain substring test skips the
regex scan of the sample when none occurs: the scans cost about 10 ms per MB each)."""
KEY_VALUE_RE = re.compile(r"\b([A-Za-z_]\w{0,30})=(\S+)")
SYNONYMS = {"address": "ip", "url": "path", "endpoint": "path", "route": "path"}


def _row_fields(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Field], dict[str, set[int]]]:
    """The fields of parsed rows, and the fields (indexes) each short text value occurs in."""
    paths: dict[tuple[str, ...], list[bool]] = {}
    values: dict[str, set[int]] = {}
    index: dict[tuple[str, ...], int] = {}
    counts: dict[tuple[str, ...], int] = {}
    shape_ids: dict[frozenset[str], int] = {}
    shapes: dict[tuple[str, ...], set[int]] = {}
    for row in rows:
        shape = shape_ids.setdefault(frozenset(map(str, row)), len(shape_ids))
        for path, value in _walk(row):
            shapes.setdefault(path, set()).add(shape)
            is_list = isinstance(value, list)
            flags = paths.setdefault(path, [False, True])
            index.setdefault(path, len(index))
            flags[0] = flags[0] or is_list
            flags[1] = flags[1] and _is_number(value)
            for item in value if is_list else [value]:
                if not isinstance(item, str) or not MIN_VALUE_CHARS <= len(item) <= MAX_VALUE_CHARS:
                    continue
                bucket = values.setdefault(item.lower(), set())
                if index[path] not in bucket and counts.get(path, 0) < MAX_VALUES_PER_FIELD:
                    counts[path] = counts.get(path, 0) + 1
                    bucket.add(index[path])
    partial = {path for path, seen in shapes.items() if len(seen) < len(shape_ids)}
    fields = [
        Field(
            path[-1].lower().replace("_", " "),
            f"r.get({json.dumps(path[0])})"
            if path in partial and len(path) == 1
            else _access(path),
            is_list,
            numeric,
            frozenset(shapes[path]) if len(shape_ids) > 1 else frozenset(),
            path[0] if len(path) == 1 else None,
        )
        for path, (is_list, numeric) in paths.items()
    ]
    return fields, values


def _log_fields(lines: Sequence[str]) -> list[Field]:
    """``key=value`` pairs and conventionally named tokens seen in the sampled lines."""
    fields: dict[str, Field] = {}
    text = "\n".join(lines)
    for name, needles, pattern, code in LOG_TOKENS:
        if any(needle in text for needle in needles) and pattern.search(text):
            fields[name] = Field(name, code)
    pairs: dict[str, bool] = {}
    for key, value in KEY_VALUE_RE.findall(text) if "=" in text else ():
        pairs[key] = pairs.get(key, True) and value.isdigit()
    for key, numeric in pairs.items():
        code = rf're.search(r"{key}=(\S+)", r)[1]'
        name = key.lower()
        fields[name] = Field(name, f"int({code})" if numeric else code, False, numeric)
    return list(fields.values())


def _walk(row: Mapping[str, Any]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(path, value)``; one level of nested dicts is walked, as the description does."""
    for key, value in row.items():
        if isinstance(value, Mapping) and value:
            for inner, item in value.items():
                yield (str(key), str(inner)), item
        else:
            yield (str(key),), value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _access(path: Sequence[str]) -> str:
    return "r" + "".join(f"[{json.dumps(part)}]" for part in path)


def _named_fields(words: Sequence[str], fields: Sequence[Field]) -> dict[int, Field]:
    """Word index -> the field it names (by its name, singular or plural, or a synonym)."""
    by_name: dict[str, Field] = {}
    for field in fields:
        by_name.setdefault(field.name, field)
        by_name.setdefault(_singular(field.name), field)
    named: dict[int, Field] = {}
    for position, word in enumerate(words):
        word = SYNONYMS.get(_singular(word), word)
        found = by_name.get(word) or by_name.get(_singular(word))
        if found is not None:
            named[position] = found
    return named


# -- rows --------------------------------------------------------------------------------


def _windows(text: str) -> list[str]:
    """Whole lines from :data:`SCAN_WINDOWS` windows spread over ``text``."""
    if len(text) <= MAX_SCAN_CHARS:
        return text.splitlines()
    size = MAX_SCAN_CHARS // SCAN_WINDOWS
    step = (len(text) - size) // (SCAN_WINDOWS - 1)
    lines: list[str] = []
    for number in range(SCAN_WINDOWS):
        window = text[number * step : number * step + size].splitlines()
        lines += (window if number == 0 else window[1:])[:-1]
    return lines


def _sample_rows(context: Any, description: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Up to :data:`MAX_SAMPLE_ROWS` records of the context, parsed as its read line does."""
    kind = description.get("kind")
    if kind == "records" and isinstance(context, list):
        step = max(1, -(-len(context) // MAX_SAMPLE_ROWS))
        return [item for item in context[::step] if isinstance(item, Mapping)]
    if not isinstance(context, str):
        return []
    rows: list[Mapping[str, Any]] = []
    if kind == "json_lines":
        rows += json_objects(_windows(context))
    elif kind == "delimited":
        delimiter = str(description.get("delimiter", ","))
        header = context[: context.find("\n")].split(delimiter)
        after_blank = False
        for line in _windows(context):
            parts = line.split(delimiter)
            if after_blank and is_header(parts):  # a new table after a blank line
                header = parts
            after_blank = not line.strip()
            if len(parts) == len(header) and parts != header:
                rows.append(
                    dict(zip(header, (_number_or_text(part) for part in parts), strict=True))
                )
    return rows[:MAX_SAMPLE_ROWS]


def _number_or_text(text: str) -> Any:
    """As the delimited read line converts a value."""
    return float(text) if text.replace(".", "", 1).isdigit() else text


def _value_test(field: Field, value: str) -> str:
    literal = json.dumps(value)
    return f"{literal} in {field.code}" if field.is_list else f"{field.code} == {literal}"


def _row_grounding(query: str, rows: Sequence[Mapping[str, Any]]) -> Grounded:
    if not rows:
        return Grounded([], [])
    fields, values = _row_fields(rows)
    words = _words(query)
    tests: list[str] = []
    used: set[int] = set()
    for start, phrase in _ngrams(words):
        span = set(range(start, start + phrase.count(" ") + 1))
        if span & used or phrase in STOPWORDS or phrase not in values:
            continue
        original = _original(query, phrase)
        tests += [_value_test(fields[i], original) for i in sorted(values[phrase])]
        used |= span
    return _conditions(query, words, fields, tests, used)


LOG_TOKEN_RE = re.compile(r"[^\s()?,;!]+")
"""A token of the query as a log line may contain it (``[ERROR]``, ``status=403``)."""


def _log_grounding(query: str, context: Any) -> Grounded:
    if not isinstance(context, str):
        return Grounded([], [])
    lines = _windows(context)[:MAX_SAMPLE_ROWS]
    text = "\n".join(lines)
    words = _words(query)
    tests = []
    found: set[str] = set()
    for raw in LOG_TOKEN_RE.findall(query):
        token = raw.rstrip(".:").strip("'\"")
        quoted = raw.startswith(("'", '"'))
        literal = quoted or not token.isalpha() or token.isupper()
        if len(token) < MIN_VALUE_CHARS or token.lower() in STOPWORDS or token.isdigit():
            continue
        if literal and token in text and re.search(rf"(?<!\w){re.escape(token)}(?!\w)", text):
            tests.append(f"{json.dumps(token)} in r")
            found.add(token.lower())
    used = {i for i, word in enumerate(words) if any(word in token for token in found)}
    return _conditions(query, words, _log_fields(lines), tests, used)


@dataclass(frozen=True)
class Grounded:
    """The query's conditions as code tests, and the other fields it names (in order)."""

    tests: list[str]
    fields: list[Field]
    unplaced: list[str] = dataclasses.field(default_factory=list)
    """Conditions of the query found in its words but on no field ("more than 42500")."""
    join: tuple[Field, Field] | None = None
    """``(key, asked)``: the asked field is in other rows (another table), reached through
    a key column that the selected rows share with them."""


def _conditions(
    query: str, words: Sequence[str], fields: Sequence[Field], tests: list[str], used: set[int]
) -> Grounded:
    """Value tests, then comparisons and numbers; a field named next to a value it is
    tested for, or used in a test, is a condition, not a field the query asks about."""
    named = {i: field for i, field in _named_fields(words, fields).items() if i not in used}
    unplaced: list[str] = []
    tests = list(dict.fromkeys(tests + _number_tests(query.lower(), named, unplaced)))
    conditions = " and ".join(tests)
    asked = [
        field
        for i, field in named.items()
        if i + 1 not in used and f"{field.code} " not in conditions
    ]
    tested = [field for field in fields if f"{field.code} " in conditions and field.shapes]
    join = None
    if tested:  # only fields of the rows that the conditions select
        common = frozenset.intersection(*(field.shapes for field in tested))
        elsewhere = [field for field in asked if field.shapes and not field.shapes & common]
        asked = [field for field in asked if not field.shapes or field.shapes & common]
        if elsewhere and not asked:
            join = _join_key(elsewhere[0], common, fields, tested)
    found = list({field.code: field for field in asked}.values())
    return Grounded(tests, found, unplaced, join)


def _join_key(
    asked: Field, common: frozenset[int], fields: Sequence[Field], tested: Sequence[Field]
) -> tuple[Field, Field] | None:
    """A column of the selected rows that the asked field's rows have too (ids first)."""
    if asked.key is None:
        return None
    keys = [
        field
        for field in fields
        if field.key is not None
        and field not in tested
        and field.key != asked.key
        and field.shapes & common
        and field.shapes & asked.shapes
    ]
    keys.sort(key=lambda field: "id" not in field.name.split())
    return (keys[0], asked) if keys else None


def _draft(operation: str | None, grounded: Grounded) -> list[str]:
    """The draft's lines: select, values (or the row with the best key), result."""
    lines = []
    if grounded.tests:
        lines.append(f"sel = [r for r in rows if {' and '.join(grounded.tests)}]")
    if grounded.unplaced:
        missing = ", ".join(f'"{words}"' for words in grounded.unplaced)
        lines.append(f"# not in the draft yet: {missing}; add a test on the right field")
    fields = grounded.fields
    if grounded.join is not None and grounded.tests:  # the asked field is in other rows
        key, asked = grounded.join
        lines.append(f"keys = {{{key.code} for r in sel}}")
        lines.append(
            f"sel = [r for r in rows if r.get({json.dumps(key.key)}) in keys "
            f"and {json.dumps(asked.key)} in r]"
        )
        fields = [asked]
    if operation in NUMERIC_OPERATIONS:  # a number field first
        fields = sorted(fields, key=lambda field: not field.numeric)
    if operation in ("highest", "lowest") and fields:
        key, *others = fields
        lines.append(OPERATIONS[operation][1].format(key=key.code))
        answer = others[0].code if others else key.code
        lines.append("result = best" + answer[1:])
    elif operation in VALUE_OPERATIONS and fields:
        lines.append(f"values = [{fields[0].code} for r in sel]")
        if "Counter(" in OPERATIONS[operation][1]:
            lines.append("from collections import Counter")
        lines.append(OPERATIONS[operation][1])
    elif operation == "count":
        lines.append(OPERATIONS[operation][1])
    elif fields:  # a lookup: the value of the selected rows (or the values, if they differ)
        lines.append(f"values = [{fields[0].code} for r in sel]")
        lines.append(LOOKUP_RESULT)
    return lines


LOOKUP_RESULT = "result = values[0] if len(set(values)) == 1 else sorted(set(values))"
"""The answer of a question that asks for a field's value and computes nothing (the 1.5B
model answered ``len(sel)`` after a draft that stopped at ``values``)."""


def _original(query: str, phrase: str) -> str:
    """``phrase`` as the query writes it (its case)."""
    match = re.search(re.escape(phrase), query, re.IGNORECASE)
    return match.group(0) if match else phrase


def _field_before(text: str, end: int, named: Mapping[int, Field], reach: int) -> Field | None:
    """The numeric field named at most ``reach`` words before position ``end`` of ``text``."""
    before = len(_words(text[:end]))
    for position in range(before - 1, max(-1, before - 1 - reach), -1):
        field = named.get(position)
        if field is not None and field.numeric:
            return field
    return None


def _number_tests(
    text: str, named: Mapping[int, Field], unplaced: list[str] | None = None
) -> list[str]:
    """``field >= n`` for comparisons written in words, ``field == n`` for "the year 2016";
    a comparison whose field is not named next to it goes to ``unplaced`` (its words)."""
    tests = []
    taken: set[int] = set()
    for pattern, operator in COMPARISONS:
        for match in pattern.finditer(text):
            field = _field_before(text, match.start(), named, COMPARISON_FIELD_WORDS)
            taken.update(range(match.start(), match.end()))
            if field is not None:
                tests.append(f"{field.code} {operator} {match.group(1)}")
            elif unplaced is not None:
                unplaced.append(match.group(0))
    for match in NUMBER_RE.finditer(text):
        if match.start() in taken or not _standalone(text, match):
            continue
        field = _field_before(text, match.start(), named, EQUALITY_FIELD_WORDS)
        if field is not None:
            tests.append(f"{field.code} == {match.group(0)}")
    return tests


def _standalone(text: str, match: re.Match[str]) -> bool:
    """A number on its own, not part of a word such as ``pablo_62`` or ``B58218``."""
    before = text[match.start() - 1] if match.start() else " "
    after = text[match.end()] if match.end() < len(text) else " "
    return not (before.isalnum() or before in "_=/.") and not (after.isalnum() or after == "_")


# -- documents ---------------------------------------------------------------------------


def _document_hints(query: str, documents: Mapping[Any, Any]) -> list[str]:
    keys = [key for key in documents if isinstance(key, str) and len(key) >= MIN_VALUE_CHARS]
    lowered = query.lower()
    named = [key for key in keys if key.lower() in lowered]
    hints = [f"{DOCUMENT_NAMED}: context[{json.dumps(key)}]" for key in named]
    texts = _document_texts(documents)
    if not texts:
        return hints
    words = [word for word in _words(query) if word not in {key.lower() for key in named}]
    found: list[tuple[str, int]] = []
    used: set[int] = set()
    for start, phrase in _ngrams(words):
        span = set(range(start, start + phrase.count(" ") + 1))
        if span & used or all(word in STOPWORDS for word in phrase.split()):
            continue
        if phrase.split()[0] in STOPWORDS or phrase.split()[-1] in STOPWORDS:
            continue
        count = sum(phrase in text for text in texts)
        if count and (" " in phrase or count < len(texts)) and len(phrase) >= MIN_VALUE_CHARS:
            found.append((_original(query, phrase), count))
            used |= span
    if found:
        described = [f'"{phrase}" ({count} of {len(texts)})' for phrase, count in found]
        hints.append(
            "phrases of the query found in the documents (in how many): " + ", ".join(described)
        )
    return hints


def _document_texts(documents: Mapping[Any, Any]) -> list[str]:
    """Lower-cased texts of up to :data:`MAX_DOCUMENT_SCAN` documents, bounded in size."""
    values = list(documents.values())
    step = max(1, -(-len(values) // MAX_DOCUMENT_SCAN))
    texts, total = [], 0
    for value in values[::step]:
        if not isinstance(value, str):
            continue
        text = value[: MAX_DOCUMENT_CHARS - total].lower()
        texts.append(text)
        total += len(text)
        if total >= MAX_DOCUMENT_CHARS:
            break
    return texts
