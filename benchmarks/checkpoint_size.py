"""Checkpoint bytes per iteration at a 1 MB and a 50 MB context (same scripted run).

Run from the repository root: ``PYTHONPATH=. python benchmarks/checkpoint_size.py``.

The run is the deployment tests' scripted scenario (FAKE models served by a
ScriptedOpenAIServer on 127.0.0.1, four root iterations, four sub-calls) with a
SqliteSaver on a temporary file. "bytes" counts what SqliteSaver stored: the checkpoint
blobs and metadata plus the pending writes. The context lives only in the REPL, so the
bytes per iteration must not depend on its size (invariant 1): the ratio should be ~1.0.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.deployment.scenario import measure_checkpoints, scripted_server

MB = 1_000_000
SIZES = (1 * MB, 50 * MB)
MAX_RATIO = 1.10
"""Largest accepted ratio of bytes per iteration, 50 MB over 1 MB."""


def main() -> int:
    rows = []
    with scripted_server() as server, tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            rows.append(measure_checkpoints(size, Path(tmp) / f"ckpt-{size}.sqlite", server))
    print(f"{'context':>10} {'iterations':>10} {'checkpoints':>11} {'bytes':>9} {'bytes/iter':>10}")
    for row in rows:
        print(
            f"{row['context_chars'] / MB:>8.0f}MB {row['iterations']:>10} {row['checkpoints']:>11} "
            f"{row['bytes']:>9} {row['bytes_per_iteration']:>10.0f}"
            + ("" if row["answer_ok"] else "  (wrong answer!)")
        )
    ratio = rows[1]["bytes_per_iteration"] / rows[0]["bytes_per_iteration"]
    print(f"ratio 50MB/1MB bytes per iteration: {ratio:.4f} (must be <= {MAX_RATIO})")
    return 0 if ratio <= MAX_RATIO and all(r["answer_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
