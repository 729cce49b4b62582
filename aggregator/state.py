"""The SQLite index next to the archive: per-feed HTTP state, per-item dedupe keys.

The posts are the truth; everything in ``items`` can be rebuilt from them by
``aggregator reindex``. The HTTP validators in ``feeds`` are the only state that
cannot be rebuilt, and losing them costs one full download per feed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aggregator.errors import ArchiveError, IndexDamaged
from aggregator.models import (
    FeedStatus,
    Outcome,
    Post,
    Validators,
    format_time,
    parse_time,
    sort_date,
)
from aggregator.urls import is_http_url

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS feeds (
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
    gone_settings  TEXT,          -- its feeds.yaml settings when it answered 410 Gone
    local_errors   INTEGER NOT NULL DEFAULT 0,  -- of error_count, failed on this side
    icon           TEXT           -- the feed's own icon, learned like its name
)""",
    """CREATE TABLE IF NOT EXISTS items (
    key        TEXT PRIMARY KEY,  -- normalized source URL, GUID or content hash
    feed_url   TEXT,
    title      TEXT NOT NULL,
    published  TEXT,              -- the source's date, if any
    archived   TEXT NOT NULL,     -- first archived (the post's date)
    sort_date  TEXT NOT NULL,     -- order in the merged feed
    path       TEXT NOT NULL UNIQUE,
    pending    INTEGER NOT NULL DEFAULT 0, -- 1 while the post file is being written
    author     TEXT,              -- the post's author: finds its feed again after a rebuild
    digest     TEXT,              -- of what the source said (NULL: not known, e.g. rebuilt)
    revisions  INTEGER NOT NULL DEFAULT 0, -- rewrites for edits the source did not date
    source_updated TEXT,          -- the source's own date of its last change
    link       TEXT,              -- the post's http(s) link (keys are not links)
    alias      TEXT,              -- another key the item is known by (see posts.item_identity)
    unfinished INTEGER NOT NULL DEFAULT 0  -- tries that left its page or pictures unfetched
)""",
    "CREATE INDEX IF NOT EXISTS items_by_date ON items (sort_date DESC, key)",
    "CREATE INDEX IF NOT EXISTS items_pending ON items (pending) WHERE pending = 1",
    # Items of no known feed (after a rebuild), by author: see adopt(). Empty otherwise.
    "CREATE INDEX IF NOT EXISTS items_orphans ON items (author) WHERE feed_url IS NULL",
    "CREATE INDEX IF NOT EXISTS items_alias ON items (alias) WHERE alias IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS items_unfinished ON items (feed_url) WHERE unfinished > 0",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    # media: keep: what each URL gave (``/media/...``), so that it is not downloaded again
    "CREATE TABLE IF NOT EXISTS kept (url TEXT PRIMARY KEY, path TEXT NOT NULL)",
    # Each feed's archived items, kept by triggers (the river's pages count them at every
    # publish: counting the items instead would grow with the archive).
    "CREATE TABLE IF NOT EXISTS feed_posts (feed_url TEXT PRIMARY KEY, posts INTEGER NOT NULL)",
    """CREATE TRIGGER IF NOT EXISTS feed_posts_insert AFTER INSERT ON items
    WHEN new.pending = 0 AND new.feed_url IS NOT NULL BEGIN
        INSERT INTO feed_posts VALUES (new.feed_url, 1)
        ON CONFLICT (feed_url) DO UPDATE SET posts = posts + 1;
    END""",
    """CREATE TRIGGER IF NOT EXISTS feed_posts_delete AFTER DELETE ON items
    WHEN old.pending = 0 AND old.feed_url IS NOT NULL BEGIN
        UPDATE feed_posts SET posts = posts - 1 WHERE feed_url = old.feed_url;
    END""",
    """CREATE TRIGGER IF NOT EXISTS feed_posts_update AFTER UPDATE OF pending, feed_url ON items
    WHEN (old.pending, old.feed_url) IS NOT (new.pending, new.feed_url) BEGIN
        UPDATE feed_posts SET posts = posts - 1 WHERE old.pending = 0 AND feed_url = old.feed_url;
        INSERT INTO feed_posts SELECT new.feed_url, 1
        WHERE new.pending = 0 AND new.feed_url IS NOT NULL
        ON CONFLICT (feed_url) DO UPDATE SET posts = posts + 1;
    END""",
)
# (an index made before the feed_posts table: counted once)
_COUNT_FEED_POSTS = (
    "INSERT INTO feed_posts SELECT feed_url, count(*) FROM items"
    " WHERE pending = 0 AND feed_url IS NOT NULL GROUP BY feed_url"
)
# Columns later schemas added to the tables of earlier ones (``unfinished`` came without
# a new version: older releases leave it at its default).
_ADDED = {
    "feeds": {"local_errors": "INTEGER NOT NULL DEFAULT 0", "icon": "TEXT"},
    "items": {
        "author": "TEXT",
        "digest": "TEXT",
        "revisions": "INTEGER NOT NULL DEFAULT 0",
        "source_updated": "TEXT",
        "link": "TEXT",
        "alias": "TEXT",
        "unfinished": "INTEGER NOT NULL DEFAULT 0",
    },
}
_BATCH = 500  # keys per IN (...) query
BUSY_TIMEOUT_MS = 10_000  # how long to wait for another process's lock on the index
_PUBLISH_NEEDED = "publish_needed"  # meta key: posts were archived since the last publish
# Each mark changes the value, so that a publish clears only the mark it saw (posts
# confirmed while it ran keep the merged feed behind).
_MARK_BEHIND = (
    f"INSERT INTO meta VALUES ('{_PUBLISH_NEEDED}', '1') ON CONFLICT (key)"  # noqa: S608
    " DO UPDATE SET value = CAST(value AS INTEGER) + 1"
)
_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


