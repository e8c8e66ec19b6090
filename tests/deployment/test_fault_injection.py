"""Fault injection: SIGKILL a run at every point of one script, resume it in a new process.

The script (``fault_scenario.py``) has a batched ``llm_query_batched``, a
``recursive_lm_batched`` batch whose children run as child RLMs (``max_depth=2``), two
calls of a user tool that appends a line to a file, and a finalize after
``max_iterations``. It runs with ``max_concurrency=1``, so its 17 model requests come one at
a time, in one order, and each kill point has exactly one call in flight: a request counts
as delivered once the process sent the next one, so a call's record must be durable before
the next call starts (with concurrency, which responses a process had taken in when it
died is not observable from outside, and the count would be a guess).

Kill points (21), on each database (SQLite and PostgreSQL, real servers):

* ``request N``, N = 1..17: the scripted server's :class:`~tests.deployment.scenario.KillSwitch`
  SIGKILLs the run's process when it receives the run's N-th request (that request is in
  flight: it is never answered);
* ``tool K before`` / ``tool K after``, K = 1, 2: the tool kills its own process in its
  K-th call, before or after it wrote its line (either way that tool call is in flight).

After each kill a new process resumes the thread (``rlm.invoke({"context": ...})``), and:

* the answer and ``finished_reason`` are those of the uninterrupted run;
* no delivered request is sent again: each distinct request (model + all messages) is
  answered at most once over the killed run and its resume, except the one in flight;
* nothing is asked that the uninterrupted run did not ask, and nothing it asked is missing;
* no tool call is repeated: each line of the uninterrupted run's notes file is written
  once, except the in-flight call's line, written twice when the kill came after it;
* ``total_calls`` = the uninterrupted run's + the model calls in flight at the kill.

Every run happens in its own process, forked from one preloaded worker
(``rlm_worker.py serve``) to keep the file within CI's time; the server and the worker
are shared by the whole module. The models are FAKES (ScriptedOpenAIServer on 127.0.0.1).
All kill points run and all their failures are reported together, one line per point.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from langchain_rlm.testing.openai_server import ChatRequest, ScriptedOpenAIServer
from tests.deployment import fault_scenario
from tests.deployment.rlm_worker import ERROR_SUFFIX
from tests.deployment.scenario import KillSwitch, request_key, server_env

REPO = Path(__file__).resolve().parents[2]
RUN_SECONDS = 120.0
"""Deadline for one run (a hang guard, not a speed target): then it is killed."""
SIGKILLED = -signal.SIGKILL


@dataclass(frozen=True)
class KillPoint:
    """Where a run is killed: at its N-th request, or inside its K-th tool call."""

    request: int | None = None
    tool_call: int | None = None
    when: str | None = None

    @property
    def label(self) -> str:
        if self.request is not None:
            return f"request {self.request}"
        return f"tool {self.tool_call} {self.when}"

    @property
    def model_calls_in_flight(self) -> int:
        return 1 if self.request is not None else 0


KILL_POINTS = [KillPoint(request=n) for n in range(1, fault_scenario.REQUESTS + 1)] + [
    KillPoint(tool_call=k, when=when)
    for k in range(1, fault_scenario.TOOL_CALLS + 1)
    for when in fault_scenario.TOOL_KILL_WHEN
]


class ForkServer:
    """The test's end of ``rlm_worker.py serve``: each command runs in a new process."""

    def __init__(self, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "tests.deployment.rlm_worker", "serve"]
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def run(self, command: dict[str, Any], on_pid: Callable[[int], None] | None = None) -> int:
        """Run ``command`` in a new process; its exit code (``-9`` when it was killed)."""
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()
        pid = int(self._read()["pid"])
        if on_pid is not None:
            on_pid(pid)
        try:
            return int(self._read()["exit"])
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._read()
            raise

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], RUN_SECONDS)
        if not ready:
            raise TimeoutError(f"no answer from the fork server within {RUN_SECONDS} s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died (exit {self.process.wait()})")
        message: dict[str, Any] = json.loads(line)
        return message

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(RUN_SECONDS)


@pytest.fixture(scope="module")
def kill_switch() -> KillSwitch:
    return KillSwitch()


@pytest.fixture(scope="module")
def models(kill_switch: KillSwitch) -> Iterator[ScriptedOpenAIServer]:
    with fault_scenario.server(on_request=kill_switch) as server:
        yield server


@pytest.fixture(scope="module")
def fork_server(models: ScriptedOpenAIServer) -> Iterator[ForkServer]:
    env = {**os.environ, **server_env(models), "PYTHONPATH": str(REPO)}
    server = ForkServer(env)
    yield server
    server.close()


@dataclass
class Run:
    """One run's outcome: its result (None if it failed) and the requests it sent."""

    exit: int
    result: dict[str, Any] | None
    requests: list[ChatRequest]
    error: str = ""


@dataclass
class Reference:
    """The uninterrupted run everything is compared with."""

    result: dict[str, Any]
    keys: set[str]
    notes: list[str]


