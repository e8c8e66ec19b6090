"""The query's grounding (issue 13): what the query's words are in the data, as a draft.

Unit tests of :mod:`langchain_rlm.grounding`, then the graph: the draft reaches the root
model, errors get a one-line explanation, a resent cell gets its output shown again.
The root model here is the project's FAKE scripted chat model (it reads no prompt).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from langchain_rlm import RLM, prompts
from langchain_rlm.grounding import ground_query, question_operation
from langchain_rlm.testing import ScriptedChatModel
from langchain_rlm.testing.fake_models import message_text
from tests.conftest import repl

RECORDS = [
    {
        "id": f"doc-{i}",
        "text": "words",
        "metadata": {
            "category": ["sports", "finance"][i % 2],
            "year": 2010 + i % 5,
            "tags": ["public", "draft"][: 1 + i % 2],
            "rating": float(i % 5),
            "author": ["Ada Lovelace", "Alan Turing"][i % 2],
        },
    }
    for i in range(50)
]
EVENTS = "\n".join(
    json.dumps({"user": f"user_{i % 7}", "event": ["view", "click"][i % 2], "page": f"/p{i % 3}"})
    for i in range(300)
)
ORDERS = "order_id,customer,city,amount\n" + "\n".join(
    f"A{i},{['Maya Quinn', 'Tom Berg'][i % 2]},{['New York', 'Oslo'][i % 2]},{i}"
    for i in range(200)
)
TWO_TABLES = (
    "order_id,customer_id,amount\n"
    + "\n".join(f"B{i},C{i % 9},{i}" for i in range(50))
    + "\n\ncustomer_id,city,tier\n"
    + "\n".join(f"C{i},Town{i},gold" for i in range(9))
)
ACCESS_LOG = "\n".join(
    f"2024-06-01 00:00:{i % 60:02d} [INFO] api: {['GET', 'POST'][i % 2]} /api/v{i % 4} "
    f"from 10.0.0.{i % 11} status={[200, 404, 500][i % 3]} user=u{i % 5} 12ms"
    for i in range(400)
)
DOCUMENTS = {
    f"plan-{i}": f"Some words. The plan is led by Person {i}. The approved budget is {i}000 euros."
    for i in range(12)
}


def _ground(query: str, context: object) -> list[str]:
    return ground_query(query, context, prompts.describe_context(context))


@pytest.mark.parametrize(
    ("query", "operation"),
    [
        ("How many distinct users clicked?", "distinct"),
        ("How many records have a rating of at least 3.0?", "count"),  # not "least often"
        ("Which user has the fewest clicks?", "least_often"),
        ("Which page was viewed most often?", "most_often"),
        ("What is the average amount?", "average"),
        ("What is the total amount paid?", "total"),
        ("Which record has the highest rating? Give its id.", "highest"),
        ("Which order is the cheapest?", "lowest"),
        ("Who wrote the report?", None),
    ],
)
def test_the_operation_comes_from_the_wording_alone(query: str, operation: str | None) -> None:
    assert question_operation(query) == operation


def test_records_list_fields_nested_values_comparisons_and_numbers() -> None:
    draft = _ground(
        "How many records in the category sports have the tag 'draft', a rating of at least "
        "3.0 and are from the year 2013?",
        RECORDS,
    )
    assert draft[0] == (
        'sel = [r for r in rows if r["metadata"]["category"] == "sports" and '
        '"draft" in r["metadata"]["tags"] and r["metadata"]["rating"] >= 3.0 and '
        'r["metadata"]["year"] == 2013]'
    )
    assert draft[1:] == ["result = len(sel)"]


def test_the_highest_row_answers_with_the_other_named_field() -> None:
    draft = _ground(
        "Which record by the author Alan Turing has the highest rating? Its id?", RECORDS
    )
    assert draft == [
        'sel = [r for r in rows if r["metadata"]["author"] == "Alan Turing"]',
        'best = max(sel, key=lambda r: r["metadata"]["rating"])',
        'result = best["id"]',
    ]


def test_json_lines_most_often_uses_the_field_the_query_asks_about() -> None:
    draft = _ground("Which page did the user user_3 view most often?", EVENTS)
    assert draft == [
        'sel = [r for r in rows if r["user"] == "user_3" and r["event"] == "view"]',
        'values = [r["page"] for r in sel]',
        "from collections import Counter",  # the 0.5B model left it out: NameError
        "result = Counter(values).most_common(1)[0][0]",
    ]


def test_delimited_multi_word_values_keep_the_querys_case() -> None:
    draft = _ground("What is the total amount paid by Maya Quinn in New York?", ORDERS)
    assert draft == [
        'sel = [r for r in rows if r["customer"] == "Maya Quinn" and r["city"] == "New York"]',
        'values = [r["amount"] for r in sel]',
        "result = sum(values)",
    ]


def test_a_second_table_is_read_with_its_own_header_and_joined_through_a_shared_key() -> None:
    """The city is in another table than the order: the draft goes through customer_id."""
    query = "In which city does the customer who placed order B17 live?"
    draft = _ground(query, TWO_TABLES)
    assert draft == [
        'sel = [r for r in rows if r.get("order_id") == "B17"]',
        'keys = {r["customer_id"] for r in sel}',
        'sel = [r for r in rows if r.get("customer_id") in keys and "city" in r]',
        'values = [r.get("city") for r in sel]',
        "result = values[0] if len(set(values)) == 1 else sorted(set(values))",
    ]
    namespace: dict[str, object] = {"context": TWO_TABLES}
    exec(describe_read(prompts.describe_context(TWO_TABLES)), namespace)
    exec("\n".join(draft), namespace)
    assert namespace["result"] == "Town8"  # B17 -> C8 -> Town8


def test_log_lines_literal_tokens_key_values_and_conventional_tokens() -> None:
    ips = _ground("How many distinct IP addresses appear in the lines with status=404?", ACCESS_LOG)
    assert ips == [
        'sel = [r for r in rows if "status=404" in r]',
        r'values = [re.search(r"\d+\.\d+\.\d+\.\d+", r)[0] for r in sel]',
        "result = len(set(values))",
    ]
    paths = _ground(
        "How many distinct paths did the user u3 request with a status of 400 or higher?",
        ACCESS_LOG,
    )
    assert paths[0] == (
        'sel = [r for r in rows if "u3" in r and int(re.search(r"status=(\\S+)", r)[1]) >= 400]'
    )
    assert paths[1] == r'values = [re.search(r"\s(/\S*)", r)[1] for r in sel]'


def test_every_line_of_a_draft_runs_and_computes_the_truth() -> None:
    """The drafts are code, not prose: run each one with the read line it goes with."""
    events = [json.loads(line) for line in EVENTS.splitlines()]
    pages = [r["page"] for r in events if r["user"] == "user_3" and r["event"] == "view"]
    cases = [
        ("What is the total amount paid by Maya Quinn in New York?", ORDERS),
        ("Which page did the user user_3 view most often?", EVENTS),
        ("How many distinct IP addresses appear in the lines with status=404?", ACCESS_LOG),
    ]
    truths = [
        sum(i for i in range(200) if i % 2 == 0),
        Counter(pages).most_common(1)[0][0],
        len({i % 11 for i in range(400) if i % 3 == 1}),
    ]
    for (query, context), truth in zip(cases, truths, strict=True):
        description = prompts.describe_context(context)
        namespace = {"context": context}
        exec(describe_read(description), namespace)
        draft = ground_query(query, context, description)
        exec("\n".join(draft), namespace)
        assert namespace["result"] == truth


def _small_prompt(
    description: dict[str, object], query: str, hints: list[str] | None = None
) -> str:
    """The small-model system prompt for this description, query and draft."""
    return prompts.render_system_prompt(
        context_type=str(description["type"]),
        max_iterations=6,
        max_output_chars=2000,
        sub_prompt_chars=16_000,
        can_recurse=False,
        modules=["re"],
        style="small",
        description=description,
        query=query,
        hints=hints or (),
    )


def _first_example(system: str) -> str:
    """The code of the first worked example (the one the small model copies)."""
    return system.split("```repl\n", 1)[1].split("```", 1)[0]


def describe_read(description: dict[str, object]) -> str:
    from langchain_rlm.describe import read_hint

    hint = read_hint(description)
    assert hint is not None
    return hint


def test_documents_named_key_and_phrase_counts_never_the_matching_key() -> None:
    named = _ground("What is the approved budget in the document 'plan-3'?", DOCUMENTS)
    assert named[0] == 'the document the query names: context["plan-3"]'
    assert '"approved budget" (12 of 12)' in named[1]
    search = _ground("Which document names Person 7 as the person who leads the plan?", DOCUMENTS)
    assert search == [
        'phrases of the query found in the documents (in how many): "Person 7" (1 of 12)'
    ]
    assert not any("plan-7" in line for line in search)  # it never answers


def test_plain_text_gets_no_draft() -> None:
    assert _ground("What is the secret code for project Cobalt?", "Some prose. " * 100) == []


def test_a_large_context_is_sampled_not_scanned_whole() -> None:
    """A value that occurs only past the sampled windows is not grounded (bounded work)."""
    lines = ["user,page"] + [f"u{i % 50},/p{i % 4}" for i in range(400_000)] + ["zed_only,/x"]
    draft = _ground("Which page did zed_only visit most often?", "\n".join(lines))
    assert not any("zed_only" in line for line in draft)
    assert any(
        "u7" in line for line in _ground("Which page did u7 visit most often?", "\n".join(lines))
    )


# -- the prompts ------------------------------------------------------------------------


def test_the_first_message_shows_the_draft_and_the_examples_follow_the_operation() -> None:
    query = "Which page did the user user_3 view most often?"
    description = prompts.describe_context(EVENTS)
    hints = ground_query(query, EVENTS, description)
    message = prompts.first_user_message(query, description, hints)
    assert prompts.QUERY_DRAFT_HEADER in message
    assert '    values = [r["page"] for r in sel]' in message
    system = _small_prompt(description, query, hints)
    assert "most_common(1)[0][0]" in _first_example(system)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("NameError: name 're' is not defined", "import re"),
        ("NameError: name 'Counter' is not defined", "from collections import Counter"),
        ("NameError: name 'Final' is not defined", "FINAL in capitals"),
        ("AttributeError: 'list' object has no attribute 'splitlines'", "already a list"),
        ("AttributeError: 'NoneType' object has no attribute 'group'", "no match"),
        ("TypeError: '>=' not supported between instances of 'str' and 'float'", "float("),
        ("ValueError: max() arg is an empty sequence", "No row was selected"),
        ("KeyError: 'weight'", "their fields are: id, text, metadata.category"),
    ],
)
def test_common_errors_get_a_one_line_fix(error: str, expected: str) -> None:
    hint = prompts.error_hint(error, prompts.describe_context(RECORDS))
    assert hint is not None and expected in hint


def test_an_unknown_error_gets_no_hint() -> None:
    assert prompts.error_hint("RuntimeError: boom", {}) is None


def test_the_finalize_prompt_shows_no_placeholder_to_copy() -> None:
    """The 0.5B model answered ``Final(your answer)`` when the prompt said so."""
    assert "your answer" not in prompts.finalize_prompt("q?", "No turns left.")


# -- through the graph --------------------------------------------------------------------


@pytest.mark.parametrize("style", ["small", "default"])
def test_the_root_model_sees_the_draft_and_an_error_fix(style: str) -> None:
    """Both prompt styles get the draft and the error hints (issue 13: the default prompt
    gets the same description and finishing improvements)."""
    root = ScriptedChatModel(
        replies=[repl("rows = context\nprint(rows[0]['weight'])"), "FINAL(50)", "FINAL(50)"],
        model="root",
    )
    RLM(root, prompt_style=style).invoke({"query": "How many records?", "context": RECORDS})
    first = message_text(root.calls[0].messages[1])
    assert prompts.QUERY_DRAFT_HEADER in first and "result = len(sel)" in first
    after_error = message_text(root.calls[1].messages[-1])
    assert "KeyError" in after_error and "their fields are: id, text" in after_error


def test_a_resent_cell_gets_its_output_shown_again() -> None:
    cell = repl("print('The approved budget is 4100 euros')")
    root = ScriptedChatModel(replies=[cell, cell, "FINAL(4100)"], model="root")
    result = RLM(root).invoke({"query": "budget?", "context": "x"})
    note = message_text(root.calls[2].messages[-1])
    assert "not run again" in note and "The approved budget is 4100 euros" in note
    assert len(result.repl_history) == 1 and result.answer == "4100"


def test_a_third_copy_of_a_cell_ends_the_turns_with_a_finalizing_turn() -> None:
    cell = repl("print('The approved budget is 4100 euros')")
    root = ScriptedChatModel(replies=[cell, cell, cell, "FINAL(4100)"], model="root")
    result = RLM(root, max_iterations=10).invoke({"query": "budget?", "context": "x"})
    assert result.finished_reason == "stalled"
    assert result.answer == "4100" and result.iterations == 3
    assert "You sent the same code three times" in message_text(root.calls[3].messages[-1])
    assert len(result.repl_history) == 1


@pytest.mark.parametrize(
    ("query", "first"),
    [
        ("One customer writes that the parcel came late. Which parcel?", "llm_query_batched"),
        ("How many messages mention a refund?", "sel = [r for r in rows if"),
    ],
)
def test_a_list_of_texts_gets_the_map_reduce_first_for_a_question_about_meaning(
    query: str, first: str
) -> None:
    texts = [f"message {i}: the weather was fine" for i in range(200)]
    description = prompts.describe_context(texts)
    system = _small_prompt(description, query)
    assert first in _first_example(system)
    message = prompts.first_user_message(query, description)
    assert ("llm_query_batched" in message) == (first == "llm_query_batched")


def test_a_comparison_on_no_named_field_is_flagged_not_dropped() -> None:
    """ "earn more than 42500" names no field: the draft says what it could not place."""
    draft = _ground("How many records in the category sports earn more than 2.5?", RECORDS)
    assert draft[0] == 'sel = [r for r in rows if r["metadata"]["category"] == "sports"]'
    assert draft[1] == '# not in the draft yet: "more than 2.5"; add a test on the right field'


def test_a_question_about_meaning_over_texts_drafts_a_map_reduce_with_the_query() -> None:
    texts = [f"message {i}: " + "the weather was fine. " * 10 for i in range(300)]
    query = "One customer writes that the parcel came late. Which parcel?"
    draft = _ground(query, texts)
    assert draft[0].startswith("chunks = [context[i:i + ")
    assert "llm_query_batched(" in draft[1] and query in draft[1]
    prompts_sent: list[str] = []

    def fake_batch(batch: list[str]) -> list[str]:  # FAKE sub-model: records the prompts
        prompts_sent.extend(batch)
        return ["NONE"] * (len(batch) - 1) + ["parcel 7"]

    namespace = {"context": texts, "llm_query_batched": fake_batch}
    exec("\n".join(draft), namespace)
    assert namespace["found"] == ["parcel 7"]
    assert sum(p.count("message ") for p in prompts_sent) == len(texts)  # every text, once
    assert max(len(p) for p in prompts_sent) <= 8_000 + 500


@pytest.mark.parametrize("closing", ["", "\n```"])
def test_a_reply_of_bare_code_without_a_fence_runs_as_code(closing: str) -> None:
    """Qwen2.5-Coder-1.5B often sends its cell without the ```repl fence (and the 0.5B
    model sometimes without its opening line only)."""
    bare = "rows = context.splitlines()\nresult = len(rows)\nif rows:\n    FINAL(result)" + closing
    root = ScriptedChatModel(replies=[bare], model="root")
    result = RLM(root).invoke({"query": "How many lines?", "context": "a\nb\nc"})
    assert result.answer == "3" and len(result.repl_history) == 1


@pytest.mark.parametrize("reply", ["FINAL(Paris)", "Paris", "The answer is 3.\nFINAL(3)"])
def test_prose_and_a_lone_final_are_not_taken_for_code(reply: str) -> None:
    from langchain_rlm.parsing import parse_reply

    assert parse_reply(reply).code_blocks == []


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        (TWO_TABLES, "for t in context.split('\\n\\n')"),  # each table with its own header
        (ORDERS.replace(",", ";"), "split(';')"),  # the context's own delimiter
    ],
)
def test_the_worked_example_reads_rows_as_the_description_does(context: str, expected: str) -> None:
    """The small model fused the example's read line with the description's into code that
    failed (``NameError: t``): the example now uses the description's line."""
    description = prompts.describe_context(context)
    system = _small_prompt(description, "What is the total amount?")
    first_line = _first_example(system).split("\n", 1)[0]
    assert expected in first_line
    assert first_line == describe_read(description).split("  #")[0].strip()


TWO_HOP = " ".join(
    [
        f"Agent Ana Berg{i} is stationed in Town{i}. The door code of the Town{i} office is {i}0{i}."
        for i in range(1, 9)
    ]
    + ["Agent Lena Ilic is stationed in Harbourview.", "Filler words here."] * 3
    + ["The door code of the Harbourview office is 4242."]
)


def test_two_facts_chained_through_a_name_give_one_second_sentence() -> None:
    query = "What is the door code of the office in the town where agent Lena Ilic is stationed?"
    draft = _ground(query, TWO_HOP)
    assert draft[1] == r'first = re.findall(r"[^.\n]*Lena\ Ilic[^.\n]*", context)'
    answers: list[str] = []
    namespace = {"context": TWO_HOP, "FINAL": answers.append, "print": lambda *a: None}
    exec("\n".join(draft), namespace)
    assert namespace["second"] == [" The door code of the Harbourview office is 4242"]
    assert answers == ["The door code of the Harbourview office is 4242"]


@pytest.mark.parametrize(
    "query",
    [
        "What is the secret code for project Cobalt?",  # no two-word name: no chain
        "How many lines mention Lena Ilic?",  # a count: the counting example does it
        "Where is agent Nobody Known stationed?",  # the name is not in the text
    ],
)
def test_no_chain_draft_without_a_name_in_the_text_and_a_second_phrase(query: str) -> None:
    assert _ground(query, TWO_HOP) == []
