"""Long-context quality benchmark: generated tasks with exact ground truth (issues 7 and 13).

* :mod:`benchmarks.quality.tasks` builds the tasks from a fixed seed per split (``dev`` for
  tuning, ``heldout`` never tuned on): needle, aggregation, multi-hop; realistic filler
  sentences come from a word list, never one repeated character.
* :mod:`benchmarks.quality.families` adds the shapes the first small-model prompt was not
  written for: sums / averages over delimited records, arg-max over JSON lines, distinct
  counts over log lines, filters over ``{"id", "text", "metadata"}`` records, a two-table
  join, a semantic question for ``llm_query_batched``, and a dict of documents.
* :mod:`benchmarks.quality.run` runs them with the RLM and with direct prompting on the
  embedded local model, writes per-task JSONL (resumable) and renders the results tables
  (``--report``; ``--compare`` for columns side by side).

Run ``python -m benchmarks.quality.run --help``.
"""
