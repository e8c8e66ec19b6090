"""Which records informed an answer: matching what left the sandbox against the records."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.schema import TextNode

from llama_index_rlm import match_sources, node_records

OPENING = "Quarterly report of the regional sales office, prepared for the board: "


def records(*texts: str) -> list[dict]:
    return [{"id": f"record-{i:04d}", "text": t, "metadata": {}} for i, t in enumerate(texts)]


def matched(recs, *evidence: str) -> list[int]:
    return [m.index for m in match_sources(recs, list(evidence))]


def test_a_printed_slice_of_forty_characters_matches() -> None:
    text = "The quick brown fox jumps over the lazy dog near the riverbank at dawn, twice."
    recs = records(text, "something else entirely, long enough to have windows of its own")
    assert matched(recs, "noise " + text[20:60] + " noise") == [0]
    assert matched(recs, "noise " + text[20:50] + " noise") == []  # 30 chars: not distinctive


def test_repr_and_json_escapes_are_undone() -> None:
    text = 'Line one says "hello"\nline two says it\'s fine\ttabbed, and ünïcode too.'
    recs = records(text)
    assert matched(recs, repr({"text": text})) == [0]
    assert matched(recs, json.dumps({"text": text})) == [0]


def test_shared_boilerplate_does_not_make_every_record_a_source() -> None:
    recs = records(*(OPENING + f"office {i} sold {i * 7} units of product {i}." for i in range(50)))
    assert matched(recs, recs[17]["text"], recs[31]["text"]) == [17, 31]
    assert matched(recs, OPENING) == [0]  # only boilerplate seen: the first holder stands in


def test_overlapping_chunks_count_only_the_chunk_shown() -> None:
    body = " ".join(f"sentence {i} of a long document about tides and moons." for i in range(20))
    chunk_a, chunk_b = body[:400], body[300:700]  # 100 characters of overlap
    recs = records(chunk_a, chunk_b)
    assert matched(recs, chunk_b) == [1]
    assert matched(recs, chunk_a, chunk_b) == [0, 1]


def test_ids_match_on_word_boundaries_and_short_ones_never() -> None:
    recs = records("x" * 10, "y" * 10)
    assert matched(recs, "see record-0001 for details") == [1]
    assert matched(recs, "see record-00011") == []
    short = [{"id": "7", "text": "tiny", "metadata": {}}]
    assert matched(short, "7 tiny things") == []
    wordlike = [{"id": "selectors", "text": "tiny", "metadata": {}}]
    assert matched(wordlike, "the asyncio docs mention selectors") == []


def test_both_index_strategies_agree() -> None:
    """Few records and much evidence, or many records and little: same matches."""
    target = "A distinctive sentence about lighthouses, fog horns and the keepers' logs."
    few = records("filler text that appears nowhere else in this test at all", target)
    assert matched(few, "x" * 50_000 + target + "y" * 50_000) == [1]
    many = records(
        *(f"record {i} talks about topic {i * 13} in some detail here" for i in range(2000)), target
    )
    assert matched(many, "printed: " + target) == [2000]


def test_short_texts_match_whole_and_scores_reflect_coverage() -> None:
    recs = records("Paris is the capital of France.", "A" * 20 + "B" * 200)
    found = match_sources(recs, ["answer: Paris is the capital of France.", "A" * 20 + "B" * 30])
    assert [(m.index, m.score) for m in found] == [(0, 1.0), (1, pytest.approx(found[1].score))]
    assert 0 < found[1].score < 0.5


def test_node_records_keep_ids_metadata_and_drop_duplicates() -> None:
    nodes = [
        TextNode(id_="a", text="alpha", metadata={"k": 1, "when": object()}),
        TextNode(id_="b", text="beta"),
        TextNode(id_="a", text="alpha again"),
    ]
    recs, kept = node_records(nodes)
    assert [r["id"] for r in recs] == ["a", "b"]
    assert recs[0]["text"] == "alpha"
    assert recs[0]["metadata"]["k"] == 1
    assert isinstance(recs[0]["metadata"]["when"], str)
    assert [n.node_id for n in kept] == ["a", "b"]
