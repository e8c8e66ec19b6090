"""Tree-wide budgets: calls (exact, by reservation), tokens, cost, wall time."""

from __future__ import annotations

import pytest

from langchain_rlm import RLM, ModelPrice
from langchain_rlm.testing import ScriptedChatModel
from langchain_rlm.testing.fake_models import message_text
from tests.recursion.conftest import FAST_LATENCY, is_rlm_root, repl

FANOUT_CODE = repl(
    "answer = 'partial answer'\n"
    "out = llm_query_batched([f'p{i}' for i in range(64)])\n"
    "print(sum(not o.startswith('ERROR') for o in out), 'ok')\n"
    "print([o for o in out if o.startswith('ERROR')][:1])"
)

SEQUENTIAL_CODE = repl(
    "answer = 'nothing yet'\n"
    "done = 0\n"
    "for i in range(200):\n"
    "    try:\n"
    "        llm_query(f'question number {i:03d} ' + 'x' * 40)\n"
    "    except Exception as e:\n"
    "        print('stopped:', e)\n"
    "        break\n"
    "    done += 1\n"
    "    answer = f'{done} answers'"
)


@pytest.mark.parametrize("entry", ["invoke", "ainvoke"])
async def test_max_llm_calls_is_exact_under_concurrency(entry: str, server_factory) -> None:
    """max_llm_calls=10 and a batch of 64: exactly 10 requests reach the server."""
    server = server_factory(
        {"root": lambda r: FANOUT_CODE, "sub": lambda r: "fine"}, latency=FAST_LATENCY
    )
    rlm = RLM(server.chat_model("root"), server.chat_model("sub"), max_llm_calls=10)
    data = {"query": "q?", "context": "c"}
    result = rlm.invoke(data) if entry == "invoke" else await rlm.ainvoke(data)

    assert server.request_count == 10  # 1 root call + 9 sub-calls, not one more
    assert len(server.requests_for("sub")) == 9
    assert result.finished_reason == "max_llm_calls"
    assert result.answer == "partial answer"  # the best answer the REPL holds
    assert result.total_calls == 10
    step = result.repl_history[0]
    assert step.stdout.startswith("9 ok")
    errors = [c.error for c in step.sub_calls if c.error]
    assert len(errors) == 55
    assert "budget of 10 model calls is spent" in errors[0]
    assert "finish now with FINAL" in errors[0]


def test_max_llm_calls_counts_every_depth() -> None:
    """Child RLMs' root calls and leaf calls draw on the same budget."""
    code = repl(
        "answer = 'fallback'\n"
        "out = recursive_lm_batched(['a', 'b', 'c', 'd'], ['1', '2', '3', '4'])\n"
        "print(out)"
    )
    root = ScriptedChatModel(replies=[code], model="root")
    leaf_code = repl("FINAL('child:' + llm_query('leaf ' + context))")
    sub = ScriptedChatModel(
        responder=lambda m: leaf_code if is_rlm_root(m) else "leaf", model="sub"
    )
    result = RLM(root, sub, max_depth=2, max_llm_calls=5).invoke({"query": "q", "context": "c"})
    assert result.total_calls == 5
    assert sub.call_count == 4 and root.call_count == 1
    assert result.finished_reason == "max_llm_calls"


def test_max_tokens_overshoot_is_at_most_the_call_in_flight() -> None:
    root = ScriptedChatModel(replies=[SEQUENTIAL_CODE], model="root")
    sub = ScriptedChatModel(responder=lambda m: "short reply", model="sub")
    budget = 3_000
    result = RLM(root, sub, max_tokens=budget).invoke({"query": "q", "context": "c"})
    assert result.finished_reason == "max_tokens"
    per_sub_call = max(c.input_tokens + c.output_tokens for c in result.repl_history[0].sub_calls)
    assert budget <= result.total_tokens < budget + per_sub_call
    assert "tokens is spent" in result.repl_history[0].stdout
    assert result.answer.endswith(" answers")


