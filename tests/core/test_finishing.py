"""Finishing that survives real models (see the real trajectory in the design notes)."""

from __future__ import annotations

import itertools

from langchain_core.messages import HumanMessage

from langchain_rlm import RLM
from langchain_rlm.prompts import DEFAULT_STOP_SEQUENCES
from tests.conftest import ModelFactory, repl

CONTEXT = "alpha beta gamma\nsecret=7481\nomega"


def _run(pair, **kwargs):  # type: ignore[no-untyped-def]
    rlm = RLM(pair.root, pair.sub, **kwargs)
    return rlm.invoke({"query": "What is the secret?", "context": CONTEXT})


def test_final_called_inside_code(models: ModelFactory) -> None:
    pair = models([repl("import re\ncode = re.search(r'secret=(\\d+)', context)[1]\nFINAL(code)")])
    result = _run(pair)
    assert (result.answer, result.iterations, result.finished_reason) == ("7481", 1, "final")
    assert result.repl_history[0].final_answer == "7481"


def test_final_in_code_survives_a_bare_except(models: ModelFactory) -> None:
    code = "try:\n    FINAL('7481')\nexcept BaseException:\n    print('caught')\nprint('after')"
    result = _run(models([repl(code)]))
    assert result.answer == "7481"
    assert result.iterations == 1


def test_prose_final_counts_after_the_code_of_the_same_reply_ran(models: ModelFactory) -> None:
    reply = (
        repl("import re\nsecret = re.search(r'secret=(\\d+)', context)[1]") + "\nFINAL_VAR(secret)"
    )
    result = _run(models([reply]))
    assert result.answer == "7481"
    assert result.iterations == 1
    assert len(result.repl_history) == 1


def test_prose_final_of_a_variable_name_resolves_to_its_value(models: ModelFactory) -> None:
    # The real gpt-4o trajectory wrote FINAL(random_number) meaning the variable.
    pair = models([repl("random_number = 22"), "FINAL(random_number)"])
    result = _run(pair)
    assert result.answer == "22"


def test_prose_final_is_refused_when_the_code_failed(models: ModelFactory) -> None:
    pair = models([repl("x = 1 / 0") + "\nFINAL(3)", "FINAL(7481)"])
    result = _run(pair)
    assert result.answer == "7481"
    assert result.iterations == 2
    note = pair.root_prompts()[1][-1]
    assert "ZeroDivisionError" in note
    assert "was not accepted" in note


def test_final_var_of_an_unknown_name_goes_back_to_the_model(models: ModelFactory) -> None:
    pair = models(["FINAL_VAR(missing_name)", repl("found = '7481'"), "FINAL_VAR(found)"])
    result = _run(pair)
    assert result.answer == "7481"
    assert result.iterations == 3
    note = pair.root_prompts()[1][-1]
    assert "no variable named 'missing_name'" in note


def test_final_var_unknown_name_inside_code_is_an_error_not_an_answer(models: ModelFactory) -> None:
    pair = models([repl("FINAL_VAR('nope')"), "FINAL(7481)"])
    result = _run(pair)
    assert result.repl_history[0].final_answer is None
    assert result.repl_history[0].error is not None
    assert result.answer == "7481"


def test_reply_without_code_or_final_gets_a_nudge(models: ModelFactory) -> None:
    pair = models(["I think I should look at the data.", "FINAL(7481)"])
    result = _run(pair)
    assert result.answer == "7481"
    assert result.iterations == 2
    assert result.repl_history == []
    assert "no ```repl code block" in pair.root_prompts()[1][-1]


def test_invented_output_never_ends_the_run(models: ModelFactory) -> None:
    invented = repl("print(context.count('secret'))") + "\nREPL output:\n```\n5\n```\nFINAL(5)"
    pair = models([invented, "FINAL(1)"])
    result = _run(pair)
    assert result.answer == "1"
    assert result.iterations == 2
    assert result.repl_history[0].stdout == "1\n"


def test_stop_sequences_are_sent_with_root_calls(models: ModelFactory) -> None:
    pair = models(["FINAL(1)"])
    _run(pair)
    assert pair.root_stops()[0] == DEFAULT_STOP_SEQUENCES


def test_stop_sequences_can_be_disabled(models: ModelFactory) -> None:
    pair = models(["FINAL(1)"])
    _run(pair, stop=None)
    assert pair.root_stops()[0] == ()


def test_max_iterations_finalizes_with_the_best_answer(models: ModelFactory) -> None:
    pair = models([repl("print(1)"), repl("print(2)"), "FINAL(7481)"])
    result = _run(pair, max_iterations=2)
    assert result.answer == "7481"
    assert result.finished_reason == "max_iterations"
    assert result.iterations == 2
    assert result.root_calls == 3
    assert "used all your turns" in pair.root_prompts()[2][-1]


def test_finalize_without_final_takes_the_reply_text(models: ModelFactory) -> None:
    pair = models([repl("print(1)"), "The secret is 7481."])
    result = _run(pair, max_iterations=1)
    assert result.answer == "The secret is 7481."
    assert result.finished_reason == "max_iterations"


def test_repl_output_is_truncated_for_the_model_but_kept_whole(models: ModelFactory) -> None:
    pair = models([repl("print('x' * 10000)"), "FINAL(done)"])
    result = _run(pair, max_output_chars=500)
    assert len(result.repl_history[0].stdout) == 10001
    seen = pair.root_prompts()[1][-1]
    assert "x" * 500 in seen and "x" * 501 not in seen
    assert "more characters not shown" in seen


def test_conversation_is_append_only(models: ModelFactory) -> None:
    pair = models([repl("print(1)"), repl("print(2)"), "FINAL(3)"])
    _run(pair)
    prompts = pair.root_prompts()
    for earlier, later in itertools.pairwise(prompts):
        assert later[: len(earlier)] == earlier


def test_result_messages_hold_the_root_conversation(models: ModelFactory) -> None:
    pair = models([repl("print(1)"), "FINAL(3)"])
    result = _run(pair)
    kinds = [type(m).__name__ for m in result.messages]
    assert kinds == ["SystemMessage", "HumanMessage", "AIMessage", "HumanMessage", "AIMessage"]
    assert isinstance(result.messages[3], HumanMessage)
    assert "REPL output" in str(result.messages[3].content)


def test_finalize_reply_with_code_runs_it_and_takes_its_answer(models: ModelFactory) -> None:
    # Small models answer the finalize request with code; it runs like any step.
    pair = models([repl("base = 6"), repl("answer = base * 7\nprint(answer)")])
    result = _run(pair, max_iterations=1)
    assert result.answer == "42"
    assert result.finished_reason == "max_iterations"
    assert [step.code for step in result.repl_history] == [
        "base = 6",
        "answer = base * 7\nprint(answer)",
    ]


def test_finalize_reply_with_final_in_code(models: ModelFactory) -> None:
    pair = models([repl("base = 6"), repl("FINAL(base * 7)")])
    result = _run(pair, max_iterations=1)
    assert result.answer == "42"
    assert result.repl_history[-1].final_answer == "42"
