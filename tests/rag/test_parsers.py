"""Parsers: txt, md, html and pdf bytes -> text and title."""

from __future__ import annotations

import pytest

from agentflow_dagster.rag.parsers import UnsupportedDocument, parse_document
from tests.rag.corpus import BAKING_HTML, KAFKA_MD, TELESCOPE_PDF_TEXT, tiny_pdf


def test_markdown_keeps_source_text_and_takes_the_first_heading() -> None:
    doc = parse_document("c/kafka.md", KAFKA_MD.encode())
    assert doc.text == KAFKA_MD and doc.title == "Kafka sensors" and doc.content_type == "text/markdown"


def test_text_decodes_utf8_with_bom_and_falls_back_to_latin1() -> None:
    assert parse_document("c/a.txt", "\ufeffcafé au lait".encode()).text == "café au lait"
    assert parse_document("c/b.TXT", "naïve".encode("latin-1")).text == "naïve"


def test_html_drops_head_script_and_style() -> None:
    doc = parse_document("c/page.html", BAKING_HTML.encode())
    assert doc.title == "Sourdough baking"
    assert "tracking" not in doc.text and "color" not in doc.text
    assert doc.text.startswith("Sourdough bread\n") and "Dutch oven." in doc.text


def test_pdf_text_layer() -> None:
    doc = parse_document("c/t.pdf", tiny_pdf(TELESCOPE_PDF_TEXT))
    assert doc.text == TELESCOPE_PDF_TEXT and doc.content_type == "application/pdf"


def test_unknown_extension_is_named() -> None:
    with pytest.raises(UnsupportedDocument, match=r"'\.docx'"):
        parse_document("c/report.docx", b"PK")
