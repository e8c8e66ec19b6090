"""The structure-aware context description (fast; no model)."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from langchain_rlm.describe import (
    MAX_DESCRIPTION_CHARS,
    SAMPLE_CHARS,
    describe_context,
    format_description,
    read_hint,
)

PREVIEW = 300
CSV_HEADER = "ticket,opened,team,priority,minutes"
BIG_STRING_CHARS = 50_000_000
BIG_LIST_ITEMS = 1_000_000


def _csv(rows: int, delimiter: str = ",") -> str:
    rng = random.Random(1)
    lines = [CSV_HEADER.replace(",", delimiter)]
    for i in range(rows):
        fields = [f"T{i}", f"2025-01-{1 + i % 28:02d}", rng.choice("ABC"), "high", str(i % 90)]
        lines.append(delimiter.join(fields))
    return "\n".join(lines)


def _log(lines: int) -> str:
    levels = ("INFO", "WARN", "ERROR")
    return "\n".join(
        f"2025-02-01 10:{i // 60 % 60:02d}:{i % 60:02d} [{levels[i % 3]}] api: request {i} done"
        for i in range(lines)
    )


def _records(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"n{i}",
            "text": "A long passage about harbours and ships. " * 5,
            "metadata": {"source": ("wiki", "news")[i % 2], "year": 2000 + i % 5, "score": i / 7},
        }
        for i in range(count)
    ]


def _size(description: dict[str, Any]) -> int:
    return len(json.dumps(description))


def test_delimited_records_show_header_types_exact_count_sample_and_a_read_line() -> None:
    description = describe_context(_csv(500), PREVIEW)
    assert description["kind"] == "delimited"
    assert description["delimiter"] == ","
    assert description["records"] == 500
    assert description["fields"] == {
        "ticket": "str",
        "opened": "str",
        "team": "str",
        "priority": "str",
        "minutes": "int",
    }
    assert description["sample"] == _csv(3).splitlines()[1:]
    text = format_description(description)
    assert "rows = [dict(zip(fields, [float(v) if v.replace('.', '', 1).isdigit()" in text
    assert "minutes: int" in text


@pytest.mark.parametrize("delimiter", ["\t", ";", "|"])
def test_other_delimiters_are_detected(delimiter: str) -> None:
    description = describe_context(_csv(50, delimiter), PREVIEW)
    assert (description["kind"], description["delimiter"]) == ("delimited", delimiter)
    assert list(description["fields"]) == CSV_HEADER.split(",")


def test_a_second_table_after_a_blank_line_is_announced() -> None:
    text = _csv(40) + "\n\nteam,floor\nA,3\nB,5"
    description = describe_context(text, PREVIEW)
    assert description["kind"] == "delimited"
    assert description["parts"] == [{"line": 43, "first_line": "team,floor"}]
    assert "line 43 starts: 'team,floor'" in format_description(description)


def test_json_lines_show_fields_types_and_few_values() -> None:
    rows = [{"user": f"u{i}", "event": ("open", "close")[i % 2], "ms": i} for i in range(30)]
    description = describe_context("\n".join(json.dumps(r) for r in rows), PREVIEW)
    assert description["kind"] == "json_lines"
    assert description["lines"] == 30
    assert description["fields"]["ms"] == "int"
    assert description["fields"]["event"] == "str (values seen: close, open)"
    assert description["fields"]["user"] == "str"  # many values: not listed
    assert "json.loads(line)" in format_description(description)


def test_log_lines_show_levels_and_sample_lines() -> None:
    description = describe_context(_log(1000), PREVIEW)
    assert description["kind"] == "log_lines"
    assert description["lines"] == 1000
    assert description["levels_seen"] == ["ERROR", "INFO", "WARN"]
    assert description["sample"][0].startswith("2025-02-01 10:00:00 [INFO] api")


def test_prose_keeps_a_preview_and_counts_paragraphs() -> None:
    text = "\n\n".join(f"The ferry left at dawn, said paragraph number {i}." for i in range(200))
    description = describe_context(text, PREVIEW)
    assert description["kind"] == "text"
    assert description["paragraphs"] == 200
    assert description["preview"] == text[:PREVIEW]
    assert "read it with" not in format_description(description)


def test_record_lists_show_metadata_fields_types_values_and_no_splitlines() -> None:
    records = _records(100)
    before = copy.deepcopy(records)
    description = describe_context(records, PREVIEW)
    assert records == before  # nothing the user passed is mutated
    assert (description["type"], description["kind"], description["items"]) == (
        "list[dict]",
        "records",
        100,
    )
    fields = description["fields"]
    assert fields["metadata.year"].startswith("int (values seen: 2000, 2001")
    assert fields["metadata.source"] == "str (values seen: news, wiki)"
    assert fields["metadata.score"] == "float"
    sample = json.loads(description["sample"][0])
    assert sample["metadata"] == records[0]["metadata"]  # metadata visible, text cut
    assert len(sample["text"]) < len(records[0]["text"])
    text = format_description(description)
    assert "(no .splitlines())" in text
    assert "a nested field: r['metadata']['source']" in text


def test_list_of_strings_and_mixed_lists() -> None:
    strings = describe_context([f"note {i}: " + "x" * i for i in range(50)], PREVIEW)
    assert (strings["type"], strings["kind"], strings["items"]) == ("list[str]", "strings", 50)
    assert strings["item_chars_min"] == len("note 0: ")
    assert strings["total_chars"] == sum(len(f"note {i}: ") + i for i in range(50))
    mixed = describe_context(["a", 1, {"k": 2}], PREVIEW)
    assert (mixed["type"], mixed["kind"]) == ("list", "mixed")


def test_dicts_of_documents_and_of_records() -> None:
    documents = {f"chapter-{i}": "Once upon a time. " * (i + 1) for i in range(30)}
    description = describe_context(documents, PREVIEW)
    assert (description["kind"], description["keys"]) == ("documents", 30)
    assert description["first_keys"][:2] == ["chapter-0", "chapter-1"]
    assert description["value_chars_max"] == len("Once upon a time. ") * 30
    assert "context.items()" in format_description(description)
    mapping = describe_context({"a": {"x": 1, "y": "s"}, "b": {"x": 2, "y": "t"}}, PREVIEW)
    assert mapping["kind"] == "mapping"
    assert mapping["value_fields"] == {"x": "int", "y": "str"}


def test_empty_contexts_and_unsupported_types() -> None:
    assert describe_context("", PREVIEW)["total_chars"] == 0
    assert describe_context([], PREVIEW)["items"] == 0
    assert describe_context({}, PREVIEW)["keys"] == 0
    with pytest.raises(TypeError, match="pass a str, list or dict"):
        describe_context(42, PREVIEW)


def test_text_beyond_the_head_never_reaches_the_description() -> None:
    secret = "SECRET-MARKER-4711"
    text = _csv(20_000)
    middle = len(text) // 2
    text = text[:middle] + secret + text[middle:]
    assert secret not in json.dumps(describe_context(text, PREVIEW))


def test_fifty_megabyte_strings_give_a_small_json_description() -> None:
    unit = _csv(2000) + "\n"
    csv_text = unit * (BIG_STRING_CHARS // len(unit))
    prose = ("The ferry left at dawn. " * 40 + "\n\n") * (BIG_STRING_CHARS // 962)
    for text in (csv_text, prose, "x" * BIG_STRING_CHARS):
        description = describe_context(text, PREVIEW)
        assert description["total_chars"] == len(text) > 45_000_000
        assert json.loads(json.dumps(description)) == description
        assert _size(description) < MAX_DESCRIPTION_CHARS


def test_million_item_lists_give_a_small_json_description() -> None:
    records = _records(1)[0]
    many_records = [records] * BIG_LIST_ITEMS
    many_strings = ["short line of text"] * BIG_LIST_ITEMS
    for items in (many_records, many_strings):
        description = describe_context(items, PREVIEW)
        assert description["items"] == BIG_LIST_ITEMS
        assert json.loads(json.dumps(description)) == description
        assert _size(description) < MAX_DESCRIPTION_CHARS


def test_wide_and_long_fields_stay_bounded() -> None:
    wide_header = ",".join(f"column_{i}_" + "n" * 60 for i in range(5000))
    wide = describe_context("\n".join([wide_header] + [",".join(["1"] * 5000)] * 3), PREVIEW)
    record = {f"key_{i}_" + "k" * 500: "v" * 10_000 for i in range(3000)}
    for description in (
        wide,
        describe_context([record] * 10, PREVIEW),
        describe_context(record, PREVIEW),
        describe_context(["y" * 1_000_000] * 5, PREVIEW),
    ):
        assert _size(description) < MAX_DESCRIPTION_CHARS
        assert all(len(item) <= 2 * SAMPLE_CHARS for item in description.get("sample", []))


@pytest.mark.parametrize(
    "context",
    [
        _csv(20),
        _csv(20, "\t"),
        "\n".join(json.dumps({"a": i, "b": "x"}) for i in range(20)),
        _log(20),
        _records(20),
        ["one", "two", "three"],
        {"doc": "text of the document"},
    ],
    ids=["csv", "tsv", "jsonl", "log", "records", "strings", "documents"],
)
def test_the_read_line_is_valid_python_that_reads_the_shape(context: Any) -> None:
    """The small model copies the read line verbatim: it must run as it is."""
    hint = read_hint(describe_context(context, PREVIEW))
    assert hint is not None
    code = hint.replace("...", "pass")
    namespace: dict[str, Any] = {"context": context}
    exec(compile(code, "<read line>", "exec"), namespace)  # our own generated line
    if "rows" in namespace:
        rows = namespace["rows"]
        assert (
            len(rows) == 20 if not isinstance(context, list | dict) else len(rows) == len(context)
        )


def test_delimited_rows_are_read_with_numbers_as_floats() -> None:
    namespace: dict[str, Any] = {"context": _csv(30)}
    exec(read_hint(describe_context(namespace["context"], PREVIEW)) or "", namespace)
    row = namespace["rows"][5]
    assert row == {
        "ticket": "T5",
        "opened": "2025-01-06",
        "team": row["team"],
        "priority": "high",
        "minutes": 5.0,
    }
    assert sum(r["minutes"] for r in namespace["rows"] if r["minutes"] > 20) == sum(range(21, 30))


def test_a_trailing_newline_is_not_a_record() -> None:
    assert describe_context(_csv(25) + "\n", PREVIEW)["records"] == 25
    assert describe_context(_csv(25) + "\r\n", PREVIEW)["fields"]["minutes"] == "int"
