"""Recursive Language Models for LlamaIndex.

``RLMQueryEngine`` (a ``BaseQueryEngine``) and ``RLMSynthesizer`` (a ``BaseSynthesizer``)
answer queries with :class:`langchain_rlm.RLM`: the nodes are loaded into a sandboxed
Python REPL as records ``{"id", "text", "metadata"}`` and the root model writes code to
explore them and to call a sub-model on the pieces it picks. LlamaIndex LLMs and
LangChain chat models can both serve as the root model and the sub-model.

Needs the ``llama-index`` extra: ``pip install 'langchain-rlm[llama-index]'``.
"""

from __future__ import annotations

from llama_index_rlm.llms import LangChainLLM, LlamaIndexChatModel, as_chat_model
from llama_index_rlm.query_engine import (
    DocstoreNodes,
    NodeSource,
    RetrievedNodes,
    RLMQueryEngine,
    StaticNodes,
)
from llama_index_rlm.records import RLMStepEvent, SubCallRecorder, match_sources, node_records
from llama_index_rlm.synthesizer import RLMSynthesizer

__all__ = [
    "DocstoreNodes",
    "LangChainLLM",
    "LlamaIndexChatModel",
    "NodeSource",
    "RLMQueryEngine",
    "RLMStepEvent",
    "RLMSynthesizer",
    "RetrievedNodes",
    "StaticNodes",
    "SubCallRecorder",
    "as_chat_model",
    "match_sources",
    "node_records",
]
