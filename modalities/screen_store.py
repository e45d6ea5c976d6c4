"""The screen history: what the model saw, searchable, on this machine only, within a size budget.

One SQLite file under the daemon's data dir holds one row per observation (time, monitor, app, window title,
the model's text, and the frame the model was shown: after the exclusions, at the encoder's size, as a JPEG,
so the history page can show what was seen next to what was said) and an FTS5 index over the text, app and
title. Frames count against the same budget as the words and go with their row. The budget is in bytes
(users asked for budgets in bytes rather than days): after each insert that takes the database's used pages
over the budget, the oldest observations are deleted until it fits again; SQLite reuses the freed pages, so
the file stops growing at about the budget.
"""
from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from omnid.modalities.ids import resolve_prefix

DEFAULT_BUDGET_BYTES = 256 << 20


@dataclass(frozen=True)
class Observation:
    id: str
    time_unix: float
    monitor: int
    app: str
    window: str
    text: str
    #: Whether the row keeps the frame (rows written before frames were kept have none).
    has_frame: bool = False


_SCHEMA = """
CREATE TABLE IF NOT EXISTS observations (
    rowid INTEGER PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    time_unix REAL NOT NULL,
    monitor INTEGER NOT NULL,
    app TEXT NOT NULL,
    window TEXT NOT NULL,
    text TEXT NOT NULL,
    frame BLOB
);
CREATE INDEX IF NOT EXISTS observations_time ON observations(time_unix);
CREATE VIRTUAL TABLE IF NOT EXISTS observations_fts USING fts5(
    text, app, window, content='observations', content_rowid='rowid', tokenize='unicode61'
);
CREATE TRIGGER IF NOT EXISTS observations_ai AFTER INSERT ON observations BEGIN
    INSERT INTO observations_fts(rowid, text, app, window) VALUES (new.rowid, new.text, new.app, new.window);
END;
CREATE TRIGGER IF NOT EXISTS observations_ad AFTER DELETE ON observations BEGIN
    INSERT INTO observations_fts(observations_fts, rowid, text, app, window)
        VALUES ('delete', old.rowid, old.text, old.app, old.window);
END;
"""

_WORD = re.compile(r"\w+", re.UNICODE)


def fts_query(text: str, any_word: bool = False) -> str:
    """A user's words as a safe FTS5 query: each word quoted (no operators), all words (or any) must match."""
    words = _WORD.findall(text)
    return (" OR " if any_word else " ").join(f'"{w}"' for w in words)


class ScreenStore:
    """Thread-safe (one lock around one connection): the watcher writes, RPC handlers read."""

    def __init__(self, path: Path, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        if budget_bytes < 64 * 1024:
            raise ValueError("the screen history budget must be at least 64 KiB")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted history is overwritten, not left in free pages
        self._db.executescript(_SCHEMA)
        if "frame" not in {row[1] for row in self._db.execute("PRAGMA table_info(observations)")}:
            self._db.execute("ALTER TABLE observations ADD COLUMN frame BLOB")  # a history from before frames
        path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, time_unix: float, monitor: int, app: str, window: str, text: str,
            frame: bytes = b"") -> Observation:
        obs = Observation(uuid.uuid4().hex[:16], time_unix, monitor, app, window, text, bool(frame))
        with self._lock:
            self._db.execute("INSERT INTO observations(id, time_unix, monitor, app, window, text, frame) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (obs.id, obs.time_unix, obs.monitor, obs.app, obs.window, obs.text, frame or None))
            self._enforce_budget()
        return obs

    def used_bytes(self) -> int:
        with self._lock:
            return self._used_bytes()

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM observations").fetchone()[0]

    def search(self, query: str = "", limit: int = 20, since: float = 0.0, until: float = 0.0,
               any_word: bool = False) -> list[Observation]:
        """Observations matching the words of `query` (all of them; any with any_word), newest first.

        An empty query lists the newest observations in the time range.
        """
        limit = max(1, min(limit or 20, 1000))
        until = until or time.time() + 1e9
        match = fts_query(query, any_word)
        with self._lock:
            if match:
                rows = self._db.execute(
                    "SELECT o.id, o.time_unix, o.monitor, o.app, o.window, o.text, o.frame IS NOT NULL "
                    "FROM observations_fts f "
                    "JOIN observations o ON o.rowid = f.rowid WHERE observations_fts MATCH ? "
                    "AND o.time_unix >= ? AND o.time_unix <= ? ORDER BY o.time_unix DESC LIMIT ?",
                    (match, since, until, limit)).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT id, time_unix, monitor, app, window, text, frame IS NOT NULL FROM observations "
                    "WHERE time_unix >= ? AND time_unix <= ? ORDER BY time_unix DESC LIMIT ?",
                    (since, until, limit)).fetchall()
        return [Observation(i, t, m, a, w, text, bool(f)) for i, t, m, a, w, text, f in rows]

    def frame(self, observation_id: str) -> bytes | None:
        """The JPEG the model was shown for this observation; None when unknown or kept without one."""
        with self._lock:
            row = self._db.execute("SELECT frame FROM observations WHERE id = ?", (observation_id,)).fetchone()
        return bytes(row[0]) if row is not None and row[0] is not None else None

    def resolve(self, id_or_prefix: str) -> str | None:
        """The full id of the one observation whose id is or starts with this; None or AmbiguousId."""
        with self._lock:
            return resolve_prefix(self._db, "observations", id_or_prefix, "observation")

    def delete(self, ids: Sequence[str] = (), since: float = 0.0, until: float = 0.0, *,
               everything: bool = False) -> int:
        """Delete observations by id, by time range [since, until) (0 = open end), or all; returns how many.

        The FTS index follows through the delete trigger; with secure_delete on, SQLite overwrites the freed
        pages, and the checkpoint clears the write-ahead log, so the deleted text is not left on disk.
        """
        with self._lock:
            before = self._db.execute("SELECT count(*) FROM observations").fetchone()[0]
            if everything:
                self._db.execute("DELETE FROM observations")
            elif ids:
                self._db.executemany("DELETE FROM observations WHERE id = ?", [(i,) for i in ids])
            else:
                self._db.execute("DELETE FROM observations WHERE time_unix >= ? AND time_unix < ?",
                                 (since, until or float("inf")))
            deleted = before - self._db.execute("SELECT count(*) FROM observations").fetchone()[0]
            if deleted:
                self._db.execute("INSERT INTO observations_fts(observations_fts) VALUES ('optimize')")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def _used_bytes(self) -> int:
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * page_size

    def _enforce_budget(self) -> None:
        """Delete the oldest observations (a tenth at a time) until the used pages fit the budget."""
        while self._used_bytes() > self.budget_bytes:
            total = self._db.execute("SELECT count(*) FROM observations").fetchone()[0]
            if total <= 1:
                return
            self._db.execute("DELETE FROM observations WHERE rowid IN "
                             "(SELECT rowid FROM observations ORDER BY time_unix LIMIT ?)", (max(1, total // 10),))
            self._db.execute("INSERT INTO observations_fts(observations_fts) VALUES ('optimize')")