def explain(path: Path, error: sqlite3.Error) -> ArchiveError:
    """A SQLite error as the project's error, saying what it means and what to do."""
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(error)
    if primary in _DAMAGED:
        return IndexDamaged(
            f"{path}: the index is damaged ({text}); `aggregator reindex` moves it aside and "
            "rebuilds it from the posts"
        )
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        why = "another process holds it locked (a backup, or a tool reading it?)"
    elif primary == sqlite3.SQLITE_READONLY:
        why = "it is read-only (check the permissions of the archive folder)"
    elif primary == sqlite3.SQLITE_FULL:
        why = "the disk is full"
    elif primary == sqlite3.SQLITE_CANTOPEN:
        why = "it cannot be opened (check that the archive folder exists and is readable)"
    elif primary == sqlite3.SQLITE_IOERR:
        why = "the disk reported an error"
    else:
        why = text
    return ArchiveError(f"{path}: {why} ({text})" if why != text else f"{path}: {text}")


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One archived item as the index knows it."""

    key: str
    feed_url: str | None
    title: str
    path: str
    published: datetime | None
    archived: datetime
    author: str | None = None
    link: str | None = None  # http(s)
    placed: datetime | None = None  # see models.sort_date

    @property
    def sort_date(self) -> datetime:
        return sort_date(self.published, self.archived, self.placed)


@dataclass(frozen=True, slots=True)
class Known:
    """What the index knows of an archived item, to tell an edit at the source."""

    key: str
    feed_url: str | None  # the feed that archived it (None: not known since a rebuild)
    path: str
    archived: datetime
    pending: bool
    digest: str | None
    revisions: int
    source_updated: datetime | None
    unfinished: int = 0  # tries so far that left its page or pictures unfetched


def _rekey(db: sqlite3.Connection) -> None:
    """Keys of schema 2 and before kept an URL's scheme and ``www.``: make them today's
    keys (see :func:`aggregator.posts.key_for`). Where two items become one (the same
    item archived twice after its publisher moved to https), the first archived keeps
    the key; the other's post stays on disk, out of the index, as reindex leaves it."""
    from aggregator.posts import key_for  # noqa: PLC0415 -- once per upgraded index

    rows = db.execute("SELECT key FROM items ORDER BY archived, key").fetchall()
    taken: set[str] = set()
    changed: list[tuple[str, str]] = []
    for (key,) in rows:
        rekeyed = key_for(key) if key.startswith(("http://", "https://")) else key
        if rekeyed in taken:
            db.execute("DELETE FROM items WHERE key = ?", (key,))
            log.warning("index upgrade: %s is a second copy of an item; left out", key)
            continue
        taken.add(rekeyed)
        if rekeyed != key:
            changed.append((key, rekeyed))
    db.executemany("UPDATE items SET link = ? WHERE key = ?", [(k, k) for k, _ in changed])
    # Two steps, so that a new key never meets an old one on the way (keys never hold
    # control characters: GUIDs are cleaned of them).
    db.executemany(
        "UPDATE items SET key = char(1) || ? WHERE key = ?", [(v, k) for k, v in changed]
    )
    db.executemany(
        "UPDATE items SET key = ? WHERE key = char(1) || ?", [(v, v) for _, v in changed]
    )


