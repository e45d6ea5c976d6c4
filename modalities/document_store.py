"""Ingested documents on disk: what ListDocuments shows and what AskDocument reads, surviving restarts.

Layout under the daemon's data dir:
  documents/index.sqlite      one row per document, one row per page (its text, kind and token count)
  documents/<id>/page-NNNN.png  the image of each scanned page, exactly as the vision encoder is fed it

Why the pages and not the PDF: re-reading a PDF costs about a second per 100 pages, and scanned pages are kept
as the already-downscaled RGB image (PNG is lossless), so after a restart the same segments (and so the same
prompt-cache keys) come back without the password or the original file.

Why write the images first and the rows last: a document exists only once its rows are committed, in one
transaction; an ingest that fails or is cancelled midway leaves at most a folder without rows, which the next
start removes. Nothing half-ingested is ever listed or answered from.

Token counts belong to a model (`fingerprint`): a document ingested under another model is recounted.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from omnid.common.paths import private_dir
from omnid.modalities.ids import resolve_prefix

PageKind = Literal["text", "image"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    page_count INTEGER NOT NULL,
    created REAL NOT NULL,
    ingest_ms REAL NOT NULL,
    fingerprint TEXT NOT NULL,
    prefix_key TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS pages (
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    page INTEGER NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (document_id, page)
);
"""


@dataclass
class StoredPage:
    """A page as kept: its text, or (kind "image") the RGB scan fed to the vision encoder."""

    number: int
    kind: PageKind
    text: str
    tokens: int = 0
    rgb: np.ndarray | None = field(default=None, repr=False)


@dataclass
class StoredDocument:
    id: str
    name: str
    page_count: int
    created: float
    ingest_ms: float
    fingerprint: str
    prefix_key: str
    pages: list[StoredPage] = field(default_factory=list, repr=False)


