"""Issue 13: typed answers, the unsupported-answer guard, and self-consistency.

Models are FAKE (``ScriptedChatModel``): the replies are scripted."""

from __future__ import annotations

import pytest
from langchain_core.runnables import RunnableLambda
from pydantic import BaseModel

from langchain_rlm import RLM, RLMOutputError
from langchain_rlm.answers import is_supported, parse_structured
from langchain_rlm.testing import ScriptedChatModel
from langchain_rlm.testing.fake_models import message_text
from tests.conftest import repl


class LineItem(BaseModel):
    name: str
    amount: float


class Invoice(BaseModel):
    customer: str
    total: float
    items: list[LineItem]


INVOICE_CODE = repl(
    "inv = {'customer': 'ACME', 'total': 12.5, 'items': "
    "[{'name': 'bolt', 'amount': 2.5}, {'name': 'nut', 'amount': 10}]}\nFINAL(inv)"
)


def _rlm(replies: list[str], **kwargs: object) -> tuple[RLM, ScriptedChatModel]:
    root = ScriptedChatModel(replies=replies, model="root")
    return RLM(root, **kwargs), root  # type: ignore[arg-type]


def test_nested_schema_gives_a_validated_instance() -> None:
    rlm, _ = _rlm([INVOICE_CODE], output_schema=Invoice)
    result = rlm.invoke({"query": "the invoice?", "context": "..."})
    assert isinstance(result.output, Invoice)
    assert result.output.items[1] == LineItem(name="nut", amount=10.0)
    assert result.finished_reason == "final"
    assert '"customer": "ACME"' in result.answer  # the string form is JSON


def test_the_schema_is_shown_to_the_model() -> None:
    rlm, root = _rlm([INVOICE_CODE], output_schema=Invoice)
    rlm.invoke({"query": "the invoice?", "context": "..."})
    first_user = message_text(root.calls[0].messages[1])
    assert '"customer"' in first_user and "FINAL(value)" in first_user


def test_a_list_of_objects_from_json_in_prose() -> None:
    schema = {"type": "array", "items": LineItem.model_json_schema()}
    reply = 'FINAL([{"name": "a", "amount": 1}, {"name": "b", "amount": 2.5}])'
    rlm, _ = _rlm([reply], output_schema=schema)
    result = rlm.invoke({"query": "items?", "context": "..."})
    assert result.output == [{"name": "a", "amount": 1.0}, {"name": "b", "amount": 2.5}]


def test_validation_errors_go_back_to_the_model_until_it_fixes_them() -> None:
    bad = repl("FINAL({'customer': 'ACME', 'total': 'twelve', 'items': []})")
    rlm, root = _rlm([bad, INVOICE_CODE], output_schema=Invoice)
    result = rlm.invoke({"query": "the invoice?", "context": "..."})
    assert isinstance(result.output, Invoice) and result.output.total == 12.5
    feedback = message_text(root.calls[1].messages[-1])
    assert "total" in feedback and "was not accepted" in feedback
    assert result.iterations == 2


def test_retries_are_limited_then_the_run_ends_as_invalid_output() -> None:
    bad = [repl(f"FINAL({{'customer': 'ACME{i}'}})") for i in range(3)]
    rlm, root = _rlm(bad, output_schema=Invoice, output_retries=2)
    result = rlm.invoke({"query": "the invoice?", "context": "..."})
    assert result.output is None
    assert result.finished_reason == "invalid_output"
    assert len(root.calls) == 3
    plain, _ = _rlm(bad, output_retries=2)
    with pytest.raises(RLMOutputError, match="invalid_output"):
        plain.with_structured_output(Invoice).invoke({"query": "q?", "context": "..."})


def test_a_budget_that_ends_during_the_retries() -> None:
    bad = repl("FINAL({'customer': 'ACME'})")
    rlm, root = _rlm([bad] * 5, output_schema=Invoice, max_llm_calls=2)
    result = rlm.invoke({"query": "the invoice?", "context": "..."})
    assert result.finished_reason == "max_llm_calls"
    assert result.output is None
    assert len(root.calls) == 2


