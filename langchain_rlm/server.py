"""The RLM graph for LangGraph Server (``langgraph dev``, ``langgraph up``, the Platform).

``langgraph.json`` at the repository root exports :data:`graph` as ``"rlm"``. A client
runs it with the query as input and the raw context in the run's *runtime context*, which
LangGraph never checkpoints::

    from langgraph_sdk import get_client

    client = get_client(url="http://127.0.0.1:8123")
    thread = await client.threads.create()
    state = await client.runs.wait(
        thread["thread_id"],
        "rlm",
        input={"query": "How many ERROR lines?"},
        context={"context": huge_log, "model": "openai:gpt-4o-mini"},
    )
    state["answer"]

Why a second runtime-context type: :class:`~langchain_rlm.state.RLMRuntime` holds chat
models, a sandbox session and a usage meter, none of which a client can send as JSON. So
the server graph is the one graph of :func:`~langchain_rlm.graph.build_rlm_graph`, compiled
with :class:`RLMServerContext` as its ``context_schema``: a JSON-able dataclass that builds
the :class:`RLMRuntime` once per run (``rlm_runtime``), resolving model strings with
:func:`~langchain_rlm.models.resolve_model`. Provider settings come from the server's
environment (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``...), never from the client, so a
caller cannot send the server's API key to a URL of its choosing; defaults for the models
come from ``RLM_MODEL`` / ``RLM_SUB_MODEL`` and the sandbox from ``RLM_SANDBOX``.

Keeping the raw context out of stored data (invariant 1). LangGraph API mirrors a run's
``context`` into ``config["configurable"]``, and both LangChain (run metadata, traces) and
every checkpointer (checkpoint metadata) copy the *string* values of ``configurable``. A
string context would therefore be written into every checkpoint's metadata. The graph
strips the ``context`` key from ``configurable`` before it runs (:class:`_ServerGraph`), so
checkpoints, checkpoint metadata and traces hold at most the state's short description.
What this module cannot control: LangGraph API keeps each run's request (its ``kwargs``,
the context included) in its own run store while the run exists (``.langgraph_api/`` for
``langgraph dev``), as it does for any input.

Multi-turn: a follow-up run on the same thread (a new query, the same ``context``) starts
a fresh REPL session, which replays the thread's recorded cells with their recorded
sub-call results, so the variables of earlier queries are back without model calls.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from langchain_rlm.context import normalize_context
from langchain_rlm.graph import build_rlm_graph
from langchain_rlm.local.defaults import model_from_env
from langchain_rlm.models import resolve_model
from langchain_rlm.prompts import DEFAULT_STOP_SEQUENCES
from langchain_rlm.runtime import RLMRuntime, build_config, new_runtime
from langchain_rlm.sandbox.base import DEFAULT_CELL_TIMEOUT
from langchain_rlm.state import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_MAX_OUTPUT_CHARS,
    DEFAULT_MAX_RETRIES,
    RLMState,
)
from langchain_rlm.usage import ModelPrice

__all__ = ["GRAPH_NAME", "RLMServerContext", "graph", "make_graph"]

GRAPH_NAME = "RLM"
"""Run name of the served graph in traces."""
MODEL_ENV = "RLM_MODEL"
"""Environment variable with the default root model string (``"openai:gpt-4o-mini"``)."""
SUB_MODEL_ENV = "RLM_SUB_MODEL"
"""Environment variable with the default sub-model string (default: the root model)."""
SANDBOX_ENV = "RLM_SANDBOX"
"""Environment variable naming the sandbox (``process``, the default, or ``local-trusted``,
in-process, for trusted code only)."""
DEFAULT_SANDBOX = "process"
RAW_CONTEXT_KEY = "context"
"""The field of the run context that carries the raw context."""

_RUNTIME_ATTRIBUTE = "_rlm_runtime"
"""Where a server context caches the RLMRuntime it built."""

_models: dict[str, BaseChatModel] = {}
_models_lock = threading.Lock()


@dataclass
class RLMServerContext:
    """The JSON-able runtime context of a server run: the raw context and the run's knobs.

    Send it as the run's ``context``. It is never checkpointed; the graph builds the
    run's :class:`~langchain_rlm.runtime.RLMRuntime` from it on first use, through the
    same :func:`~langchain_rlm.runtime.build_config` and
    :func:`~langchain_rlm.runtime.new_runtime` as :class:`~langchain_rlm.RLM`, so every
    knob below means what the ``RLM`` argument of the same name means.
    """

    context: str | list[Any] | dict[str, Any] = ""
    """The raw context (a str, a list of str / records, or a dict)."""
    model: str | None = None
    """Root model as ``"provider:model"``; default: the ``RLM_MODEL`` environment variable."""
    sub_model: str | None = None
    """Sub-model string; default: ``RLM_SUB_MODEL``, else the root model."""
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    """Root turns before the run is finalized."""
    max_depth: int = 1
    """Recursion depth: 1 means sub-calls are plain model calls."""
    max_llm_calls: int | None = None
    """Tree-wide budget of model calls."""
    max_tokens: int | None = None
    """Tree-wide budget of tokens."""
    max_cost: float | None = None
    """Tree-wide budget in dollars (every model needs a price: built in, or ``prices``)."""
    prices: dict[str, dict[str, float]] | None = None
    """Extra prices, ``{"model": {"input": usd_per_1m, "output": usd_per_1m}}``."""
    timeout: float | None = None
    """Wall-time budget of the run in seconds."""
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    """REPL output per block shown to the root model."""
    cell_timeout: float = DEFAULT_CELL_TIMEOUT
    """Seconds one code block may run."""
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    """Sub-calls in flight in the whole tree."""
    memoize: bool = True
    """Answer identical sub-calls once per run."""
    stop: list[str] | None = field(default_factory=lambda: list(DEFAULT_STOP_SEQUENCES))
    """Stop sequences of root calls (``None`` for models that reject ``stop``)."""
    prompt_style: str = "auto"
    """System prompt style: ``auto``, ``default`` or ``small``."""
    sub_prompt_chars: int | None = None
    """Largest sub-call prompt in characters (default: from the sub-model's window)."""
    max_retries: int = DEFAULT_MAX_RETRIES
    """Retries of a transient model fault."""

    def rlm_runtime(self, state: Mapping[str, Any]) -> RLMRuntime:
        """The run's :class:`RLMRuntime`, built on the first node and reused by the others.

        A run that continues an interrupted query (``input=None``) restores the usage
        meter from the checkpoint. The runtime's sandbox session is closed when this
        context object is dropped at the end of the run.
        """
        runtime: RLMRuntime | None = self.__dict__.get(_RUNTIME_ATTRIBUTE)
        if runtime is None:  # not a dataclass field: it stays out of the JSON schema
            runtime = self._build(state)
            weakref.finalize(self, runtime.close)
            self.__dict__[_RUNTIME_ATTRIBUTE] = runtime
        return runtime

    def _build(self, state: Mapping[str, Any]) -> RLMRuntime:
        root = _model(self.model or model_from_env(MODEL_ENV, None), "model", MODEL_ENV)
        sub_name = self.sub_model or model_from_env(SUB_MODEL_ENV, default=None)
        sub = _model(sub_name, "sub_model", SUB_MODEL_ENV) if sub_name else root
        config = build_config(
            root,
            sub,
            sandbox=os.environ.get(SANDBOX_ENV) or DEFAULT_SANDBOX,
            budgets={
                "max_llm_calls": self.max_llm_calls,
                "max_tokens": self.max_tokens,
                "max_cost": self.max_cost,
                "timeout": self.timeout,
            },
            prices={
                name: ModelPrice(input=float(p["input"]), output=float(p["output"]))
                for name, p in (self.prices or {}).items()
            },
            settings={
                "max_iterations": self.max_iterations,
                "max_depth": self.max_depth,
                "max_output_chars": self.max_output_chars,
                "max_concurrency": self.max_concurrency,
                "memoize": self.memoize,
                "stop": self.stop,
                "prompt_style": self.prompt_style,
                "sub_prompt_chars": self.sub_prompt_chars,
                "max_retries": self.max_retries,
            },
            cell_timeout=self.cell_timeout,
        )
        usage = state.get("usage") if _continues_a_query(state) else None
        return new_runtime(config, normalize_context(self.context), usage=usage)


def _continues_a_query(state: Mapping[str, Any]) -> bool:
    """True when the run picks up a query already under way (not a new query)."""
    return bool(state.get("iteration")) and state.get("answer") is None


def _model(name: str | None, role: str, env: str) -> BaseChatModel:
    """A chat model for a model string, shared by the runs of this server process."""
    if not name:
        raise ValueError(
            f"no {role} given: pass context={{'{role}': 'openai:gpt-4o-mini', ...}} with the "
            f"run, or set {env} in the server's environment"
        )
    with _models_lock:
        if name not in _models:
            _models[name] = resolve_model(name, role=role)
        return _models[name]


def _strip_raw_context(config: RunnableConfig | None) -> RunnableConfig | None:
    """``config`` without the raw context LangGraph API mirrors into ``configurable``."""
    if not config or RAW_CONTEXT_KEY not in config.get("configurable", {}):
        return config
    configurable = {k: v for k, v in config["configurable"].items() if k != RAW_CONTEXT_KEY}
    metadata = {k: v for k, v in config.get("metadata", {}).items() if k != RAW_CONTEXT_KEY}
    return {**config, "configurable": configurable, "metadata": metadata}


class _ServerGraph(CompiledStateGraph[RLMState, Any, Any, Any]):
    """The compiled RLM graph, minus the raw context in ``config`` (see the module doc)."""

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        return super().stream(input, _strip_raw_context(config), **kwargs)

    def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        return super().astream(input, _strip_raw_context(config), **kwargs)


def make_graph() -> CompiledStateGraph[RLMState, Any, Any, Any]:
    """The RLM graph with :class:`RLMServerContext` as its runtime context schema.

    The server provides the checkpointer; the graph is compiled without one.
    """
    compiled = build_rlm_graph(name=GRAPH_NAME, context_schema=RLMServerContext)
    compiled.__class__ = _ServerGraph
    return compiled


graph = make_graph()
"""The graph ``langgraph.json`` exports as ``"rlm"``."""
