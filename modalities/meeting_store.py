"""Transcripts kept on this machine: SQLite with FTS5 full-text search, under the daemon's data directory.

Segments are written as they are produced (one small transaction each), not at the end: a meeting whose
daemon dies at minute 19 keeps 19 minutes of transcript next to its spooled audio. A meeting row is created
when transcription starts, with its state ("recording", "transcribing", "done", "cancelled", "failed",
"interrupted"); a daemon that starts and finds rows still "recording" or "transcribing" marks them
"interrupted".

One connection per store, guarded by a lock: the gRPC handler threads write segments and read lists; SQLite
in WAL mode keeps readers from waiting on the writer.
"""
from __future__ import annotations

import builtins
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from omnid.modalities.ids import resolve_prefix
from omnid.modalities.meetings import TranscriptSegment

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meetings (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    duration REAL NOT NULL DEFAULT 0,
    audio_path TEXT NOT NULL DEFAULT '',
    summary TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    usage_json TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS segments (
    meeting_id TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (meeting_id, idx)
);
CREATE VIRTUAL TABLE IF NOT EXISTS segments_fts USING fts5(text, meeting_id UNINDEXED, tokenize='unicode61');
CREATE VIRTUAL TABLE IF NOT EXISTS meetings_fts USING fts5(title, summary, meeting_id UNINDEXED);
"""


@dataclass(frozen=True)
class MeetingRow:
    id: str
    title: str
    created: float
    duration: float
    audio_path: str
    summary: str
    state: str
    snippet: str = ""
    usage_json: str = ""


class MeetingStore:
    """meetings.sqlite3 in `folder` (created 0700 by the caller's config)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = folder / "meetings.sqlite3"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA secure_delete=ON")  # a deleted transcript is overwritten, not left in free pages
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._db.execute("UPDATE meetings SET state='interrupted' WHERE state IN ('recording', 'transcribing')")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, title: str, audio_path: str, state: str) -> str:
        meeting_id = uuid.uuid4().hex[:12]
        with self._lock, self._db:
            self._db.execute("INSERT INTO meetings (id, title, created, audio_path, state) VALUES (?, ?, ?, ?, ?)",
                             (meeting_id, title, time.time(), audio_path, state))
            self._db.execute("INSERT INTO meetings_fts (title, summary, meeting_id) VALUES (?, '', ?)",
                             (title, meeting_id))
        return meeting_id

    def add_segment(self, meeting_id: str, idx: int, segment: TranscriptSegment) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?, ?)",
                             (meeting_id, idx, segment.start, segment.end, segment.text))
            if segment.text:
                self._db.execute("INSERT INTO segments_fts (text, meeting_id) VALUES (?, ?)",
                                 (segment.text, meeting_id))
            self._db.execute("UPDATE meetings SET duration = MAX(duration, ?) WHERE id = ?", (segment.end, meeting_id))

    def update(self, meeting_id: str, *, state: str | None = None, duration: float | None = None,
               summary: str | None = None, audio_path: str | None = None, usage_json: str | None = None) -> None:
        fields = {"state": state, "duration": duration, "summary": summary, "audio_path": audio_path,
                  "usage_json": usage_json}
        sets = {k: v for k, v in fields.items() if v is not None}
        if not sets:
            return
        with self._lock, self._db:
            self._db.execute(f"UPDATE meetings SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
                             (*sets.values(), meeting_id))
            if summary is not None:
                self._db.execute("UPDATE meetings_fts SET summary = ? WHERE meeting_id = ?", (summary, meeting_id))

    def resolve(self, id_or_prefix: str) -> str | None:
        """The full id of the one meeting whose id is or starts with this; None when none does, AmbiguousId
        when several do."""
        with self._lock:
            return resolve_prefix(self._db, "meetings", id_or_prefix, "meeting")

    def ids_between(self, since: float, until: float) -> tuple[str, ...]:
        """Meetings created in [since, until) (0 = open end), oldest first."""
        with self._lock:
            return tuple(r[0] for r in self._db.execute(
                "SELECT id FROM meetings WHERE created >= ? AND created < ? ORDER BY created",
                (since, until or float("inf"))))

    def delete(self, meeting_id: str) -> MeetingRow | None:
        """Remove a meeting's rows and its search index entries; returns the row (its audio_path is the
        caller's to remove: only the caller knows which files are the daemon's own)."""
        with self._lock, self._db:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM meetings WHERE id = ?", (meeting_id,)).fetchone()
            if row is None:
                return None
            self._db.execute("DELETE FROM segments_fts WHERE meeting_id = ?", (meeting_id,))
            self._db.execute("DELETE FROM meetings_fts WHERE meeting_id = ?", (meeting_id,))
            self._db.execute("DELETE FROM meetings WHERE id = ?", (meeting_id,))  # segments cascade
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return _row(row)

    def get(self, meeting_id: str) -> tuple[MeetingRow, list[TranscriptSegment]] | None:
        """A meeting by id or unique prefix, with its segments (None when unknown)."""
        full_id = self.resolve(meeting_id)
        if full_id is None:
            return None
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM meetings WHERE id = ?", (full_id,)).fetchone()
            if row is None:
                return None
            segments = self._db.execute("SELECT start, end, text FROM segments WHERE meeting_id = ? ORDER BY idx",
                                        (full_id,)).fetchall()
        return _row(row), [TranscriptSegment(*s) for s in segments]

    def list(self, limit: int = 50) -> list[MeetingRow]:
        """Newest first, each with the opening of its transcript as the snippet."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS}, (SELECT text FROM segments s WHERE s.meeting_id = m.id AND text != '' "
                f"ORDER BY idx LIMIT 1) FROM meetings m ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [_row(r[:-1], snippet=_clip(r[-1] or "")) for r in rows]

    def search(self, query: str, limit: int = 50) -> builtins.list[MeetingRow]:  # `list` is a method here
        """Meetings whose transcript, title or summary match an FTS5 query (plain words match as words)."""
        match = _fts_query(query)
        if not match:
            return []
        with self._lock:
            hits = self._db.execute(
                "SELECT meeting_id, snippet(segments_fts, 0, '[', ']', '...', 12), bm25(segments_fts) "
                "FROM segments_fts WHERE segments_fts MATCH ? "
                "UNION ALL SELECT meeting_id, snippet(meetings_fts, -1, '[', ']', '...', 12), bm25(meetings_fts) "
                "FROM meetings_fts WHERE meetings_fts MATCH ? ORDER BY 3", (match, match)).fetchall()
            best: dict[str, str] = {}
            for meeting_id, snip, _ in hits:
                best.setdefault(meeting_id, snip)
            rows = []
            for meeting_id, snip in list(best.items())[:limit]:
                row = self._db.execute(f"SELECT {_COLUMNS} FROM meetings WHERE id = ?", (meeting_id,)).fetchone()
                if row is not None:
                    rows.append(_row(row, snippet=snip))
        return rows


_COLUMNS = "id, title, created, duration, audio_path, summary, state, usage_json"


def _row(r: tuple, snippet: str = "") -> MeetingRow:
    return MeetingRow(id=r[0], title=r[1], created=r[2], duration=r[3], audio_path=r[4], summary=r[5], state=r[6],
                      usage_json=r[7], snippet=snippet)


def _clip(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[:n].rsplit(" ", 1)[0] + "..."


def _fts_query(query: str) -> str:
    """User words as an FTS5 query: each word quoted (so '-', ':' or 'AND' in the input are not syntax), all
    required, the last one as a prefix (search as you type)."""
    words = [w.replace('"', '""') for w in query.split()]
    if not words:
        return ""
    quoted = [f'"{w}"' for w in words]
    quoted[-1] += "*"
    return " ".join(quoted)