def test_with_structured_output_composes_in_lcel() -> None:
    rlm, _ = _rlm([INVOICE_CODE, INVOICE_CODE])
    chain = rlm.with_structured_output(Invoice) | RunnableLambda(lambda inv: inv.total * 2)
    assert chain.invoke({"query": "the invoice?", "context": "..."}) == 25.0
    raw = rlm.with_structured_output(Invoice, include_raw=True).invoke(
        {"query": "the invoice?", "context": "..."}
    )
    assert raw["parsing_error"] is None and raw["parsed"].customer == "ACME"
    assert raw["raw"].output == raw["parsed"]
    assert rlm.config.output_schema is None  # the original RLM is unchanged


def test_parse_structured_reads_python_literals_never_evaluates() -> None:
    value, error = parse_structured("{'name': 'x', 'amount': 1}", LineItem)
    assert error is None and value == {"name": "x", "amount": 1.0}
    value, error = parse_structured("__import__('os').system('true')", LineItem)
    assert value is None and error is not None and "not JSON" in error


# -- the guard against unsupported answers ---------------------------------------------------
def test_an_unsupported_literal_answer_gets_one_verify_turn() -> None:
    replies = [repl("print('count: 17')"), "FINAL(5)", repl("print(17)"), "FINAL(17)"]
    rlm, root = _rlm(replies, verify_answers=True)
    result = rlm.invoke({"query": "how many?", "context": "..."})
    assert result.answer == "17"
    assert "does not appear in any output" in message_text(root.calls[2].messages[-1])


def test_a_supported_answer_is_accepted_at_once() -> None:
    rlm, root = _rlm([repl("print('total: 1,234')"), "FINAL(1234)"], verify_answers=True)
    assert rlm.invoke({"query": "total?", "context": "..."}).answer == "1234"
    assert len(root.calls) == 2


def test_the_model_is_believed_after_one_verify_turn() -> None:
    rlm, root = _rlm(["FINAL(42)", "FINAL(42)"], verify_answers=True)
    assert rlm.invoke({"query": "q?", "context": "..."}).answer == "42"
    assert len(root.calls) == 2


def test_the_guard_is_off_by_default_for_large_model_prompts() -> None:
    rlm, _ = _rlm(["FINAL(42)"])
    assert rlm.invoke({"query": "q?", "context": "..."}).answer == "42"
    assert rlm.config.settings.verify_answers is False
    small = RLM(ScriptedChatModel(replies=["x"], model="qwen2.5-coder-0.5b"))
    assert small.config.settings.verify_answers is True


def test_is_supported() -> None:
    assert is_supported("1234", ["the total is 1,234."])
    assert not is_supported("123", ["the total is 1234"])
    assert is_supported("Paris", ["capital: paris"])
    assert is_supported("x" * 500, [])  # long prose is not checked


# -- self-consistency ------------------------------------------------------------------------------
def test_samples_vote_on_normalised_answers() -> None:
    answers = iter(["FINAL(Blue)", "FINAL(blue.)", "FINAL(red)"])

    def respond(messages: object) -> str:
        return next(answers)

    root = ScriptedChatModel(responder=respond, model="root")
    result = RLM(root, samples=3).invoke({"query": "colour?", "context": "..."})
    assert result.answer in ("Blue", "blue.")
    assert sorted(result.samples) == ["Blue", "blue.", "red"]
    assert result.total_calls == 3  # every trajectory is paid for and counted


def test_samples_need_no_checkpointer() -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    from langchain_rlm import RLMInputError

    with pytest.raises(RLMInputError, match="samples"):
        RLM(ScriptedChatModel(replies=["x"]), samples=2, checkpointer=InMemorySaver())


def test_the_same_cell_sent_again_is_not_run_and_the_model_is_told() -> None:
    rlm, root = _rlm([repl("print(6 * 7)"), repl("print(6 * 7)"), "FINAL(42)"])
    result = rlm.invoke({"query": "q?", "context": "..."})
    assert result.answer == "42"
    assert [step.code for step in result.repl_history] == ["print(6 * 7)"]
    assert "same code as in your previous turn" in message_text(root.calls[2].messages[-1])


def test_a_cell_that_failed_may_be_sent_again() -> None:
    rlm, _ = _rlm([repl("print(undefined_name)"), repl("print(undefined_name)"), "FINAL(x)"])
    result = rlm.invoke({"query": "q?", "context": "..."})
    assert len(result.repl_history) == 2
