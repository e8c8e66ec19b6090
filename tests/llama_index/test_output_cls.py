"""``output_cls``: a LlamaIndex engine answering with a validated pydantic object.

Models are FAKE (scripted); the index is a real VectorStoreIndex of the generated corpus."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import VectorStoreIndex
from llama_index.core.base.response.schema import PydanticResponse
from pydantic import BaseModel

from langchain_rlm.testing import ScriptedChatModel
from llama_index_rlm import RLMQueryEngine
from tests.conftest import repl


class IncidentCount(BaseModel):
    critical: int
    ids: list[str]


COUNT_CODE = repl(
    "hits = [r['id'] for r in context if 'CRITICAL' in r['text']]\n"
    "FINAL({'critical': len(hits), 'ids': hits[:2]})"
)


def test_output_cls_gives_a_pydantic_response(index: VectorStoreIndex) -> None:
    root = ScriptedChatModel(replies=[COUNT_CODE], model="root")
    engine = RLMQueryEngine.from_index(index, root, output_cls=IncidentCount)
    response = engine.query("How many critical incidents, and which?")
    assert isinstance(response, PydanticResponse)
    assert isinstance(response.response, IncidentCount)
    assert response.metadata["output"] == response.response.model_dump(mode="json")
    assert response.metadata["rlm"]["finished_reason"] == "final"


async def test_output_cls_async_and_invalid_answers_are_retried(index: VectorStoreIndex) -> None:
    bad = repl("FINAL({'critical': 'many'})")
    root = ScriptedChatModel(replies=[bad, COUNT_CODE], model="root")
    engine = RLMQueryEngine.from_index(index, root, output_cls=IncidentCount)
    response = await engine.aquery("How many critical incidents, and which?")
    assert isinstance(response.response, IncidentCount)
    assert response.metadata["rlm"]["iterations"] == 2
