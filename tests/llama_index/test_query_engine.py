"""RLMQueryEngine over a real VectorStoreIndex of a generated 600-document corpus.

Models are scripted (FAKE root and sub-model), in-process and over HTTP to the project's
scripted OpenAI server (the ``models`` fixture runs each test both ways).
"""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import VectorStoreIndex
from llama_index.core.base.response.schema import Response
from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters

from llama_index_rlm import RLMQueryEngine
from tests.llama_index.conftest import (
    ANSWER,
    CORPUS_SIZE,
    CRITICAL_IDS,
    MINOR,
    QUESTION,
    ROOT_SCRIPT,
    doc_id,
    make_corpus,
    sub_reply,
)


def source_ids(response: Response) -> set[str]:
    """The documents the source nodes come from (index nodes get ids of their own)."""
    return {n.node.ref_doc_id or n.node.node_id for n in response.source_nodes}


def test_index_holds_the_whole_generated_corpus(index: VectorStoreIndex) -> None:
    nodes = list(index.docstore.docs.values())
    assert len(nodes) == CORPUS_SIZE
    assert {doc_id(i) for i in range(CORPUS_SIZE)} == {n.ref_doc_id for n in nodes}


def test_from_index_answers_from_exactly_the_three_scattered_documents(models, index) -> None:
    pair = models(ROOT_SCRIPT, sub_reply)
    engine = RLMQueryEngine.from_index(index, pair.root, pair.sub)

    response = engine.query(QUESTION)

    assert isinstance(response, Response)
    assert response.response == ANSWER
    assert source_ids(response) == CRITICAL_IDS
    assert len(response.source_nodes) == 3
    assert all(n.score == 1.0 for n in response.source_nodes)
    # the whole docstore was the context, and only the 3 records went to the sub-model
    run = response.metadata["rlm"]
    assert run["repl_history"][0]["stdout"].strip() == f"3 critical incidents of {CORPUS_SIZE}"
    assert run["finished_reason"] == "final"
    assert run["total_calls"] == 6
    assert "messages" not in run
    sub_prompts = pair.sub_prompts()
    assert len(sub_prompts) == 3
    assert all("took down" in p for p in sub_prompts)
    # the root model never saw the corpus: only a preview of its start
    first_prompt = "\n".join(pair.root_prompts()[0])
    assert "took down" not in first_prompt


async def test_aquery_gives_the_same_answer_and_sources(models, index) -> None:
    pair = models(ROOT_SCRIPT, sub_reply)
    engine = RLMQueryEngine.from_index(index, pair.root, pair.sub)

    response = await engine.aquery(QUESTION)

    assert response.response == ANSWER
    assert source_ids(response) == CRITICAL_IDS


def test_metadata_rlm_is_json(index) -> None:
    import json

    from langchain_rlm.testing import ScriptedChatModel

    engine = RLMQueryEngine.from_index(
        index,
        ScriptedChatModel(replies=list(ROOT_SCRIPT), model="root"),
        ScriptedChatModel(responder=lambda m: sub_reply(str(m[-1].content)), model="sub"),
    )
    run = engine.query(QUESTION).metadata["rlm"]
    assert json.loads(json.dumps(run))["answer"] == ANSWER
    assert set(run["usage"]) == {"root", "sub"}
    assert run["usage"]["sub"]["calls"] == 3


def test_printed_records_count_as_sources_but_peeked_at_ones_only_when_printed(
    models, index
) -> None:
    """Printing a record (as a dict, with repr escapes) makes it a source; filtering does not."""
    script = [
        '```repl\nminor = [r for r in context if r["metadata"].get("severity") == "minor"]\n'
        "print(minor[1])\nprint(len(minor))\n```",
        '```repl\nFINAL("one minor incident shown")\n```',
    ]
    pair = models(script, sub_reply)
    response = RLMQueryEngine.from_index(index, pair.root, pair.sub).query("Show a minor incident")

    assert source_ids(response) == {doc_id(sorted(MINOR)[1])}


def test_records_carry_ids_text_and_metadata_for_filtering(models, index) -> None:
    script = [
        '```repl\nr = context[281]\nprint(sorted(r), r["id"], r["metadata"]["severity"])\n```',
        '```repl\nFINAL("ok")\n```',
    ]
    pair = models(script, sub_reply)
    response = RLMQueryEngine.from_index(index, pair.root, pair.sub).query("inspect")

    node = list(index.docstore.docs.values())[281]
    stdout = response.metadata["rlm"]["repl_history"][0]["stdout"]
    assert stdout.strip() == f"['id', 'metadata', 'text'] {node.node_id} critical"
    # only the id was printed: that record counts, at the id-mention score
    assert [(n.node.node_id, n.score) for n in response.source_nodes] == [(node.node_id, 0.5)]


