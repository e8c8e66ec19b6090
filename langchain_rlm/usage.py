"""Token, call and cost accounting for a whole RLM tree, and the tree-wide budgets.

One :class:`UsageMeter` is shared by the root run, every sub-call and every child RLM of
one invocation. All updates happen under one lock, so budgets hold across depths and
concurrent branches: a call is *reserved* before it starts (``reserve_call``), which makes
``max_llm_calls`` exact; token and cost budgets are checked before each call and settled
after it, so they can overshoot by at most the calls already in flight. A retry of a
transient fault is the same call: it is not reserved again (``max_llm_calls`` counts
calls, not HTTP attempts), but it is made only while the other budgets hold.

A child RLM gets a child meter (:meth:`UsageMeter.child`): it keeps the subtree's own
usage tables (so each child result carries its usage), forwards every settled call to
its ancestors, and delegates budgets and reservations to the top-level meter.

Token counts come from the models' ``usage_metadata``. A provider that reports none gets a
character-based estimate (:data:`CHARS_PER_TOKEN`), and the usage is marked ``estimated``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_PRICES",
    "BudgetExceeded",
    "Budgets",
    "ModelPrice",
    "ModelUsage",
    "UsageMeter",
    "estimate_tokens",
]

CHARS_PER_TOKEN = 4
"""Characters per token for estimates (English prose and code average about 4)."""


def estimate_tokens(text: str) -> int:
    """A documented, dependency-free estimate: ``ceil(len(text) / CHARS_PER_TOKEN)``."""
    return -(-len(text) // CHARS_PER_TOKEN)


@dataclass(frozen=True)
class ModelPrice:
    """USD per one million tokens."""

    input: float
    output: float


DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(2.50, 10.00),
    "gpt-4o-mini": ModelPrice(0.15, 0.60),
    "gpt-4.1": ModelPrice(2.00, 8.00),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40),
    "gpt-5": ModelPrice(1.25, 10.00),
    "gpt-5-mini": ModelPrice(0.25, 2.00),
    "gpt-5-nano": ModelPrice(0.05, 0.40),
    "o3": ModelPrice(2.00, 8.00),
    "o4-mini": ModelPrice(1.10, 4.40),
    "claude-sonnet-4-5": ModelPrice(3.00, 15.00),
    "claude-haiku-4-5": ModelPrice(1.00, 5.00),
    "qwen2.5-coder-0.5b": ModelPrice(0.0, 0.0),
}
"""Built-in list prices (USD per 1M tokens). Pass ``prices=`` to override or extend."""


def _price_for(model: str, prices: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """Exact match first, then the longest known prefix (``gpt-4o-2024-08-06`` -> ``gpt-4o``)."""
    if model in prices:
        return prices[model]
    candidates = [name for name in prices if model.startswith(name)]
    return prices[max(candidates, key=len)] if candidates else None


class ModelUsage(BaseModel):
    """Usage of one model (or one depth) over a run."""

    calls: int = 0
    """Completed model calls."""
    input_tokens: int = 0
    """Prompt tokens."""
    output_tokens: int = 0
    """Completion tokens."""
    cost: float | None = None
    """USD, when a price is known for every call counted here."""
    estimated: bool = False
    """True when some counts are character-based estimates (no usage was reported)."""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(
        self, input_tokens: int, output_tokens: int, cost: float | None, estimated: bool
    ) -> None:
        self.calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        if cost is not None:
            self.cost = (self.cost or 0.0) + cost
        self.estimated = self.estimated or estimated


class BudgetExceeded(Exception):
    """A tree-wide budget is spent. ``reason`` is the ``finished_reason`` it maps to."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Budgets(BaseModel):
    """Tree-wide limits. ``None`` means unlimited."""

    max_llm_calls: int | None = Field(default=None, ge=1)
    """Model calls in the whole tree (root, sub-calls, child RLMs)."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Input plus output tokens in the whole tree."""
    max_cost: float | None = Field(default=None, gt=0)
    """USD in the whole tree (models without a known price count as free)."""
    timeout: float | None = Field(default=None, gt=0)
    """Wall seconds from the start of the run."""


