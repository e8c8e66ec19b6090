"""Fast checks of the ``prompt_style="small"`` prompt (no real model: a FAKE scripted one)."""

from __future__ import annotations

import pytest

from langchain_rlm import RLM
from langchain_rlm.prompts import SYSTEM_PROMPT_SMALL, repl_output_message
from langchain_rlm.rlm import RLMInputError
from langchain_rlm.testing import ScriptedChatModel
from langchain_rlm.testing.fake_models import message_text

FIRST_PROMPT_LIMIT = 8_000


def test_small_style_sends_the_worked_example_and_stays_small() -> None:
    root = ScriptedChatModel(replies=["FINAL(done)"] * 3, model="root")  # FAKE model
    result = RLM(root, sandbox="local-trusted", prompt_style="small").invoke(
        {"query": "What is in here?", "context": "x" * 5_000_000}
    )
    messages = root.calls[0].messages
    system, first_user = message_text(messages[0]), message_text(messages[1])
    assert result.answer == "done"
    assert "Which city hosted the chess final?" in system  # a text context: the fact example
    assert "llm_query_batched([" in system  # and the map-reduce one
    assert "FINAL(len(hits))" not in system  # no counting example to copy on a text
    assert len(system) + len(first_user) < FIRST_PROMPT_LIMIT


def test_small_style_picks_the_records_example_for_a_record_list() -> None:
    root = ScriptedChatModel(replies=["FINAL(done)"] * 3, model="root")  # FAKE model
    records = [{"id": str(i), "text": "t", "metadata": {"year": 2000 + i}} for i in range(50)]
    RLM(root, sandbox="local-trusted", prompt_style="small").invoke(
        {"query": "q?", "context": records}
    )
    system, first_user = (message_text(m) for m in root.calls[0].messages[:2])
    assert 'rows = context\nsel = [r for r in rows if r["metadata"]' in system
    assert "Which city hosted the chess final?" not in system
    assert "(no .splitlines())" in first_user


def test_default_style_has_no_worked_example() -> None:
    root = ScriptedChatModel(replies=["FINAL(done)"] * 3, model="root")  # FAKE model
    RLM(root, sandbox="local-trusted").invoke({"query": "q?", "context": "abc"})
    assert "Which city hosted the chess final?" not in message_text(root.calls[0].messages[0])


def test_unknown_prompt_style_is_rejected_with_the_choices() -> None:
    with pytest.raises(RLMInputError, match="default, small"):
        RLM(ScriptedChatModel(replies=[], model="root"), prompt_style="tiny")


def test_small_prompt_template_formats_without_leftover_fields() -> None:
    fields = ("context_type", "max_output_chars", "sub_prompt_chars", "modules", "tools")
    text = SYSTEM_PROMPT_SMALL
    for name in (*fields, "max_iterations", "examples"):
        text = text.replace("{" + name + "}", "")
    assert "{" not in text


def test_repl_output_message_ends_with_the_next_step_hint() -> None:
    message = repl_output_message(["1 matches"], limit=100, iteration=1, max_iterations=4)
    assert message.rstrip().endswith("otherwise write new code in a ```repl block.")
    assert message.startswith("[3 of 4 turns left]")
