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
    root = ScriptedChatModel(replies=["FINAL(done)"], model="root")  # FAKE model
    result = RLM(root, sandbox="local", prompt_style="small").invoke(
        {"query": "What is in here?", "context": "x" * 5_000_000}
    )
    messages = root.calls[0].messages
    system, first_user = message_text(messages[0]), message_text(messages[1])
    assert result.answer == "done"
    assert "Which city hosted the chess final?" in system
    assert "FINAL(len(hits))" in system
    assert "How many ...?" in system
    assert len(system) + len(first_user) < FIRST_PROMPT_LIMIT


def test_default_style_has_no_worked_example() -> None:
    root = ScriptedChatModel(replies=["FINAL(done)"], model="root")  # FAKE model
    RLM(root, sandbox="local").invoke({"query": "q?", "context": "abc"})
    assert "Which city hosted the chess final?" not in message_text(root.calls[0].messages[0])


def test_unknown_prompt_style_is_rejected_with_the_choices() -> None:
    with pytest.raises(RLMInputError, match="default, small"):
        RLM(ScriptedChatModel(replies=[], model="root"), prompt_style="tiny")


def test_small_prompt_template_formats_without_leftover_fields() -> None:
    assert "{" not in SYSTEM_PROMPT_SMALL.replace("{context_type}", "").replace(
        "{max_output_chars}", ""
    ).replace("{sub_prompt_chars}", "").replace("{modules}", "").replace("{tools}", "").replace(
        "{max_iterations}", ""
    )


def test_repl_output_message_ends_with_the_next_step_hint() -> None:
    message = repl_output_message(["1 matches"], limit=100, iteration=1, max_iterations=4)
    assert message.rstrip().endswith("otherwise write new code in a ```repl block.")
    assert message.startswith("[3 of 4 turns left]")
