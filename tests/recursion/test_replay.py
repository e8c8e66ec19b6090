"""Issue 11: exact resume and replay, in one process (the multi-process kill tests are in
``tests/deployment``). A "crash" is a BaseException raised by a FAKE model or tool in the
middle of a step: the step never completes, as when the process is killed there."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.memory import InMemorySaver

from langchain_rlm import RLM
from langchain_rlm.testing import ScriptedChatModel
from langchain_rlm.testing.fake_models import message_text
from tests.recursion.conftest import repl

THREAD = {"configurable": {"thread_id": "t"}}


class Crash(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way turns it into a value."""


class CrashingModel(ScriptedChatModel):
    """FAKE chat model that raises Crash, as a kill would stop it, when ``crash`` says so.

    LangChain's generate machinery turns a BaseException raised inside ``_agenerate``
    into an ordinary error, so the crash is raised from ``ainvoke`` itself.
    """

    crash: Any = None

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        if self.crash is not None and self.crash(input):
            raise Crash()
        return await super().ainvoke(input, config, **kwargs)


def _sub(crash_on: str | None = None) -> tuple[ScriptedChatModel, list[str]]:
    """FAKE sub-model answering ``<prompt>!``; raises Crash on the prompt ``crash_on``."""
    prompts: list[str] = []
    lock = threading.Lock()

    def respond(messages: list[BaseMessage]) -> str:
        prompt = message_text(messages[-1])
        with lock:
            prompts.append(prompt)
        return prompt + "!"

    def crash(messages: list[BaseMessage]) -> bool:
        if crash_on is None or message_text(messages[-1]) != crash_on:
            return False
        with lock:
            prompts.append(crash_on)
        return True

    return CrashingModel(responder=respond, model="sub", crash=crash), prompts


BATCH_CELL = repl("out = llm_query_batched([f'p{i}' for i in range(10)])\nprint(len(out))")


def test_sub_calls_are_durable_as_they_arrive() -> None:
    """A crash after 7 of 10 responses: the resume buys only the calls not answered."""
    saver = InMemorySaver()
    sub, asked = _sub(crash_on="p7")
    root = ScriptedChatModel(replies=[BATCH_CELL], model="root")
    rlm = RLM(root, sub, checkpointer=saver, max_concurrency=1)
    with pytest.raises(Crash):
        rlm.invoke({"query": "q?", "context": "c"}, THREAD)
    assert asked == [f"p{i}" for i in range(8)]

    sub2, asked2 = _sub()
    root2 = ScriptedChatModel(replies=["FINAL(out)"], model="root")
    resumed = RLM(root2, sub2, checkpointer=saver, max_concurrency=1)
    result = resumed.resume({"context": "c"}, THREAD)
    assert asked2 == ["p7", "p8", "p9"]  # p0..p6 came from the journal
    assert result.answer == str([f"p{i}!" for i in range(10)])
    # every call is counted once: 2 root turns + 10 sub-calls, plus p7, which was in
    # flight at the crash (it may have been paid) and was made again
    assert result.total_calls == 2 + 10 + 1
    resumed.close()


def test_recursive_lm_records_are_keyed_on_the_subset() -> None:
    """Replaying with another context is a miss that gets a real call, not the old answer."""
    saver = InMemorySaver()
    sub, _ = _sub()
    root = ScriptedChatModel(
        replies=[repl("r = recursive_lm_batched(['which?'] * 3, list(context))"), "FINAL(ok)"],
        model="root",
    )
    RLM(root, sub, checkpointer=saver).invoke({"query": "q?", "context": "abc"}, THREAD)

    sub2, asked2 = _sub()
    root2 = ScriptedChatModel(replies=[repl("print(r)"), "FINAL(r)"], model="root")
    follow = RLM(root2, sub2, checkpointer=saver)
    result = follow.invoke({"query": "again?", "context": "xbz"}, THREAD)
    # the replayed cell asked for 'x' and 'z' anew; 'b' matched its record
    assert sorted(asked2) == ["which?\n\nContext:\nx", "which?\n\nContext:\nz"]
    expected = [f"which?\n\nContext:\n{c}!" for c in "xbz"]
    assert result.answer == str(expected)
    follow.close()


def test_batched_replay_maps_answers_to_their_own_items() -> None:
    saver = InMemorySaver()
    sub, _ = _sub()
    digits = [str(i) for i in range(8)]
    root = ScriptedChatModel(
        replies=[repl(f"r = recursive_lm_batched(['which digit?'] * 8, {digits!r})"), "FINAL(ok)"],
        model="root",
    )
    RLM(root, sub, checkpointer=saver).invoke({"query": "q?", "context": "c"}, THREAD)
    for _ in range(3):
        sub2, asked2 = _sub()
        root2 = ScriptedChatModel(replies=["FINAL(r)"], model="root")
        follow = RLM(root2, sub2, checkpointer=saver)
        answer = follow.invoke({"query": "again?", "context": "c"}, THREAD).answer
        assert asked2 == []
        assert answer == str([f"which digit?\n\nContext:\n{d}!" for d in digits])
        follow.close()


