"""Token, call and cost accounting for a whole RLM tree, and the tree-wide budgets.

One :class:`UsageMeter` is shared by the root run, every sub-call and every child RLM of
one invocation. All updates happen under one lock, so budgets hold across depths and
concurrent branches.

Calls and attempts
    Every HTTP attempt is one model call: :func:`langchain_rlm.models.acall_model`
    *reserves* each attempt before it is sent (``reserve_call``), which makes
    ``max_llm_calls`` exact, and a retry is reserved again. An attempt that fails (an HTTP
    error, a timeout, a cancellation) keeps its reservation and is counted in
    ``failed_calls``; ``root_calls`` and ``sub_calls`` count *completed* calls. So the
    number of requests a provider saw is ``root_calls + sub_calls + failed_calls``.

Tokens and cost
    ``max_tokens`` and ``max_cost`` are checked before each attempt and settled after it,
    so they can overshoot by at most the calls already in flight.

Prices
    :func:`price_for` is the one price lookup of the package: an exact name first, then
    the longest table name that the model name extends by *variant suffixes* only
    (:data:`VARIANT_SUFFIX`): a dated snapshot ``-2024-08-06``, ``-20250929`` or
    ``@20250929``, an OpenAI ``-0613`` snapshot, or ``-latest``. Any other suffix names a
    different product with its own price (``o3-pro`` is not ``o3``, ``gpt-4o-audio-preview``
    is not ``gpt-4o``), so it is unpriced. ``-preview`` is deliberately *not* a variant:
    OpenAI's previews (``o1-preview``, ``gpt-4o-audio-preview``) are priced apart.

    Under ``max_cost`` a model without a price never counts as free. ``RLM`` refuses it at
    construction (:func:`require_prices`, which raises :class:`UnpricedModelError`); the
    meter fails closed as well: reserving a call for an unpriced model raises
    :class:`BudgetExceeded` ``("max_cost")`` with the same message, and settling one (a
    call reserved without its model's name) ends the run the same way. With
    ``Budgets(allow_unpriced=True)`` such calls run: their cost is ``None``, they are
    counted in ``ModelUsage.unpriced_calls``, and the snapshot lists them under
    ``"unpriced_models"``; ``total_cost`` is then a lower bound.

A child RLM gets a child meter (:meth:`UsageMeter.child`): it keeps the subtree's own
usage tables (so each child result carries its usage), forwards every settled call and
every failed attempt to its ancestors, and delegates budgets and reservations to the
top-level meter.

Token counts come from the models' ``usage_metadata``. A provider that reports none gets
LangChain's :func:`~langchain_core.messages.utils.count_tokens_approximately` for the prompt
messages and a character estimate (:data:`CHARS_PER_TOKEN`) for the reply text, and the
usage is marked ``estimated``.

Budget stops are logged on ``logging.getLogger("langchain_rlm.usage")``: the first stop of
a run at WARNING, later refusals at DEBUG.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.messages.utils import count_tokens_approximately
from pydantic import BaseModel, Field

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_PRICES",
    "BudgetExceeded",
    "Budgets",
    "ModelPrice",
    "ModelUsage",
    "UnpricedModelError",
    "UsageMeter",
    "estimate_tokens",
    "price_for",
    "require_prices",
    "unpriced_models",
    "usage_from_message",
]

logger = logging.getLogger(__name__)

TOKENS_PER_PRICE_UNIT = 1_000_000
"""Prices are USD per this many tokens."""

VARIANT_SUFFIX = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|[-@]\d{8}|-\d{4}|-latest)+")
"""What may follow a priced name and still be the same model (see the module docstring)."""

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


def price_for(model: str, prices: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """The price of ``model`` in ``prices``: the exact name first, else the longest name
    that ``model`` extends by :data:`VARIANT_SUFFIX` only
    (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``; ``o3-pro`` -> ``None``, not ``o3``)."""
    if model in prices:
        return prices[model]
    candidates = [
        name
        for name in prices
        if model.startswith(name) and VARIANT_SUFFIX.fullmatch(model, len(name))
    ]
    return prices[max(candidates, key=len)] if candidates else None


def _with_defaults(prices: Mapping[str, ModelPrice] | None) -> dict[str, ModelPrice]:
    """The built-in table, extended and overridden by the caller's ``prices``."""
    return {**DEFAULT_PRICES, **(prices or {})}


