"""The quality benchmark's task generator and answer checker (fast; no model)."""

from __future__ import annotations

import re

from benchmarks.quality.tasks import build_tasks, is_correct, normalize_answer

GROUPS = [("needle", 10_000), ("aggregation", 20_000), ("multihop", 20_000)]
TASKS = 10


def test_tasks_are_deterministic_and_independent_of_the_count() -> None:
    ten = build_tasks(GROUPS, TASKS)
    again = build_tasks(GROUPS, TASKS)
    three = build_tasks(GROUPS, 3)
    assert [(t.task_id, t.query, t.answer, t.context) for t in ten] == [
        (t.task_id, t.query, t.answer, t.context) for t in again
    ]
    by_id = {t.task_id: t for t in ten}
    assert all(by_id[t.task_id].context == t.context for t in three)
    assert len({t.task_id for t in ten}) == len(GROUPS) * TASKS


def test_needle_occurs_once_and_filler_has_no_digits() -> None:
    for task in build_tasks([("needle", 10_000)], TASKS):
        assert task.context.count(task.answer) == 1
        assert len(re.findall(r"\d+", task.context)) == 1
        assert 9_000 < len(task.context) < 11_000


def test_aggregation_truth_matches_a_recount() -> None:
    for task in build_tasks([("aggregation", 20_000)], TASKS):
        level, service = task.meta["level"], task.meta["service"]
        lines = [line for line in task.context.splitlines() if f"[{level}]" in line]
        if service:
            lines = [line for line in lines if f"] {service}:" in line]
        assert str(len(lines)) == task.answer


def test_multihop_needs_both_facts() -> None:
    for task in build_tasks([("multihop", 20_000)], TASKS):
        city = task.meta["city"]
        assert f"Agent {task.meta['agent']} is stationed in {city}." in task.context
        assert f"The access code of the {city} office is {task.answer}." in task.context
        assert city not in task.query


def test_answer_checking_is_normalized_exact_or_single_number() -> None:
    assert normalize_answer(' "Turin". ') == "turin"
    assert is_correct("1,234", "1234")
    assert is_correct("The code is 630796.", "630796")
    assert not is_correct("630796 or 111111", "630796")
    assert not is_correct(None, "1")
    assert is_correct("VALPARAISO", "Valparaiso")
    assert not is_correct("Lisbon", "Valparaiso")
