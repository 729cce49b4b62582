"""The archive folder: posts written atomically and recorded in the index.

Writing a batch of posts follows an order that a kill at any instant cannot break:

1. record every post as *pending* in the index (one transaction, durable before any
   rename: by the syncfs of step 2 when the index shares the posts' file system, else
   by its own fsync);
2. write each post to ``.<name>.tmp`` in its folder; make them all durable (one syncfs,
   or an fsync each); rename them into place;
3. fsync the folders;
4. mark the posts done (one transaction).

At start-up :meth:`Archive.recover` settles pending rows: a post whose file is in
place is done; one whose file is absent is forgotten, so the next poll archives the
item again. A post is therefore either whole or absent, and never archived twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import fcntl
import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from aggregator.errors import ArchiveError, IndexDamaged
from aggregator.models import FeedSource, Post
from aggregator.posts import LOCAL_MEDIA, post_path, read_post, render_post, truncate_ms
from aggregator.state import ItemRecord, Known, State

log = logging.getLogger(__name__)

STATE_DIR = ".aggregator"
POSTS_DIR = "_posts"
RSS_FILE, ATOM_FILE, JSON_FILE = "feed.xml", "atom.xml", "feed.json"  # the merged feed
FEED_STYLESHEET = "feed.xsl"  # in assets/: how a browser shows the RSS and Atom feeds
CHURN_LIMIT = 3  # rewrites per item for edits the source does not date
SHRINK_LIMIT = 0.5  # an edit that leaves less than this share of a post is not taken


def state_path(root: Path) -> Path:
    """The index of the archive at ``root``."""
    return root / STATE_DIR / "state.sqlite3"


def surely_downloads(root: Path, urls: Iterable[str]) -> bool:
    """Whether polling these feeds surely downloads one whole: one was never fetched, or
    the index holds nothing to ask it conditionally with (and it is not gone)."""
    wanted = set(urls)
    if not wanted:
        return False
    path = state_path(root)
    if not path.exists():
        return True
    try:
        state = State(path, readonly=True)
        try:
            quiet = state.quiet_feeds()
        finally:
            state.close()
    except ArchiveError:  # (the pass says what is wrong with the index)
        return False
    return not quiet.issuperset(wanted)


def has_posts(root: Path) -> bool:
    """Whether ``_posts/`` of the archive at ``root`` holds a post (stops at the first)."""
    return next(_walk(root / POSTS_DIR, POSTS_DIR), None) is not None


def outputs_missing(root: Path) -> bool:
    """True if any file of the merged feed is absent (then it is published even unchanged)."""
    return not all((root / name).is_file() for name in (RSS_FILE, ATOM_FILE, JSON_FILE))


def read_index(root: Path) -> State:
    """The archive's index, open for reading only (``status``, ``serve``, export-opml):
    works next to a running daemon and on an archive this user may not write."""
    path = state_path(root)
    if not path.exists():
        if has_posts(root):
            raise ArchiveError(
                f"no archive index at {path}, but {root / POSTS_DIR} has posts: "
                "`aggregator reindex` rebuilds it from them (`aggregator poll` and `run` do "
                "so by themselves)"
            )
        raise ArchiveError(f"no archive index at {path}: run `aggregator poll` first")
    return State(path, readonly=True)


def publish_due(archive: Archive) -> bool:
    """The merged feed lacks a file, or posts were archived that it does not show yet
    (also when the index cannot say)."""
    if outputs_missing(archive.root):
        return True
    try:
        return archive.state.publish_needed()
    except ArchiveError:
        return True


class ArchiveLocked(ArchiveError):
    """Another process holds the archive."""


@contextlib.contextmanager
def lock_archive(root: Path) -> Iterator[None]:
    """Hold the archive for this process: an flock on ``.aggregator/lock`` with our pid.

    The kernel drops the lock when the process dies, so a lock file left by a killed
    process never blocks a new start.
    """
    path = root / STATE_DIR / "lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ArchiveError(f"cannot create {path}: {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ArchiveLocked(
                f"another aggregator (pid {pid}) is using the archive {root}; "
                "stop it first, or use `aggregator status` to see what it does"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # also releases the lock


def load_post(root: Path, path: str) -> Post:
    """Read the post file ``path`` of the archive ``root`` back."""
    full = root / path
    try:
        return read_post(full.read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ArchiveError(f"{full}: unreadable post: {e}") from e


def write_file_atomic(
    path: Path,
    data: bytes,
    *,
    make_dirs: bool = True,
    mode: int | None = None,
    durable: bool = True,
) -> None:
    """Replace ``path`` with ``data``: temp file in the same folder, fsync, rename.

    ``mode``: the new file's permission bits (default: the umask's). ``durable=False``
    leaves out the fsync, for a file the next publish writes again if a crash lost it.
    """
    tmp = Path(_temp_name(os.fspath(path)))
    try:
        if make_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ArchiveError(f"cannot write {path}: {e.strerror or e}") from e


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2): make everything written to one file system durable at once."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


def flush_files(root: Path, paths: Sequence[str | Path]) -> bool:
    """Make the data of ``paths`` durable: one syncfs of their file system where Linux
    offers it (an fsync per file costs several times the CPU), else an fsync each.
    True if it was a syncfs (which made everything else on that file system durable)."""
    syncfs = _syncfs()
    if syncfs is not None:
        fd = os.open(root, os.O_RDONLY)
        try:
            if syncfs(fd) == 0:
                return True
        finally:
            os.close(fd)
    for path in paths:
        fsync_path(path)
    return False


def fsync_path(path: str | Path) -> None:
    """fsync a file by name, or a folder (which makes the renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: str) -> str:
    """Where ``path`` is written before it is renamed into place (as text: the write path
    handles thousands)."""
    folder, slash, name = path.rpartition("/")
    return f"{folder}{slash}.{name}.tmp"


