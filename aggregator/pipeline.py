"""One pass: every feed of the config fetched, parsed, processed and archived; then publish.

``Poller.poll_feed`` = fetch → parse → process (→ enrich, for a feed with ``full_text``
or ``media``) → archive for one source, used by both ``poll`` (:func:`poll_all`,
everything once) and the daemon (each feed on its own schedule). One feed's failure or
slowness never touches another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from aggregator.archive import Archive, publish_due
from aggregator.errors import (
    AggregatorError,
    ArchiveError,
    FeedError,
    FetchError,
    IndexDamaged,
    ParseError,
    one_line,
)
from aggregator.fetch import FetchSettings, default_user_agent, fetch_feed, make_client
from aggregator.lifecycle import (
    Observation,
    after_poll,
    display_name,
    gone_reason,
    is_gone,
    with_next_poll,
)
from aggregator.logs import fields
from aggregator.models import (
    KEEP_GLOBAL,
    MEDIA_OFF,
    Config,
    FeedSource,
    FeedStatus,
    NotModified,
    Outcome,
    Post,
    Validators,
)
from aggregator.secrets import scrub
from aggregator.timing import cache_hint, retry_after
from aggregator.workers import HEAVY_BODY, Job, Workers

if TYPE_CHECKING:
    from aggregator.enrich import Enricher

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

NEW, UNCHANGED, ERROR = Outcome.NEW, Outcome.UNCHANGED, Outcome.ERROR


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class FeedResult:
    """How one feed's poll ended: the feed's status after it, and what it did."""

    url: str
    name: str
    status: FeedStatus  # as lifecycle.after_poll decided it
    new: int = 0  # posts archived
    error: str | None = None  # why it failed (or was not polled), one line
    fetch_seconds: float | None = None
    hint: float | None = None  # seconds the server asked us to wait
    updated: int = 0  # posts rewritten for edits at the source

    @property
    def outcome(self) -> Outcome:
        return self.status.outcome or Outcome.ERROR


@dataclass(frozen=True, slots=True)
class PassResult:
    results: tuple[FeedResult, ...]
    published: bool
    skipped: int = 0  # feeds not polled: the pass was interrupted
    publish_error: str | None = None  # the merged feed could not be written

    @property
    def failed(self) -> list[FeedResult]:
        return [r for r in self.results if r.outcome is Outcome.ERROR]

    @property
    def new(self) -> int:
        return sum(r.new for r in self.results)


def fetch_settings(config: Config) -> FetchSettings:
    return FetchSettings(
        user_agent=config.user_agent or default_user_agent(config.link),
        max_bytes=config.max_feed_bytes,
    )


class Limits:
    """At most ``total`` requests in flight, and at most ``per_host`` to any one host."""

    def __init__(self, total: int, per_host: int) -> None:
        self._total = asyncio.Semaphore(total)
        self._hosts: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(per_host)
        )

    @asynccontextmanager
    async def slot(self, url: str) -> AsyncIterator[None]:
        # The host first: a task waiting for a busy host must not hold a global slot.
        async with self._hosts[urlsplit(url).hostname or ""], self._total:
            yield


class _Batches:
    """Stores the posts of the feeds whose parse ends together as one batch of the archive
    (one reservation, one syncfs, one confirmation) instead of a batch a feed: the write
    order's fixed costs are paid once for them all. A feed's posts are stored even if its
    poll is cancelled meanwhile; the first feed of a batch to carry an item gets it, as
    when they are stored one after the other; a batch that fails is tried again a feed
    at a time, so that only a feed whose post cannot be written fails."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._queue: list[tuple[list[Post], asyncio.Future[list[Post]]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def store(self, posts: list[Post]) -> list[Post]:
        """The posts written (those whose item is new), as :meth:`Archive.store`."""
        if not posts:
            return []
        done: asyncio.Future[list[Post]] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieved)
        self._queue.append((posts, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await asyncio.shield(done)

    async def settle(self) -> None:
        """Wait until every queued batch is stored."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write(self) -> None:
        try:
            while self._queue:
                await asyncio.sleep(0)  # the feeds whose parse has just ended join in
                batch, self._queue = self._queue, []
                try:
                    # In a thread: the event loop goes on fetching and handing out parses
                    # while files and the index are written (the GIL is let go meanwhile).
                    outcomes = await asyncio.to_thread(self._store, [p for p, _ in batch])
                except Exception as e:  # (the batch's one feed, or a bug: each one says so)
                    outcomes = [e] * len(batch)
                for (_, done), outcome in zip(batch, outcomes, strict=True):
                    if done.done():
                        continue
                    if isinstance(outcome, Exception):
                        done.set_exception(outcome)
                    else:
                        done.set_result(outcome)
        finally:
            self._writer = None

    def _store(self, batch: list[list[Post]]) -> list[list[Post] | Exception]:
        """What became of each feed's posts: those written, or the error."""
        everything = [post for posts in batch for post in posts]
        new: set[str] = set()  # (the items new before the batch, if it holds several feeds)
        try:
            if len(batch) > 1:
                new = {p.key for p in self.archive.new_posts(everything)}
            written = self.archive.store(everything)
        except Exception as e:  # (an ArchiveError, or a bug: each feed reports it)
            if len(batch) == 1:
                raise
            # each feed alone: a post that cannot be written fails its feed only
            return [self._store_alone(posts, e, new) for posts in batch]
        by_key = {post.key: post for post in written}
        return [
            [w for post in posts if (w := by_key.pop(post.key, None)) is not None]
            for posts in batch
        ]

    def _store_alone(
        self, posts: list[Post], error: Exception, new: set[str]
    ) -> list[Post] | Exception:
        """After a failed batch: the feed's posts on their own. A feed whose new posts the
        batch had put in place before it failed (now known, so not written again) gets
        the batch's error, not a pass with fewer new posts."""
        mine = {p.key for p in posts} & new
        new.difference_update(mine)  # (an item two feeds carry: the first one's)
        try:
            written = self.archive.store(posts)
        except Exception as e:
            return e
        return written if len(written) >= len(mine) else error


def _retrieved(future: asyncio.Future[list[Post]]) -> None:
    """Mark the error of a batch as seen (its feed's poll may have been cancelled)."""
    if not future.cancelled():
        future.exception()


class Poller:
    """Polls feeds of one config into one archive, with one HTTP client.

    Holds every feed's :class:`FeedStatus` (loaded from the index once, then kept in
    memory and stored after each poll): a poll is decided by what the previous one left,
    even when the index cannot be written for a while.
    """

    def __init__(
        self,
        config: Config,
        archive: Archive,
        client: httpx.AsyncClient,
        clock: Clock = utc_now,
        *,
        limits: Limits | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.archive = archive
        self.client = client
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 -- jitter, not secrets
        self.settings = fetch_settings(config)
        self.limits = limits or Limits(config.max_in_flight, config.max_in_flight_per_host)
        self.statuses: dict[str, FeedStatus] = archive.state.statuses()
        self._unsaved: dict[str, FeedStatus] = {}
        self.index_error: str | None = None  # why statuses could not be stored, until they are
        self.damage: IndexDamaged | None = None  # the index was found damaged: repair it
        self._replaced = False  # the damaged index was moved aside; the new one not rebuilt
        self.workers = Workers(config.workers)
        # Parses handed out at once: for each worker, one being parsed and one waiting, so
        # that a worker that finishes starts the next at once rather than after the event
        # loop has seen its result (5 % of a cold pass); few enough that big documents do
        # not pile up in memory. (With no workers, one at a time in a thread.)
        self.parsing = asyncio.Semaphore(2 * config.workers or 1)
        # A big body costs its worker about ten times its size while it is parsed and
        # rendered; one at a time, so that two workers never peak together.
        self.heavy = asyncio.Semaphore(1)
        self.enricher: Enricher | None = None  # made for the first feed that needs it
        self.batches = _Batches(archive)

    def reconfigure(self, config: Config) -> None:
        """Use a new version of feeds.yaml from the next poll on (the workers stay)."""
        old, self.config = self.config, config
        self.settings = fetch_settings(config)
        self.client.headers["User-Agent"] = self.settings.user_agent
        self.enricher = None  # (its settings come from the config)
        limits = (config.max_in_flight, config.max_in_flight_per_host)
        if limits != (old.max_in_flight, old.max_in_flight_per_host):
            self.limits = Limits(*limits)

    async def shutdown(self) -> None:
        """After the last poll: wait until the posts of every poll are stored, then end
        the workers and store the statuses not stored yet."""
        try:
            await self.batches.settle()
        finally:
            try:
                await self.workers.close()
            finally:
                self.flush()

    async def poll_feed(self, source: FeedSource) -> FeedResult:
        """Fetch, parse, process and archive one feed, and record its new status.

        Never raises (but for cancellation): whatever goes wrong becomes the feed's error,
        and the feed always gets a next poll.
        """
        started = time.monotonic()
        previous = self.statuses.get(source.url)
        name = display_name(source, previous)
        if previous is not None and is_gone(previous, source):
            return FeedResult(source.url, name, previous, error=gone_reason(previous))
        (new, updated), fetch_seconds = (0, 0), None
        try:
            if self.damage is not None:  # until it is rebuilt, it cannot tell what is new
                raise ArchiveError(f"not polled: the index must be rebuilt first ({self.damage})")
            seen, (new, updated), fetch_seconds = await self._observe(source, previous)
        except AggregatorError as e:
            seen = self._failure(source, e)
        except Exception as e:  # a bug: keep the other feeds going, but say so loudly
            log.exception("feed=%s url=%s internal error", name, source.url)
            reason = scrub(f"internal error: {type(e).__name__}: {one_line(e, 1000)}")
            seen = Observation(Outcome.ERROR, error=reason)
        status = self.record(source, seen)
        name = display_name(source, status)
        elapsed = time.monotonic() - started
        log.log(
            logging.WARNING if seen.outcome is Outcome.ERROR else logging.INFO,
            "poll feed=%s url=%s status=%s outcome=%s new=%d%s elapsed=%.2fs%s",
            name, source.url, seen.http_status, seen.outcome, new,
            f" updated={updated}" if updated else "",
            elapsed, f" reason={seen.error}" if seen.error else "",
            extra=fields(
                feed=name, url=source.url, status=seen.http_status, outcome=str(seen.outcome),
                new=new, updated=updated, elapsed=round(elapsed, 3), reason=seen.error,
            ),
        )  # fmt: skip
        return FeedResult(
            source.url, name, status, new, seen.error, fetch_seconds=fetch_seconds,
            hint=seen.hint, updated=updated,
        )  # fmt: skip

    def record(self, source: FeedSource, seen: Observation) -> FeedStatus:
        """Decide the feed's status after a poll that saw ``seen``, keep it, and store it
        (or keep it for the next :meth:`flush` if the index cannot be written now)."""
        previous = self.statuses.get(source.url)
        status = after_poll(previous, seen, source, self.clock(), self.rng.uniform(-1.0, 1.0))
        self.statuses[source.url] = status
        self._unsaved[source.url] = status
        self.flush()
        if seen.name and seen.name != (previous.name if previous else None):
            self._adopt(source.url, seen.name)
        return status

    def _adopt(self, url: str, name: str) -> None:
        """A feed's name is (newly) known: items indexed without a feed that carry it are
        the feed's (an index rebuilt from posts knows only their author's name)."""
        try:
            if found := self.archive.state.adopt(url, name):
                log.info("feed=%s url=%s: %d archived items are its own again", name, url, found)
        except AggregatorError as e:  # rare (a locked index): they stay out of its tag feeds
            self._noticed(e)
            log.warning("feed=%s url=%s: cannot give it its archived items: %s", name, url, e)

    def plan(self, source: FeedSource, when: datetime) -> None:
        """Remember a new planned poll for ``source`` (after an edit of feeds.yaml)."""
        status = with_next_poll(self.statuses.get(source.url), source, when)
        self.statuses[source.url] = self._unsaved[source.url] = status
        self.flush()

    def flush(self) -> bool:
        """Store the statuses not stored yet; False (and ``index_error`` set) if the index
        refuses, in which case they are kept and tried again at the next call."""
        if not self._unsaved:
            return True
        try:
            self.archive.state.save_statuses(list(self._unsaved.values()))
        except AggregatorError as e:
            self._noticed(e)
            if self.index_error is None:
                log.error("cannot record feed statuses (kept, and retried): %s", e)
            self.index_error = str(e)
            return False
        self._unsaved.clear()
        if self.index_error is not None:
            log.warning("the index is writable again; feed statuses recorded")
            self.index_error = None
        return True

    async def _observe(
        self, source: FeedSource, previous: FeedStatus | None
    ) -> tuple[Observation, tuple[int, int], float | None]:
        """Poll the feed; return what was seen, the posts archived and the fetch time."""
        validators = previous.validators if previous else Validators()
        target = (previous.moved_to if previous else None) or source.fetch_url
        fetch_started = time.monotonic()
        async with self.limits.slot(target):
            fetched = await fetch_feed(  # (credentials to the configured origin only)
                self.client, target, validators, self.settings, source.access,
                home=source.fetch_url,
            )  # fmt: skip
        fetch_seconds = time.monotonic() - fetch_started
        if isinstance(fetched, NotModified):
            hint = cache_hint(fetched.headers, None, self.clock())
            seen = Observation(
                Outcome.UNCHANGED, http_status=304, hint=hint, validators=fetched.validators
            )
            if source.enriched:
                await self._enricher().retry(source, self._image_proxy(source))
            return seen, (0, 0), fetch_seconds
        proxy = self._image_proxy(source)
        enriching = source.enriched
        job = Job(
            content=fetched.content,
            url=fetched.final_url,
            content_type=fetched.content_type,
            feed_url=source.url,
            name=source.name,
            fallback_name=display_name(source, previous),
            tags=source.tags,
            archived=self.clock(),
            # (a feed that keeps its pictures has them from the archive, not through a proxy)
            image_proxy=None if source.media != MEDIA_OFF else proxy,
            max_entries=self.config.max_entries,
            rules=source.rules,
            keep_content=enriching,
        )
        heavy = self.heavy if len(fetched.content) > HEAVY_BODY else contextlib.nullcontext()
        try:
            async with heavy, self.parsing:  # the heavy slot first: waiting holds no worker
                prepared = await self.workers.prepare(job)
        except ParseError as e:
            seen = Observation(Outcome.ERROR, error=e.reason, http_status=fetched.status)
            return seen, (0, 0), fetch_seconds
        name = prepared.name
        if prepared.warning:
            log.warning("feed=%s url=%s %s", name, source.url, prepared.warning)
        if prepared.filtered:
            log.info(
                "feed=%s url=%s %d entries left out by include/exclude",
                name, source.url, prepared.filtered,
            )  # fmt: skip
        if prepared.entries > len(prepared.posts) + prepared.filtered:
            log.warning(
                "feed=%s url=%s has %d entries; considering the newest %d (max_entries)",
                name, source.url, prepared.entries, len(prepared.posts) + prepared.filtered,
            )  # fmt: skip
        if fetched.moved_to and fetched.moved_to != (previous.moved_to if previous else None):
            where = f"{self.config.path}:{source.line}" if source.line else str(self.config.path)
            log.warning(
                "%s: feed %s has moved permanently to %s; polling the new URL, update feeds.yaml",
                where, source.url, fetched.moved_to,
            )  # fmt: skip
        posts: list[Post] = list(prepared.posts)
        written: list[Post] = []
        try:
            worked: dict[str, bool] = {}
            if enriching:
                posts, worked = await self._enricher().new_posts(source, posts, proxy)
            written = await self.batches.store(posts)
            revised: list[Post] = []
            if source.updates:  # (an item archived just now has no edit to look for)
                new = {post.key for post in written}
                kept = [post for post in posts if post.key not in new]
                revised = self.archive.revise(kept, self.clock())
            if enriching:
                await self._enricher().after_archiving(source, proxy, worked, revised)
        except ArchiveError as e:  # our fault, not the feed's: retried soon (the whole feed,
            self._noticed(e)  # its validators not kept, so that its edits are seen again)
            seen = Observation(
                Outcome.ERROR, error=str(e), http_status=fetched.status, local=True,
                moved_to=fetched.moved_to,
            )  # fmt: skip
            return seen, (len(written), 0), fetch_seconds
        seen = Observation(
            Outcome.NEW if written else Outcome.UNCHANGED,
            http_status=fetched.status,
            hint=cache_hint(fetched.headers, prepared.ttl, self.clock()),
            name=name,
            icon=prepared.icon,
            validators=fetched.validators,
            moved_to=fetched.moved_to,
        )
        return seen, (len(written), len(revised)), fetch_seconds

    def _image_proxy(self, source: FeedSource) -> str | None:
        proxy = source.rules.image_proxy
        return self.config.image_proxy if proxy == KEEP_GLOBAL else proxy

    def _enricher(self) -> Enricher:
        from aggregator.enrich import Enricher  # noqa: PLC0415 -- only for these feeds

        if self.enricher is None:
            self.enricher = Enricher(
                self.client, self.settings, self.archive, self.config.media_limits,
                slot=self.limits.slot, extract=self.workers.extract,
            )  # fmt: skip
        return self.enricher

    def _noticed(self, error: AggregatorError) -> None:
        if isinstance(error, IndexDamaged) and self.damage is None:
            self.damage = error

    async def repair_index(self, feeds: Iterable[FeedSource]) -> None:
        """The index was found damaged: move it aside, store every feed's status in a new
        one (their names tell which posts are whose), and rebuild it from the posts."""
        if self.damage is None:
            return
        await self.batches.settle()  # (no batch is being written while the index is swapped)
        if self.damage is None:  # (repaired meanwhile, by the poll that waited first)
            return
        if not self._replaced:
            self.archive.replace_damaged_index(self.damage)
            self._replaced = True
            self._unsaved = dict(self.statuses)
            self.flush()
        self.archive.rebuild(feeds)
        self.damage, self._replaced = None, False

    def _failure(self, source: FeedSource, error: AggregatorError) -> Observation:
        if not isinstance(error, FeedError):  # the archive or the index: retried soon
            self._noticed(error)
            return Observation(Outcome.ERROR, error=str(error), local=True)
        status = error.status if isinstance(error, FetchError) else None
        hint = None
        if isinstance(error, FetchError) and status in (429, 503):
            hint = retry_after(error.retry_after, self.clock())
        gone = status == 410
        reason = error.reason + (
            f"; not polled again until {self.config.path} changes it" if gone else ""
        )
        return Observation(Outcome.ERROR, error=reason, http_status=status, hint=hint, gone=gone)


async def poll_all(
    config: Config,
    archive: Archive,
    *,
    clock: Clock = utc_now,
    transport: httpx.AsyncBaseTransport | None = None,
    on_result: Callable[[FeedResult], None] | None = None,
    on_start: Callable[[FeedSource], None] | None = None,
    stop: asyncio.Event | None = None,
    only: Collection[str] | None = None,
) -> PassResult:
    """Poll every feed of ``config`` (or those whose URLs are in ``only``) once (until
    ``stop`` is set, if given), then publish if anything changed or an earlier publish
    did not happen."""
    # Requests are bounded by Poller's Limits; this bounds bodies waiting to be parsed.
    working = asyncio.Semaphore(2 * config.max_in_flight)
    async with make_client(fetch_settings(config), transport) as client:
        poller = Poller(config, archive, client, clock)

        async def one(source: FeedSource) -> FeedResult:
            async with working:
                if on_start is not None:
                    on_start(source)
                result = await poller.poll_feed(source)
            if on_result is not None:
                on_result(result)
            return result

        chosen = [s for s in config.feeds if only is None or s.url in only]
        tasks = [asyncio.create_task(one(s)) for s in chosen]
        try:
            await _until_done_or_stopped(tasks, stop)
        finally:
            await poller.shutdown()
        await poller.repair_index(config.feeds)
    results = tuple(t.result() for t in tasks if t.done() and not t.cancelled())
    published, error = False, None
    if any(r.new for r in results) or publish_due(archive):
        from aggregator.publish import publish  # noqa: PLC0415 -- not needed on a warm pass

        try:
            publish(config, archive, clock())
            published = True
        except AggregatorError as e:
            error = str(e)
            log.error("publish failed (the next pass tries again): %s", e)
    return PassResult(results, published, len(tasks) - len(results), error)


async def _until_done_or_stopped(
    tasks: list[asyncio.Task[FeedResult]], stop: asyncio.Event | None
) -> None:
    """Wait for every task, or for ``stop``; then cancel and await the unfinished ones."""
    everything: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
    stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        await asyncio.wait(
            [everything] if stopped is None else [everything, stopped],
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        if stopped is not None:
            stopped.cancel()
        for task in tasks:
            task.cancel()  # nothing for the finished ones
        await everything
    for task in tasks:  # an error poll_feed let through (a bug) is not swallowed
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error


def run_pass(
    config: Config,
    *,
    clock: Clock = utc_now,
    transport: httpx.AsyncBaseTransport | None = None,
    on_result: Callable[[FeedResult], None] | None = None,
    on_start: Callable[[FeedSource], None] | None = None,
    handle_signals: bool = False,
    only: Collection[str] | None = None,
) -> PassResult:
    """Open the archive, make its index fit, poll everything once (or the feeds whose
    URLs are in ``only``), publish.

    ``handle_signals``: SIGINT and SIGTERM stop the pass early: polls in flight are
    abandoned (nothing half-written stays), what was archived is published.
    """
    with Archive(config.archive) as archive:
        archive.prepare(config.feeds, clock())

        async def main() -> PassResult:
            stop = asyncio.Event()
            if handle_signals:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
            return await poll_all(
                config, archive, clock=clock, transport=transport, on_result=on_result,
                on_start=on_start, stop=stop, only=only,
            )  # fmt: skip

        return asyncio.run(main())