def test_max_tokens_overshoot_is_bounded_by_concurrency() -> None:
    code = repl(
        "answer = 'x'\nout = llm_query_batched([f'prompt {i} ' + 'y' * 200 for i in range(40)])"
    )
    root = ScriptedChatModel(replies=[code], model="root")
    sub = ScriptedChatModel(responder=lambda m: "r", model="sub", latency=0.01)
    budget, concurrency = 2_500, 4
    rlm = RLM(root, sub, max_tokens=budget, max_concurrency=concurrency)
    result = rlm.invoke({"query": "q", "context": "c"})
    calls = [c for c in result.repl_history[0].sub_calls if c.error is None]
    per_call = max(c.input_tokens + c.output_tokens for c in calls)
    assert result.finished_reason == "max_tokens"
    assert budget <= result.total_tokens <= budget + concurrency * per_call
    assert len(calls) < 40


def test_max_cost_with_a_user_price_table() -> None:
    root = ScriptedChatModel(replies=[SEQUENTIAL_CODE], model="root")
    sub = ScriptedChatModel(responder=lambda m: "short reply", model="sub")
    prices = {"root": ModelPrice(input=0.0, output=0.0), "sub": ModelPrice(10_000.0, 10_000.0)}
    rlm = RLM(root, sub, max_cost=0.5, prices=prices)
    result = rlm.invoke({"query": "q", "context": "c"})
    assert result.finished_reason == "max_cost"
    one_call = max(
        (c.input_tokens + c.output_tokens) * 10_000.0 / 1e6
        for c in result.repl_history[0].sub_calls
    )
    assert 0.5 <= result.total_cost < 0.5 + one_call
    assert result.usage["root"].cost == 0.0
    assert result.usage["sub"].cost == pytest.approx(result.total_cost)
    assert "$0.5 is spent" in result.repl_history[0].stdout


def test_builtin_prices_apply_by_model_name() -> None:
    root = ScriptedChatModel(replies=["FINAL(x)"], model="gpt-4o-mini-2024-07-18")
    result = RLM(root).invoke({"query": "q", "context": "c"})
    usage = result.usage["gpt-4o-mini-2024-07-18"]
    expected = (usage.input_tokens * 0.15 + usage.output_tokens * 0.60) / 1e6
    assert usage.cost == pytest.approx(expected) and expected > 0
    assert result.total_cost == pytest.approx(expected)


def test_unknown_model_has_no_cost() -> None:
    root = ScriptedChatModel(replies=["FINAL(x)"], model="no-such-model")
    result = RLM(root).invoke({"query": "q", "context": "c"})
    assert result.usage["no-such-model"].cost is None
    assert result.total_cost == 0.0


def test_timeout_stops_new_sub_calls_and_cuts_the_one_in_flight() -> None:
    """200 sequential sub-calls of 50 ms cannot fit in 1 s. How many start depends on the
    machine's speed, so the checks hold for any number, including none."""
    root = ScriptedChatModel(replies=[SEQUENTIAL_CODE], model="root")
    sub = ScriptedChatModel(responder=lambda m: "r", model="sub", latency=FAST_LATENCY)
    result = RLM(root, sub, timeout=1.0).invoke({"query": "q", "context": "c"})
    assert result.finished_reason == "timeout"
    assert "timeout of 1 s is reached" in result.repl_history[0].stdout
    assert sub.call_count < 200
    done = len([c for c in result.repl_history[0].sub_calls if c.error is None])
    assert result.answer == (f"{done} answers" if done else "nothing yet")
    assert sub.call_count - done in (0, 1)  # a call in flight at the deadline is cut


def test_strict_mode_raises_on_a_budget() -> None:
    from langchain_rlm import RLMLimitError

    root = ScriptedChatModel(replies=[SEQUENTIAL_CODE], model="root")
    sub = ScriptedChatModel(responder=lambda m: message_text(m[-1])[:3], model="sub")
    with pytest.raises(RLMLimitError) as caught:
        RLM(root, sub, max_llm_calls=3, strict=True).invoke({"query": "q", "context": "c"})
    assert caught.value.reason == "max_llm_calls"
