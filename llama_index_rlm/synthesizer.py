"""``RLMSynthesizer``: a LlamaIndex response synthesizer that answers with an RLM.

Drop it into any LlamaIndex pipeline that takes a response synthesizer; the retrieved
nodes become the RLM's context (records ``{"id", "text", "metadata"}``)::

    engine = index.as_query_engine(
        llm=llm,                                  # LlamaIndex resolves an LLM here anyway
        similarity_top_k=50,
        response_synthesizer=RLMSynthesizer(llm, sub_model=small_llm),
    )

``Response.source_nodes`` are the retrieved nodes that informed the answer (see
:mod:`llama_index_rlm.records`) followed by any ``additional_source_nodes``.
``synthesize`` dispatches ``SynthesizeStartEvent`` / ``SynthesizeEndEvent`` as the base
class does. Streaming is not supported (the RLM's answer exists only at the end).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import llama_index.core.instrumentation as instrument
from langchain_core.runnables import RunnableConfig
from llama_index.core.base.response.schema import RESPONSE_TYPE, Response
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.instrumentation.events.synthesis import (
    SynthesizeEndEvent,
    SynthesizeStartEvent,
)
from llama_index.core.llms import LLM
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.response_synthesizers import BaseSynthesizer
from llama_index.core.schema import NodeWithScore, QueryBundle, QueryType

from langchain_rlm import RLM
from llama_index_rlm.llms import LangChainLLM
from llama_index_rlm.query_engine import DEFAULT_EMPTY_RESPONSE, RLMNodeRunner, make_rlm

__all__ = ["RLMSynthesizer"]

dispatcher = instrument.get_dispatcher(__name__)


class RLMSynthesizer(BaseSynthesizer):
    """Synthesizes a response with a Recursive Language Model over the retrieved nodes.

    ``model`` / ``sub_model``: LlamaIndex LLMs, LangChain chat models or
    ``"provider:model"`` strings; other keyword arguments go to :class:`langchain_rlm.RLM`
    (or pass ``rlm=RLM(...)``). ``config`` is a LangChain ``RunnableConfig`` for every run.
    """

    def __init__(
        self,
        model: Any = None,
        sub_model: Any = None,
        *,
        rlm: RLM | None = None,
        config: RunnableConfig | None = None,
        callback_manager: CallbackManager | None = None,
        empty_response: str | None = None,
        streaming: bool = False,
        **rlm_options: Any,
    ) -> None:
        if streaming:
            raise ValueError("RLMSynthesizer does not stream: the answer exists only at the end")
        runner = RLMNodeRunner(make_rlm(model, sub_model, rlm, rlm_options), config)
        llm = model if isinstance(model, LLM) else LangChainLLM(chat_model=runner.rlm.model)
        super().__init__(
            llm=llm,
            callback_manager=callback_manager,
            empty_response=empty_response or DEFAULT_EMPTY_RESPONSE,
        )
        self._runner = runner

    @property
    def rlm(self) -> RLM:
        """The RLM that writes the answers."""
        return self._runner.rlm

    # -- PromptMixin: the RLM's prompts live in langchain_rlm.prompts ---------------------
    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        """Nothing to update."""

    # -- plain text chunks -----------------------------------------------------------------
    def get_response(self, query_str: str, text_chunks: Sequence[str], **kwargs: Any) -> str:
        """The answer over ``text_chunks`` (a list of strings as the context)."""
        result = self._runner.rlm.invoke(
            {"query": query_str, "context": list(text_chunks)}, self._runner.config or None
        )
        return result.answer

    async def aget_response(self, query_str: str, text_chunks: Sequence[str], **kwargs: Any) -> str:
        """Async :meth:`get_response`."""
        result = await self._runner.rlm.ainvoke(
            {"query": query_str, "context": list(text_chunks)}, self._runner.config or None
        )
        return result.answer

    # -- nodes -----------------------------------------------------------------------------
    @dispatcher.span
    def synthesize(
        self,
        query: QueryType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        """Answer ``query`` over ``nodes``; source nodes are those that informed it."""
        dispatcher.event(SynthesizeStartEvent(query=query))
        bundle = QueryBundle(query_str=query) if isinstance(query, str) else query
        with self._callback_manager.event(
            CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: bundle.query_str}
        ) as event:
            if nodes:
                response = self._runner.run(bundle.query_str, nodes)
                response.source_nodes.extend(additional_source_nodes or [])
            else:
                response = Response(self._empty_response)
            event.on_end(payload={EventPayload.RESPONSE: response})
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response

    @dispatcher.span
    async def asynthesize(
        self,
        query: QueryType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        """Async :meth:`synthesize`."""
        dispatcher.event(SynthesizeStartEvent(query=query))
        bundle = QueryBundle(query_str=query) if isinstance(query, str) else query
        with self._callback_manager.event(
            CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: bundle.query_str}
        ) as event:
            if nodes:
                response = await self._runner.arun(bundle.query_str, nodes)
                response.source_nodes.extend(additional_source_nodes or [])
            else:
                response = Response(self._empty_response)
            event.on_end(payload={EventPayload.RESPONSE: response})
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response
