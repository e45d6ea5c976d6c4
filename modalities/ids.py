"""Ids typed by people: any unique prefix of a stored id stands for it, as in git.

The stores (documents, meetings, screen history) hold long random or content-hash ids; `list` commands show
them shortened. A prefix that matches several ids is refused with the candidates named, never guessed.
"""
from __future__ import annotations

import sqlite3

#: Shortest prefix taken (shorter ones would match too much to be a deliberate choice).
MIN_PREFIX = 4
#: Candidates named in an ambiguity error.
SHOWN_CANDIDATES = 5


class AmbiguousId(ValueError):
    """A prefix that matches more than one stored id (INVALID_ARGUMENT for clients)."""


def resolve_prefix(db: sqlite3.Connection, table: str, id_or_prefix: str, what: str) -> str | None:
    """The one id in `table`.id equal to or starting with `id_or_prefix`; None when there is none.

    `table` comes from the store's own code, never from a client. The caller holds the store's lock.
    """
    value = id_or_prefix.strip().lower()
    if not value:
        return None
    if db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (value,)).fetchone():
        return value
    if len(value) < MIN_PREFIX:
        return None
    rows = db.execute(f"SELECT id FROM {table} WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT ?",
                      (len(value), value, SHOWN_CANDIDATES + 1)).fetchall()
    if len(rows) > 1:
        shown = ", ".join(r[0] for r in rows[:SHOWN_CANDIDATES]) + (", ..." if len(rows) > SHOWN_CANDIDATES else "")
        raise AmbiguousId(f"{value!r} is the start of more than one {what} id ({shown}): type more of it")
    return rows[0][0] if rows else None
