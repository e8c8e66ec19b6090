"""A separate process that runs the scripted scenario with a SqliteSaver (for resume tests).

``python -m tests.deployment.rlm_worker ACTION DB THREAD CONTEXT_CHARS OUT``

* ``run``: ask turn 1's query on the thread;
* ``resume``: finish the thread's interrupted run (``rlm.invoke({"context": ...})``);
* ``followup``: ask turn 2's query (its code reads variables turn 1 defined).

The models are ``"openai:root"`` / ``"openai:sub"``; the test points them at its FAKE
ScriptedOpenAIServer through ``OPENAI_BASE_URL``. The result goes to ``OUT`` as JSON.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.sqlite import SqliteSaver

from langchain_rlm import RLM
from tests.deployment import scenario


def main(argv: list[str]) -> int:
    action, db, thread_id, chars, out = argv
    context = scenario.make_context(int(chars))
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    connection = sqlite3.connect(db, check_same_thread=False)
    rlm = RLM(
        f"openai:{scenario.ROOT_MODEL}",
        sub_model=f"openai:{scenario.SUB_MODEL}",
        checkpointer=SqliteSaver(connection),
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
    Path(out).write_text(
        json.dumps(
            {
                "answer": result.answer,
                "iterations": result.iterations,
                "total_calls": result.total_calls,
                "sub_calls": result.sub_calls,
                "finished_reason": result.finished_reason,
                "steps": len(result.repl_history),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
