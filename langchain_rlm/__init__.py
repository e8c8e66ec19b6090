"""Recursive Language Models for LangChain and LangGraph.

An RLM answers a query over a context of any size without putting the context into a
prompt: the context lives in a sandboxed Python REPL, and the root model writes code to
explore it and to call sub-models on the pieces it picks.
"""

from __future__ import annotations

from langchain_rlm.events import (
    AnswerEvent,
    CodeEvent,
    OutputEvent,
    RLMEvent,
    SubCallEndEvent,
    SubCallStartEvent,
)
from langchain_rlm.graph import RLMLimitError, RLMRootCallError, build_rlm_graph
from langchain_rlm.result import ReplStep, RLMResult, SubCall
from langchain_rlm.rlm import RLM, RLMClosed, RLMInput, RLMInputError, RLMOutputError
from langchain_rlm.runtime import RLMConfig, RLMRuntime, build_config, new_runtime
from langchain_rlm.sessions import RLMThreadBusyError
from langchain_rlm.state import RLMSettings, RLMState
from langchain_rlm.usage import Budgets, ModelPrice, ModelUsage

__all__ = [
    "RLM",
    "AnswerEvent",
    "Budgets",
    "CodeEvent",
    "ModelPrice",
    "ModelUsage",
    "OutputEvent",
    "RLMClosed",
    "RLMConfig",
    "RLMEvent",
    "RLMInput",
    "RLMInputError",
    "RLMLimitError",
    "RLMOutputError",
    "RLMResult",
    "RLMRootCallError",
    "RLMRuntime",
    "RLMSettings",
    "RLMState",
    "RLMThreadBusyError",
    "ReplStep",
    "SubCall",
    "SubCallEndEvent",
    "SubCallStartEvent",
    "build_config",
    "build_rlm_graph",
    "new_runtime",
]
