"""The rendered prompts (fast; no model): description, method, finishing, budget notes."""

from __future__ import annotations

import re

import pytest

from benchmarks.quality.tasks import FAMILIES, build_tasks
from langchain_rlm import prompts

STYLES = ("default", "small")
MAX_ITERATIONS = 6
CSV = "order,client,total\n" + "\n".join(f"O{i},client {i % 7},{i * 3}" for i in range(400))
RECORDS = [
    {"id": str(i), "text": "words " * 30, "metadata": {"lang": "en", "n": i}} for i in range(60)
]


def _render(style: str, sub_prompt_chars: int = 16_000, context: object = "some text") -> str:
    description = prompts.describe_context(context)
    return prompts.render_system_prompt(
        context_type=str(description["type"]),
        max_iterations=MAX_ITERATIONS,
        max_output_chars=2000,
        sub_prompt_chars=sub_prompt_chars,
        can_recurse=False,
        modules=["re", "json", "collections"],
        style=style,
        description=description,
    )


def _first_code(text: str) -> str:
    return text.split("```repl\n", 1)[1].split("```", 1)[0]


LOG = "\n".join(f"2025-01-01 10:00:{i % 60:02d} [INFO] api: call {i}" for i in range(100))
SHAPES = {"text": "some text", "csv": CSV, "records": RECORDS, "log": LOG, "docs": {"a": "x"}}


# -- the budget note -------------------------------------------------------------------


def test_last_turn_is_announced_only_when_exactly_one_turn_is_left() -> None:
    one_left = prompts.budget_note(MAX_ITERATIONS - 1, MAX_ITERATIONS)
    none_left = prompts.budget_note(MAX_ITERATIONS, MAX_ITERATIONS)
    two_left = prompts.budget_note(MAX_ITERATIONS - 2, MAX_ITERATIONS)
    assert "[1 of 6 turns left]" in one_left and "last turn" in one_left
    assert "[0 of 6 turns left]" in none_left and "last turn" not in none_left
    assert "No turns are left" in none_left
    assert "last turn" not in two_left


def test_repl_output_and_nudge_messages_carry_the_same_budget_notes() -> None:
    last = prompts.repl_output_message(
        ["42"], limit=100, iteration=MAX_ITERATIONS - 1, max_iterations=MAX_ITERATIONS
    )
    done = prompts.repl_output_message(
        ["42"], limit=100, iteration=MAX_ITERATIONS, max_iterations=MAX_ITERATIONS
    )
    assert "last turn" in last and "last turn" not in done
    assert "last turn" not in prompts.no_code_nudge(MAX_ITERATIONS, MAX_ITERATIONS)
    assert "last turn" in prompts.no_code_nudge(MAX_ITERATIONS - 1, MAX_ITERATIONS)


# -- the description in the first user message -----------------------------------------


def test_first_message_shows_the_shape_fields_sample_and_read_line_of_records() -> None:
    message = prompts.first_user_message(
        "Total of client 3?", prompts.describe_context(CSV, prompts.DEFAULT_PREVIEW_CHARS)
    )
    assert "delimited records" in message
    assert "records: 400" in message
    assert "total: int" in message
    assert "O0,client 0,0" in message  # a sample record
    assert "read it with: fields = context.splitlines()[0].split(',')" in message


def test_first_message_for_a_record_list_forbids_splitlines() -> None:
    description = prompts.describe_context(RECORDS, prompts.DEFAULT_PREVIEW_CHARS)
    message = prompts.first_user_message("How many?", description)
    assert "a list of records" in message and "metadata.n: int" in message
    assert "(no .splitlines())" in message


def test_prompts_module_delegates_to_the_describe_module() -> None:
    from langchain_rlm import describe

    description = prompts.describe_context(CSV)
    assert description == describe.describe_context(CSV, prompts.DEFAULT_PREVIEW_CHARS)
    assert prompts.format_description(description) == describe.format_description(description)


# -- the method and the finishing rules, in both styles -------------------------------


def test_default_style_teaches_records_map_reduce_and_list_contexts() -> None:
    text = _render("default", context=CSV)
    assert "llm_query_batched" in text
    assert "every condition of the query" in text
    assert "no `.splitlines()`" in text
    assert "describes `context`" in text  # points the model at the structure-aware description
    assert _first_code(text) == "print(len(context))\nprint(context[:500])\n"  # unchanged


