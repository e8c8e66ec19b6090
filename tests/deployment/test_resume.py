"""Resume after SIGKILL, in a new process, and a follow-up query in yet another process.

Run on both real databases (``database``: SQLite and PostgreSQL, see ``conftest.py``). A
worker process (``rlm_worker.py``) runs the scripted scenario. The kill is deterministic:
the server's :class:`~tests.deployment.scenario.KillSwitch` SIGKILLs the worker the moment
it receives the worker's third root-model request (iteration 3's root call), so the
worker is blocked on that request and has finished iterations 1 and 2; no sleep, no
polling, no latency window. A second process resumes the thread. The models are FAKES
(ScriptedOpenAIServer on 127.0.0.1), whose request log shows which sub-call prompts were
sent, and how often.

Why the earlier version failed once on a fresh machine with a resumed answer of ``''``
(reproduced here, about 2 runs in 3 with this deterministic kill, on both databases):
LangGraph's default ``durability="async"`` writes a step's checkpoint in the background
while the next node runs, so at a kill the newest durable checkpoint can be one whose only
task already finished, its output saved as *pending writes* (e.g. ``check_final`` of
iteration 2, or ``generate_code`` of iteration 2). ``graph.get_state()`` then reports
``next == ()`` although the run is not over, and ``RLM.resume`` takes an empty ``next``
for "finished" and returns the unfinished state's answer, ``''``, calling no model. The
earlier test polled the database for iteration 2 while iteration 3's root call was held
open for 60 s, and killed as soon as it saw it: on a fast machine the next checkpoint was
usually written by then, on a slow one it was not. The same async writes also let a kill
land before iteration 2's cell is durable at all, and its sub-call is then paid again.
Now the process itself signals the kill point, and the test asserts what must hold at
that point whatever the timing (the fixes are in the core: resume must not trust
``next`` alone, and a node's results must be durable before the next model call).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from langchain_rlm.testing.openai_server import ChatRequest, ScriptedOpenAIServer
from tests.deployment import scenario
from tests.deployment.databases import latest_checkpoint

REPO = Path(__file__).resolve().parents[2]
CONTEXT_CHARS = 50_000
KILL_AT_ROOT_CALL = 3
"""The worker is killed when it sends this root call (iteration 3's)."""
CALLS_IN_FLIGHT_AT_KILL = 1
"""Iteration 3's root call: sent, never answered."""
RUN_SECONDS = 120.0
"""Deadline for a worker process (a hang guard, not a speed target)."""


@pytest.fixture
def kill_switch() -> scenario.KillSwitch:
    return scenario.KillSwitch()


@pytest.fixture
def models(kill_switch: scenario.KillSwitch) -> Iterator[ScriptedOpenAIServer]:
    with scenario.scripted_server(on_request=kill_switch) as server:
        yield server


def _is_root(request: ChatRequest) -> bool:
    return request.model == scenario.ROOT_MODEL


def _worker(
    action: str, db: str, thread_id: str, out: Path, models: ScriptedOpenAIServer
) -> subprocess.Popen[bytes]:
    env = {**os.environ, **scenario.server_env(models), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tests.deployment.rlm_worker", action, db, thread_id]
    command += [str(CONTEXT_CHARS), str(out)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL)


def _finish(process: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    assert process.wait(RUN_SECONDS) == 0
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _recorded_steps(db: str, thread_id: str) -> list[dict[str, Any]]:
    """The executed cells the thread's latest checkpoint holds (read once the worker died).

    With its pending writes: a node that finished after the last checkpoint was written
    has its output saved as pending writes, which a resume applies without running it.
    """
    found = latest_checkpoint(db, thread_id)
    if found is None:
        return []
    steps = list(found.checkpoint["channel_values"].get("repl_history", []))
    for _task, channel, value in found.pending_writes or []:
        if channel == "repl_history":
            steps.extend(value)
    return steps


def test_killed_run_resumes_in_a_new_process_without_repeating_sub_calls(
    database: str, models: ScriptedOpenAIServer, kill_switch: scenario.KillSwitch, tmp_path: Path
) -> None:
    out = tmp_path / "out.json"
    kill_switch.arm(KILL_AT_ROOT_CALL, matching=_is_root)
    worker = _worker("run", database, "killed", out, models)
    kill_switch.target(worker.pid)
    worker.wait(RUN_SECONDS)
    assert kill_switch.fired.is_set(), f"the worker ended (exit {worker.returncode}) unkilled"
    recorded = _recorded_steps(database, "killed")
    assert worker.returncode == -signal.SIGKILL
    assert not out.exists()
    # Killed in iteration 3's root call: iterations 1 and 2 must be in the checkpoint.
    assert [step["iteration"] for step in recorded] == [1, 2]
    recorded_prompts = {r["prompt_hash"] for step in recorded for r in step["sub_calls"]}
    assert len(recorded_prompts) == 3  # two batched in iteration 1, one in iteration 2
    sub_requests_at_kill = len(models.requests_for(scenario.SUB_MODEL))

    resumed = _finish(_worker("resume", database, "killed", out, models), out)

    context = scenario.make_context(CONTEXT_CHARS)
    assert resumed["answer"] == scenario.expected_turn1_answer(context)
    assert resumed["finished_reason"] == "final"
    assert resumed["iterations"] == scenario.TURN1_ITERATIONS
    assert resumed["steps"] == scenario.TURN1_ITERATIONS
    # The resumed process made only iteration 3's sub-call; nothing was asked twice.
    assert len(models.requests_for(scenario.SUB_MODEL)) == sub_requests_at_kill + 1
    counts = scenario.sub_prompt_counts(models.requests)
    assert len(counts) == 4 and set(counts.values()) == {1}, counts

    # The same run without interruption gives the same answer. Root call 3 was in flight
    # at the kill: the resume sent it again, and the meter counts both (issue 11).
    uninterrupted = _finish(_worker("run", database, "clean", out, models), out)
    assert uninterrupted["answer"] == resumed["answer"]
    assert resumed["total_calls"] == uninterrupted["total_calls"] + CALLS_IN_FLIGHT_AT_KILL

    # A follow-up in yet another process: the replay restores turn 1's variables.
    sub_requests = len(models.requests_for(scenario.SUB_MODEL))
    follow_up = _finish(_worker("followup", database, "killed", out, models), out)
    assert follow_up["answer"] == f"follow-up: {resumed['answer']} from 2 parts"
    assert len(models.requests_for(scenario.SUB_MODEL)) == sub_requests