_FEED_COLUMNS = (
    "url, name, etag, last_modified, last_poll, last_outcome, last_error, http_status,"
    " error_count, next_poll, moved_to, gone_settings, local_errors, icon"
)


def _status(row: tuple[Any, ...]) -> FeedStatus:
    def when(value: str | None) -> datetime | None:
        try:
            return parse_time(value) if value else None
        except ValueError:  # edited by hand: as good as unknown
            return None

    try:
        outcome = Outcome(row[5]) if row[5] else None
    except ValueError:
        outcome = None
    return FeedStatus(
        url=row[0],
        name=row[1],
        validators=Validators(row[2], row[3]),
        last_poll=when(row[4]),
        outcome=outcome,
        error=row[6],
        http_status=row[7],
        errors_in_a_row=row[8] or 0,
        next_poll=when(row[9]),
        moved_to=row[10],
        gone_settings=row[11],
        local_errors=row[12] or 0,
        icon=row[13],
    )


def _only(feeds: Iterable[str] | None) -> tuple[str, list[str]]:
    """A condition on items' feeds (only "?" placeholders: the values are bound)."""
    if feeds is None:
        return "", []
    values = list(feeds)
    return f" AND feed_url IN ({','.join('?' * len(values))})", values


def _status_row(s: FeedStatus) -> tuple[object, ...]:
    return (
        s.url,
        s.name,
        s.validators.etag,
        s.validators.last_modified,
        format_time(s.last_poll) if s.last_poll else None,
        s.outcome.value if s.outcome else None,
        s.error,
        s.http_status,
        s.errors_in_a_row,
        format_time(s.next_poll) if s.next_poll else None,
        s.moved_to,
        s.gone_settings,
        s.local_errors,
        s.icon,
    )


