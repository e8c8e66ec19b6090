"""Resume after SIGKILL, in a new process, and a follow-up query in yet another process.

A worker process (``rlm_worker.py``) runs the scripted scenario with a SqliteSaver. The
test waits until the checkpoint holds iteration 2's executed cell and its sub-calls, while
the worker sits in iteration 3's (slow) root call, and kills it with SIGKILL. A second
process resumes the thread. The models are FAKES (ScriptedOpenAIServer on 127.0.0.1), whose
request log shows which sub-call prompts were sent, and how often.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from langchain_rlm.testing.openai_server import ScriptedOpenAIServer
from tests.deployment import scenario

REPO = Path(__file__).resolve().parents[2]
CONTEXT_CHARS = 50_000
KILL_AT_ITERATION = 3
"""The worker is killed during this iteration's root call."""
SLOW_ROOT_SECONDS = 60.0
"""How long that root call takes the first time (the kill comes long before)."""
SUB_LATENCY = 0.2
"""Every sub-call takes this long, so the run is observably in progress."""
POLL_SECONDS = 0.05
WAIT_SECONDS = 60.0
RUN_SECONDS = 120.0


@pytest.fixture
def models() -> Iterator[ScriptedOpenAIServer]:
    server = scenario.scripted_server(
        slow_iteration=KILL_AT_ITERATION, root_latency=SLOW_ROOT_SECONDS, sub_latency=SUB_LATENCY
    )
    with server:
        yield server


def _worker(
    action: str, db: Path, thread_id: str, out: Path, models: ScriptedOpenAIServer
) -> subprocess.Popen[bytes]:
    env = {**os.environ, **scenario.server_env(models), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tests.deployment.rlm_worker", action, str(db), thread_id]
    command += [str(CONTEXT_CHARS), str(out)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL)


def _finish(process: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    assert process.wait(RUN_SECONDS) == 0
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _recorded_steps(db: Path, thread_id: str) -> list[dict[str, Any]]:
    """The executed cells the thread's latest checkpoint holds (read by another process)."""
    if not db.exists():
        return []
    connection = sqlite3.connect(db, check_same_thread=False)
    try:
        saver = SqliteSaver(connection)
        found = saver.get_tuple({"configurable": {"thread_id": thread_id}})
    except sqlite3.OperationalError:  # tables not created yet, or locked
        return []
    finally:
        connection.close()
    if found is None:
        return []
    return list(found.checkpoint["channel_values"].get("repl_history", []))


def _kill_after_iteration_two(process: subprocess.Popen[bytes], db: Path, thread_id: str,
                              models: ScriptedOpenAIServer) -> list[dict[str, Any]]:  # fmt: skip
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, "the worker ended before it could be killed"
        steps = _recorded_steps(db, thread_id)
        in_root_call_3 = len(models.requests_for(scenario.ROOT_MODEL)) >= KILL_AT_ITERATION
        if len(steps) >= KILL_AT_ITERATION - 1 and in_root_call_3:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(RUN_SECONDS)
            return steps
        time.sleep(POLL_SECONDS)
    process.kill()
    raise AssertionError("iteration 2 was never recorded")


def test_killed_run_resumes_in_a_new_process_without_repeating_sub_calls(
    models: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    db = tmp_path / "rlm.sqlite"
    out = tmp_path / "out.json"
    worker = _worker("run", db, "killed", out, models)
    recorded = _kill_after_iteration_two(worker, db, "killed", models)
    assert worker.returncode == -signal.SIGKILL
    assert not out.exists()
    assert [step["iteration"] for step in recorded] == [1, 2]
    recorded_prompts = {r["prompt_hash"] for step in recorded for r in step["sub_calls"]}
    assert len(recorded_prompts) == 3  # two batched in iteration 1, one in iteration 2
    sub_requests_at_kill = len(models.requests_for(scenario.SUB_MODEL))

    resumed = _finish(_worker("resume", db, "killed", out, models), out)

    context = scenario.make_context(CONTEXT_CHARS)
    assert resumed["answer"] == scenario.expected_turn1_answer(context)
    assert resumed["finished_reason"] == "final"
    assert resumed["iterations"] == scenario.TURN1_ITERATIONS
    assert resumed["steps"] == scenario.TURN1_ITERATIONS
    # The resumed process made only iteration 3's sub-call; nothing was asked twice.
    assert len(models.requests_for(scenario.SUB_MODEL)) == sub_requests_at_kill + 1
    counts = scenario.sub_prompt_counts(models.requests)
    assert len(counts) == 4 and set(counts.values()) == {1}, counts

    # The same run without interruption gives the same answer and the same call count.
    uninterrupted = _finish(_worker("run", db, "clean", out, models), out)
    assert uninterrupted["answer"] == resumed["answer"]
    assert uninterrupted["total_calls"] == resumed["total_calls"]

    # A follow-up in yet another process: the replay restores turn 1's variables.
    sub_requests = len(models.requests_for(scenario.SUB_MODEL))
    follow_up = _finish(_worker("followup", db, "killed", out, models), out)
    assert follow_up["answer"] == f"follow-up: {resumed['answer']} from 2 parts"
    assert len(models.requests_for(scenario.SUB_MODEL)) == sub_requests
