"""``RLMQueryEngine``: a LlamaIndex query engine that answers with a Recursive Language Model.

Instead of stuffing the top-k chunks into one prompt, the engine loads *all* the nodes
(of an index's docstore, a document list, or a retriever's results) into the RLM's REPL as
a list of records ``{"id", "text", "metadata"}``; the root model writes code that filters,
greps and reads them and calls a sub-model on the pieces it picked. See
:class:`langchain_rlm.RLM`.

What the engine adds on top of the RLM:

* it is a real ``BaseQueryEngine``: ``query`` / ``aquery`` dispatch LlamaIndex's
  ``QueryStartEvent`` / ``QueryEndEvent`` and spans, and each RLM step is dispatched as an
  :class:`~llama_index_rlm.records.RLMStepEvent`; it works as a ``QueryEngineTool``;
* ``Response.source_nodes`` are the nodes whose text was printed, sent to a sub-call or
  answered with (see :mod:`llama_index_rlm.records`), not every node of the context;
* ``Response.metadata["rlm"]`` holds the run's :class:`~langchain_rlm.RLMResult` as JSON
  (iterations, calls, REPL history, usage, finished_reason);
* a LangChain ``RunnableConfig`` (callbacks, tags, metadata) passes through to the RLM, so
  a LangSmith trace shows the RLM's steps under a LlamaIndex pipeline; inside a LangChain
  run the parent's config is picked up as usual.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol, cast

import llama_index.core.instrumentation as instrument
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_core.runnables.config import merge_configs
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import RESPONSE_TYPE, PydanticResponse, Response
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.indices.base import BaseIndex
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle, TransformComponent
from llama_index.core.settings import Settings
from pydantic import BaseModel

from langchain_rlm import RLM, RLMResult
from llama_index_rlm.llms import as_chat_model
from llama_index_rlm.records import (
    RLMStepEvent,
    SubCallRecorder,
    evidence_texts,
    match_sources,
    node_records,
)

__all__ = [
    "DocstoreNodes",
    "NodeSource",
    "RLMNodeRunner",
    "RLMQueryEngine",
    "RetrievedNodes",
    "StaticNodes",
    "build_response",
    "make_rlm",
]

dispatcher = instrument.get_dispatcher(__name__)

DEFAULT_EMPTY_RESPONSE = "Empty Response"
"""LlamaIndex's answer when there is nothing to answer from."""


# -- where the nodes come from -----------------------------------------------------------
class NodeSource(Protocol):
    """Gives the nodes that form the RLM's context for one query."""

    def nodes(self, query: QueryBundle) -> Sequence[BaseNode | NodeWithScore]: ...

    async def anodes(self, query: QueryBundle) -> Sequence[BaseNode | NodeWithScore]: ...


class StaticNodes:
    """A fixed list of nodes or documents, the same for every query."""

    def __init__(self, nodes: Sequence[BaseNode | NodeWithScore]) -> None:
        self._nodes = list(nodes)

    def nodes(self, query: QueryBundle) -> Sequence[BaseNode | NodeWithScore]:
        return self._nodes

    async def anodes(self, query: QueryBundle) -> Sequence[BaseNode | NodeWithScore]:
        return self._nodes


class DocstoreNodes:
    """Every node of an index, read from its docstore at query time (inserts are seen)."""

    def __init__(self, index: BaseIndex[Any]) -> None:
        self._index = index

    def nodes(self, query: QueryBundle) -> Sequence[BaseNode | NodeWithScore]:
        nodes = list(self._index.docstore.docs.values())
        if nodes:
            return nodes
        return self._from_vector_store()

    async def anodes(self, query: QueryBundle) -> Sequence[BaseNode | NodeWithScore]:
        return self.nodes(query)

    def _from_vector_store(self) -> list[BaseNode]:
        """Indexes over vector stores that keep the text themselves have an empty docstore."""
        store = getattr(self._index, "vector_store", None)
        if store is None or not getattr(store, "stores_text", False):
            return []
        try:
            return list(store.get_nodes())
        except NotImplementedError as error:
            raise ValueError(
                f"the index's docstore is empty and {type(store).__name__} cannot list its "
                "nodes: build the index with store_nodes_override=True, or use "
                "RLMQueryEngine.from_retriever(index.as_retriever(similarity_top_k=N), ...)"
            ) from error


class RetrievedNodes:
    """The nodes a retriever returns for the query."""

    def __init__(self, retriever: BaseRetriever) -> None:
        self._retriever = retriever

    def nodes(self, query: QueryBundle) -> Sequence[BaseNode | NodeWithScore]:
        return self._retriever.retrieve(query)

    async def anodes(self, query: QueryBundle) -> Sequence[BaseNode | NodeWithScore]:
        return await self._retriever.aretrieve(query)


