"""Depth > 1: recursive_lm runs a child RLM; results, usage and history form a tree."""

from __future__ import annotations

import pytest
from langchain_core.messages import BaseMessage

from langchain_rlm import RLM, RLMResult
from langchain_rlm.testing import ScriptedChatModel
from langchain_rlm.testing.fake_models import message_text
from langchain_rlm.testing.openai_server import ChatRequest
from tests.recursion.conftest import first_user_text, is_rlm_root, repl

ROOT_CODE = repl("r = recursive_lm('LEVEL1 what is inside?', context[:8])\nFINAL('R(' + r + ')')")
LEVEL1_CODE = repl("r = recursive_lm('LEVEL2 go deeper', context[:4])\nFINAL('L1(' + r + ')')")
LEAF_CODE = repl("r = llm_query('leaf question about ' + context)\nFINAL('L(' + r + ')')")


def _sub_responder(messages: list[BaseMessage]) -> str:
    """FAKE sub-model: writes code when it is a child RLM's root, answers leaf prompts."""
    if is_rlm_root(messages):
        if "LEVEL2" in first_user_text(messages):
            return LEAF_CODE
        return LEVEL1_CODE
    return "leaf-answer:" + message_text(messages[-1]).rsplit(" ", 1)[-1]


def _child(result: RLMResult, step: int = 0, call: int = 0) -> RLMResult:
    child = result.repl_history[step].sub_calls[call].child
    assert child is not None
    return child


@pytest.mark.parametrize("entry", ["invoke", "ainvoke"])
async def test_depth_2_child_rlm_rolls_up(entry: str) -> None:
    root = ScriptedChatModel(replies=[ROOT_CODE], model="root")
    sub = ScriptedChatModel(
        responder=lambda m: LEAF_CODE if is_rlm_root(m) else "leaf-answer", model="sub"
    )
    rlm = RLM(root, sub, max_depth=2)
    data = {"query": "q?", "context": "ABCDEFGHIJKL"}
    result = rlm.invoke(data) if entry == "invoke" else await rlm.ainvoke(data)

    assert result.answer == "R(L(leaf-answer))"
    child = _child(result)
    assert child.depth == 1 and child.answer == "L(leaf-answer)"
    assert child.finished_reason == "final"
    leaf = child.repl_history[0].sub_calls[0]
    assert leaf.kind == "llm_query" and leaf.child is None and leaf.depth == 1
    assert leaf.prompt_preview == "leaf question about ABCDEFGH"  # the child's context
    # usage: 1 root call, 1 child-root call, 1 leaf call
    assert result.total_calls == 3 and result.root_calls == 1 and result.sub_calls == 2
    assert {d: u.calls for d, u in result.usage_by_depth.items()} == {0: 1, 1: 1, 2: 1}
    assert child.total_calls == 2 and child.root_calls == 1 and child.sub_calls == 1
    assert child.usage["sub"].calls == 2
    assert child.total_tokens > 0 and child.total_tokens < result.total_tokens


@pytest.mark.parametrize("entry", ["invoke", "ainvoke"])
async def test_depth_3_builds_a_three_level_tree(entry: str) -> None:
    root = ScriptedChatModel(replies=[ROOT_CODE], model="root")
    sub = ScriptedChatModel(responder=_sub_responder, model="sub")
    rlm = RLM(root, sub, max_depth=3)
    data = {"query": "q?", "context": "ABCDEFGHIJKL"}
    result = rlm.invoke(data) if entry == "invoke" else await rlm.ainvoke(data)

    assert result.answer == "R(L1(L(leaf-answer:ABCD)))"
    level1 = _child(result)
    level2 = _child(level1)
    assert (level1.depth, level2.depth) == (1, 2)
    assert level2.repl_history[0].sub_calls[0].child is None  # depth 3 = max: a leaf call
    assert result.total_calls == 4
    assert {d: u.calls for d, u in result.usage_by_depth.items()} == {0: 1, 1: 1, 2: 1, 3: 1}
    assert level1.total_calls == 3 and level2.total_calls == 2
    assert set(level2.usage_by_depth) == {2, 3}


def test_max_depth_1_recursive_lm_is_a_plain_sub_call() -> None:
    root = ScriptedChatModel(replies=[repl("FINAL(recursive_lm('q', 'CTX'))")], model="root")
    sub = ScriptedChatModel(responder=lambda m: message_text(m[-1]), model="sub")
    result = RLM(root, sub).invoke({"query": "q?", "context": "c"})
    assert result.answer == "q\n\nContext:\nCTX"
    assert result.repl_history[0].sub_calls[0].child is None
    assert not is_rlm_root(list(sub.calls[0].messages))


async def test_child_rlms_of_a_batch_run_concurrently_over_the_wire(server_factory) -> None:
    """recursive_lm_batched at depth 2 through ChatOpenAI: two children, order kept."""
    code = repl(
        "out = recursive_lm_batched(['LEVEL2 a', 'LEVEL2 b'], [context[:3], context[3:6]])\n"
        "FINAL(' + '.join(out))"
    )

    def sub(request: ChatRequest) -> str:
        if request.system_message:
            return LEAF_CODE
        return "seen " + request.last_user_message.rsplit(" ", 1)[-1]

    server = server_factory({"root": lambda r: code, "sub": sub}, latency=0.05)
    rlm = RLM(server.chat_model("root"), server.chat_model("sub"), max_depth=2)
    result = await rlm.ainvoke({"query": "q?", "context": "abcdef"})
    assert result.answer == "L(seen abc) + L(seen def)"
    children = [call.child for call in result.repl_history[0].sub_calls]
    assert [c.answer for c in children if c is not None] == ["L(seen abc)", "L(seen def)"]
    assert result.total_calls == 5
    assert server.peak_in_flight >= 2
