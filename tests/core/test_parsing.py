"""Parsing root-model replies: code blocks, prose FINAL, invented output."""

from __future__ import annotations

import pytest

from langchain_rlm.parsing import parse_reply


def test_repl_and_python_fences_are_code_text_fences_are_not() -> None:
    reply = (
        "First:\n```repl\nx = 1\n```\nthen\n```python\nprint(x)\n```\n"
        'and an example of data:\n```json\n{"not": "code"}\n```\n```\nprint(2)\n```'
    )
    parsed = parse_reply(reply)
    assert parsed.code_blocks == ["x = 1", "print(x)", "print(2)"]
    assert parsed.final is None


def test_unclosed_last_block_cut_by_a_stop_sequence_still_runs() -> None:
    assert parse_reply("```repl\nprint(len(context))\n").code_blocks == ["print(len(context))"]


def test_indented_fence_is_dedented() -> None:
    parsed = parse_reply("  ```python\n  for i in range(2):\n      print(i)\n  ```")
    assert parsed.code_blocks == ["for i in range(2):\n    print(i)"]


def test_empty_blocks_are_ignored() -> None:
    assert parse_reply("```repl\n\n```").code_blocks == []


@pytest.mark.parametrize(
    ("reply", "kind", "value"),
    [
        ("FINAL(42)", "FINAL", "42"),
        ('FINAL("Blue")', "FINAL", "Blue"),
        ("FINAL('it\\'s')", "FINAL", "it's"),
        ("Done.\nFINAL(x is set to 500.)", "FINAL", "x is set to 500."),
        ("**FINAL(Paris)**", "FINAL", "Paris"),
        ("FINAL(f(a) and (b))", "FINAL", "f(a) and (b)"),
        ('FINAL("a (b")', "FINAL", "a (b"),
        ("FINAL(first line\nsecond line)", "FINAL", "first line\nsecond line"),
        ("FINAL_VAR(result)", "FINAL_VAR", "result"),
        ("FINAL_VAR('result')", "FINAL_VAR", "result"),
        ("FINAL(unbalanced (", "FINAL", "unbalanced ("),
        ("FINAL(random_number)", "FINAL", "random_number"),
    ],
)
def test_final_in_prose(reply: str, kind: str, value: str) -> None:
    final = parse_reply(reply).final
    assert final is not None
    assert (final.kind, final.value) == (kind, value)


def test_final_inside_a_code_block_is_code_not_prose() -> None:
    parsed = parse_reply("```repl\nFINAL(compute())\n```")
    assert parsed.final is None
    assert parsed.code_blocks == ["FINAL(compute())"]


def test_final_mentioned_mid_sentence_is_not_a_directive() -> None:
    assert parse_reply("I will call FINAL(answer) once I know more.").final is None


def test_identifier_detection() -> None:
    assert parse_reply("FINAL(random_number)").final.is_identifier  # type: ignore[union-attr]
    assert not parse_reply("FINAL(42)").final.is_identifier  # type: ignore[union-attr]


def test_invented_repl_output_and_the_final_after_it_are_dropped() -> None:
    reply = (
        "```repl\nprint(context.count('ERROR'))\n```\n"
        "REPL output:\n```\n17\n```\n"
        "So the answer is 17.\nFINAL(17)"
    )
    parsed = parse_reply(reply)
    assert parsed.code_blocks == ["print(context.count('ERROR'))"]
    assert parsed.final is None
    assert parsed.invented_output


def test_invented_output_fence_is_dropped() -> None:
    reply = "```repl\nprint(1)\n```\n```output\n1\n```\n```repl\nprint(2)\n```"
    parsed = parse_reply(reply)
    assert parsed.code_blocks == ["print(1)"]
    assert parsed.invented_output


def test_output_word_inside_code_is_kept() -> None:
    reply = '```repl\nprint("Output:")\nprint(1)\n```'
    parsed = parse_reply(reply)
    assert parsed.code_blocks == ['print("Output:")\nprint(1)']
    assert not parsed.invented_output


def test_prose_before_any_code_saying_output_is_not_cut() -> None:
    reply = "Output:\nI will now look.\n```repl\nprint(1)\n```"
    assert parse_reply(reply).code_blocks == ["print(1)"]


def test_final_with_code_in_the_same_reply_is_kept_for_after_execution() -> None:
    parsed = parse_reply("```repl\nanswer = 6 * 7\n```\nFINAL_VAR(answer)")
    assert parsed.code_blocks == ["answer = 6 * 7"]
    assert parsed.final is not None and parsed.final.kind == "FINAL_VAR"
