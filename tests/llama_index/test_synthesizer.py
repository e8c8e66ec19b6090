"""RLMSynthesizer in LlamaIndex's own query engine: the retrieved nodes are the context."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters

from langchain_rlm.testing import ScriptedChatModel
from llama_index_rlm import LangChainLLM, RLMSynthesizer
from tests.llama_index.conftest import ANSWER, CRITICAL_IDS, QUESTION, ROOT_SCRIPT, sub_reply

INCIDENTS = MetadataFilters(filters=[ExactMatchFilter(key="kind", value="incident")])


def make_synthesizer(**kwargs) -> RLMSynthesizer:
    root = ScriptedChatModel(replies=list(ROOT_SCRIPT), model="root")
    sub = ScriptedChatModel(responder=lambda m: sub_reply(str(m[-1].content)), model="sub")
    return RLMSynthesizer(root, sub, **kwargs)


def test_as_query_engine_with_rlm_synthesizer(models, index) -> None:
    pair = models(ROOT_SCRIPT, sub_reply)
    engine = index.as_query_engine(
        llm=MockLLM(),  # LlamaIndex resolves an LLM for the engine; the synthesizer ignores it
        similarity_top_k=50,
        filters=INCIDENTS,
        response_synthesizer=RLMSynthesizer(pair.root, pair.sub),
    )
    assert isinstance(engine, RetrieverQueryEngine)

    response = engine.query(QUESTION)

    assert response.response == ANSWER
    assert {n.node.ref_doc_id for n in response.source_nodes} == CRITICAL_IDS
    assert response.metadata["rlm"]["repl_history"][0]["stdout"].strip() == (
        "3 critical incidents of 9"
    )


async def test_as_query_engine_async(index) -> None:
    engine = index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=50,
        filters=INCIDENTS,
        response_synthesizer=make_synthesizer(),
    )

    response = await engine.aquery(QUESTION)

    assert response.response == ANSWER
    assert {n.node.ref_doc_id for n in response.source_nodes} == CRITICAL_IDS


def test_synthesize_directly_keeps_additional_source_nodes() -> None:
    script = ['```repl\nprint(context[1]["text"])\n```', '```repl\nFINAL("beta")\n```']
    synthesizer = RLMSynthesizer(ScriptedChatModel(replies=script, model="root"))
    nodes = [
        NodeWithScore(node=TextNode(id_=f"n{i}", text=f"node number {i} says {w} " * 3), score=0.1)
        for i, w in enumerate(["alpha", "beta", "gamma"])
    ]
    extra = NodeWithScore(node=TextNode(id_="extra", text="added by a postprocessor"), score=None)

    response = synthesizer.synthesize("which?", nodes, additional_source_nodes=[extra])

    assert response.response == "beta"
    assert [n.node.node_id for n in response.source_nodes] == ["n1", "extra"]
    assert response.source_nodes[0].score == 1.0


def test_get_response_over_text_chunks() -> None:
    script = ['```repl\nFINAL(str(len(context)) + " chunks, first: " + context[0])\n```']
    synthesizer = RLMSynthesizer(ScriptedChatModel(replies=script, model="root"))

    assert synthesizer.get_response("count", ["a", "b", "c"]) == "3 chunks, first: a"


def test_no_nodes_gives_empty_response_and_streaming_is_refused() -> None:
    root = ScriptedChatModel(replies=[], model="root")
    synthesizer = RLMSynthesizer(root)

    assert synthesizer.synthesize("anything", []).response == "Empty Response"
    assert root.calls == []
    with pytest.raises(ValueError, match="does not stream"):
        RLMSynthesizer(root, streaming=True)


def test_synthesizer_llm_is_a_llama_index_llm() -> None:
    root = ScriptedChatModel(replies=[], model="root")
    llm = MockLLM()

    assert isinstance(RLMSynthesizer(root)._llm, LangChainLLM)
    assert RLMSynthesizer(llm)._llm is llm