def test_from_retriever_uses_the_retrieved_nodes_as_context(models, index) -> None:
    retriever = index.as_retriever(
        similarity_top_k=50,
        filters=MetadataFilters(filters=[ExactMatchFilter(key="kind", value="incident")]),
    )
    pair = models(ROOT_SCRIPT, sub_reply)
    engine = RLMQueryEngine.from_retriever(retriever, pair.root, pair.sub)

    response = engine.query(QUESTION)

    assert response.response == ANSWER
    assert response.metadata["rlm"]["repl_history"][0]["stdout"].strip() == (
        "3 critical incidents of 9"
    )
    assert source_ids(response) == CRITICAL_IDS


async def test_from_retriever_async(models, index) -> None:
    retriever = index.as_retriever(
        similarity_top_k=50,
        filters=MetadataFilters(filters=[ExactMatchFilter(key="severity", value="critical")]),
    )
    pair = models(ROOT_SCRIPT, sub_reply)
    response = await RLMQueryEngine.from_retriever(retriever, pair.root, pair.sub).aquery(QUESTION)

    assert response.metadata["rlm"]["repl_history"][0]["stdout"].strip() == (
        "3 critical incidents of 3"
    )
    assert source_ids(response) == CRITICAL_IDS


def test_from_documents_needs_no_index(models) -> None:
    pair = models(ROOT_SCRIPT, sub_reply)
    engine = RLMQueryEngine.from_documents(make_corpus(), pair.root, pair.sub)

    response = engine.query(QUESTION)

    assert response.response == ANSWER
    assert source_ids(response) == CRITICAL_IDS


def test_from_documents_with_transformations_chunks_first(models) -> None:
    from llama_index.core.node_parser import SentenceSplitter

    script = ["```repl\nprint(len(context))\n```", '```repl\nFINAL("counted")\n```']
    pair = models(script, sub_reply)
    documents = make_corpus()[:5]
    engine = RLMQueryEngine.from_documents(
        documents,
        pair.root,
        pair.sub,
        transformations=[SentenceSplitter(chunk_size=20, chunk_overlap=0)],
    )
    response = engine.query("how many chunks?")

    chunks = int(response.metadata["rlm"]["repl_history"][0]["stdout"])
    assert chunks > len(documents)


def test_index_inserts_after_construction_are_seen(models, corpus) -> None:
    from llama_index.core.embeddings import MockEmbedding

    small = VectorStoreIndex.from_documents(corpus[:10], embed_model=MockEmbedding(embed_dim=8))
    script = ["```repl\nprint(len(context))\n```", '```repl\nFINAL("n")\n```']
    pair = models(script, sub_reply)
    engine = RLMQueryEngine.from_index(small, pair.root, pair.sub)
    small.insert(corpus[10])

    response = engine.query("count")

    assert response.metadata["rlm"]["repl_history"][0]["stdout"].strip() == "11"


def test_empty_context_returns_empty_response_without_model_calls() -> None:
    from langchain_rlm.testing import ScriptedChatModel

    root = ScriptedChatModel(replies=[], model="root")
    engine = RLMQueryEngine.from_documents([], root)

    response = engine.query("anything?")

    assert response.response == "Empty Response"
    assert root.calls == []


def test_rlm_options_pass_through(index) -> None:
    from langchain_rlm.testing import ScriptedChatModel

    root = ScriptedChatModel(replies=[FIND_ONLY] * 5, model="root")
    engine = RLMQueryEngine.from_index(index, root, max_iterations=2)

    assert engine.rlm.settings.max_iterations == 2
    response = engine.query(QUESTION)
    assert response.metadata["rlm"]["finished_reason"] == "max_iterations"
    assert response.metadata["rlm"]["iterations"] == 2


FIND_ONLY = "```repl\nprint(len(context))\n```"


def test_model_is_required_and_rlm_excludes_models() -> None:
    from langchain_rlm import RLM
    from langchain_rlm.testing import ScriptedChatModel

    with pytest.raises(TypeError, match="a model is needed"):
        RLMQueryEngine.from_documents([])
    rlm = RLM(ScriptedChatModel(replies=[], model="root"))
    with pytest.raises(TypeError, match="either rlm"):
        RLMQueryEngine.from_documents([], ScriptedChatModel(replies=[]), rlm=rlm)
    assert RLMQueryEngine.from_documents([], rlm=rlm).rlm is rlm


def test_langchain_rlm_does_not_import_llama_index() -> None:
    import subprocess
    import sys

    code = (
        "import sys, langchain_rlm, langchain_rlm.rlm, langchain_rlm.graph\n"
        "print(sorted(m for m in sys.modules if m.startswith('llama_index')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