@dataclass
class Harness:
    """Runs the scenario in forked processes against one database."""

    database: str
    directory: Path
    models: ScriptedOpenAIServer
    kill_switch: KillSwitch
    fork_server: ForkServer
    runs: int = field(default=0)

    def command(self, action: str, thread: str, **extra: Any) -> dict[str, Any]:
        return {
            "action": action,
            "db": self.database,
            "thread": thread,
            "out": str(self.directory / f"{thread}-{action}.json"),
            "notes": str(self.notes_file(thread)),
            **extra,
        }

    def notes_file(self, thread: str) -> Path:
        return self.directory / f"{thread}.notes"

    def run(self, command: dict[str, Any], point: KillPoint | None = None) -> Run:
        start = self.models.request_count
        on_pid = None
        if point is not None and point.request is not None:
            self.kill_switch.arm(point.request)
            on_pid = self.kill_switch.target
        try:
            exit_code = self.fork_server.run(command, on_pid)
        finally:
            self.kill_switch.disarm()
        requests = self.models.requests[start:]
        out, error = Path(command["out"]), Path(command["out"] + ERROR_SUFFIX)
        result = json.loads(out.read_text()) if exit_code == 0 and out.exists() else None
        message = error.read_text().strip().splitlines()[-1] if error.exists() else ""
        return Run(exit_code, result, requests, message)

    def reference(self) -> Reference:
        run = self.run(self.command("run", "reference"))
        assert run.exit == 0 and run.result is not None, f"uninterrupted run failed: {run.error}"
        # The scenario went as designed, else the kill points mean nothing.
        assert len(run.requests) == fault_scenario.REQUESTS, [
            fault_scenario.describe(r) for r in run.requests
        ]
        assert run.result["finished_reason"] == "max_iterations", run.result
        assert run.result["answer"].startswith(fault_scenario.SUB_REPLY_PREFIX), run.result
        assert run.result["answer"].endswith(fault_scenario.FINAL_SUFFIX), run.result
        notes = self.notes_file("reference").read_text().splitlines()
        assert len(set(notes)) == len(notes) == fault_scenario.TOOL_CALLS, notes
        return Reference(run.result, {request_key(r) for r in run.requests}, notes)

    def kill_and_resume(self, index: int, point: KillPoint, reference: Reference) -> list[str]:
        """Kill a run at ``point``, resume it in a new process; the checks that failed."""
        thread = f"kill-{index}"
        kill = {"kill_call": point.tool_call, "kill_when": point.when}
        killed = self.run(self.command("run", thread, **kill), point)
        if killed.exit != SIGKILLED:
            return [f"the run was not killed (exit {killed.exit}) {killed.error}".strip()]
        in_flight = self.kill_switch.killed_request if point.request is not None else None
        resumed = self.run(self.command("resume", thread))
        if resumed.result is None:
            return [f"the resume failed (exit {resumed.exit}): {resumed.error}"]
        file = self.notes_file(thread)
        notes = file.read_text().splitlines() if file.exists() else []
        return _check(
            point, reference, killed.requests + resumed.requests, in_flight, resumed.result, notes
        )


def _check(
    point: KillPoint,
    reference: Reference,
    requests: list[ChatRequest],
    in_flight: ChatRequest | None,
    result: dict[str, Any],
    notes: list[str],
) -> list[str]:
    """What differs from the uninterrupted run, one phrase per failed check."""
    failures: list[str] = []
    expected = reference.result
    if result["answer"] != expected["answer"]:
        failures.append(f"answer {result['answer']!r} != {expected['answer']!r}")
    if result["finished_reason"] != expected["finished_reason"]:
        failures.append(f"finished_reason {result['finished_reason']!r}")
    failures += _check_requests(reference, requests, in_flight)
    failures += _check_notes(point, reference.notes, notes)
    calls = expected["total_calls"] + point.model_calls_in_flight
    if result["total_calls"] != calls:
        failures.append(f"total_calls {result['total_calls']} != {calls}")
    return failures


def _check_requests(
    reference: Reference, requests: list[ChatRequest], in_flight: ChatRequest | None
) -> list[str]:
    failures: list[str] = []
    names = {request_key(r): fault_scenario.describe(r) for r in requests}
    counts = Counter(request_key(r) for r in requests)
    allowed = {request_key(in_flight): 2} if in_flight is not None else {}
    repeated = [f"{names[k]} x{n}" for k, n in counts.items() if n > allowed.get(k, 1)]
    if repeated:
        failures.append(f"delivered requests sent again: {', '.join(repeated)}")
    if extra := [names[k] for k in counts if k not in reference.keys]:
        failures.append(f"requests the uninterrupted run did not send: {', '.join(extra)}")
    if missing := len(reference.keys - counts.keys()):
        failures.append(f"{missing} request(s) of the uninterrupted run never sent")
    return failures


def _check_notes(point: KillPoint, expected: list[str], notes: list[str]) -> list[str]:
    """Each tool call's line once; the in-flight call's twice if it was killed after writing."""
    counts = Counter(notes)
    failures = [f"tool line {line!r} x{n}" for line, n in counts.items() if line not in expected]
    for k, line in enumerate(expected, start=1):
        allowed = 2 if (point.tool_call, point.when) == (k, "after") else 1
        if not 1 <= counts[line] <= allowed:
            failures.append(f"tool call {k} ran {counts[line]} times (allowed 1..{allowed})")
    return failures


def test_sigkill_at_21_points_then_resume_gives_the_uninterrupted_result(
    database: str,
    models: ScriptedOpenAIServer,
    kill_switch: KillSwitch,
    fork_server: ForkServer,
    tmp_path: Path,
) -> None:
    harness = Harness(database, tmp_path, models, kill_switch, fork_server)
    reference = harness.reference()
    report = {
        point.label: harness.kill_and_resume(index, point, reference)
        for index, point in enumerate(KILL_POINTS)
    }
    failed = {label: failures for label, failures in report.items() if failures}
    lines = [f"{label}: {'; '.join(failures)}" for label, failures in failed.items()]
    summary = f"{len(failed)} of {len(KILL_POINTS)} kill points failed:\n" + "\n".join(lines)
    print(summary)
    assert not failed, summary