def test_small_style_first_example_suits_the_shape_of_the_context() -> None:
    """A small model copies the first code it sees: it must fit the context's shape."""
    first = {name: _first_code(_render("small", context=c)) for name, c in SHAPES.items()}
    assert first["text"].startswith("import re\nhits = re.findall(")
    assert first["csv"].startswith("fields = context.splitlines()[0].split(',')")
    assert first["records"].startswith("rows = context\n")
    assert 'r["metadata"]' in first["records"]
    assert first["log"].startswith("import re; rows = context.splitlines()\n")
    # no document key named in the query: the search over the documents comes first
    assert first["docs"].startswith("hits = [key for key, text in context.items()")
    assert "never call `.splitlines()` on it" in _render("small", context=RECORDS)


@pytest.mark.parametrize("shape", ["text", "docs"])
def test_small_style_shows_map_reduce_for_text_shapes(shape: str) -> None:
    text = _render("small", context=SHAPES[shape])
    assert "llm_query_batched([" in text and "NONE" in text


def test_small_style_without_a_description_guesses_the_shape_from_the_type() -> None:
    def render(context_type: str) -> str:
        return prompts.render_system_prompt(
            context_type=context_type,
            max_iterations=MAX_ITERATIONS,
            max_output_chars=2000,
            sub_prompt_chars=16_000,
            can_recurse=False,
            modules=["re"],
            style="small",
        )

    assert _first_code(render("list[dict]")).startswith("rows = context\n")
    assert _first_code(render("str")).startswith("import re\nhits = re.findall(")


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_no_example_finishes_with_a_literal_number(style: str, shape: str) -> None:
    assert not re.search(r"FINAL\(\s*-?\d", _render(style, context=SHAPES[shape]))


@pytest.mark.parametrize("style", STYLES)
def test_both_styles_finish_with_a_computed_value(style: str) -> None:
    text = _render(style, context=CSV)
    assert re.search(r"FINAL\((result|total|variable)\)", text)


def test_small_prompt_map_reduce_chunk_fits_the_sub_prompt_budget() -> None:
    chunk = int(re.search(r"text\[i:i \+ (\d+)\]", _render("small", 8_000))[1])  # type: ignore[index]
    assert 1_000 <= chunk < 8_000
    assert prompts.chunk_chars_for(16_000) == 12_000


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_prompts_hold_no_benchmark_condition(style: str, shape: str) -> None:
    """Generic examples: no name, value or phrase of a quality-benchmark question."""
    text = _render(style, context=SHAPES[shape]).casefold()
    queries = [
        task.query
        for split in ("dev", "heldout")
        for task in build_tasks([(family, 20_000) for family in FAMILIES], 10, split=split)
    ]
    quoted = {q for query in queries for q in re.findall(r"'([^']+)'", query)}
    names = {n for query in queries for n in re.findall(r"[A-Z][a-z]+ [A-Z][a-z]+", query)}
    phrases = {"total amount paid", "secret code", "[warn]", "[error]", "access code"}
    literals = {f"{mark}{q.casefold()}{mark}" for q in quoted for mark in "'\""}  # as code values
    leaked = [w for w in literals | names | phrases if w.casefold() in text]
    assert leaked == []


def test_first_message_opens_and_closes_with_the_query_and_gives_the_shape_first_step() -> None:
    csv = prompts.first_user_message("Total of client 3?", prompts.describe_context(CSV))
    assert csv.startswith("Query: Total of client 3?")
    assert csv.rstrip().endswith("Query: Total of client 3?\nReply with a ```repl block.")
    assert "Start your code with this line:\nfields = context.splitlines()[0]" in csv
    text = prompts.first_user_message("Who?", prompts.describe_context("Plain prose here."))
    assert "searching the text for the key words of the query" in text
    docs = prompts.first_user_message("Which?", prompts.describe_context({"a": "b", "c": "d"}))
    assert "context[key]" in docs and "context.items()" in docs


@pytest.mark.parametrize(
    ("model", "style"),
    [
        ("qwen2.5-coder-0.5b", "small"),
        ("qwen2.5-coder-1.5b", "small"),  # measured with the small prompt too
        ("gpt-4o", "default"),
    ],
)
def test_auto_style_follows_the_measured_models(model: str, style: str) -> None:
    assert prompts.prompt_style_for(model) == style
