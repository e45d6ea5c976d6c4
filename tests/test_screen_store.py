"""The screen history: full-text search, time ranges, and the byte budget."""
from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from omnid.modalities.screen_store import ScreenStore, fts_query


def test_search_by_words_and_time(tmp_path):
    store = ScreenStore(tmp_path / "screen.sqlite")
    store.add(1000.0, 1, "firefox", "Rust book", "Reading chapter 4 on ownership and borrowing")
    store.add(2000.0, 1, "code", "main.py", "Editing a Python function that parses PDF files")
    store.add(3000.0, 2, "slack", "general", "A chat about lunch; someone mentions ownership")
    assert [o.app for o in store.search("ownership")] == ["slack", "firefox"]        # newest first
    assert [o.app for o in store.search("ownership", until=2500)] == ["firefox"]
    assert [o.app for o in store.search("python pdf")] == ["code"]                   # all words
    assert [o.app for o in store.search("python lunch", any_word=True)] == ["slack", "code"]
    assert [o.app for o in store.search("", since=1500)] == ["slack", "code"]
    assert store.search("Rust") and store.search("rust")[0].window == "Rust book"    # titles are indexed
    # Operators and quotes in user text are words, not FTS syntax.
    assert store.search('own* OR "x') == []
    assert fts_query('a "b" NEAR(c)') == '"a" "b" "NEAR" "c"'
    assert stat.S_IMODE(os.stat(tmp_path / "screen.sqlite").st_mode) == 0o600


def test_the_byte_budget_drops_the_oldest(tmp_path):
    budget = 256 * 1024
    store = ScreenStore(tmp_path / "screen.sqlite", budget_bytes=budget)
    text = "the quick brown fox reads a long page about screen watchers " * 8
    for i in range(2000):
        store.add(float(i), 1, "app", f"window {i}", f"{i} {text}")
    assert store.used_bytes() <= budget
    kept = store.count()
    assert 0 < kept < 2000
    newest = store.search("", limit=1)[0]
    assert newest.time_unix == 1999.0
    assert store.search("", limit=kept, since=0)[-1].time_unix > 0   # the oldest went first
    store.close()
    assert os.path.getsize(tmp_path / "screen.sqlite") <= 2 * budget


def test_a_tiny_budget_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least"):
        ScreenStore(tmp_path / "s.sqlite", budget_bytes=1000)


def test_the_frame_the_model_saw_is_kept_with_its_row_and_goes_with_it(tmp_path):
    path = tmp_path / "screen.sqlite"
    old = sqlite3.connect(path)  # a history written before frames were kept: no frame column
    old.execute("CREATE TABLE observations (rowid INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, time_unix REAL "
                "NOT NULL, monitor INTEGER NOT NULL, app TEXT NOT NULL, window TEXT NOT NULL, text TEXT NOT NULL)")
    old.execute("INSERT INTO observations VALUES (1, 'aaaa1111', 1000.0, 1, 'code', 'old.py', 'an old row')")
    old.commit()
    old.close()
    store = ScreenStore(path)
    seen = store.add(2000.0, 1, "code", "new.py", "a new row", b"\xff\xd8jpeg bytes")
    assert [(o.id, o.has_frame) for o in store.search("")] == [(seen.id, True), ("aaaa1111", False)]
    assert store.frame(seen.id) == b"\xff\xd8jpeg bytes" and store.frame("aaaa1111") is None
    assert store.search("row")[0].has_frame
    store.delete([seen.id])
    assert store.frame(seen.id) is None
