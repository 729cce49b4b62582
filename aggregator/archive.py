"""The archive folder: posts written atomically and recorded in the index.

Writing a batch of posts follows an order that a kill at any instant cannot break:

1. record every post as *pending* in the index (one transaction);
2. write each post to ``.<name>.tmp`` in its folder, fsync, rename into place;
3. fsync the folders;
4. mark the posts done (one transaction).

At start-up :meth:`Archive.recover` settles pending rows: a post whose file is in
place is done; one whose file is absent is forgotten, so the next poll archives the
item again. A post is therefore either whole or absent, and never archived twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import frontmatter

from aggregator.errors import ArchiveError
from aggregator.models import Post
from aggregator.process import key_for, post_path
from aggregator.state import ItemRecord, State

log = logging.getLogger(__name__)

STATE_DIR = ".aggregator"
POSTS_DIR = "_posts"


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


def write_file_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file in the same folder, fsync, rename."""
    tmp = _temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ArchiveError(f"cannot write {path}: {e.strerror or e}") from e


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


@dataclass(frozen=True, slots=True)
class StoredPost:
    """A post file read back: its front matter and its HTML content."""

    path: str
    title: str
    link: str
    source: str  # the front matter's ``from``
    author: str
    tags: tuple[str, ...]
    archived: datetime
    published: datetime | None
    content: str  # the HTML inside the post's <div>, without the date line


class Archive:
    """An archive folder and its index. Call :meth:`recover` before writing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = State(root / STATE_DIR / "state.sqlite3")
        ignore = root / STATE_DIR / ".gitignore"
        if not ignore.exists():
            write_file_atomic(ignore, b"# the index is rebuilt by `aggregator reindex`\n*\n")

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
        for key, path in self.state.pending():
            (done if (self.root / path).is_file() else gone).append(key)
            with contextlib.suppress(OSError):
                _temp_path(self.root / path).unlink()
        self.state.confirm(done)
        self.state.forget(gone)
        if done or gone:
            log.warning(
                "recovered interrupted writes: completed=%d discarded=%d", len(done), len(gone)
            )
        return len(done), len(gone)

    def store(self, posts: Iterable[Post]) -> list[Post]:
        """Archive the posts whose key is new; return those written, in order."""
        batch = self._unique_new(posts)
        if not batch:
            return []
        self.state.reserve(batch)
        written: list[Post] = []
        try:
            for post in batch:
                write_file_atomic(self.root / post.path, post.text.encode())
                written.append(post)
            for folder in {(self.root / p.path).parent for p in written}:
                fsync_dir(folder)
        except (ArchiveError, OSError) as e:
            self._settle(batch, written)
            raise ArchiveError(f"archive write failed: {e}") from e
        self.state.confirm(p.key for p in written)
        return written

    def _settle(self, batch: list[Post], written: list[Post]) -> None:
        """After a failed write: keep what is on disk, forget the rest."""
        keys = {p.key for p in written}
        with contextlib.suppress(ArchiveError):
            self.state.confirm(keys)
            self.state.forget(p.key for p in batch if p.key not in keys)

    def _unique_new(self, posts: Iterable[Post]) -> list[Post]:
        """Posts whose key is not archived yet, first of each key; paths made unique."""
        candidates = list(posts)
        seen = self.state.known_keys(p.key for p in candidates)
        batch: list[Post] = []
        paths: set[str] = set()
        for post in candidates:
            if post.key in seen:
                continue
            seen.add(post.key)
            if self._path_taken(post.path, paths):
                longer = post_path(post.archived, post.title, post.key, hash_chars=16)
                if self._path_taken(longer, paths):
                    raise ArchiveError(f"{self.root / longer}: already exists for another item")
                post = dataclasses.replace(post, path=longer)  # noqa: PLW2901
            paths.add(post.path)
            batch.append(post)
        return batch

    def _path_taken(self, path: str, batch_paths: set[str]) -> bool:
        return path in batch_paths or self.state.path_taken(path) or (self.root / path).exists()

    # Reading -------------------------------------------------------------------------

    def read_post(self, path: str) -> StoredPost:
        """Read one post file back (used by publish and reindex)."""
        full = self.root / path
        try:
            text = full.read_text(encoding="utf-8")
            meta, body = _split_front_matter(text)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ArchiveError(f"{full}: unreadable post: {e}") from e
        archived = meta.get("date")
        if not isinstance(archived, datetime):
            raise ArchiveError(f"{full}: front matter has no valid `date`")
        published, content = _split_body(body)
        tags = meta.get("tags") or []
        return StoredPost(
            path=path,
            title=str(meta.get("title") or ""),
            link=_link_line(body) or str(meta.get("from") or ""),
            source=str(meta.get("from") or ""),
            author=str(meta.get("author") or ""),
            tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
            archived=archived if archived.tzinfo else archived.replace(tzinfo=UTC),
            published=published,
            content=content,
        )

    def post_paths(self) -> Iterator[str]:
        """Every post file under ``_posts/``, relative to the archive, sorted."""
        posts = self.root / POSTS_DIR
        for path in sorted(posts.rglob("*.md")):
            if not path.name.startswith("."):
                yield path.relative_to(self.root).as_posix()

    def reindex(self, names: dict[str, str]) -> tuple[int, list[str]]:
        """Rebuild the item index from the posts; ``names`` maps source name → feed URL.

        Returns the number of items indexed and the problems met (unreadable posts,
        duplicates of a key already seen, which are left on disk but not indexed).
        """
        records: dict[str, ItemRecord] = {}
        problems: list[str] = []
        for path in self.post_paths():
            try:
                post = self.read_post(path)
            except ArchiveError as e:
                problems.append(str(e))
                continue
            key = key_for(post.source) if post.source else f"post:{path}"
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
            )
        self.state.replace_items(records.values())
        return len(records), problems


def _split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    post = frontmatter.loads(text)
    if not post.metadata:
        raise ValueError("no front matter")
    return dict(post.metadata), str(post.content)


_DATE_OPEN, _DATE_CLOSE = "<div><i>", "</i></div>"


def _split_body(body: str) -> tuple[datetime | None, str]:
    """The published date and the content inside the post's ``<div>`` block."""
    start = body.find("\n------\n")
    inner = body[start + len("\n------\n") :] if start >= 0 else body
    inner = inner.strip()
    if inner.startswith("<div>\n") and inner.endswith("\n</div>"):
        inner = inner[len("<div>\n") : -len("\n</div>")]
    published = None
    if inner.startswith(_DATE_OPEN) and (end := inner.find(_DATE_CLOSE)) > 0:
        with contextlib.suppress(TypeError, ValueError):
            published = parsedate_to_datetime(inner[len(_DATE_OPEN) : end]).astimezone(UTC)
        if published is not None:
            inner = inner[end + len(_DATE_CLOSE) :]
    return published, inner


def _link_line(body: str) -> str | None:
    """The URL of the post's ``[title](url)`` line."""
    for line in body.splitlines()[:3]:
        if line.startswith("[") and line.endswith(")") and "](" in line:
            return line[line.rindex("](") + 2 : -1]
    return None
