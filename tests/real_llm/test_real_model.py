"""The RLM on the real embedded model (Qwen2.5-Coder-0.5B via llama.cpp), marker ``real_llm``.

Three small long-context tasks with exact answers, generated from a fixed seed:

* ``needle``: a secret code hidden in 200,000 characters of prose;
* ``count``: the number of ERROR lines in a generated log of about 60,000 characters;
* ``keyword``: the one city named in a log of about 60,000 characters whose other lines
  never name a city.

The test runs all three and asserts that at least :data:`REQUIRED_CORRECT` are right (the
issue's bar: a 0.5B model is not perfect, but the RLM must make it useful at long context),
printing per-task details (answer, truth, seconds, calls, the root replies on failure).
Determinism: temperature 0 and a fixed seed on the server (llama.cpp on CPU is deterministic
for a fixed prompt and thread count); the contexts come from ``random.Random(SEED)``.

Run: ``pytest -m real_llm tests/real_llm -s`` (CI sets ``RLM_REQUIRE_LOCAL_MODEL=1`` so a missing
llama-cpp-python fails instead of skipping).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from langchain_rlm import RLM
from langchain_rlm.local import LocalModelServer

TEST_TIMEOUT_S = 900

SEED = 7
REQUIRED_CORRECT = 2
MAX_ITERATIONS = 6
RLM_TIMEOUT_S = 240.0
"""Per task; a run that hits it still returns its best answer (finished_reason timeout)."""
MAX_LLM_CALLS = 16
ROOT_MAX_TOKENS = 384
REQUEST_TIMEOUT_S = 300.0
PROMPT_STYLE = "small"
"""The worked-example prompt; measured better for this model (benchmarks/RESULTS.md)."""
MAX_OUTPUT_CHARS = 2000
SUB_PROMPT_CHARS = 16_000
"""Sub-prompts must fit the local server's 8k-token window."""

NEEDLE_CHARS = 200_000
SENTENCES_PER_PARAGRAPH = 6
"""Prose comes in paragraphs, like real text (a 200k-character single line made the model's
line filter print one huge line: see benchmarks/RESULTS.md)."""
LOG_CHARS = 60_000

WORDS_TEXT = (
    "the committee reviewed a wooden boat before the storm arrived while our neighbour "
    "painted the garden wall during the long winter and the old librarian described an old "
    "map of the coast with great care as the harbour master carried a basket of apples"
)
WORDS = tuple(WORDS_TEXT.split())
SERVICES = ("auth", "billing", "search", "storage")
MESSAGES = ("request served", "cache refreshed", "queue drained", "token validated")


@dataclass(frozen=True)
class RealTask:
    """One generated question with its exact answer."""

    name: str
    query: str
    context: str
    truth: str


def _prose(rng: random.Random, chars: int) -> str:
    sentences: list[str] = []
    total = 0
    while total < chars:
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
        sentence = " ".join(words).capitalize() + "."
        sentences.append(sentence)
        total += len(sentence) + 1
    paragraphs = (
        " ".join(sentences[i : i + SENTENCES_PER_PARAGRAPH])
        for i in range(0, len(sentences), SENTENCES_PER_PARAGRAPH)
    )
    return "\n\n".join(paragraphs)


def _log(rng: random.Random, chars: int, error_every: int) -> tuple[list[str], int]:
    lines: list[str] = []
    errors = 0
    total = 0
    while total < chars:
        level = "ERROR" if rng.randrange(error_every) == 0 else rng.choice(("INFO", "INFO", "WARN"))
        errors += level == "ERROR"
        minute = len(lines)
        line = (
            f"2024-05-01 {minute // 60 % 24:02d}:{minute % 60:02d}:00 [{level}] "
            f"{rng.choice(SERVICES)}: {rng.choice(MESSAGES)}"
        )
        lines.append(line)
        total += len(line) + 1
    return lines, errors


