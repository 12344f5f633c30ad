"""Document parsers: bytes of a txt, md, html or pdf object -> plain text and a title."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath


class UnsupportedDocument(ValueError):
    """The object's extension names no parser."""


@dataclass(frozen=True)
class ParsedDocument:
    text: str
    title: str
    content_type: str


def _decode(data: bytes) -> str:
    # utf-8-sig drops a BOM; latin-1 never fails, so odd encodings degrade instead of aborting a collection.
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")[:200]


def parse_text(data: bytes) -> ParsedDocument:
    """Plain text as is."""
    text = _decode(data)
    return ParsedDocument(text, _first_line(text), "text/plain")


def parse_markdown(data: bytes) -> ParsedDocument:
    """Markdown kept as source text, so chunk offsets point into the file a reader opens."""
    text = _decode(data)
    heading = re.search(r"^#{1,6}\s+(.+)$", text, flags=re.MULTILINE)
    return ParsedDocument(text, heading.group(1).strip() if heading else _first_line(text), "text/markdown")


def parse_html(data: bytes) -> ParsedDocument:
    """Visible text of an HTML page, one block per line."""
    from bs4 import BeautifulSoup  # imported on use: run workers of agent workflows never parse HTML

    soup = BeautifulSoup(data, "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else ""
    for tag in soup(["head", "script", "style", "noscript", "template"]):
        tag.decompose()
    body = soup.get_text("\n")
    lines = [re.sub(r"[ \t\xa0]+", " ", ln).strip() for ln in body.splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return ParsedDocument(text, title or _first_line(text), "text/html")


def parse_pdf(data: bytes) -> ParsedDocument:
    """Text layer of every page, pages separated by a blank line."""
    from pypdf import PdfReader  # imported on use, like bs4

    reader = PdfReader(io.BytesIO(data))
    pages = [(page.extract_text() or "").strip() for page in reader.pages]
    text = "\n\n".join(p for p in pages if p)
    meta_title = reader.metadata.title if reader.metadata is not None else None
    return ParsedDocument(text, str(meta_title or _first_line(text)), "application/pdf")


PARSERS: dict[str, Callable[[bytes], ParsedDocument]] = {
    ".txt": parse_text,
    ".text": parse_text,
    ".md": parse_markdown,
    ".markdown": parse_markdown,
    ".html": parse_html,
    ".htm": parse_html,
    ".pdf": parse_pdf,
}


def parse_document(key: str, data: bytes) -> ParsedDocument:
    """Pick the parser by the key's extension."""
    suffix = PurePosixPath(key).suffix.lower()
    parser = PARSERS.get(suffix)
    if parser is None:
        raise UnsupportedDocument(
            f"cannot parse {key!r}: extension {suffix or '(none)'!r} is not one of {sorted(PARSERS)}"
        )
    return parser(data)
