"""Token-aware chunking: offsets, sizes, content-hash ids, locality of changes."""

from __future__ import annotations

import pytest

from agentflow_dagster.rag.chunking import Chunker, content_hash

TEXT = "\n\n".join(
    f"Paragraph {i} talks about subject number {i}, with enough words to need a few tokens each time." * 2
    for i in range(12)
)


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(chunk_size=48, chunk_overlap=8)


def test_offsets_point_into_the_text_and_sizes_hold(chunker: Chunker) -> None:
    chunks = chunker.split("c", "c/doc.txt", TEXT)
    assert len(chunks) > 6
    for i, ch in enumerate(chunks):
        assert TEXT[ch.start : ch.end] == ch.text and ch.ordinal == i
        assert 0 < ch.n_tokens <= 48 and ch.text.strip()


def test_ids_are_content_hashes_stable_and_distinct_per_collection(chunker: Chunker) -> None:
    a = chunker.split("alpha", "alpha/doc.txt", TEXT)
    again = chunker.split("alpha", "alpha/doc.txt", TEXT)
    b = chunker.split("beta", "beta/doc.txt", TEXT)
    assert [c.chunk_id for c in a] == [c.chunk_id for c in again]
    assert not {c.chunk_id for c in a} & {c.chunk_id for c in b}
    # The embedding cache key ignores the collection, so the same text is embedded once overall.
    assert [c.content_hash for c in a] == [c.content_hash for c in b] == [content_hash(c.text) for c in a]


def test_editing_one_paragraph_changes_only_nearby_chunks(chunker: Chunker) -> None:
    edited = TEXT.replace("subject number 7,", "an entirely different topic,")
    before = {c.chunk_id for c in chunker.split("c", "c/d.txt", TEXT)}
    after = {c.chunk_id for c in chunker.split("c", "c/d.txt", edited)}
    assert 1 <= len(after - before) <= 3 and len(before & after) >= len(before) - 3


def test_signature_changes_with_size_and_bad_overlap_is_refused(chunker: Chunker) -> None:
    assert chunker.signature != Chunker(chunk_size=64, chunk_overlap=8).signature
    with pytest.raises(ValueError, match="chunk_overlap=64"):
        Chunker(chunk_size=64, chunk_overlap=64)


def test_blank_text_gives_no_chunks(chunker: Chunker) -> None:
    assert chunker.split("c", "c/empty.txt", " \n\n \t") == []
