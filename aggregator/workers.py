"""The CPU-heavy half of a poll — parse, sanitize, render — on every core.

A :class:`Job` is a fetched body plus what its posts need from the config; the result is
the feed's metadata and one rendered :class:`~aggregator.models.Post` per entry
considered (the newest ``max_entries``), oldest first. The main process then only
dedupes and writes. Jobs run in a pool of worker processes started by a forkserver with
the parsing modules preloaded, or in a thread when ``workers: 0``. None of them outlives
this process (see :mod:`aggregator.lifeline`). The same workers find the article of a
page for feeds with ``full_text`` (:func:`extract`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from aggregator.errors import ParseError
from aggregator.models import Entry, ItemRules, Post, pickled_by_fields

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

    from aggregator.fulltext import PageJob

log = logging.getLogger(__name__)
J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Job:
    content: bytes
    url: str  # where the body came from, after redirects
    content_type: str | None
    feed_url: str  # the feed as feeds.yaml names it
    name: str | None  # the name feeds.yaml gives it
    fallback_name: str  # used when neither feeds.yaml nor the feed names it
    tags: tuple[str, ...]
    archived: datetime
    image_proxy: str | None
    max_entries: int
    rules: ItemRules
    keep_content: bool = False  # the posts keep their HTML (the enricher works on it)


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Prepared:
    name: str  # the source name the posts carry
    warning: str | None  # the feed was ill-formed but readable
    ttl: int | None  # RSS <ttl>, minutes
    entries: int  # entries in the document
    posts: tuple[Post, ...]  # the considered entries, oldest first
    filtered: int = 0  # entries dropped by the feed's include/exclude rules
    icon: str | None = None  # the feed's own icon


def prepare(job: Job) -> Prepared:
    """Parse ``job.content`` and render a post for each entry considered."""
    from aggregator.parsers import parse_feed  # noqa: PLC0415 -- only workers need these
    from aggregator.posts import digest_of, item_identity  # noqa: PLC0415
    from aggregator.process import apply_rules, is_junk, make_post  # noqa: PLC0415

    parsed = parse_feed(job.content, job.url, job.content_type, max_entries=job.max_entries)
    name = job.name or parsed.title or job.fallback_name
    site = parsed.link or job.feed_url
    entries = [e for e in reversed(parsed.entries) if not is_junk(e)]
    newest_date = max((e.published for e in entries if e.published), default=None)
    # What identifies each item and what it says, before the options change its text:
    identities = [(item_identity(e), digest_of(e)) for e in entries]
    shaped = (
        entries if job.rules == ItemRules() else [apply_rules(e, job.rules, name) for e in entries]
    )
    stamps = archive_times(entries, job.archived)
    posts = tuple(
        make_post(
            entry,
            feed_url=job.feed_url,
            name=name,
            tags=job.tags,
            archived=stamp,
            site_link=site,
            image_proxy=job.image_proxy,
            identity=identity,
            digest=digest,
            placed=newest_date,
            keep_content=job.keep_content,
        )
        for entry, (identity, digest), stamp in zip(shaped, identities, stamps, strict=True)
        if entry is not None
    )
    filtered = len(shaped) - len(posts)
    prepared = Prepared(
        name, parsed.warning, parsed.ttl, parsed.total_entries, posts, filtered, parsed.icon
    )
    if len(job.content) > HEAVY_BODY:
        del parsed, shaped
        release_memory()
    return prepared


def archive_times(entries: list[Entry], moment: datetime) -> list[datetime]:
    """When each entry of one poll is archived: ``moment``, but for dated entries older
    than the newest, which are archived a second earlier each, in the order of their own
    dates. A Jekyll site orders posts by their archive time to the second (then by file
    name): so it shows a feed's items newest first when many arrive at once. (Undated
    entries keep ``moment``: the merged feed places them by their archive time.)"""
    dated = sorted(
        (i for i, e in enumerate(entries) if e.published is not None),
        key=lambda i: entries[i].published or moment,
    )
    stamps = [moment] * len(entries)
    for rank, index in enumerate(dated):
        stamps[index] = moment - timedelta(seconds=len(dated) - 1 - rank)
    return stamps


def extract(job: PageJob) -> str | None:
    from aggregator.fulltext import article_html  # noqa: PLC0415 -- only workers need it

    return article_html(job)


HEAVY_BODY = 1024 * 1024  # bytes: a body this big leaves a worker holding ~10× its size


def release_memory() -> None:
    """Hand the memory a big document needed back to the system (glibc keeps freed heap
    otherwise, and two workers holding 150 MiB each would double the footprint)."""
    import ctypes  # noqa: PLC0415
    import ctypes.util  # noqa: PLC0415
    import gc  # noqa: PLC0415

    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


PRELOAD = ["aggregator.lifeline", "aggregator.parsers", "aggregator.process", "aggregator.posts"]


def _context() -> BaseContext:
    import multiprocessing  # noqa: PLC0415 -- not needed on a warm pass

    context = multiprocessing.get_context("forkserver")
    # lifeline first: the forkserver and its workers die with this process, whatever
    # kills it, and leave SIGINT/SIGTERM to it.
    context.set_forkserver_preload(PRELOAD)
    return context


def start_forkserver() -> None:
    """Start the process the workers are forked from, without waiting for it: its imports
    (about 0.2 s) then overlap this process's own. For a pass that will surely parse."""
    from multiprocessing import forkserver  # noqa: PLC0415

    _context()
    forkserver.ensure_running()