def test_tools_are_not_run_again_on_replay() -> None:
    saver = InMemorySaver()
    sent: list[str] = []

    def send_email(to: str) -> str:
        """Sends an email (a side effect that must happen once)."""
        sent.append(to)
        return f"sent to {to}"

    root = ScriptedChatModel(
        replies=[repl("receipt = send_email('bob')\nprint(receipt)"), "FINAL(receipt)"],
        model="root",
    )
    first = RLM(root, tools=[send_email], checkpointer=saver)
    assert first.invoke({"query": "q?", "context": "c"}, THREAD).answer == "sent to bob"
    first.close()

    root2 = ScriptedChatModel(replies=["FINAL(receipt)"], model="root")
    follow = RLM(root2, tools=[send_email], checkpointer=saver)
    assert follow.invoke({"query": "again?", "context": "c"}, THREAD).answer == "sent to bob"
    assert sent == ["bob"]  # the replayed cell got the recorded receipt
    follow.close()


def test_a_tool_call_before_a_crash_is_not_repeated_on_resume() -> None:
    saver = InMemorySaver()
    sent: list[str] = []

    def send_email(to: str) -> str:
        """Sends an email."""
        sent.append(to)
        return f"sent to {to}"

    sub, _ = _sub(crash_on="after")
    cell = repl("receipt = send_email('bob')\nnote = llm_query('after')\nprint(receipt)")
    rlm = RLM(
        ScriptedChatModel(replies=[cell], model="root"),
        sub,
        tools=[send_email],
        checkpointer=saver,
    )
    with pytest.raises(Crash):
        rlm.invoke({"query": "q?", "context": "c"}, THREAD)
    assert sent == ["bob"]

    sub2, _ = _sub()
    resumed = RLM(
        ScriptedChatModel(replies=["FINAL(receipt)"], model="root"),
        sub2,
        tools=[send_email],
        checkpointer=saver,
    )
    assert resumed.resume({"context": "c"}, THREAD).answer == "sent to bob"
    assert sent == ["bob"]
    resumed.close()


def test_finalize_after_a_resume_uses_the_repl() -> None:
    """Killed during the finalize turn: the resumed turn still sees the REPL's variables."""
    saver = InMemorySaver()
    calls = {"n": 0}

    def crash_on_finalize(messages: list[BaseMessage]) -> bool:
        calls["n"] += 1
        return calls["n"] == 2

    root = CrashingModel(
        replies=[repl("final_answer = 'forty-two'\nprint('working on it')")],
        model="root",
        crash=crash_on_finalize,
    )
    rlm = RLM(root, checkpointer=saver, max_iterations=1)
    with pytest.raises(Crash):
        rlm.invoke({"query": "q?", "context": "c"}, THREAD)

    resumed = RLM(
        ScriptedChatModel(replies=["FINAL_VAR(final_answer)"], model="root"),
        checkpointer=saver,
        max_iterations=1,
    )
    result = resumed.resume({"context": "c"}, THREAD)
    assert (result.answer, result.finished_reason) == ("forty-two", "max_iterations")
    resumed.close()


def test_child_rlm_root_calls_are_not_paid_twice() -> None:
    """max_depth=2: a crash inside a child's step; the resumed child replays its turns."""
    saver = InMemorySaver()
    state: dict[str, Any] = {"crash": True, "child_roots": 0}

    def sub(messages: list[BaseMessage]) -> str:
        if len(messages) > 1:  # a child's root
            state["child_roots"] += 1
            if len(messages) == 2:
                return repl("x = llm_query('leaf')\nprint(x)")
            return "FINAL(x)"
        return "leaf-answer"

    def crash_once(messages: list[BaseMessage]) -> bool:
        if len(messages) == 1 and state["crash"]:
            state["crash"] = False
            return True
        return False

    root = ScriptedChatModel(replies=[repl("r = recursive_lm('go', 'sub')")], model="root")
    with pytest.raises(Crash):
        crashing = CrashingModel(responder=sub, model="sub", crash=crash_once)
        RLM(root, crashing, max_depth=2, checkpointer=saver).invoke(
            {"query": "q?", "context": "c"}, THREAD
        )
    assert state["child_roots"] == 1
    resumed = RLM(
        ScriptedChatModel(replies=["FINAL(r)"], model="root"),
        ScriptedChatModel(responder=sub, model="sub"),
        max_depth=2,
        checkpointer=saver,
    )
    assert resumed.resume({"context": "c"}, THREAD).answer == "leaf-answer"
    assert state["child_roots"] == 2  # the child's first turn came from the journal
    resumed.close()


def test_a_diverging_replay_makes_the_call_again_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    saver = InMemorySaver()
    sub, _ = _sub()
    cell = repl("import random\nr = llm_query('pick ' + str(random.random()))")
    RLM(
        ScriptedChatModel(replies=[cell, "FINAL(ok)"], model="root"), sub, checkpointer=saver
    ).invoke({"query": "q?", "context": "c"}, THREAD)
    sub2, asked2 = _sub()
    follow = RLM(ScriptedChatModel(replies=["FINAL(r)"], model="root"), sub2, checkpointer=saver)
    with caplog.at_level("WARNING", logger="langchain_rlm.recursion"):
        follow.invoke({"query": "again?", "context": "c"}, THREAD)
    assert len(asked2) == 1 and asked2[0].startswith("pick ")
    assert any("was not recorded" in r.getMessage() for r in caplog.records)
    follow.close()
