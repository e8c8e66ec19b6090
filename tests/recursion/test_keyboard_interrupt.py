"""Ctrl-C during a synchronous ``RLM.invoke`` / ``RLM.stream`` (issue 12, lifecycles).

"Cancelling ``invoke`` ... leaves no worker and no request in flight, at any depth." The
sync entry points run the graph on the library's bridge event loop while the calling
thread waits; SIGINT lands in the waiting thread. Each case runs a real ``RLM`` in a child
Python process (``ChatOpenAI`` against the scripted loopback server of this process, the
real process sandbox), waits until the sub-calls hang in flight, sends SIGINT to the
child and then checks, while the child is still alive and paused: the child got
``KeyboardInterrupt`` (before the fix, ``stream`` never returned: LangGraph's sync stream
waited for its node thread, which waited for the hung sub-calls), its sandbox workers
end, the server sees no request left in flight (the client closed the hanging
connections), and a second call in the same child still works (the bridge loop survived).
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from langchain_rlm.concurrency import run_sync, stream_in_thread
from langchain_rlm.testing import ScriptedOpenAIServer
from langchain_rlm.testing.openai_server import ChatRequest, Reply
from tests.conftest import process_alive
from tests.recursion.conftest import repl

HANG_GUARD = 120.0
"""Seconds before a test that would hang gives up (a hang guard, not a speed check)."""
POLL_SECONDS = 0.01
"""Pause between two looks at a condition that has no event to wait on."""
CLEANUP_HOPS = 5
"""Awaits in the cleanup of an interrupted coroutine (cleanup that itself takes time)."""
BATCH_SIZE = 3
"""Hanging leaf calls of the depth-1 case (``llm_query_batched``; distinct prompts, since
identical ones are memoised into one request)."""

WORKER = "WORKER"
INTERRUPTED = "INTERRUPTED"
SECOND = "SECOND"
SECOND_QUERY = "second query"
SECOND_ANSWER = "second answer"

ROOT_CELLS = {
    1: repl(f"print(llm_query_batched([f'leaf {{i}}' for i in range({BATCH_SIZE})]))"),
    2: repl("print(recursive_lm('child query', 'child context'))"),
}
CHILD_CELL = repl("print(llm_query('leaf'))")
HANGING_CALLS = {1: BATCH_SIZE, 2: 1}
WORKERS = {1: 1, 2: 2}
"""Sandbox workers alive while the leaves hang: the root's, plus the child RLM's."""

CHILD_SCRIPT = f'''
"""Child process of test_keyboard_interrupt.py: one RLM run, interrupted by SIGINT."""
import sys

from langchain_openai import ChatOpenAI

from langchain_rlm import RLM
from langchain_rlm.sandbox.process import ProcessSandbox


class ReportingSandbox(ProcessSandbox):
    """The process sandbox, printing the pid of every worker it starts."""

    def start(self, *args, **kwargs):
        session = super().start(*args, **kwargs)
        print("{WORKER}", session.pid, flush=True)
        return session


def run(rlm, method, data):
    if method == "invoke":
        return rlm.invoke(data).answer
    events = list(rlm.stream(data))
    return events[-1].result.answer


base_url, method, depth = sys.argv[1], sys.argv[2], int(sys.argv[3])


def model(name):
    return ChatOpenAI(model=name, base_url=base_url, api_key="test", max_retries=0)


rlm = RLM(model("root"), model("sub"), max_depth=depth, sandbox=ReportingSandbox())
try:
    run(rlm, method, {{"query": "first query", "context": "some context"}})
except KeyboardInterrupt:
    print("{INTERRUPTED}", flush=True)
else:
    print("NOT INTERRUPTED", flush=True)
    sys.exit(1)
sys.stdin.readline()  # the test looks at workers and requests while this process waits
answer = run(rlm, method, {{"query": "{SECOND_QUERY}", "context": "some context"}})
print("{SECOND}", answer, flush=True)
rlm.close()
'''


def _root_reply(depth: int) -> Callable[[ChatRequest], str | Reply]:
    def reply(request: ChatRequest) -> str | Reply:
        if any(SECOND_QUERY in m.content for m in request.messages):
            return f"FINAL({SECOND_ANSWER})"
        return ROOT_CELLS[depth]

    return reply


def _sub_reply(request: ChatRequest) -> str | Reply:
    """The child RLM's root writes a cell; every leaf call hangs until its client leaves."""
    if request.system_message:
        return CHILD_CELL
    return Reply.hanging()


def _wait_until(
    condition: Callable[[], bool], what: str, child: subprocess.Popen[str] | None = None
) -> None:
    """Poll ``condition`` (no event exists for it) under the hang guard, while ``child`` runs."""
    for _ in range(int(HANG_GUARD / POLL_SECONDS)):
        if condition():
            return
        if child is not None:
            assert child.poll() is None, f"the child exited ({child.returncode}) before {what}"
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"timed out waiting until {what}")


