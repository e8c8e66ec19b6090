"""A worker dies with its host, even when the host dies in the middle of killing it.

The tree kill stops the worker (SIGSTOP), then SIGKILLs it. A host killed between the two
steps (a server SIGKILLed during its shutdown, a process terminated while a session was
closing) left the worker stopped, orphaned, forever: a stopped process cannot notice that
its pipe closed. Found twice in CI runs (``ps``: state ``T``, PPID 1). The worker now asks
the kernel for SIGKILL when its parent thread dies (``PR_SET_PDEATHSIG``), which reaches a
stopped process too.
"""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import process_alive

HANG_GUARD = 60.0
"""Seconds before the test gives up waiting for the worker to end (a hang guard)."""
POLL_SECONDS = 0.05

HOST = """
import os, signal, sys
sys.path.insert(0, {root!r})
from langchain_rlm.sandbox import ProcessSandbox

session = ProcessSandbox().start("context", {{}})
assert session("print(1)").stdout == "1\\n"
print(session.pid, flush=True)
os.kill(session.pid, signal.SIGSTOP)  # the first step of a tree kill ...
os.kill(os.getpid(), signal.SIGKILL)  # ... and the host dies before the second
"""


def test_a_stopped_worker_dies_when_its_host_dies(tmp_path) -> None:
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    script = tmp_path / "host.py"
    script.write_text(HOST.format(root=root))
    host = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=HANG_GUARD
    )
    assert host.returncode == -9, host.stderr
    worker = int(host.stdout.split()[0])
    deadline = time.monotonic() + HANG_GUARD
    while process_alive(worker) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    alive = process_alive(worker)
    if alive:  # do not leave it behind when the test fails
        subprocess.run(["kill", "-9", str(worker)], check=False)
    assert not alive, "the stopped worker outlived its host"