class Archive:
    """An archive folder and its index, open for writing. Call :meth:`prepare` (or at least
    :meth:`recover`) before writing.

    A damaged index file is moved aside (kept, with the time in its name) and replaced by
    a new one, which :meth:`prepare` rebuilds from the posts.
    """

    media_used: set[str]  # after reindex: the kept files the posts refer to
    media_known: bool  # ... and every post could be read: that is all of them

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = os.fspath(root)  # (paths as text where thousands are made)
        self._damaged: str | None = None  # what was wrong with the index, if it was moved
        self.state = self._open_index()
        # The index on the posts' file system: the syncfs that makes a batch of posts
        # durable makes its reservation durable too (one fsync less a feed).
        self._one_file_system = (
            _syncfs() is not None and os.stat(self.state.path).st_dev == os.stat(root).st_dev
        )
        ignore = root / STATE_DIR / ".gitignore"
        if not ignore.exists():
            write_file_atomic(ignore, b"# the index is rebuilt by `aggregator reindex`\n*\n")

    def _open_index(self) -> State:
        path = state_path(self.root)
        try:
            return State(path)
        except IndexDamaged as e:
            self._move_aside(path, e)
            return State(path)

    def replace_damaged_index(self, error: IndexDamaged) -> None:
        """Move the open index aside and start a new, empty one (then rebuild it)."""
        self.state.close()
        self._move_aside(self.state.path, error)
        self.state = State(self.state.path)

    def _move_aside(self, path: Path, error: IndexDamaged) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = path.with_name(f"{path.name}.damaged-{stamp}")
        try:
            for suffix in ("", "-wal", "-shm"):  # a stale -wal must not meet the new file
                part = path.with_name(path.name + suffix)
                if part.exists():
                    os.replace(part, aside.with_name(aside.name + suffix))
        except OSError as e:
            raise ArchiveError(f"{error}; moving it aside failed: {e.strerror or e}") from e
        self._damaged = f"was damaged ({error.__cause__ or error}): moved it to {aside.name}"

    @property
    def damaged(self) -> str | None:
        """What was wrong with the index, if it was moved aside when opened."""
        return self._damaged

    def prepare(self, feeds: Iterable[FeedSource], now: datetime, *, check: bool = False) -> None:
        """Make the index fit for a pass: settle interrupted writes, rebuild the index from
        the posts if it was lost or is damaged (so that nothing is archived twice), and
        place items dated ahead of the clock at ``now``.

        ``check``: have SQLite look through the whole index first, not only the pages these
        steps read (about 60 ms per 100,000 items; the daemon does it when it starts).
        """
        try:
            if check:
                self.state.check()
            self.recover()
            lost = not self.state.has_items() and has_posts(self.root)
        except IndexDamaged as e:
            self.replace_damaged_index(e)
            lost = True
        if self._damaged or lost:
            self.rebuild(feeds)
        if moved := self.state.settle_future(now):
            log.warning(
                "%d items were archived with dates ahead of the clock (was the clock wrong?); "
                "they are placed at %s in the merged feed",
                moved, now.isoformat(timespec="seconds"),
            )  # fmt: skip

    def rebuild(self, feeds: Iterable[FeedSource]) -> int:
        """Rebuild the item index from the posts, saying why in one line; the count."""
        what = self._damaged or f"lists no posts but {self.root / POSTS_DIR} has some"
        self._damaged = None
        count, problems = self.reindex(self.names_of(feeds))
        log.warning(
            "the index %s %s; rebuilt it from the posts (%d), as `aggregator reindex` does",
            self.state.path, what, count,
        )  # fmt: skip
        for problem in problems:
            log.warning("reindex: %s", problem)
        return count

    def names_of(self, feeds: Iterable[FeedSource]) -> dict[str, str]:
        """Source name → feed URL, for :meth:`reindex`: the names the index learned, then
        those feeds.yaml gives."""
        names = {name: url for url, name in self.state.feed_names().items()}
        names.update({f.name: f.url for f in feeds if f.name})
        return names

    def close(self) -> None:
        self.state.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recover(self) -> tuple[int, int]:
        """Settle writes a crash interrupted; return (completed, discarded)."""
        done: list[str] = []
        gone: list[str] = []
        pending = self.state.pending()
        for key, path in pending:
            (done if (self.root / path).is_file() else gone).append(key)
        self._drop_temps(path for _, path in pending)
        self.state.confirm(done)
        self.state.forget(gone)
        if done or gone:
            log.warning(
                "recovered interrupted writes: completed=%d discarded=%d", len(done), len(gone)
            )
        return len(done), len(gone)

    def store(self, posts: Iterable[Post]) -> list[Post]:
        """Archive the posts whose key is new, one file after another; return those written."""
        batch = self._begin(posts)
        if not batch:
            return []
        try:
            for post in batch:
                self._write_temp(post)
            self._commit_files(batch)
        except (ArchiveError, OSError) as e:
            self._settle(batch)
            raise ArchiveError(f"archive write failed: {e}") from e
        return self._end(batch)

    def revise(
        self, posts: Iterable[Post], now: datetime, *, limit: int = CHURN_LIMIT
    ) -> list[Post]:
        """Rewrite in place the posts of items the source has edited since they were
        archived (same file, same ``date``; an ``updated`` key); return those rewritten.

        An edit the source dates (a newer ``updated``) is always taken; at most ``limit``
        undated ones per item, so that a feed changing a counter in every item does not
        rewrite its posts for ever. Each file is replaced whole (temp, fsync, rename), so
        a kill leaves the old version or the new one. Only the first entry of a key counts
        (as for :meth:`store`), and only the feed that archived an item edits its post.
        """
        first: dict[str, Post] = {}
        for post in posts:
            if post.digest:
                first.setdefault(post.key, post)
        candidates = list(first.values())
        known = self.state.changed((p.key, p.digest) for p in candidates)
        unrecorded: list[Post] = []  # digests taken without a rewrite
        revised: list[tuple[Post, int]] = []
        capped: list[str] = []
        for post in candidates:
            was = known.get(post.key)
            if was is None or was.pending or was.feed_url not in (None, post.feed_url):
                continue
            if was.digest is None:  # known before digests were kept: this is its version
                unrecorded.append(post)
                continue
            if why := self._keep_archived(post, was):
                log.warning("feed=%s item %s: %s", post.author, post.source, why)
                unrecorded.append(post)  # (said once: until the source changes it again)
                continue
            dated = _later(post.source_updated, was.source_updated)
            if not dated and was.revisions >= limit:
                if was.revisions == limit:
                    capped.append(post.key)
                    log.warning(
                        "feed=%s item %s changed %d times without a new date; keeping the "
                        "version archived last", post.author, post.source, limit,
                    )  # fmt: skip
                continue
            rewritten = self._rewritten(post, was, truncate_ms(now))
            revised.append((rewritten, 0 if dated else was.revisions + 1))
        self.state.note_digests(unrecorded)
        self.state.stop_revising(capped, limit)
        if not revised:
            return []
        self._replace([post for post, _ in revised])
        self.state.revised(revised)
        return [post for post, _ in revised]

    def finish(self, posts: Iterable[tuple[Post, Known]]) -> list[Post]:
        """Rewrite in place the posts a later try completed (their article page or
        pictures fetched now); return those rewritten. Each keeps its file, its date and
        its ``updated``; one whose text would not change is left alone."""
        done: list[Post] = []
        for post, was in posts:
            if was.feed_url not in (None, post.feed_url):
                continue
            try:
                archived = (self.root / was.path).read_text(encoding="utf-8")
                updated = read_post(archived, was.path).updated
            except (OSError, ValueError):  # removed or broken by hand: `reindex` says so
                continue
            text = self._rewritten(post, was, updated).text
            if text != archived:
                done.append(dataclasses.replace(post, path=was.path, text=text))
        if done:
            self._replace(done)
            self.state.publish_later()
        return done

    def _replace(self, posts: list[Post]) -> None:
        """Write each post over its file: temp, durable, renamed, folder durable."""
        try:
            for post in posts:
                self._write_temp(post)
            self._commit_files(posts)
        except OSError as e:
            self._drop_temps(p.path for p in posts)
            raise ArchiveError(f"archive write failed: {e}") from e

    @staticmethod
    def may_revise(post: Post, was: Known, limit: int = CHURN_LIMIT) -> bool:
        """Whether :meth:`revise` could take this edit (before it looks at the files):
        the item's own feed, a digest known, and a date or undated rewrites left."""
        if was.pending or was.feed_url not in (None, post.feed_url) or was.digest is None:
            return False
        return _later(post.source_updated, was.source_updated) or was.revisions < limit

    def _keep_archived(self, post: Post, was: Known) -> str | None:
        """Why the archived version must stay, if it must: its file is gone (removed by
        hand; `reindex` forgets it), or the new version has far less text (a feed that
        turned to excerpts must not erase the full texts archived from it)."""
        try:
            size = (self.root / was.path).stat().st_size
        except OSError:
            return f"its post {was.path} is missing; not rewritten (run `aggregator reindex`)"
        if len(post.text.encode()) < size * SHRINK_LIMIT:
            return "the feed now gives a much shorter text; the archived version is kept"
        return None

    @staticmethod
    def _rewritten(post: Post, was: Known, updated: datetime | None) -> Post:
        """``post`` as the file it replaces: its path, first archive time, and ``updated``
        (re-rendered from the text the worker rendered)."""
        said = read_post(post.text, was.path)
        revised = dataclasses.replace(
            said,
            key=was.key,
            feed_url=post.feed_url,
            archived=was.archived,
            updated=updated,
            digest=post.digest,
            source_updated=post.source_updated,
        )
        return dataclasses.replace(revised, text=render_post(revised))

    def _begin(self, posts: Iterable[Post]) -> list[Post]:
        """Step 1 of the write order: the new posts, recorded as pending; their folders."""
        batch = self._unique_new(posts)
        if batch:
            self.state.reserve(batch, durable=not self._one_file_system)
            try:
                for folder in {self._full(p.path).rpartition("/")[0] for p in batch}:
                    os.makedirs(folder, exist_ok=True)
            except OSError as e:
                self._settle(batch)
                raise ArchiveError(f"archive write failed: {e}") from e
        return batch

    def _write_temp(self, post: Post) -> None:
        """Step 2: the post's text in ``.<name>.tmp`` next to where it goes."""
        with open(_temp_name(self._full(post.path)), "wb") as f:
            f.write(post.text.encode())

    def _commit_files(self, batch: list[Post]) -> None:
        """Steps 3 to 5: temp files durable, renamed into place, renames durable."""
        finals = [self._full(p.path) for p in batch]
        temps = [_temp_name(final) for final in finals]
        if not flush_files(self.root, temps) and self._one_file_system:
            self.state.sync()  # (the reservation, which the syncfs would have made durable)
        for temp, final in zip(temps, finals, strict=True):
            os.replace(temp, final)
        for folder in {final.rpartition("/")[0] for final in finals}:
            fsync_path(folder)

    def _end(self, batch: list[Post]) -> list[Post]:
        """Step 6: the posts marked done."""
        self.state.confirm(p.key for p in batch)
        return batch

    def _settle(self, batch: list[Post]) -> None:
        """After a failed write, as recovery would: keep what is in place, forget the rest."""
        done = [p.key for p in batch if os.path.exists(self._full(p.path))]
        self._drop_temps(p.path for p in batch)
        with contextlib.suppress(ArchiveError):
            self.state.confirm(done)
            self.state.forget(p.key for p in batch if p.key not in set(done))

    def _drop_temps(self, paths: Iterable[str]) -> None:
        """Remove the temp files of these posts' paths, where there are any."""
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(_temp_name(self._full(path)))

    def new_posts(self, posts: Iterable[Post]) -> list[Post]:
        """The posts of items not archived yet (neither their key nor an alias known),
        the first of each key."""
        candidates = list(posts)
        seen = self.state.known_keys(k for p in candidates for k in (p.key, *p.aliases))
        fresh = []
        for post in candidates:
            if post.key not in seen and seen.isdisjoint(post.aliases):
                seen.add(post.key)
                fresh.append(post)
        return fresh

    def _unique_new(self, posts: Iterable[Post]) -> list[Post]:
        """Posts whose key is not archived yet, first of each key; paths made unique."""
        fresh = self.new_posts(posts)
        taken = self.state.paths_taken(p.path for p in fresh)
        batch = [self._free_path(post, taken) for post in fresh]
        return batch

    def _full(self, path: str) -> str:
        return f"{self._root}/{path}"

    def _free_path(self, post: Post, taken: set[str]) -> Post:
        """``post``, renamed with a longer hash if its file name is already used."""
        if post.path in taken or os.path.exists(self._full(post.path)):
            longer = post_path(post.archived, post.title, post.key, hash_chars=16)
            if (
                longer in taken
                or self.state.paths_taken([longer])
                or os.path.exists(self._full(longer))
            ):
                raise ArchiveError(f"{self.root / longer}: already exists for another item")
            post = dataclasses.replace(post, path=longer)
        taken.add(post.path)
        return post

    # Reading -------------------------------------------------------------------------

    def read_post(self, path: str) -> Post:
        """Read one post file back (used by publish and reindex)."""
        return load_post(self.root, path)

    def post_paths(self) -> Iterator[str]:
        """Every post file under ``_posts/``, relative to the archive, in order."""
        yield from _walk(self.root / POSTS_DIR, POSTS_DIR)

    def reindex(self, names: dict[str, str]) -> tuple[int, list[str]]:
        """Rebuild the item index from the posts; ``names`` maps source name → feed URL.

        Returns the number of items indexed and the problems met (unreadable posts,
        duplicates of a key already seen, which are left on disk but not indexed).
        """
        records: dict[str, ItemRecord] = {}
        problems: list[str] = []
        self.media_used, self.media_known = set(), True
        for path in self.post_paths():
            try:
                post = self.read_post(path)
            except ArchiveError as e:
                problems.append(str(e))
                self.media_known = False  # what it refers to is not known
                continue
            for kept in _kept_files(post):
                self.media_used.add(kept)
                if not (self.root / kept.lstrip("/")).is_file():
                    problems.append(f"{path}: refers to {kept}, which is not in the archive")
            key = post.key
            if key in records:
                problems.append(f"{path}: duplicate of {records[key].path}")
                continue
            records[key] = ItemRecord(
                key=key,
                feed_url=names.get(post.author),
                title=post.title,
                path=path,
                published=post.published,
                archived=post.archived.astimezone(UTC),
                author=post.author,
                link=post.link,
                placed=post.placed,
            )
        self.state.replace_items(records.values())
        return len(records), problems


def _kept_files(post: Post) -> set[str]:
    """The files of the archive's ``media/`` folder the post refers to."""
    urls = [post.image or "", *(m.url for m in (*post.media, *post.enclosures))]
    found = {u for u in urls if LOCAL_MEDIA.fullmatch(u)}
    if "/media/" in post.content:
        found.update(LOCAL_MEDIA.findall(post.content))
    return found


def _later(new: datetime | None, old: datetime | None) -> bool:
    return new is not None and (old is None or new > old)


def _walk(folder: Path, relative: str) -> Iterator[str]:
    """The ``*.md`` files under ``folder`` (not hidden ones), sorted, lazily."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise ArchiveError(f"cannot list {folder}: {e.strerror or e}") from e
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), f"{relative}/{entry.name}")
        elif entry.name.endswith(".md"):
            yield f"{relative}/{entry.name}"