# -- the shared run: nodes in, Response out ----------------------------------------------
class RLMNodeRunner:
    """Runs an RLM over nodes and builds a LlamaIndex ``Response`` (engine and synthesizer)."""

    def __init__(self, rlm: RLM, config: RunnableConfig | None = None) -> None:
        self.rlm = rlm
        self.config: RunnableConfig = dict(config or {})  # type: ignore[assignment]

    def run(self, query: str, nodes: Sequence[BaseNode | NodeWithScore]) -> RESPONSE_TYPE:
        records, kept = node_records(nodes)
        recorder = SubCallRecorder(on_step=_dispatch_step)
        result = self.rlm.invoke({"query": query, "context": records}, self._config(recorder))
        return build_response(result, records, kept, recorder.texts)

    async def arun(self, query: str, nodes: Sequence[BaseNode | NodeWithScore]) -> RESPONSE_TYPE:
        records, kept = node_records(nodes)
        recorder = SubCallRecorder(on_step=_dispatch_step)
        result = await self.rlm.ainvoke(
            {"query": query, "context": records}, self._config(recorder)
        )
        return build_response(result, records, kept, recorder.texts)

    def _config(self, recorder: SubCallRecorder) -> RunnableConfig:
        """The caller's config (and any LangChain parent run's) plus the recorder."""
        return merge_configs(ensure_config(self.config), {"callbacks": [recorder]})


def _dispatch_step(step: dict[str, Any]) -> None:
    dispatcher.event(RLMStepEvent(step=dict(step)))


def build_response(
    result: RLMResult,
    records: Sequence[dict[str, Any]],
    nodes: Sequence[BaseNode],
    recorded: Sequence[str] = (),
) -> RESPONSE_TYPE:
    """The answer, the nodes that informed it, and the run as ``metadata["rlm"]``.

    With ``output_cls`` (the RLM's ``output_schema``) it is a ``PydanticResponse`` whose
    ``response`` is the validated object, as LlamaIndex's structured engines give; the
    object is also in ``metadata["output"]`` (as JSON) and the string form in
    ``metadata["rlm"]["answer"]``.
    """
    matches = match_sources(records, evidence_texts(result, recorded))
    sources = [NodeWithScore(node=nodes[m.index], score=m.score) for m in matches]
    metadata: dict[str, Any] = {"rlm": result.model_dump(mode="json", exclude={"messages"})}
    if isinstance(result.output, BaseModel):
        metadata["output"] = result.output.model_dump(mode="json")
        return PydanticResponse(response=result.output, source_nodes=sources, metadata=metadata)
    if result.output is not None:
        metadata["output"] = result.output
    return Response(response=result.answer, source_nodes=sources, metadata=metadata)


def make_rlm(
    model: Any,
    sub_model: Any,
    rlm: RLM | None,
    options: dict[str, Any],
    output_cls: type[BaseModel] | None = None,
) -> RLM:
    """The given ``rlm``, or a new one over the models (LlamaIndex LLMs wrapped).

    ``output_cls``: answers are validated objects of this pydantic class.
    """
    if output_cls is not None:
        if rlm is not None:
            return rlm._copy_with(output_schema=output_cls)
        options = {**options, "output_schema": output_cls}
    if rlm is not None:
        if model is not None or sub_model is not None or options:
            raise TypeError("pass either rlm=RLM(...) or a model and RLM options, not both")
        return rlm
    if model is None:
        raise TypeError(
            "a model is needed: a LlamaIndex LLM (e.g. llama_index.llms.openai.OpenAI()), a "
            "LangChain chat model, or a 'provider:model' string such as 'openai:gpt-4o-mini'"
        )
    return RLM(as_chat_model(model), sub_model=as_chat_model(sub_model), **options)


