"""The LangGraph Server graph builds its runtime with the same function as ``RLM``:
every knob of a run's context means what the ``RLM`` argument of that name means."""

from __future__ import annotations

import pytest

from langchain_rlm import RLM, RLMInputError
from langchain_rlm.server import RLMServerContext
from langchain_rlm.usage import ModelPrice


@pytest.fixture(autouse=True)
def _offline_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")  # no request is made
    monkeypatch.delenv("RLM_MODEL", raising=False)


def test_server_runs_honour_every_knob_like_rlm() -> None:
    context = RLMServerContext(
        context="data",
        model="openai:my-model",
        stop=["\nEND"],
        prompt_style="small",
        prices={"my-model": {"input": 1.0, "output": 2.0}},
        max_cost=0.5,
        max_concurrency=3,
        memoize=False,
        max_retries=1,
    )
    runtime = context.rlm_runtime({})
    settings = runtime.config.settings
    assert settings.stop == ("\nEND",)
    assert settings.prompt_style == "small"
    assert (settings.max_concurrency, settings.memoize, settings.max_retries) == (3, False, 1)
    assert runtime.run.limiter.limit == 3
    assert runtime.config.prices == {"my-model": ModelPrice(input=1.0, output=2.0)}
    assert runtime.meter.budgets.max_cost == 0.5

    rlm = RLM(
        "openai:my-model",
        stop=["\nEND"],
        prompt_style="small",
        prices={"my-model": ModelPrice(input=1.0, output=2.0)},
        max_cost=0.5,
        max_concurrency=3,
        memoize=False,
        max_retries=1,
    )
    same = ("stop", "prompt_style", "max_concurrency", "memoize", "max_retries", "verify_answers")
    for name in same:
        assert getattr(rlm.config.settings, name) == getattr(settings, name), name


def test_server_refuses_an_unpriced_model_under_max_cost_like_rlm() -> None:
    with pytest.raises(RLMInputError, match="prices="):
        RLMServerContext(context="x", model="openai:unpriced-model", max_cost=1.0).rlm_runtime({})
    with pytest.raises(RLMInputError, match="prices="):
        RLM("openai:unpriced-model", max_cost=1.0)
