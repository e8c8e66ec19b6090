"""Separate processes that run scripted RLM runs on a real database (for resume tests).

One run per process::

    python -m tests.deployment.rlm_worker ACTION DB THREAD CONTEXT_CHARS OUT

runs the turn scenario of ``scenario.py``. ``DB`` is a SQLite file path or a
``postgresql://`` URL (see ``databases.py``). ``ACTION`` is

* ``run``: ask turn 1's query on the thread;
* ``resume``: finish the thread's interrupted run (``rlm.invoke({"context": ...})``);
* ``followup``: ask turn 2's query (its code reads variables turn 1 defined).

Many runs from one process (the fault-injection test)::

    python -m tests.deployment.rlm_worker serve

imports everything once, then reads one JSON command per line on stdin and runs each in a
**new process forked for it** (a fresh interpreter state: no RLM, session, memo or
connection is shared between runs). For each command it writes two JSON lines to stdout:
``{"pid": PID}`` as soon as the process exists (so the test can name it to its kill
switch) and ``{"pid": PID, "exit": CODE}`` when it is gone (``-9`` after SIGKILL; a
failed run also leaves its traceback in ``out + ".error"``). A command is
``{"action": "run" | "resume", "db", "thread", "out", "notes", "kill_call", "kill_when"}``;
it runs the scenario of ``fault_scenario.py``.

The models are ``"openai:root"`` / ``"openai:sub"``; the test points them at its FAKE
ScriptedOpenAIServer through ``OPENAI_BASE_URL``. Each result goes to ``out`` as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig

from langchain_rlm import RLM, RLMResult
from tests.deployment import fault_scenario, scenario
from tests.deployment.databases import open_checkpointer

FORK_EXIT_FAILURE = 1
ERROR_SUFFIX = ".error"
"""A forked run that fails writes its traceback to ``out`` + this suffix."""


def result_json(result: RLMResult) -> dict[str, Any]:
    return {
        "answer": result.answer,
        "iterations": result.iterations,
        "total_calls": result.total_calls,
        "sub_calls": result.sub_calls,
        "finished_reason": result.finished_reason,
        "steps": len(result.repl_history),
    }


def run_turn(action: str, db: str, thread_id: str, chars: int, out: str) -> None:
    """One action of the turn scenario (``scenario.py``)."""
    context = scenario.make_context(chars)
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    with open_checkpointer(db) as saver:
        rlm = RLM(
            f"openai:{scenario.ROOT_MODEL}",
            sub_model=f"openai:{scenario.SUB_MODEL}",
            checkpointer=saver,
            max_retries=0,
        )
        with rlm:
            if action == "run":
                result = rlm.invoke({"query": scenario.TURN1_QUERY, "context": context}, config)
            elif action == "resume":
                result = rlm.invoke({"context": context}, config)
            elif action == "followup":
                result = rlm.invoke({"query": scenario.TURN2_QUERY, "context": context}, config)
            else:
                raise SystemExit(f"unknown action {action!r}")
    Path(out).write_text(json.dumps(result_json(result)))


def run_faults(command: Mapping[str, Any]) -> None:
    """One action of the fault scenario (``fault_scenario.py``)."""
    action = command["action"]
    config: RunnableConfig = {"configurable": {"thread_id": command["thread"]}}
    tool = fault_scenario.note_tool(
        Path(command["notes"]), command.get("kill_call"), command.get("kill_when")
    )
    context = fault_scenario.context()
    with open_checkpointer(command["db"]) as saver:
        rlm = RLM(
            f"openai:{fault_scenario.ROOT_MODEL}",
            sub_model=f"openai:{fault_scenario.SUB_MODEL}",
            checkpointer=saver,
            tools={fault_scenario.TOOL_NAME: tool},
            **fault_scenario.rlm_options(),
        )
        with rlm:
            if action == "run":
                result = rlm.invoke({"query": fault_scenario.QUERY, "context": context}, config)
            elif action == "resume":
                result = rlm.invoke({"context": context}, config)
            else:
                raise SystemExit(f"unknown action {action!r}")
    Path(command["out"]).write_text(json.dumps(result_json(result)))


def serve() -> int:
    """The fork server: one forked process per command read on stdin."""
    _preload()
    if threading.active_count() != 1:  # forking a threaded process is not safe
        print(f"rlm_worker serve: {threading.active_count()} threads before fork", file=sys.stderr)
        return FORK_EXIT_FAILURE
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the run's own process
            _child(command)
        _say({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _say({"pid": pid, "exit": os.waitstatus_to_exitcode(status)})
    return 0


def _child(command: Mapping[str, Any]) -> None:
    """Run one command in the forked process and leave (never returns)."""
    code = 0
    try:
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stdout is the protocol pipe
        sys.stdin.close()
        run_faults(command)
    except BaseException:
        traceback.print_exc()
        Path(command["out"] + ERROR_SUFFIX).write_text(traceback.format_exc())
        code = FORK_EXIT_FAILURE
    finally:
        sys.stderr.flush()
        os._exit(code)


def _say(message: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _preload() -> None:
    """Import what a run imports, so that each forked run starts at once."""
    import langchain_openai  # noqa: F401
    import psycopg  # noqa: F401
    from langgraph.checkpoint.postgres import PostgresSaver  # noqa: F401
    from langgraph.checkpoint.sqlite import SqliteSaver  # noqa: F401


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        return serve()
    action, db, thread_id, chars, out = argv
    run_turn(action, db, thread_id, int(chars), out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