def unpriced_models(
    model_names: Iterable[str], prices: Mapping[str, ModelPrice] | None
) -> list[str]:
    """The names (each once, in order) that have no price in ``prices`` plus
    :data:`DEFAULT_PRICES`, by the rule of :func:`price_for`."""
    table = _with_defaults(prices)
    missing: list[str] = []
    for name in model_names:
        if name not in missing and price_for(name, table) is None:
            missing.append(name)
    return missing


def _unpriced_message(names: Sequence[str]) -> str:
    table = ", ".join(f"{name!r}: ModelPrice(input=..., output=...)" for name in names)
    verb = "has" if len(names) == 1 else "have"
    return (
        f"max_cost needs a price for every model: {', '.join(names)} {verb} none; "
        f"pass prices={{{table}}} (USD per 1M tokens) or allow_unpriced=True"
    )


class UnpricedModelError(ValueError):
    """``max_cost`` was set but a model has no price; the message names ``prices=``."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(_unpriced_message(names))
        self.models = list(names)


def require_prices(model_names: Iterable[str], prices: Mapping[str, ModelPrice] | None) -> None:
    """Raise :class:`UnpricedModelError` unless every model has a price (call it when
    ``max_cost`` is set and the caller did not pass ``allow_unpriced=True``)."""
    missing = unpriced_models(model_names, prices)
    if missing:
        raise UnpricedModelError(missing)


class ModelUsage(BaseModel):
    """Usage of one model (or one depth) over a run."""

    calls: int = 0
    """Completed model calls."""
    failed_calls: int = 0
    """HTTP attempts that failed (errors, timeouts, cancellations); each was a call too."""
    input_tokens: int = 0
    """Prompt tokens."""
    output_tokens: int = 0
    """Completion tokens."""
    cost: float | None = None
    """USD of the priced calls counted here (``None`` when none was priced); a lower bound
    when ``unpriced_calls`` is not 0."""
    unpriced_calls: int = 0
    """Completed calls of a model without a price (allowed by ``allow_unpriced=True``, or
    without ``max_cost``): their cost is unknown and not in ``cost``."""
    estimated: bool = False
    """True when some counts are estimates (no usage was reported)."""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(
        self, input_tokens: int, output_tokens: int, cost: float | None, estimated: bool
    ) -> None:
        self.calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        if cost is None:
            self.unpriced_calls += 1
        else:
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
    """Model calls in the whole tree (root, sub-calls, child RLMs). Every HTTP attempt is a
    call: a retry is reserved again, and a failed attempt stays counted."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Input plus output tokens in the whole tree."""
    max_cost: float | None = Field(default=None, gt=0)
    """USD in the whole tree. Every model needs a price (see :func:`price_for`)."""
    allow_unpriced: bool = False
    """Under ``max_cost``, let models without a price run (their cost is unknown and
    recorded as ``None``) instead of refusing them."""
    timeout: float | None = Field(default=None, gt=0)
    """Wall seconds from the start of the run; it also cuts calls in flight."""


