"""The SQLite index next to the archive: per-feed HTTP state, per-item dedupe keys.

The posts are the truth; everything in ``items`` can be rebuilt from them by
``aggregator reindex``. The HTTP validators in ``feeds`` are the only state that
cannot be rebuilt, and losing them costs one full download per feed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aggregator.errors import ArchiveError
from aggregator.models import Post, Validators, format_time, parse_time, sort_date

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS feeds (
    url            TEXT PRIMARY KEY,
    name           TEXT,
    etag           TEXT,
    last_modified  TEXT,
    last_poll      TEXT,
    last_outcome   TEXT,          -- new | unchanged | error
    last_error     TEXT,
    http_status    INTEGER,
    error_count    INTEGER NOT NULL DEFAULT 0,  -- failed polls in a row
    next_poll      TEXT,          -- when the daemon polls it next
    moved_to       TEXT,          -- new URL after a permanent redirect
    gone_settings  TEXT           -- its feeds.yaml settings when it answered 410 Gone
);
CREATE TABLE IF NOT EXISTS items (
    key        TEXT PRIMARY KEY,  -- normalized source URL, GUID or content hash
    feed_url   TEXT,
    title      TEXT NOT NULL,
    published  TEXT,              -- the source's date, if any
    archived   TEXT NOT NULL,     -- first archived (the post's date)
    sort_date  TEXT NOT NULL,     -- order in the merged feed
    path       TEXT NOT NULL UNIQUE,
    pending    INTEGER NOT NULL DEFAULT 0  -- 1 while the post file is being written
);
CREATE INDEX IF NOT EXISTS items_by_date ON items (sort_date DESC, key);
CREATE INDEX IF NOT EXISTS items_pending ON items (pending) WHERE pending = 1;
"""
_BATCH = 500  # keys per IN (...) query


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One archived item as the index knows it."""

    key: str
    feed_url: str | None
    title: str
    path: str
    published: datetime | None
    archived: datetime


@dataclass(frozen=True, slots=True)
class FeedRecord:
    """What the index remembers of one feed."""

    url: str
    name: str | None
    validators: Validators
    last_poll: datetime | None
    last_outcome: str | None
    last_error: str | None
    http_status: int | None
    error_count: int = 0
    next_poll: datetime | None = None
    moved_to: str | None = None
    gone_settings: str | None = None


_FEED_COLUMNS = (
    "url, name, etag, last_modified, last_poll, last_outcome, last_error, http_status,"
    " error_count, next_poll, moved_to, gone_settings"
)


def _feed(row: tuple[Any, ...]) -> FeedRecord:
    def when(value: str | None) -> datetime | None:
        return parse_time(value) if value else None

    return FeedRecord(
        url=row[0],
        name=row[1],
        validators=Validators(row[2], row[3]),
        last_poll=when(row[4]),
        last_outcome=row[5],
        last_error=row[6],
        http_status=row[7],
        error_count=row[8] or 0,
        next_poll=when(row[9]),
        moved_to=row[10],
        gone_settings=row[11],
    )


class State:
    """The index database. One instance per process; not shared across threads."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:  # for `status` and `serve`, next to a running daemon
                self._db = sqlite3.connect(
                    f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None
                )
                self._db.execute("PRAGMA busy_timeout=10000")
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # see reserve()
            self._db.execute("PRAGMA busy_timeout=10000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ArchiveError(f"{path}: made by a newer version (schema {version})")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise ArchiveError(f"{path}: cannot open the state database: {e}") from e

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One committed write transaction; SQLite errors become ArchiveError."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
        except sqlite3.Error as e:
            raise ArchiveError(f"{self.path}: {e}") from e

    def _write(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        with self._transaction() as db:
            db.executemany(sql, rows)

    # Feeds -------------------------------------------------------------------------

    def feed(self, url: str) -> FeedRecord | None:
        row = self._db.execute(f"SELECT {_FEED_COLUMNS} FROM feeds WHERE url = ?", (url,))  # noqa: S608
        found = row.fetchone()
        return _feed(found) if found else None

    def feeds(self) -> dict[str, FeedRecord]:
        rows = self._db.execute(f"SELECT {_FEED_COLUMNS} FROM feeds")  # noqa: S608
        return {r[0]: _feed(r) for r in rows}

    def validators(self, url: str) -> Validators:
        record = self.feed(url)
        return record.validators if record else Validators()

    def record_poll(
        self,
        url: str,
        *,
        when: datetime,
        outcome: str,
        error: str | None = None,
        http_status: int | None = None,
        name: str | None = None,
        validators: Validators | None = None,
    ) -> None:
        """Remember a poll's outcome; ``validators``/``name`` only when given.

        Counts failures in a row: an ``error`` outcome adds one, any other resets it.
        """
        failed = int(outcome == "error")
        with self._transaction() as db:
            db.execute(
                "INSERT INTO feeds (url, last_poll, last_outcome, last_error, http_status,"
                " error_count) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (url) DO UPDATE SET"
                " last_poll = excluded.last_poll, last_outcome = excluded.last_outcome,"
                " last_error = excluded.last_error, http_status = excluded.http_status,"
                " error_count = CASE WHEN ? THEN error_count + 1 ELSE 0 END",
                (url, format_time(when), outcome, error, http_status, failed, failed),
            )
            if name is not None:
                db.execute("UPDATE feeds SET name = ? WHERE url = ?", (name, url))
            if validators is not None:
                db.execute(
                    "UPDATE feeds SET etag = ?, last_modified = ? WHERE url = ?",
                    (validators.etag, validators.last_modified, url),
                )

    def _set(self, url: str, column: str, value: str | None) -> None:
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO feeds (url, {column}) VALUES (?, ?)"  # noqa: S608 -- fixed names
                f" ON CONFLICT (url) DO UPDATE SET {column} = excluded.{column}",
                (url, value),
            )

    def set_next_poll(self, url: str, when: datetime | None) -> None:
        self._set(url, "next_poll", format_time(when) if when else None)

    def set_moved(self, url: str, new_url: str | None) -> None:
        """Remember that ``url`` now lives at ``new_url`` (a 301/308); None forgets it."""
        self._set(url, "moved_to", new_url)

    def set_gone(self, url: str, settings: str | None) -> None:
        """Mark the feed gone (410) for these feeds.yaml settings; None clears the mark."""
        self._set(url, "gone_settings", settings)

    def new_items_since(self, since: datetime) -> dict[str, int]:
        """Feed URL → items archived at or after ``since``."""
        rows = self._db.execute(
            "SELECT feed_url, count(*) FROM items WHERE archived >= ? AND pending = 0"
            " GROUP BY feed_url",
            (format_time(since),),
        )
        return {r[0]: r[1] for r in rows if r[0]}

    def feed_names(self) -> dict[str, str]:
        """Feed URL → the name its posts carry."""
        rows = self._db.execute("SELECT url, name FROM feeds WHERE name IS NOT NULL")
        return dict(rows.fetchall())

    # Items -------------------------------------------------------------------------

    def known_keys(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` already archived (or being archived)."""
        return self._existing("key", keys)

    def paths_taken(self, paths: Iterable[str]) -> set[str]:
        """The subset of ``paths`` already used by archived items."""
        return self._existing("path", paths)

    def _existing(self, column: str, values: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(values))
        found: set[str] = set()
        for i in range(0, len(wanted), _BATCH):
            chunk = wanted[i : i + _BATCH]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT {column} FROM items WHERE {column} IN ({marks})"  # noqa: S608 -- fixed names
            found.update(r[0] for r in self._db.execute(query, chunk))
        return found

    def reserve(self, posts: Iterable[Post]) -> None:
        """Record posts as pending, before their files are written; durable on return.

        Other commits may be lost by a power cut (never by a crash): at worst a poll's
        outcome, or a post left pending, which recovery settles. This one must not be
        lost, or a post written after it could be archived again.
        """
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            self._write(_INSERT_ITEM, (_item_row(p, pending=True) for p in posts))
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")

    def confirm(self, keys: Iterable[str]) -> None:
        """Mark items whose post file is in place."""
        self._write("UPDATE items SET pending = 0 WHERE key = ?", ((k,) for k in keys))

    def forget(self, keys: Iterable[str]) -> None:
        self._write("DELETE FROM items WHERE key = ?", ((k,) for k in keys))

    def pending(self) -> list[tuple[str, str]]:
        """(key, path) of items whose write may have been interrupted."""
        return self._db.execute("SELECT key, path FROM items WHERE pending = 1").fetchall()

    def newest(self, limit: int, feeds: Iterable[str] | None = None) -> list[ItemRecord]:
        """The ``limit`` archived items that lead the merged feed (of ``feeds`` only, if given)."""
        only, values = "", []
        if feeds is not None:
            values = list(feeds)
            only = f" AND feed_url IN ({','.join('?' * len(values))})"
        # Only "?" placeholders are interpolated; the values are bound.
        query = (
            "SELECT key, feed_url, title, path, published, archived FROM items WHERE pending = 0"  # noqa: S608
            + only
            + " ORDER BY sort_date DESC, key LIMIT ?"
        )
        rows = self._db.execute(query, (*values, limit))
        return [_item(r) for r in rows]

    def items(self) -> Iterator[ItemRecord]:
        rows = self._db.execute(
            "SELECT key, feed_url, title, path, published, archived FROM items"
            " WHERE pending = 0 ORDER BY key"
        )
        return (_item(r) for r in rows)

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM items WHERE pending = 0").fetchone()[0])

    def replace_items(self, records: Iterable[ItemRecord | Post]) -> None:
        """Swap the whole item index for ``records`` in one transaction (reindex)."""
        rows = [_item_row(r, pending=False) for r in records]
        with self._transaction() as db:
            db.execute("DELETE FROM items")
            db.executemany(_INSERT_ITEM, rows)


_INSERT_ITEM = (
    "INSERT INTO items (key, feed_url, title, published, archived, sort_date, path, pending)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _item_row(r: ItemRecord | Post, *, pending: bool) -> tuple[object, ...]:
    return (
        r.key,
        r.feed_url,
        r.title,
        format_time(r.published) if r.published else None,
        format_time(r.archived),
        format_time(sort_date(r.published, r.archived)),
        r.path,
        int(pending),
    )


def _item(row: tuple[str, str | None, str, str, str | None, str]) -> ItemRecord:
    return ItemRecord(
        key=row[0],
        feed_url=row[1],
        title=row[2],
        path=row[3],
        published=parse_time(row[4]) if row[4] else None,
        archived=parse_time(row[5]),
    )