class ChildOutput:
    """The child's stdout, line by line, read by a thread (so waits have a guard)."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self) -> str:
        line = self.lines.get(timeout=HANG_GUARD)
        assert line is not None, f"the child ended early; output so far: {self.seen}"
        self.seen.append(line)
        return line

    def expect(self, prefix: str) -> str:
        """The next line that is not a worker pid; it must start with ``prefix``."""
        line = self.next_line()
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r} ({self.seen})"
        return line


@pytest.fixture
def child_process(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start the child script; it is killed (and reaped) after the test whatever happens."""
    script = tmp_path / "interrupted_rlm.py"
    script.write_text(CHILD_SCRIPT)
    children: list[subprocess.Popen[str]] = []
    stderr = (tmp_path / "stderr.txt").open("w")

    def start(*args: str) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=tmp_path,
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=HANG_GUARD)
    stderr.close()
    print((tmp_path / "stderr.txt").read_text())  # shown by pytest when the test fails


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("method", ["invoke", "stream"])
def test_ctrl_c_stops_workers_and_requests_and_the_next_call_works(
    method: str, depth: int, child_process: Callable[..., subprocess.Popen[str]]
) -> None:
    responders = {"root": _root_reply(depth), "sub": _sub_reply}
    with ScriptedOpenAIServer(responders) as server:
        child = child_process(server.base_url, method, str(depth))
        assert child.stdout is not None and child.stdin is not None
        output = ChildOutput(child.stdout)
        pids = [int(output.expect(WORKER).split()[1]) for _ in range(WORKERS[depth])]
        _wait_until(
            lambda: server.in_flight == HANGING_CALLS[depth], "the leaf calls hang in flight", child
        )
        assert all(process_alive(pid) for pid in pids)

        os.kill(child.pid, signal.SIGINT)
        output.expect(INTERRUPTED)
        # the child waits on stdin from here on: what ends now was ended by the interrupt,
        # not by the child's exit (the cancelled run closes workers from helper threads)
        _wait_until(
            lambda: not any(process_alive(pid) for pid in pids), "the workers are gone", child
        )
        _wait_until(lambda: server.in_flight == 0, "the hanging requests are aborted", child)
        assert child.poll() is None

        child.stdin.write("go\n")
        child.stdin.flush()
        second = output.next_line()
        while second.startswith(WORKER):  # the second call's own worker
            second = output.next_line()
        assert second == f"{SECOND} {SECOND_ANSWER}", output.seen
        assert child.wait(HANG_GUARD) == 0
    assert len(server.requests_for("sub")) == HANGING_CALLS[depth] + (depth - 1)


# -- the bridge itself, in this process ---------------------------------------------------
class Cleanup:
    """A coroutine body that hangs until cancelled, then cleans up with awaits of its own."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cleaned = threading.Event()

    async def hang(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            for _ in range(CLEANUP_HOPS):
                await asyncio.to_thread(lambda: None)
            self.cleaned.set()

    def events(self) -> Iterator[str]:
        """A sync iterator whose second step waits on the bridge loop (as a node does)."""
        yield "first"
        run_sync(self.hang())
        yield "never"


def _blocked_in_wait(thread_id: int) -> bool:
    """True while the thread sits in ``threading``'s wait (where SIGINT must land)."""
    frame = sys._current_frames().get(thread_id)
    return frame is not None and frame.f_code.co_name == "wait"


def _interrupt_main_when_waiting(ready: Callable[[], bool]) -> threading.Thread:
    """SIGINT to the main thread (this test's) once ``ready()`` and it waits again."""
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main

    def interrupt() -> None:
        _wait_until(lambda: ready() and _blocked_in_wait(main), "the main thread waits")
        signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    return thread


def test_an_interrupted_run_sync_raises_once_the_cancellation_has_finished() -> None:
    cleanup = Cleanup()
    helper = _interrupt_main_when_waiting(cleanup.started.is_set)
    with pytest.raises(KeyboardInterrupt):
        run_sync(cleanup.hang())
    helper.join()
    assert cleanup.cleaned.is_set()  # before the fix: still cleaning up on the bridge loop
    assert run_sync(asyncio.sleep(0, "still works")) == "still works"


def test_leaving_a_stream_early_cancels_and_waits_for_the_cleanup() -> None:
    cleanup = Cleanup()
    events = stream_in_thread(cleanup.events)
    assert next(events) == "first"
    assert cleanup.started.wait(HANG_GUARD)
    events.close()
    assert cleanup.cleaned.is_set()


def test_an_interrupted_stream_raises_once_the_cancellation_has_finished() -> None:
    cleanup = Cleanup()
    seen: list[str] = []
    helper = _interrupt_main_when_waiting(lambda: cleanup.started.is_set() and bool(seen))
    with pytest.raises(KeyboardInterrupt):
        for event in stream_in_thread(cleanup.events):
            seen.append(event)
    helper.join()
    assert seen == ["first"] and cleanup.cleaned.is_set()


def test_stream_keeps_working_with_a_sync_only_checkpointer(tmp_path: Path) -> None:
    """``stream`` runs the graph's sync API (in its helper thread): ``SqliteSaver``, which
    has no async methods, works as with ``invoke``."""
    import sqlite3

    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.sqlite import SqliteSaver

    from langchain_rlm import RLM
    from langchain_rlm.events import AnswerEvent
    from langchain_rlm.testing import ScriptedChatModel

    connection = sqlite3.connect(tmp_path / "checkpoints.db", check_same_thread=False)
    root = ScriptedChatModel(replies=[repl("x = 41 + 1\nprint(x)"), "FINAL(x)"], model="root")
    rlm = RLM(root, checkpointer=SqliteSaver(connection))
    config: RunnableConfig = {"configurable": {"thread_id": "t"}}
    events = list(rlm.stream({"query": "q", "context": "c"}, config))
    last = events[-1]
    assert isinstance(last, AnswerEvent) and last.result is not None
    assert last.result.answer == "42"
    assert rlm.graph.get_state(config).values["answer"] == "42"  # checkpointed