class UsageMeter:
    """Thread-safe accounting for one RLM invocation and all its descendants.

    Usable from threads and from asyncio code alike: every method is short, non-blocking
    and guarded by one :class:`threading.Lock`.
    """

    def __init__(
        self,
        budgets: Budgets | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
        *,
        parent: UsageMeter | None = None,
    ) -> None:
        self.budgets = budgets or Budgets()
        self.prices: dict[str, ModelPrice] = _with_defaults(prices)
        self.started: float = time.monotonic() if parent is None else parent.started
        self._parent = parent
        self._root: UsageMeter = self if parent is None else parent._root
        self._lock = threading.Lock()
        self._reserved = 0
        self._root_calls = 0
        self._sub_calls = 0
        self._failed_calls = 0
        self._tokens = 0
        self._cost = 0.0
        self._unpriced: list[str] = []
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

    def reserve_call(self, *, model: str | None = None) -> None:
        """Claim one model call (one HTTP attempt) against ``max_llm_calls`` (atomic), or
        raise. With ``model``, an unpriced model under ``max_cost`` is refused too."""
        if self._root is not self:
            return self._root.reserve_call(model=model)
        with self._lock:
            self._check_locked(reserving=True)
            if model is not None and self._refuses_unpriced(model):
                raise self._stop("max_cost", _unpriced_message([model]))
            self._reserved += 1

    def release_call(self) -> None:
        """Give back a reservation whose call never happened (e.g. served from memo)."""
        if self._root is not self:
            return self._root.release_call()
        with self._lock:
            self._reserved = max(0, self._reserved - 1)

    def expire(self) -> BudgetExceeded:
        """Mark the run's timeout as reached (a call in flight was cut at the deadline)
        and return the :class:`BudgetExceeded` to raise."""
        if self._root is not self:
            return self._root.expire()
        timeout = self.budgets.timeout or 0.0
        with self._lock:
            return self._stop("timeout", f"the run's timeout of {timeout:g} s is reached")

    def _refuses_unpriced(self, model: str) -> bool:
        budgets = self.budgets
        return (
            budgets.max_cost is not None
            and not budgets.allow_unpriced
            and price_for(model, self.prices) is None
        )

    def _check_locked(self, *, reserving: bool) -> None:
        budgets = self.budgets
        if budgets.timeout is not None and time.monotonic() - self.started >= budgets.timeout:
            raise self._stop("timeout", f"the run's timeout of {budgets.timeout:g} s is reached")
        if budgets.max_llm_calls is not None:
            limit_hit = self._reserved >= budgets.max_llm_calls
            if limit_hit and (reserving or self._reserved > budgets.max_llm_calls):
                raise self._stop(
                    "max_llm_calls", f"the budget of {budgets.max_llm_calls} model calls is spent"
                )
        if budgets.max_tokens is not None and self._tokens >= budgets.max_tokens:
            raise self._stop("max_tokens", f"the budget of {budgets.max_tokens} tokens is spent")
        if budgets.max_cost is not None and self._cost >= budgets.max_cost:
            raise self._stop("max_cost", f"the budget of ${budgets.max_cost:g} is spent")
        if self._exceeded is not None and self._exceeded.reason == "max_cost":
            raise BudgetExceeded("max_cost", str(self._exceeded))  # e.g. an unpriced model

    def _stop(self, reason: str, message: str) -> BudgetExceeded:
        """Record the first budget hit (logged once at WARNING); return the error to
        raise. Call under the lock."""
        if self._exceeded is None:
            self._exceeded = BudgetExceeded(reason, message)
            logger.warning("budget stop (%s): %s", reason, message)
        else:
            logger.debug("call refused (%s): %s", reason, message)
        return BudgetExceeded(reason, message)

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
        price = price_for(model, self.prices)
        cost = (
            None
            if price is None
            else (input_tokens * price.input + output_tokens * price.output) / TOKENS_PER_PRICE_UNIT
        )
        with self._lock:
            if root:
                self._root_calls += 1
            else:
                self._sub_calls += 1
            self._tokens += input_tokens + output_tokens
            self._cost += cost or 0.0
            if cost is None and model not in self._unpriced:
                self._unpriced.append(model)
            for usage in self._tables(model, depth):
                usage.add(input_tokens, output_tokens, cost, estimated)
        if self._parent is not None:
            self._parent.record(
                model,
                depth,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                estimated=estimated,
                root=root,
            )
        elif cost is None and self._refuses_unpriced(model):
            self._fail_closed(model)

    def record_failure(self, model: str, depth: int, *, root: bool) -> None:
        """Count one failed attempt (its reservation stays spent), here and in every
        ancestor meter. ``root`` is accepted for symmetry with :meth:`record`."""
        with self._lock:
            self._failed_calls += 1
            for usage in self._tables(model, depth):
                usage.failed_calls += 1
        if self._parent is not None:
            self._parent.record_failure(model, depth, root=root)

    def _tables(self, model: str, depth: int) -> tuple[ModelUsage, ModelUsage]:
        """The per-model and per-depth rows of one call. Call under the lock."""
        return (
            self._by_model.setdefault(model, ModelUsage()),
            self._by_depth.setdefault(depth, ModelUsage()),
        )

    def _fail_closed(self, model: str) -> None:
        """An unpriced call under ``max_cost`` was settled: stop the run, never free."""
        with self._lock:
            self._stop("max_cost", _unpriced_message([model]))

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Start from a previous snapshot (a resumed run keeps counting where it stopped)."""
        with self._lock:
            self._root_calls = int(snapshot.get("root_calls", 0))
            self._sub_calls = int(snapshot.get("sub_calls", 0))
            self._failed_calls = int(snapshot.get("failed_calls", 0))
            self._reserved = self._root_calls + self._sub_calls + self._failed_calls
            self._tokens = int(snapshot.get("total_tokens", 0))
            self._cost = float(snapshot.get("total_cost") or 0.0)
            self._unpriced = list(snapshot.get("unpriced_models", []))
            for name, usage in snapshot.get("by_model", {}).items():
                self._by_model[name] = ModelUsage.model_validate(usage)
            for depth, usage in snapshot.get("by_depth", {}).items():
                self._by_depth[int(depth)] = ModelUsage.model_validate(usage)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of the counters (what the checkpointed state keeps).

        ``root_calls`` and ``sub_calls`` are completed calls, ``failed_calls`` the failed
        attempts; all three are model calls, so every call made is their sum.
        ``unpriced_models`` lists models whose cost is unknown (not in ``total_cost``).
        """
        with self._lock:
            return {
                "root_calls": self._root_calls,
                "sub_calls": self._sub_calls,
                "failed_calls": self._failed_calls,
                "total_tokens": self._tokens,
                "total_cost": self._cost,
                "unpriced_models": list(self._unpriced),
                "by_model": {k: v.model_dump() for k, v in self._by_model.items()},
                "by_depth": {str(k): v.model_dump() for k, v in self._by_depth.items()},
            }

    @property
    def root_calls(self) -> int:
        """Completed calls of root models (every depth)."""
        return self._root_calls

    @property
    def sub_calls(self) -> int:
        """Completed leaf sub-calls."""
        return self._sub_calls

    @property
    def failed_calls(self) -> int:
        """Failed attempts (each one was sent and counted against ``max_llm_calls``)."""
        return self._failed_calls

    @property
    def total_calls(self) -> int:
        """Every call made: completed plus failed attempts."""
        return self._root_calls + self._sub_calls + self._failed_calls

    @property
    def total_tokens(self) -> int:
        return self._tokens

    @property
    def total_cost(self) -> float:
        return self._cost


def usage_from_message(
    message: BaseMessage, prompt: Sequence[BaseMessage]
) -> tuple[int, int, bool]:
    """``(input_tokens, output_tokens, estimated)`` for one reply to ``prompt``.

    The reply's ``usage_metadata`` when it reports any; else LangChain's
    ``count_tokens_approximately(prompt)`` and :func:`estimate_tokens` of the reply's text,
    marked estimated.
    """
    usage = getattr(message, "usage_metadata", None)
    if usage and (usage.get("input_tokens") or usage.get("output_tokens")):
        return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)), False
    return count_tokens_approximately(prompt), estimate_tokens(message.text), True
