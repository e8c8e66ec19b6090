"""Checkpoint bytes per iteration against the context size and the printed output per cell.

Run from the repository root: ``PYTHONPATH=. python benchmarks/checkpoint_size.py``.

The run is the deployment tests' scripted scenario (FAKE models served by a
ScriptedOpenAIServer on 127.0.0.1, four root iterations, four sub-calls) with a
SqliteSaver on a temporary file. "bytes" counts what SqliteSaver stored: the checkpoint
blobs and metadata plus the pending writes. Two dimensions, each measured side by side:

* the context: 1 MB vs 50 MB (cells print little). The context lives only in the REPL,
  so bytes per iteration must not depend on its size (invariant 1);
* the printed output per cell: 8 kB vs 500 kB (1 MB context; each of the three cells
  before ``FINAL`` prints that many characters). The model sees the output cut to
  ``max_output_chars`` (4,000 by default), and the checkpoint keeps only what the model
  saw plus the full output's length and digest (issue 11), so past that cut bytes per
  iteration must not grow with what was printed. A 1 kB row shows the part below the cut,
  which is in the checkpoint because the model saw it.

Target for both ratios: at most :data:`MAX_RATIO`. The exit code is 1 when a ratio misses
it or an answer is wrong.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.deployment.scenario import measure_checkpoints, scripted_server

MB = 1_000_000
KB = 1_000
SMALL_CONTEXT, LARGE_CONTEXT = 1 * MB, 50 * MB
TINY_PRINT, SMALL_PRINT, LARGE_PRINT = 1 * KB, 8 * KB, 500 * KB
MAX_RATIO = 1.10
"""Largest accepted ratio of bytes per iteration (large over small, one dimension)."""


def measure(context_chars: int, print_chars: int, directory: Path) -> dict[str, Any]:
    """One scripted run; its checkpoint bytes (see :func:`measure_checkpoints`)."""
    db = directory / f"ckpt-{context_chars}-{print_chars}.sqlite"
    with scripted_server(print_chars=print_chars) as server:
        row = measure_checkpoints(context_chars, db, server)
    return {**row, "print_chars": print_chars}


def _print_row(row: dict[str, Any]) -> None:
    print(
        f"{row['context_chars'] / MB:>8.0f}MB {row['print_chars'] / KB:>8.0f}kB "
        f"{row['iterations']:>10} {row['checkpoints']:>11} {row['bytes']:>11} "
        f"{row['bytes_per_iteration']:>12.0f}" + ("" if row["answer_ok"] else "  (wrong answer!)")
    )


def _ratio(name: str, large: dict[str, Any], small: dict[str, Any]) -> float:
    ratio = float(large["bytes_per_iteration"] / small["bytes_per_iteration"])
    verdict = "ok" if ratio <= MAX_RATIO else "MISSES the target"
    print(f"{name}: bytes per iteration ratio {ratio:.4f} (target <= {MAX_RATIO}): {verdict}")
    return ratio


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        base = measure(SMALL_CONTEXT, SMALL_PRINT, directory)
        large_context = measure(LARGE_CONTEXT, SMALL_PRINT, directory)
        large_print = measure(SMALL_CONTEXT, LARGE_PRINT, directory)
        tiny_print = measure(SMALL_CONTEXT, TINY_PRINT, directory)
    rows = [base, large_context, large_print, tiny_print]
    header = f"{'context':>10} {'printed':>10} {'iterations':>10} {'checkpoints':>11}"
    print(f"{header} {'bytes':>11} {'bytes/iter':>12}   (printed = per cell)")
    for row in rows:
        _print_row(row)
    ratios = [
        _ratio("context 50MB/1MB", large_context, base),
        _ratio("printed 500kB/8kB per cell", large_print, base),
    ]
    ok = all(r <= MAX_RATIO for r in ratios) and all(row["answer_ok"] for row in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
