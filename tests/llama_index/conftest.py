"""Fixtures for the LlamaIndex integration: a generated corpus, an index, scripted models.

The corpus is generated here, deterministically: 600 shipment log lines with 9 incident
reports scattered among them. Three incidents are critical; the question "how many racks
were lost in critical incidents?" needs all three. The minor incidents share the critical
ones' 53-character opening, so a source matcher that took any shared text for evidence
would wrongly report them.

The root model is scripted (a FAKE: its replies are fixed code), and so is the sub-model
(it reads the rack count out of the prompt with a regex).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.types import (
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from pydantic import PrivateAttr

from tests.conftest import repl

CORPUS_SIZE = 600
INCIDENT_OPENING = "Incident report for the data centre operations team: "
CRITICAL = {
    37: ("a failed cooling unit in hall B", 4),
    281: ("a flooded cable trench", 7),
    554: ("a tripped breaker on power feed 3", 2),
}
MINOR = {
    12: "a noisy fan in hall A",
    99: "a loose patch cable",
    150: "a stuck badge reader",
    333: "a flickering status light",
    420: "a slow backup job",
    599: "a full log disk",
}
CRITICAL_IDS = {f"doc-{i:04d}" for i in CRITICAL}
RACKS_LOST = sum(racks for _, racks in CRITICAL.values())
ANSWER = f"{RACKS_LOST} racks were lost"
QUESTION = "How many racks were lost in critical incidents?"

FIND = repl(
    'hits = [r for r in context if r["metadata"].get("severity") == "critical"]\n'
    'print(len(hits), "critical incidents of", len(context))'
)
ASK = repl(
    'answers = llm_query_batched(["How many racks were lost? Reply with a number.\\n\\n" '
    '+ r["text"] for r in hits])\nprint(answers)'
)
DONE = repl('FINAL(f"{sum(int(a) for a in answers)} racks were lost")')
ROOT_SCRIPT = (FIND, ASK, DONE)
"""The root model's replies: filter by metadata, ask the sub-model per record, add up."""


def doc_id(index: int) -> str:
    return f"doc-{index:04d}"


def make_corpus() -> list[Document]:
    """The generated corpus (deterministic)."""
    documents = []
    for i in range(CORPUS_SIZE):
        if i in CRITICAL:
            cause, racks = CRITICAL[i]
            text = f"{INCIDENT_OPENING}{cause} took down {racks} racks; recovery took {i % 5 + 2} hours."
            metadata: dict[str, Any] = {"kind": "incident", "severity": "critical", "day": i % 30}
        elif i in MINOR:
            text = f"{INCIDENT_OPENING}{MINOR[i]} was reported and fixed without downtime."
            metadata = {"kind": "incident", "severity": "minor", "day": i % 30}
        else:
            text = (
                f"Shipment {i}: warehouse W{i % 7} sent {i * 3 % 50 + 1} crates of item "
                f"{i % 13} to city C{i % 11} on day {i % 30}."
            )
            metadata = {"kind": "shipment", "warehouse": f"W{i % 7}", "day": i % 30}
        documents.append(Document(id_=doc_id(i), text=text, metadata=metadata))
    return documents


def sub_reply(prompt: str) -> str:
    """The scripted sub-model: the rack count stated in the prompt."""
    found = re.search(r"took down (\d+) racks", prompt)
    return found.group(1) if found else "0"


@pytest.fixture(scope="session")
def corpus() -> list[Document]:
    return make_corpus()


@pytest.fixture(scope="session")
def index(corpus: list[Document]) -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(corpus, embed_model=MockEmbedding(embed_dim=8))


class ScriptedLlamaIndexLLM(CustomLLM):
    """FAKE LlamaIndex LLM for tests: returns scripted replies in order (not a model).

    ``raw_usage`` (optional) is put in each response's ``raw`` as ``{"usage": ...}``, like
    OpenAI's responses carry token counts. Prompts received are kept in ``prompts``.
    """

    replies: list[str]
    model: str = "scripted-llama-index-llm"
    raw_usage: dict[str, int] | None = None
    _cursor: int = PrivateAttr(default=0)
    _prompts: list[str] = PrivateAttr(default_factory=list)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model, context_window=32_000)

    @property
    def prompts(self) -> list[str]:
        return list(self._prompts)

    def _next(self, prompt: str) -> CompletionResponse:
        self._prompts.append(prompt)
        reply = self.replies[self._cursor]
        self._cursor += 1
        raw = {"usage": dict(self.raw_usage)} if self.raw_usage else None
        return CompletionResponse(text=reply, raw=raw)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._next(prompt)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        response = self._next(prompt)

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=response.text, delta=response.text, raw=response.raw)

        return gen()


@pytest.fixture
def scripted_llm() -> Callable[..., ScriptedLlamaIndexLLM]:
    def make(replies: Sequence[str], **kwargs: Any) -> ScriptedLlamaIndexLLM:
        return ScriptedLlamaIndexLLM(replies=list(replies), **kwargs)

    return make