class Workers:
    """Runs :func:`prepare` in ``count`` processes (started on first use), or in a thread."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._pool: Executor | None = None
        self._starting: asyncio.Future[Executor] | None = None

    def _start(self) -> Executor:
        """A pool with its first process running. In a thread: starting it waits for the
        forkserver's imports (about 0.2 s), which would stall the event loop; the other
        processes start from the forkserver then ready, in a few milliseconds each."""
        from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

        pool = ProcessPoolExecutor(self.count, mp_context=_context())
        pool.submit(int)  # (the first task starts the first process)
        return pool

    def _started(self, future: asyncio.Future[Executor]) -> None:
        if self._starting is future:
            self._starting = None
            if not future.cancelled() and future.exception() is None:
                self._pool = future.result()

    async def prepare(self, job: Job) -> Prepared:
        return await self._run(prepare, job, job.feed_url)

    async def extract(self, job: PageJob) -> str | None:
        """The article of a page (see :mod:`aggregator.fulltext`)."""
        return await self._run(extract, job, job.url)

    async def _run(self, work: Callable[[J], R], job: J, url: str) -> R:
        if self.count == 0:
            return await asyncio.to_thread(work, job)
        pool = self._pool
        if pool is None:
            if self._starting is None:
                self._starting = asyncio.ensure_future(asyncio.to_thread(self._start))
                self._starting.add_done_callback(self._started)
            pool = await asyncio.shield(self._starting)  # (one start for every waiter)
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, work, job)
        except BrokenExecutor:
            # A worker died (killed, out of memory) on this feed or a neighbour: start afresh.
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise ParseError(
                url, "the parser process died on this document (out of memory?)"
            ) from None

    async def close(self) -> None:
        """End the workers, those of a start under way included."""
        starting, self._starting = self._starting, None  # (its pool is not installed now)
        if starting is not None:
            try:
                self._pool = await asyncio.shield(starting)
            except asyncio.CancelledError:  # (ended when it comes)
                starting.add_done_callback(_shut_down_started)
                raise
            except Exception:  # noqa: S110 -- a start that failed left no pool
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _shut_down_started(start: asyncio.Future[Executor]) -> None:
    if not start.cancelled() and start.exception() is None:
        start.result().shutdown(wait=False, cancel_futures=True)
