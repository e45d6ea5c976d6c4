"""PDF reading, the document store and page choice, on real PDFs made with reportlab (no model involved)."""
from __future__ import annotations

import numpy as np
import pytest

from documents_pdfs import encrypt, fact, make_blank, make_report, page_kind, table_rows
from omnid.modalities.document_prompt import bm25, choose_pages, layout, page_segments
from omnid.modalities.document_store import DocumentStore, StoredDocument, StoredPage
from omnid.modalities.documents import DocumentError, PdfDocument, TooManyPages, read_pdf
from omnid.models.base import ImageSegment, TextSegment


@pytest.fixture(scope="module")
def report() -> bytes:
    return make_report(100)


def test_report_pages_text_tables_and_scans(report: bytes) -> None:
    pages = read_pdf(report)
    assert [p.number for p in pages] == list(range(1, 101))
    for page in pages:
        if page_kind(page.number) == "image":
            assert page.kind == "image" and page.text == "" and page.image is not None
            assert page.image.size == (425, 550)
        else:
            assert page.kind == "text" and page.text
    assert fact(37) in pages[36].text
    # A table keeps its rows: each row's cells on one line, in order.
    lines = pages[24].text.splitlines()
    for row in table_rows(25):
        assert " | ".join(row) in lines


def test_prose_is_not_taken_for_a_table(report: bytes) -> None:
    text = read_pdf(report)[0].text
    assert " | " not in text and text.count("\n") >= 30


def test_bad_inputs_are_clear_errors(report: bytes) -> None:
    with pytest.raises(DocumentError, match="not a PDF"):
        PdfDocument(b"hello, this is plain text")
    with pytest.raises(DocumentError, match="empty"):
        PdfDocument(b"")
    with pytest.raises(DocumentError, match="corrupt or truncated"):
        PdfDocument(report[: len(report) // 2])
    with pytest.raises(DocumentError, match="no pages"):
        PdfDocument(make_blank(0))
    with pytest.raises(TooManyPages, match="100 pages; this daemon takes at most 50"):
        PdfDocument(report, max_pages=50)


def test_encrypted_pdf_needs_its_password() -> None:
    locked = encrypt(make_report(3), "s3cret")
    with pytest.raises(DocumentError, match="encrypted: give its password"):
        PdfDocument(locked)
    with pytest.raises(DocumentError, match="password does not open"):
        PdfDocument(locked, password="wrong")
    pages = read_pdf(locked, password="s3cret")
    assert fact(1) in pages[0].text


def test_blank_pages_keep_their_numbers() -> None:
    pages = read_pdf(make_blank(3))
    assert [(p.number, p.kind, p.text) for p in pages] == [(1, "text", ""), (2, "text", ""), (3, "text", "")]


def _stored(pages: int = 12) -> StoredDocument:
    rgb = np.full((40, 30, 3), 200, np.uint8)
    return StoredDocument(
        id="d" * 64, name="r.pdf", page_count=pages, created=1.0, ingest_ms=5.0, fingerprint="fp", prefix_key="",
        pages=[StoredPage(n, "image", "", 20, rgb) if n % 5 == 0 else StoredPage(n, "text", fact(n), 30)
               for n in range(1, pages + 1)])


def test_store_survives_reopen_and_keeps_images_exact(tmp_path) -> None:
    doc = _stored()
    store = DocumentStore(tmp_path / "documents")
    store.save(doc)
    store.close()
    store = DocumentStore(tmp_path / "documents")
    [listed] = store.list()
    assert (listed.id, listed.page_count, [p.kind for p in listed.pages]) == \
        (doc.id, 12, [p.kind for p in doc.pages])
    loaded = store.get(doc.id)
    assert loaded is not None
    assert loaded.pages[4].rgb is not None and np.array_equal(loaded.pages[4].rgb, doc.pages[4].rgb)
    assert loaded.pages[0].text == fact(1)
    # Same segments -> same digests -> the same prompt-cache keys after a restart.
    assert [s.digest() for s in layout(loaded.pages, True)] == [s.digest() for s in layout(doc.pages, True)]
    store.update_tokens(doc.id, "fp2", {1: 99})
    assert store.get(doc.id, with_content=False).pages[0].tokens == 99  # type: ignore[union-attr]
    assert store.get("nope") is None


def test_store_removes_uncommitted_leftovers(tmp_path) -> None:
    root = tmp_path / "documents"
    DocumentStore(root).close()
    (root / ".staging-x-1234").mkdir()
    (root / ("e" * 64)).mkdir()  # a folder without rows: a save that never committed
    store = DocumentStore(root)
    assert store.list() == []
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == []


def test_layout_joins_text_runs_and_marks_pages() -> None:
    doc = _stored()
    segments = layout(doc.pages, vision=True)
    kinds = [type(s).__name__ for s in segments]
    assert kinds == ["TextSegment", "ImageSegment"] * 2 + ["TextSegment"]
    assert "[Page 1]\n" in segments[0].text and "[Page 5: scanned page" in segments[0].text  # type: ignore[union-attr]
    blind = layout(doc.pages, vision=False)
    assert len(blind) == 1 and "[Page 10: a scanned page this model cannot see]" in blind[0].text  # type: ignore[union-attr]
    assert [type(s) for s in page_segments(doc.pages[4], True)] == [TextSegment, ImageSegment, TextSegment]


def test_choose_pages_prefers_matching_pages_within_budget() -> None:
    doc = _stored(40)
    choice = choose_pages(doc.pages, "What is the code of page 23?", budget=100, whole=True)
    assert 23 in choice.pages
    assert sum(doc.pages[n - 1].tokens for n in choice.pages) <= 100
    assert choice.pages == sorted(choice.pages)
    assert "BM25" in choice.reason and "100 fit" in choice.reason
    scores = bm25("glacier", ["a glacier", "a meadow", "glacier glacier"])
    assert scores[1] == 0 and scores[2] > scores[0] > 0
