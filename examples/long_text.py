"""An RLM over a real long text with a question that needs reading, not just grep.

The context is Python's language reference as one record per topic (79 sections, about
470,000 characters). The model is expected to select sections in code and map a question
over them with ``llm_query_batched``, then reduce the answers.

    OPENAI_API_KEY=... python examples/long_text.py
    python examples/long_text.py   # embedded local model (slow, and a 0.5B model is weak)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _text import python_reference_sections

from langchain_rlm import RLM
from langchain_rlm.local import default_chat_models

QUERY = (
    "Which statements can only be used inside a loop, according to the reference? "
    "Name each statement and quote the sentence that says so."
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query", default=QUERY)
    parser.add_argument("--max-iterations", type=int, default=10)
    args = parser.parse_args()
    root, sub = default_chat_models()
    rlm = RLM(root, sub, max_iterations=args.max_iterations)
    result = rlm.invoke({"query": args.query, "context": python_reference_sections()})
    for step in result.repl_history:
        print(f"--- turn {step.iteration}: {len(step.sub_calls)} sub-calls, {step.seconds:.2f} s")
        print(step.code)
    print(f"\n{result.total_calls} model calls; usage: {result.usage}")
    print(f"\nAnswer ({result.finished_reason}): {result.answer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
