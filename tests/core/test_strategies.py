"""The three strategies of the design, end to end, with exact answers and call counts.

Each runs twice: with FAKE in-process chat models and through ChatOpenAI against the
scripted OpenAI-compatible server on 127.0.0.1 (see ``conftest.models``).
"""

from __future__ import annotations

import random
import re

from langchain_rlm import RLM
from tests.conftest import ModelFactory, repl


def _reviews() -> list[str]:
    rng = random.Random(7)
    reviews = []
    for index in range(200):
        rating = rng.randint(1, 5)
        reviews.append(f"Review #{index} by user{rng.randint(1, 999)}: Rating: {rating}/5. Nice.")
    return reviews


def test_peek_grep_calculate_over_reviews(models: ModelFactory) -> None:
    reviews = _reviews()
    expected = round(sum(int(re.search(r"Rating: (\d)/5", r)[1]) for r in reviews) / 200, 3)  # type: ignore[index]
    pair = models(
        [
            "Let me look at the data first.\n"
            + repl("print(type(context), len(context))\nprint(context[:2])"),
            repl(
                "import re\n"
                "ratings = [int(m.group(1)) for r in context for m in [re.search(r'Rating: (\\d)/5', r)] if m]\n"
                "print(len(ratings), round(sum(ratings) / len(ratings), 3))"
            ),
            f"The average rating is computed.\nFINAL({expected})",
        ]
    )
    rlm = RLM(pair.root, pair.sub)
    result = rlm.invoke({"query": "What is the average rating?", "context": reviews})

    assert result.answer == str(expected)
    assert result.iterations == 3
    assert result.total_calls == 3
    assert (result.root_calls, result.sub_calls) == (3, 0)
    assert result.finished_reason == "final"
    assert result.repl_history[0].stdout.startswith("<class 'list'> 200")
    assert result.repl_history[1].stdout.strip() == f"200 {expected}"


def _document() -> tuple[str, int]:
    """A 200,000-character log with a known number of ERROR lines."""
    rng = random.Random(11)
    lines, errors, size = [], 0, 0
    while size < 200_000:
        level = rng.choice(["INFO", "INFO", "WARN", "ERROR"])
        errors += level == "ERROR"
        line = f"2025-01-{rng.randint(1, 28):02d} {level} service={rng.randint(1, 9)} msg=event{rng.randint(0, 10**6)}"
        lines.append(line)
        size += len(line) + 1
    text = "\n".join(lines)[:200_000]
    return text, text.count(" ERROR ")


def count_errors_sub(prompt: str) -> str:
    """Scripted sub-model: counts ERROR lines in the chunk it was given."""
    return str(prompt.count(" ERROR "))


def test_partition_map_reduce_with_20_subcalls(models: ModelFactory) -> None:
    document, expected = _document()
    assert len(document) == 200_000
    pair = models(
        [
            repl("print(len(context))\nprint(context[:200])"),
            repl(
                "size = len(context) // 20 + 1\n"
                "chunks = [context[i:i + size] for i in range(0, len(context), size)]\n"
                "prompts = ['Count the error-level lines. Reply with a number.\\n' + c for c in chunks]\n"
                "answers = llm_query_batched(prompts)\n"
                "print(len(chunks), answers[:3])"
            ),
            repl("total = sum(int(a) for a in answers)\nprint(total)\nFINAL(total)"),
        ],
        count_errors_sub,
    )
    rlm = RLM(pair.root, pair.sub, max_concurrency=8)
    result = rlm.invoke({"query": "How many ERROR lines are there?", "context": document})

    # Chunk boundaries may split a line; the reference count uses the same chunks.
    size = len(document) // 20 + 1
    reference = sum(document[i : i + size].count(" ERROR ") for i in range(0, len(document), size))
    assert abs(reference - expected) <= 20
    assert result.answer == str(reference)
    assert result.iterations == 3
    assert result.total_calls == 23
    assert (result.root_calls, result.sub_calls) == (3, 20)
    assert len(result.repl_history[1].sub_calls) == 20
    assert len(pair.sub_prompts()) == 20
    # Order kept: the i-th answer belongs to the i-th chunk.
    sub_calls = result.repl_history[1].sub_calls
    counts = [int(call.response or "-1") for call in sub_calls]
    chunks = [document[i : i + size] for i in range(0, len(document), size)]
    assert counts == [chunk.count(" ERROR ") for chunk in chunks]
    assert result.usage["sub"].calls == 20
    assert result.usage["root"].calls == 3


def summarise_sub(prompt: str) -> str:
    """Scripted sub-model: 'summarises' by listing the capitalised topic words it sees."""
    topics = sorted(set(re.findall(r"\bTopic([A-Z][a-z]+)\b", prompt)))
    return "topics: " + ", ".join(topics)


def test_hierarchical_summarisation(models: ModelFactory) -> None:
    topics = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta", "Eta", "Theta"]
    chapters = [
        f"Chapter {i}. "
        + ("filler text " * 400)
        + f" Topic{topics[i]} appears here. "
        + ("more " * 300)
        for i in range(8)
    ]
    pair = models(
        [
            repl("print(len(context), [len(c) for c in context])"),
            repl(
                "level1 = llm_query_batched(['Summarise the topics:\\n' + c for c in context])\n"
                "pairs = [' | '.join(level1[i:i+2]).replace('topics: ', 'Topic') for i in range(0, 8, 2)]\n"
                "level2 = llm_query_batched(['Summarise the topics:\\n' + p for p in pairs])\n"
                "print(level2)"
            ),
            repl(
                "names = [t.strip() for s in level2 for t in s.replace('topics: ', '').split(',')]\n"
                "final_summary = llm_query('Summarise the topics:\\n' + ' '.join('Topic' + n for n in names))\n"
                "print(final_summary)"
            ),
            "FINAL_VAR(final_summary)",
        ],
        summarise_sub,
    )
    rlm = RLM(pair.root, pair.sub)
    result = rlm.invoke({"query": "Which topics does the book cover?", "context": chapters})

    assert result.answer == "topics: " + ", ".join(sorted(topics))
    assert result.iterations == 4
    assert (result.root_calls, result.sub_calls) == (4, 8 + 4 + 1)
    assert result.total_calls == 17
    assert result.finished_reason == "final"