class State:
    """The index database. One instance per process; shared by the event loop's thread
    and the thread that writes the batches of posts, one statement or transaction at a
    time (a lock).

    Every SQLite error leaves it as an :class:`ArchiveError` that says what to do
    (:class:`IndexDamaged` when the file is not a sound database).
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock = threading.RLock()  # one statement or transaction at a time
        self._columns = _FEED_COLUMNS
        self._old = False  # read-only, of schema 1: no meta table, no local_errors column
        self._items = _ITEM_COLUMNS
        self._counted = True  # the feed_posts counters exist (not in an older read-only one)
        try:
            if readonly:  # for `status`, `serve` and export-opml, next to a running daemon
                self._db = self._open_readonly(path)
                self._old = self._db.execute("PRAGMA user_version").fetchone()[0] < 2
                if self._old:
                    self._columns = _FEED_COLUMNS.replace("local_errors", "0")
                have = {row[1] for row in self._db.execute("PRAGMA table_info(feeds)")}
                if "icon" not in have:  # (written by an earlier release)
                    self._columns = self._columns.replace(", icon", ", NULL")
                self._counted = bool(
                    self._db.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'feed_posts'"
                    ).fetchone()
                )
                if self._db.execute("PRAGMA user_version").fetchone()[0] < 3:
                    self._items = _ITEM_COLUMNS.replace("link", "key")  # keys were links
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            # (the poller's writer thread and the event loop's share it, under _lock)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except OSError as e:
            raise ArchiveError(f"cannot create {path.parent}: {e.strerror or e}") from e
        except sqlite3.Error as e:
            raise explain(path, e) from e
        try:
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # see reserve()
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ArchiveError(f"{path}: made by a newer version (schema {version})")
            self._create()
        except sqlite3.Error as e:
            self._db.close()
            raise explain(path, e) from e
        except ArchiveError:
            self._db.close()
            raise

    def _create(self) -> None:
        """Create what is missing of the tables and indexes, bringing those of an older
        schema up to date: all or nothing."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for table, columns in _ADDED.items():
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for name, kind in columns.items():
                    if have and name not in have:  # an existing table of an older schema
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            counted = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'feed_posts'"
            ).fetchone()
            for statement in _SCHEMA:
                db.execute(statement)
            if not counted:
                db.execute(_COUNT_FEED_POSTS)
            if db.execute("PRAGMA user_version").fetchone()[0] < 3:
                _rekey(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _open_readonly(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        try:
            db.execute("SELECT count(*) FROM feeds").fetchone()
        except sqlite3.OperationalError as e:
            # A reader of a WAL database must create the -shm file next to it unless a
            # writer did. In a folder this user may not write to, with no -shm file (so no
            # writer at work), the file can be read as it is.
            code = getattr(e, "sqlite_errorcode", 0) & 0xFF
            shm = path.with_name(path.name + "-shm")
            if code not in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY) or shm.exists():
                db.close()
                raise
            db.close()
            db = sqlite3.connect(
                f"{path.as_uri()}?mode=ro&immutable=1", uri=True, isolation_level=None
            )
            db.execute("SELECT count(*) FROM feeds").fetchone()
            wal = path.with_name(path.name + "-wal")
            if wal.exists() and wal.stat().st_size:
                log.warning(
                    "%s: read as of its last checkpoint; its newest changes (in %s) need "
                    "write access to the folder to be read",
                    path, wal.name,
                )  # fmt: skip
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One committed write transaction."""
        try:
            with self._lock, self._db:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
        except sqlite3.Error as e:
            raise explain(self.path, e) from e

    def _write(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        with self._transaction() as db:
            db.executemany(sql, rows)

    def _read(self, sql: str, params: Iterable[object] = ()) -> list[Any]:
        try:
            with self._lock:
                return self._db.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as e:
            raise explain(self.path, e) from e

    def check(self) -> None:
        """Raise :class:`IndexDamaged` if SQLite finds the file damaged (a quick check)."""
        rows = self._read("PRAGMA quick_check")
        if rows and rows[0][0] != "ok":
            raise IndexDamaged(
                f"{self.path}: the index is damaged ({rows[0][0]}); `aggregator reindex` "
                "moves it aside and rebuilds it from the posts"
            )

    # Feeds -------------------------------------------------------------------------

    def statuses(self) -> dict[str, FeedStatus]:
        """Every feed's status, by its feeds.yaml URL."""
        rows = self._read(f"SELECT {self._columns} FROM feeds")  # noqa: S608 -- fixed names
        return {r[0]: _status(r) for r in rows}

    def quiet_feeds(self) -> set[str]:
        """The URLs of the feeds whose next poll may well download nothing: those with
        validators to be asked conditionally with, and those gone (410), which are not
        asked at all unless feeds.yaml has changed their entry."""
        rows = self._read(
            "SELECT url FROM feeds"
            " WHERE etag <> '' OR last_modified <> '' OR gone_settings IS NOT NULL"
        )
        return {r[0] for r in rows}

    def status(self, url: str) -> FeedStatus | None:
        found = self._read(f"SELECT {self._columns} FROM feeds WHERE url = ?", (url,))  # noqa: S608
        return _status(found[0]) if found else None

    def save_statuses(self, statuses: Iterable[FeedStatus]) -> None:
        """Store feeds' statuses (each replaces what was stored of its feed)."""
        marks = ", ".join("?" * 14)
        self._write(
            f"INSERT OR REPLACE INTO feeds ({_FEED_COLUMNS}) VALUES ({marks})",  # noqa: S608
            (_status_row(s) for s in statuses),
        )

    def new_items_since(self, since: datetime) -> dict[str, int]:
        """Feed URL → items archived at or after ``since``."""
        rows = self._read(
            "SELECT feed_url, count(*) FROM items WHERE archived >= ? AND pending = 0"
            " GROUP BY feed_url",
            (format_time(since),),
        )
        return {r[0]: r[1] for r in rows if r[0]}

    def adopt(self, feed_url: str, name: str) -> int:
        """Give the items of no known feed whose posts carry ``name`` as their author to
        ``feed_url`` (after the index was rebuilt from posts whose source was not named
        in feeds.yaml); return how many."""
        with self._transaction() as db:
            found = db.execute(
                "UPDATE items SET feed_url = ? WHERE feed_url IS NULL AND author = ?",
                (feed_url, name),
            )
        return int(found.rowcount)

    def feed_names(self) -> dict[str, str]:
        """Feed URL → the name its posts carry."""
        return dict(self._read("SELECT url, name FROM feeds WHERE name IS NOT NULL"))

    # The merged feed ---------------------------------------------------------------

    def publish_needed(self) -> bool:
        """Posts were archived that the merged feed does not show yet (a publish failed or
        was interrupted)."""
        if self._old:  # an older version kept no such record
            return False
        return bool(self._read("SELECT 1 FROM meta WHERE key = ?", (_PUBLISH_NEEDED,)))

    def kept_path(self, url: str) -> str | None:
        """The kept file ``url`` gave, if it was downloaded before ("" if its file was
        refused: not asked for again)."""
        rows = self._read("SELECT path FROM kept WHERE url = ?", (url,))
        return str(rows[0][0]) if rows else None

    def note_kept(self, url: str, path: str) -> None:
        self._write("INSERT OR REPLACE INTO kept VALUES (?, ?)", [(url, path)])

    def publish_later(self) -> None:
        """The merged feed is behind the posts (some were rewritten)."""
        self._write(_MARK_BEHIND, [()])

    def publish_mark(self) -> str | None:
        """What says that the merged feed is behind (None: it is not), read before a
        publish reads the index."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (_PUBLISH_NEEDED,))
        return str(rows[0][0]) if rows else None

    def published(self, mark: str | None) -> None:
        """The merged feed was written from the index as it was when ``mark`` was read:
        it is up to date unless posts were marked since."""
        self._write("DELETE FROM meta WHERE key = ? AND value IS ?", [(_PUBLISH_NEEDED, mark)])

    # Items -------------------------------------------------------------------------

    def known_keys(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` already archived (or being archived), as the key or the
        alias of an item."""
        wanted = list(keys)
        return self._existing("key", wanted) | self._existing("alias", wanted)

    def changed(self, digests: Iterable[tuple[str, str]]) -> dict[str, Known]:
        """Of the archived items among (key, digest), those whose digest differs (or was
        not kept): the index's row of each. Usually none, at the cost of one query."""
        wanted = list(dict(digests).items())
        found: dict[str, Known] = {}
        for i in range(0, len(wanted), _BATCH // 2):
            chunk = wanted[i : i + _BATCH // 2]
            values = ",".join("(?, ?)" for _ in chunk)
            query = (
                f"WITH said(k, d) AS (VALUES {values}) SELECT {_KNOWN_COLUMNS} FROM items"  # noqa: S608
                " JOIN said ON items.key = said.k WHERE items.digest IS NOT said.d"
            )
            for row in self._read(query, [v for pair in chunk for v in pair]):
                found[row[0]] = _known(row)
        return found

    def unfinished(self, feed_url: str, tries: int) -> list[Known]:
        """The feed's archived items whose page or pictures could not be fetched yet, by
        fewer than ``tries`` polls."""
        query = (
            f"SELECT {_KNOWN_COLUMNS} FROM items WHERE unfinished BETWEEN 1 AND ?"  # noqa: S608
            " AND feed_url = ? AND pending = 0"
        )
        return [_known(row) for row in self._read(query, (tries - 1, feed_url))]

    def note_unfinished(self, tries: Iterable[tuple[str, int]]) -> None:
        """Record, per key, how many tries left its page or pictures unfetched (0: none)."""
        if rows := [(n, key) for key, n in tries]:
            self._write("UPDATE items SET unfinished = ? WHERE key = ?", rows)

    def note_digests(self, posts: Iterable[Post]) -> None:
        """Take each post's digest as its item's version without rewriting its file (an
        item known without a digest, rebuilt or archived by an earlier version; or an
        edit not taken), and its feed as the item's when no feed was known."""
        if not (rows := list(posts)):
            return
        self._write(
            "UPDATE items SET digest = ?, source_updated = ?,"
            " feed_url = coalesce(feed_url, ?) WHERE key = ?",
            [
                (p.digest, format_time(p.source_updated) if p.source_updated else None,
                 p.feed_url, p.key)
                for p in rows
            ],
        )  # fmt: skip

    def revised(self, posts: Iterable[tuple[Post, int]]) -> None:
        """Record posts rewritten in place for an edit at the source, each with its count
        of undated rewrites; the merged feed is then behind."""
        rows = [
            (
                p.title,
                format_time(p.published) if p.published else None,
                format_time(p.sort_date),
                p.digest,
                revisions,
                format_time(p.source_updated) if p.source_updated else None,
                p.key,
            )
            for p, revisions in posts
        ]
        if not rows:
            return
        with self._transaction() as db:
            db.executemany(
                "UPDATE items SET title = ?, published = ?, sort_date = ?, digest = ?,"
                " revisions = ?, source_updated = ? WHERE key = ?",
                rows,
            )
            db.execute(_MARK_BEHIND)

    def stop_revising(self, keys: Iterable[str], limit: int) -> None:
        """Items that reached ``limit`` undated rewrites: marked past it (said once)."""
        if not (keys := list(keys)):
            return
        self._write("UPDATE items SET revisions = ? WHERE key = ?", [(limit + 1, k) for k in keys])

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
            found.update(r[0] for r in self._read(query, chunk))
        return found

    def reserve(self, posts: Iterable[Post], *, durable: bool = True) -> None:
        """Record posts as pending, before their files are written; durable on return
        (or, with ``durable=False``, once :meth:`sync` or a syncfs of its file system has
        run: the caller makes sure one does before any post file is put in place).

        Other commits may be lost by a power cut (never by a crash): at worst a poll's
        outcome, or a post left pending, which recovery settles. This one must not be
        lost, or a post written after it could be archived again.
        """
        with self._lock:  # (the setting is the connection's: no other write meanwhile)
            if durable:
                self._read("PRAGMA synchronous=FULL")
            try:
                self._write(_INSERT_ITEM, (_item_row(p, pending=True) for p in posts))
            finally:
                if durable:
                    self._read("PRAGMA synchronous=NORMAL")

    def sync(self) -> None:
        """Make every commit so far durable (the write-ahead log fsynced)."""
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except FileNotFoundError:  # (nothing committed since the last checkpoint)
            return
        except OSError as e:
            raise ArchiveError(f"cannot sync {wal}: {e.strerror or e}") from e

    def confirm(self, keys: Iterable[str]) -> None:
        """Mark items whose post file is in place, and the merged feed as behind them."""
        rows = [(k,) for k in keys]
        if not rows:
            return
        with self._transaction() as db:
            db.executemany("UPDATE items SET pending = 0 WHERE key = ?", rows)
            db.execute(_MARK_BEHIND)

    def forget(self, keys: Iterable[str]) -> None:
        if rows := [(k,) for k in keys]:
            self._write("DELETE FROM items WHERE key = ?", rows)

    def pending(self) -> list[tuple[str, str]]:
        """(key, path) of items whose write may have been interrupted."""
        return self._read("SELECT key, path FROM items WHERE pending = 1")

    def newest(
        self, limit: int, feeds: Iterable[str] | None = None, offset: int = 0
    ) -> list[ItemRecord]:
        """The ``limit`` archived items that lead the merged feed (of ``feeds`` only, if
        given), after the first ``offset`` (the pages of a river of news)."""
        only, values = _only(feeds)
        query = (
            f"SELECT {self._items} FROM items WHERE pending = 0"  # noqa: S608
            + only
            + " ORDER BY sort_date DESC, key LIMIT ? OFFSET ?"
        )
        return [_item(r) for r in self._read(query, (*values, limit, offset))]

    def items(self) -> list[ItemRecord]:
        rows = self._read(f"SELECT {self._items} FROM items WHERE pending = 0 ORDER BY key")  # noqa: S608
        return [_item(r) for r in rows]

    def count(self, feeds: Iterable[str] | None = None) -> int:
        """Archived items (of ``feeds`` only, if given); as cheap with 100,000 as with 10."""
        if feeds is None:  # (count(*) of a whole table walks no row; few are pending)
            with self._lock:  # (no batch reserved or confirmed between the two)
                every = self._read("SELECT count(*) FROM items")[0][0]
                pending = self._read("SELECT count(*) FROM items WHERE pending = 1")[0][0]
            return int(every - pending)
        only, values = _only(feeds)
        if self._counted:
            query = f"SELECT sum(posts) FROM feed_posts WHERE 1{only}"  # noqa: S608
        else:  # an index an earlier release wrote, read-only
            query = "SELECT count(*) FROM items WHERE pending = 0" + only  # noqa: S608
        return int(self._read(query, tuple(values))[0][0] or 0)

    def has_items(self) -> bool:
        """Whether anything is indexed, pending or not (cheap, whatever the size)."""
        return bool(self._read("SELECT 1 FROM items LIMIT 1"))

    def settle_future(self, now: datetime) -> int:
        """Items placed after ``now`` in the merged feed (archived while the clock was
        ahead) are placed at ``now``, so that they do not stay above every item archived
        from now on; return how many. Uses the date index: free when there are none."""
        stamp = format_time(now)
        if not self._read("SELECT 1 FROM items WHERE sort_date > ? LIMIT 1", (stamp,)):
            return 0
        with self._transaction() as db:
            moved = db.execute("UPDATE items SET sort_date = ? WHERE sort_date > ?", (stamp, stamp))
        return int(moved.rowcount)

    def replace_items(self, records: Iterable[ItemRecord | Post]) -> None:
        """Swap the whole item index for ``records`` in one transaction (reindex)."""
        rows = [_item_row(r, pending=False) for r in records]
        with self._transaction() as db:
            db.execute("DELETE FROM items")
            db.executemany(_INSERT_ITEM, rows)


_KNOWN_COLUMNS = (
    "key, feed_url, path, archived, pending, digest, revisions, source_updated, unfinished"
)
_ITEM_COLUMNS = "key, feed_url, title, path, published, archived, link"
_INSERT_ITEM = (
    "INSERT INTO items (key, feed_url, title, published, archived, sort_date, path, pending,"
    " author, digest, source_updated, link, alias, unfinished)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _known(row: tuple[Any, ...]) -> Known:
    return Known(
        key=row[0],
        feed_url=row[1],
        path=row[2],
        archived=parse_time(row[3]),
        pending=bool(row[4]),
        digest=row[5],
        revisions=row[6],
        source_updated=parse_time(row[7]) if row[7] else None,
        unfinished=row[8],
    )


def _item_row(r: ItemRecord | Post, *, pending: bool) -> tuple[object, ...]:
    return (
        r.key,
        r.feed_url,
        r.title,
        format_time(r.published) if r.published else None,
        format_time(r.archived),
        format_time(r.sort_date),
        r.path,
        int(pending),
        r.author,
        (r.digest or None) if isinstance(r, Post) else None,
        format_time(r.source_updated) if isinstance(r, Post) and r.source_updated else None,
        # A post's link is http(s) by construction; a rebuilt record's comes from a file.
        r.link if isinstance(r, Post) or (r.link and is_http_url(r.link)) else None,
        r.aliases[0] if isinstance(r, Post) and r.aliases else None,
        int(isinstance(r, Post) and r.unfinished),
    )


def _item(row: tuple[str, str | None, str, str, str | None, str, str | None]) -> ItemRecord:
    return ItemRecord(
        key=row[0],
        feed_url=row[1],
        title=row[2],
        path=row[3],
        published=parse_time(row[4]) if row[4] else None,
        archived=parse_time(row[5]),
        link=row[6] if row[6] and is_http_url(row[6]) else None,
    )
