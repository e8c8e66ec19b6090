"""Long-context quality benchmark: generated tasks with exact ground truth (issue 7).

* :mod:`benchmarks.quality.tasks` builds the tasks (needle, aggregation, multi-hop) from a
  fixed seed; realistic filler sentences come from a word list, never one repeated character.
* :mod:`benchmarks.quality.run` runs them with the RLM and with direct prompting on the
  embedded local model, writes per-task JSONL (resumable) and renders the results table.

Run ``python -m benchmarks.quality.run --help``.
"""