class DocumentStore:
    """SQLite index plus page images under `root`. Thread-safe (one connection behind a lock)."""

    def __init__(self, root: Path) -> None:
        self.root = private_dir(root)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "index.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA secure_delete = ON")  # a deleted document's text is overwritten on disk
        self._db.executescript(_SCHEMA)
        self._remove_orphans()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing ---------------------------------------------------------------------------------------------

    def save(self, doc: StoredDocument) -> None:
        """Store a whole document (replacing one with the same id): images first, then the rows, atomically."""
        staging = self.root / f".staging-{doc.id}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(mode=0o700)
        try:
            written: dict[int, Path] = {}  # pages that share one scan share its file (a hard link)
            for page in doc.pages:
                if page.kind == "image":
                    assert page.rgb is not None
                    path = staging / _image_name(page.number)
                    if id(page.rgb) in written:
                        os.link(written[id(page.rgb)], path)
                        continue
                    Image.fromarray(page.rgb).save(path, compress_level=1)
                    written[id(page.rgb)] = path
            with self._lock:
                final = self.root / doc.id
                if final.exists():
                    shutil.rmtree(final)
                staging.rename(final)
                self._db.execute("BEGIN")
                try:
                    self._db.execute("DELETE FROM documents WHERE id = ?", (doc.id,))
                    self._db.execute(
                        "INSERT INTO documents (id, name, page_count, created, ingest_ms, fingerprint, prefix_key) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (doc.id, doc.name, doc.page_count, doc.created, doc.ingest_ms, doc.fingerprint,
                         doc.prefix_key))
                    self._db.executemany(
                        "INSERT INTO pages (document_id, page, kind, text, tokens) VALUES (?, ?, ?, ?, ?)",
                        [(doc.id, p.number, p.kind, p.text, p.tokens) for p in doc.pages])
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite has already rolled back a COMMIT that hit a full disk
                        self._db.execute("ROLLBACK")
                    shutil.rmtree(final, ignore_errors=True)
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def update_tokens(self, doc_id: str, fingerprint: str, tokens: dict[int, int]) -> None:
        """Token counts recounted under another model."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE pages SET tokens = ? WHERE document_id = ? AND page = ?",
                                 [(n, doc_id, page) for page, n in tokens.items()])
            self._db.execute("UPDATE documents SET fingerprint = ? WHERE id = ?", (fingerprint, doc_id))
            self._db.execute("COMMIT")

    def set_prefix_key(self, doc_id: str, prefix_key: str) -> None:
        with self._lock:
            self._db.execute("UPDATE documents SET prefix_key = ? WHERE id = ?", (prefix_key, doc_id))

    def delete(self, doc_id: str) -> tuple[StoredDocument | None, int]:
        """Remove a document's rows, then its page images; returns what it was (None if unknown) and the
        bytes of images removed. Rows first: a crash in between leaves a folder the next start removes."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, name, page_count, created, ingest_ms, fingerprint, prefix_key FROM documents "
                "WHERE id = ?", (doc_id,)).fetchone()
            if row is None:
                return None, 0
            self._db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))  # pages cascade
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        folder = self.root / doc_id
        files = {(s.st_dev, s.st_ino): s.st_size for s in (f.stat() for f in folder.iterdir() if f.is_file())} \
            if folder.is_dir() else {}
        freed = sum(files.values())  # a scan shared by pages (hard links) is counted once
        shutil.rmtree(folder, ignore_errors=True)
        return StoredDocument(*row), freed

    # -- reading ---------------------------------------------------------------------------------------------

    def list(self) -> list[StoredDocument]:
        """Every document, newest first, with its pages' kinds and token counts (no images)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, page_count, created, ingest_ms, fingerprint, prefix_key FROM documents "
                "ORDER BY created DESC").fetchall()
            docs = [StoredDocument(*row) for row in rows]
            by_id = {d.id: d for d in docs}
            for doc_id, page, kind, tokens in self._db.execute(
                    "SELECT document_id, page, kind, tokens FROM pages ORDER BY document_id, page"):
                if doc_id in by_id:
                    by_id[doc_id].pages.append(StoredPage(page, kind, "", tokens))
        return docs

    def resolve(self, id_or_prefix: str) -> str | None:
        """The full id of the one document whose id is or starts with this (4+ characters); None when none
        does, AmbiguousId when several do."""
        with self._lock:
            return resolve_prefix(self._db, "documents", id_or_prefix, "document")

    def ids_between(self, since: float, until: float) -> tuple[str, ...]:
        """Documents ingested in [since, until) (0 = open end)."""
        with self._lock:
            return tuple(r[0] for r in self._db.execute(
                "SELECT id FROM documents WHERE created >= ? AND created < ? ORDER BY created",
                (since, until or float("inf"))))

    def get(self, doc_id: str, *, with_content: bool = True) -> StoredDocument | None:
        """One document with its pages' text and images (None when unknown)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, name, page_count, created, ingest_ms, fingerprint, prefix_key FROM documents "
                "WHERE id = ?", (doc_id,)).fetchone()
            if row is None:
                return None
            doc = StoredDocument(*row)
            doc.pages = [StoredPage(page, kind, text if with_content else "", tokens) for page, kind, text, tokens in
                         self._db.execute("SELECT page, kind, text, tokens FROM pages WHERE document_id = ? "
                                          "ORDER BY page", (doc_id,))]
        if with_content:
            read: dict[tuple[int, int], np.ndarray] = {}  # one file (hard links) is one array in memory
            for page in doc.pages:
                if page.kind == "image":
                    path = self.root / doc_id / _image_name(page.number)
                    info = path.stat()
                    if (info.st_dev, info.st_ino) not in read:
                        with Image.open(path) as image:
                            read[info.st_dev, info.st_ino] = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
                    page.rgb = read[info.st_dev, info.st_ino]
        return doc

    def page(self, doc_id: str, number: int) -> StoredPage | None:
        """One page with its text and scan (None when unknown): what a citation opens, without reading every
        scan of the document as get() does."""
        with self._lock:
            row = self._db.execute("SELECT page, kind, text, tokens FROM pages WHERE document_id = ? AND page = ?",
                                   (doc_id, number)).fetchone()
        if row is None:
            return None
        page = StoredPage(*row)
        if page.kind == "image":
            with Image.open(self.root / doc_id / _image_name(number)) as image:
                page.rgb = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
        return page

    # -- housekeeping ----------------------------------------------------------------------------------------

    def _remove_orphans(self) -> None:
        """Folders of ingests that never committed (a crash mid-save) are removed at start."""
        with self._lock:
            known = {row[0] for row in self._db.execute("SELECT id FROM documents")}
        for path in self.root.iterdir():
            if path.is_dir() and (path.name.startswith(".staging-") or path.name not in known):
                shutil.rmtree(path, ignore_errors=True)


def _image_name(page: int) -> str:
    return f"page-{page:04d}.png"