class UsageMeter:
    """Thread-safe accounting for one RLM invocation and all its descendants."""

    def __init__(
        self,
        budgets: Budgets | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
        *,
        parent: UsageMeter | None = None,
    ) -> None:
        self.budgets = budgets or Budgets()
        self.prices: dict[str, ModelPrice] = {**DEFAULT_PRICES, **(prices or {})}
        self.started: float = time.monotonic() if parent is None else parent.started
        self._parent = parent
        self._root: UsageMeter = self if parent is None else parent._root
        self._lock = threading.Lock()
        self._reserved = 0
        self._root_calls = 0
        self._sub_calls = 0
        self._tokens = 0
        self._cost = 0.0
        self._by_model: dict[str, ModelUsage] = {}
        self._by_depth: dict[int, ModelUsage] = {}
        self._exceeded: BudgetExceeded | None = None

    def child(self) -> UsageMeter:
        """A meter for a child RLM: its own usage tables (the subtree's), while budgets,
        reservations and the tree totals stay with the top-level meter."""
        return UsageMeter(self.budgets, self.prices, parent=self)

    # -- budgets -----------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`BudgetExceeded` if any budget is already spent."""
        if self._root is not self:
            return self._root.check()
        with self._lock:
            self._check_locked(reserving=False)

    def reserve_call(self) -> None:
        """Claim one model call against ``max_llm_calls`` (atomic), or raise."""
        if self._root is not self:
            return self._root.reserve_call()
        with self._lock:
            self._check_locked(reserving=True)
            self._reserved += 1

    def release_call(self) -> None:
        """Give back a reservation whose call never happened (e.g. served from memo)."""
        if self._root is not self:
            return self._root.release_call()
        with self._lock:
            self._reserved = max(0, self._reserved - 1)

    def _check_locked(self, *, reserving: bool) -> None:
        budgets = self.budgets
        if budgets.timeout is not None and time.monotonic() - self.started >= budgets.timeout:
            self._exceed("timeout", f"the run's timeout of {budgets.timeout:g} s is reached")
        if budgets.max_llm_calls is not None:
            limit_hit = self._reserved >= budgets.max_llm_calls
            if limit_hit and (reserving or self._reserved > budgets.max_llm_calls):
                self._exceed(
                    "max_llm_calls", f"the budget of {budgets.max_llm_calls} model calls is spent"
                )
        if budgets.max_tokens is not None and self._tokens >= budgets.max_tokens:
            self._exceed("max_tokens", f"the budget of {budgets.max_tokens} tokens is spent")
        if budgets.max_cost is not None and self._cost >= budgets.max_cost:
            self._exceed("max_cost", f"the budget of ${budgets.max_cost:g} is spent")

    def _exceed(self, reason: str, message: str) -> None:
        if self._exceeded is None:
            self._exceeded = BudgetExceeded(reason, message)
        raise BudgetExceeded(reason, message)

    @property
    def exceeded(self) -> BudgetExceeded | None:
        """The first budget that was hit, if any (tree-wide)."""
        return self._root._exceeded

    def seconds_left(self) -> float | None:
        """Wall seconds left before the run's timeout (``None`` without a timeout)."""
        if self.budgets.timeout is None:
            return None
        return max(0.0, self.budgets.timeout - (time.monotonic() - self.started))

    # -- accounting --------------------------------------------------------------------
    def record(
        self,
        model: str,
        depth: int,
        *,
        input_tokens: int,
        output_tokens: int,
        estimated: bool,
        root: bool,
    ) -> None:
        """Settle one finished model call (here and in every ancestor meter)."""
        price = _price_for(model, self.prices)
        cost = (
            None
            if price is None
            else (input_tokens * price.input + output_tokens * price.output) / 1_000_000
        )
        with self._lock:
            if root:
                self._root_calls += 1
            else:
                self._sub_calls += 1
            self._tokens += input_tokens + output_tokens
            self._cost += cost or 0.0
            for table, key in ((self._by_model, model), (self._by_depth, depth)):
                table.setdefault(key, ModelUsage()).add(  # type: ignore[arg-type]
                    input_tokens, output_tokens, cost, estimated
                )
        if self._parent is not None:
            self._parent.record(
                model,
                depth,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                estimated=estimated,
                root=root,
            )

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Start from a previous snapshot (a resumed run keeps counting where it stopped)."""
        with self._lock:
            self._root_calls = int(snapshot.get("root_calls", 0))
            self._sub_calls = int(snapshot.get("sub_calls", 0))
            self._reserved = self._root_calls + self._sub_calls
            self._tokens = int(snapshot.get("total_tokens", 0))
            self._cost = float(snapshot.get("total_cost") or 0.0)
            for name, usage in snapshot.get("by_model", {}).items():
                self._by_model[name] = ModelUsage.model_validate(usage)
            for depth, usage in snapshot.get("by_depth", {}).items():
                self._by_depth[int(depth)] = ModelUsage.model_validate(usage)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of the counters (what the checkpointed state keeps)."""
        with self._lock:
            return {
                "root_calls": self._root_calls,
                "sub_calls": self._sub_calls,
                "total_tokens": self._tokens,
                "total_cost": self._cost,
                "by_model": {k: v.model_dump() for k, v in self._by_model.items()},
                "by_depth": {str(k): v.model_dump() for k, v in self._by_depth.items()},
            }

    @property
    def root_calls(self) -> int:
        return self._root_calls

    @property
    def sub_calls(self) -> int:
        return self._sub_calls

    @property
    def total_tokens(self) -> int:
        return self._tokens

    @property
    def total_cost(self) -> float:
        return self._cost


def usage_from_message(message: Any, prompt_chars: int) -> tuple[int, int, bool]:
    """``(input_tokens, output_tokens, estimated)`` for one AIMessage."""
    usage = getattr(message, "usage_metadata", None)
    if usage and (usage.get("input_tokens") or usage.get("output_tokens")):
        return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)), False
    text = message.content if isinstance(message.content, str) else str(message.content)
    return -(-prompt_chars // CHARS_PER_TOKEN), estimate_tokens(text), True