def needle_task(rng: random.Random) -> RealTask:
    code = str(rng.randint(100_000, 999_999))
    prose = _prose(rng, NEEDLE_CHARS)
    cut = prose.find(". ", int(len(prose) * 0.63)) + 2
    context = f"{prose[:cut]}The secret code for project Heron is {code}. {prose[cut:]}"
    return RealTask(
        "needle-200k",
        "What is the secret code for project Heron? Answer with the number only.",
        context,
        code,
    )


def count_task(rng: random.Random) -> RealTask:
    lines, errors = _log(rng, LOG_CHARS, error_every=15)
    return RealTask(
        "count-errors",
        "How many log lines have the level ERROR (written as [ERROR])? Answer with the number only.",
        "\n".join(lines),
        str(errors),
    )


def keyword_task(rng: random.Random) -> RealTask:
    lines, _ = _log(rng, LOG_CHARS, error_every=15)
    lines.insert(
        int(len(lines) * 0.41),
        "2024-05-01 09:41:00 [INFO] auth: the backup job moved to Valparaiso",
    )
    return RealTask(
        "keyword-city",
        "One log line says where the backup job moved to. Which city is it? Answer with the city name only.",
        "\n".join(lines),
        "Valparaiso",
    )


TASK_BUILDERS: tuple[Callable[[random.Random], RealTask], ...] = (
    needle_task,
    count_task,
    keyword_task,
)


def normalize(text: str) -> str:
    """Case-folded, stripped of whitespace, quotes, backticks and a trailing period."""
    return text.strip().strip("\"'`*").rstrip(".").strip().casefold()


def test_generated_tasks_have_exact_unique_answers() -> None:
    """The generators are deterministic and each answer occurs exactly once where it must."""
    first = [build(random.Random(SEED)) for build in TASK_BUILDERS]
    again = [build(random.Random(SEED)) for build in TASK_BUILDERS]
    assert first == again
    needle, count, keyword = first
    assert len(needle.context) > NEEDLE_CHARS
    assert needle.context.count(needle.truth) == 1
    assert count.context.count("[ERROR]") == int(count.truth) > 0
    assert keyword.context.count("Valparaiso") == 1


@pytest.mark.real_llm
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_rlm_answers_long_context_tasks_with_the_local_model(
    local_model_server: LocalModelServer,
) -> None:
    """The RLM with the real 0.5B model gets at least 2 of the 3 tasks right."""
    chat = local_model_server.chat_model(
        max_tokens=ROOT_MAX_TOKENS, timeout=REQUEST_TIMEOUT_S, seed=SEED
    )
    rlm = RLM(
        chat,
        max_iterations=MAX_ITERATIONS,
        timeout=RLM_TIMEOUT_S,
        max_llm_calls=MAX_LLM_CALLS,
        max_output_chars=MAX_OUTPUT_CHARS,
        sub_prompt_chars=SUB_PROMPT_CHARS,
        prompt_style=PROMPT_STYLE,
    )
    correct = 0
    report = []
    for build in TASK_BUILDERS:
        task = build(random.Random(SEED))
        started = time.monotonic()
        result = rlm.invoke({"query": task.query, "context": task.context})
        seconds = time.monotonic() - started
        ok = normalize(result.answer) == normalize(task.truth)
        correct += ok
        report.append(
            f"{'OK ' if ok else 'BAD'} {task.name}: answer={result.answer!r} truth={task.truth!r} "
            f"{seconds:.1f} s, {result.iterations} turns, {result.total_calls} calls, "
            f"{result.total_tokens} tokens, finished={result.finished_reason}"
        )
        print(report[-1], flush=True)
        if not ok:
            for message in result.messages[2:]:
                print(f"  [{message.type}] {str(message.content)[:600]}")
    summary = "\n".join(report)
    assert correct >= REQUIRED_CORRECT, (
        f"only {correct} of {len(TASK_BUILDERS)} correct:\n{summary}"
    )