# -- the engine --------------------------------------------------------------------------
class RLMQueryEngine(BaseQueryEngine):
    """A LlamaIndex query engine backed by a Recursive Language Model.

    Build it from an index (context: every node of its docstore), a retriever (context:
    the retrieved nodes) or documents:

    .. code-block:: python

        from llama_index_rlm import RLMQueryEngine

        engine = RLMQueryEngine.from_index(
            index,
            model=OpenAI(model="gpt-4o"),          # LlamaIndex LLM, LangChain chat model
            sub_model="openai:gpt-4o-mini",        # or a "provider:model" string
            max_iterations=15,                     # any langchain_rlm.RLM option
            max_cost=0.50,
        )
        response = engine.query("Which suppliers raised prices in Q3?")
        response.response           # the answer
        response.source_nodes       # the nodes whose text informed it
        response.metadata["rlm"]    # iterations, calls, REPL history, usage

    ``model`` / ``sub_model`` can be LlamaIndex LLMs, LangChain chat models or strings;
    other keyword arguments go to :class:`langchain_rlm.RLM` (or pass ``rlm=RLM(...)``).
    ``output_cls=MyModel`` makes every answer a validated ``MyModel``: ``query`` returns a
    ``PydanticResponse`` whose ``response`` is the object.
    ``config`` is a LangChain ``RunnableConfig`` (callbacks, tags, metadata) used for every
    query; :meth:`with_config` makes a copy with more.
    """

    def __init__(
        self,
        source: NodeSource,
        model: Any = None,
        sub_model: Any = None,
        *,
        rlm: RLM | None = None,
        config: RunnableConfig | None = None,
        callback_manager: CallbackManager | None = None,
        empty_response: str = DEFAULT_EMPTY_RESPONSE,
        output_cls: type[BaseModel] | None = None,
        **rlm_options: Any,
    ) -> None:
        self._source = source
        self._runner = RLMNodeRunner(
            make_rlm(model, sub_model, rlm, rlm_options, output_cls), config
        )
        self._empty_response = empty_response
        super().__init__(callback_manager=callback_manager or Settings.callback_manager)

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def from_index(
        cls, index: BaseIndex[Any], model: Any = None, sub_model: Any = None, **kwargs: Any
    ) -> RLMQueryEngine:
        """Context: every node of ``index`` (its docstore), read at query time."""
        kwargs.setdefault("callback_manager", index._callback_manager)
        return cls(DocstoreNodes(index), model, sub_model, **kwargs)

    @classmethod
    def from_retriever(
        cls, retriever: BaseRetriever, model: Any = None, sub_model: Any = None, **kwargs: Any
    ) -> RLMQueryEngine:
        """Context: the nodes ``retriever`` returns for each query."""
        kwargs.setdefault("callback_manager", retriever.callback_manager)
        return cls(RetrievedNodes(retriever), model, sub_model, **kwargs)

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[BaseNode],
        model: Any = None,
        sub_model: Any = None,
        *,
        transformations: Sequence[TransformComponent] | None = None,
        **kwargs: Any,
    ) -> RLMQueryEngine:
        """Context: ``documents`` as they are, or the nodes ``transformations`` make of them.

        No index and no embeddings are needed: the RLM reads the documents itself, so
        chunking (``transformations=[SentenceSplitter()]``) is optional.
        """
        nodes: Sequence[BaseNode] = list(documents)
        if transformations:
            from llama_index.core.ingestion import run_transformations

            nodes = run_transformations(list(nodes), list(transformations))
        return cls(StaticNodes(nodes), model, sub_model, **kwargs)

    # -- configuration ------------------------------------------------------------------
    @property
    def rlm(self) -> RLM:
        """The RLM that answers the queries."""
        return self._runner.rlm

    @property
    def config(self) -> RunnableConfig:
        """The LangChain config every query runs with."""
        return self._runner.config

    def with_config(self, config: RunnableConfig | None = None, **kwargs: Any) -> RLMQueryEngine:
        """A copy whose queries run with ``config`` merged in (e.g. per-request callbacks)."""
        engine = copy.copy(self)
        extra = cast(RunnableConfig, {**(config or {}), **kwargs})
        merged = merge_configs(self._runner.config, extra)
        engine._runner = RLMNodeRunner(self._runner.rlm, merged)
        return engine

    # -- BaseQueryEngine ----------------------------------------------------------------
    def _get_prompt_modules(self) -> dict[str, Any]:
        return {}

    @dispatcher.span
    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        with self.callback_manager.event(
            CBEventType.QUERY, payload={EventPayload.QUERY_STR: query_bundle.query_str}
        ) as query_event:
            nodes = self._source.nodes(query_bundle)
            response = (
                self._runner.run(query_bundle.query_str, nodes)
                if nodes
                else Response(self._empty_response)
            )
            query_event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    @dispatcher.span
    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        with self.callback_manager.event(
            CBEventType.QUERY, payload={EventPayload.QUERY_STR: query_bundle.query_str}
        ) as query_event:
            nodes = await self._source.anodes(query_bundle)
            response = (
                await self._runner.arun(query_bundle.query_str, nodes)
                if nodes
                else Response(self._empty_response)
            )
            query_event.on_end(payload={EventPayload.RESPONSE: response})
        return response
