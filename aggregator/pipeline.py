"""One pass: every feed of the config fetched, parsed, processed and archived; then publish.

``Poller.poll_feed`` = fetch → parse → process → archive for one source, used by both
``poll`` (:func:`poll_all`, everything once) and the daemon (each feed on its own
schedule). One feed's failure or slowness never touches another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from aggregator.archive import Archive, outputs_missing
from aggregator.errors import AggregatorError, FeedError, FetchError, ParseError
from aggregator.fetch import FetchSettings, default_user_agent, fetch_feed, make_client
from aggregator.models import KEEP_GLOBAL, Config, FeedSource, NotModified, Validators
from aggregator.state import FeedRecord
from aggregator.timing import cache_hint, retry_after
from aggregator.workers import HEAVY_BODY, Job, Workers

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

NEW, UNCHANGED, ERROR = "new", "unchanged", "error"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class FeedResult:
    """How one feed's poll ended."""

    url: str
    name: str
    outcome: str  # new | unchanged | error
    new: int = 0
    error: str | None = None
    status: int | None = None  # the HTTP status, when there was one
    hint: float | None = None  # seconds the server asked us to wait before the next poll
    fetch_seconds: float | None = None
    gone: bool = False  # 410: not polled again until its feeds.yaml entry changes


@dataclass(frozen=True, slots=True)
class PassResult:
    results: tuple[FeedResult, ...]
    published: bool

    @property
    def failed(self) -> list[FeedResult]:
        return [r for r in self.results if r.outcome == ERROR]

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


class Poller:
    """Polls feeds of one config into one archive, with one HTTP client."""

    def __init__(
        self,
        config: Config,
        archive: Archive,
        client: httpx.AsyncClient,
        clock: Clock = utc_now,
        limits: Limits | None = None,
    ) -> None:
        self.config = config
        self.archive = archive
        self.client = client
        self.clock = clock
        self.settings = fetch_settings(config)
        self.limits = limits or Limits(config.max_in_flight, config.max_in_flight_per_host)
        self.workers = Workers(config.workers)
        # Parses queued at once: enough to keep every worker busy, few enough that big
        # documents do not pile up in memory.
        self.parsing = asyncio.Semaphore(max(1, config.workers))
        # A big body costs its worker about ten times its size while it is parsed and
        # rendered; one at a time, so that two workers never peak together.
        self.heavy = asyncio.Semaphore(1)

    def close(self) -> None:
        self.workers.close()

    async def poll_feed(self, source: FeedSource) -> FeedResult:
        """Fetch, parse, process and archive one feed; never raises."""
        started = time.monotonic()
        state = self.archive.state
        known = state.feed(source.url)
        name = source.name or (known.name if known and known.name else _host(source.url))
        try:
            if known and known.gone_settings == source.settings:
                when = known.last_poll.date() if known.last_poll else "earlier"
                reason = f"gone (HTTP 410 on {when}); remove it from {self.config.path}"
                return FeedResult(source.url, name, ERROR, error=reason, status=410, gone=True)
            if known and known.gone_settings:  # its feeds.yaml entry changed: try again
                state.set_gone(source.url, None)
            result = await self._poll(source, known, name)
        except AggregatorError as e:
            result = self._failure(source, name, e)
        except Exception as e:  # a bug: keep the other feeds going, but say so loudly
            log.exception("feed=%s url=%s internal error", name, source.url)
            reason = f"internal error: {type(e).__name__}: {e}"
            result = FeedResult(source.url, name, ERROR, error=reason)
        if result.outcome == ERROR:
            try:
                state.record_poll(
                    source.url, when=self.clock(), outcome=ERROR, error=result.error,
                    http_status=result.status,
                )  # fmt: skip
            except AggregatorError as e:
                log.error("feed=%s url=%s cannot record the error: %s", name, source.url, e)
        log.log(
            logging.WARNING if result.outcome == ERROR else logging.INFO,
            "poll feed=%s url=%s status=%s outcome=%s new=%d elapsed=%.2fs%s",
            result.name, source.url, result.status, result.outcome, result.new,
            time.monotonic() - started, f" reason={result.error}" if result.error else "",
        )  # fmt: skip
        return result

    async def _poll(self, source: FeedSource, record: FeedRecord | None, name: str) -> FeedResult:
        state = self.archive.state
        validators = record.validators if record else Validators()
        target = (record.moved_to if record else None) or source.url
        fetch_started = time.monotonic()
        async with self.limits.slot(target):
            fetched = await fetch_feed(self.client, target, validators, self.settings)
        fetch_seconds = time.monotonic() - fetch_started
        if isinstance(fetched, NotModified):
            changed = fetched.validators if fetched.validators != validators else None
            state.record_poll(
                source.url, when=self.clock(), outcome=UNCHANGED, http_status=304,
                validators=changed,
            )  # fmt: skip
            hint = cache_hint(fetched.headers, None, self.clock())
            return FeedResult(
                source.url, name, UNCHANGED, status=304, hint=hint, fetch_seconds=fetch_seconds
            )
        job = Job(
            content=fetched.content,
            url=fetched.final_url,
            content_type=fetched.content_type,
            feed_url=source.url,
            name=source.name,
            fallback_name=name,
            tags=source.tags,
            archived=self.clock(),
            image_proxy=self.config.image_proxy
            if source.rules.image_proxy == KEEP_GLOBAL
            else source.rules.image_proxy,
            max_entries=self.config.max_entries,
            rules=source.rules,
        )
        heavy = self.heavy if len(fetched.content) > HEAVY_BODY else contextlib.nullcontext()
        try:
            async with heavy, self.parsing:  # the heavy slot first: waiting holds no worker
                prepared = await self.workers.prepare(job)
        except ParseError as e:
            return FeedResult(source.url, name, ERROR, error=e.reason, status=fetched.status)
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
        if fetched.moved_to:
            self._moved(source, fetched.moved_to)
        written = self.archive.store(prepared.posts)
        outcome = NEW if written else UNCHANGED
        state.record_poll(
            source.url, when=self.clock(), outcome=outcome, http_status=fetched.status,
            name=name, validators=fetched.validators,
        )  # fmt: skip
        hint = cache_hint(fetched.headers, prepared.ttl, self.clock())
        return FeedResult(
            source.url, name, outcome, len(written), status=fetched.status, hint=hint,
            fetch_seconds=fetch_seconds,
        )  # fmt: skip

    def _moved(self, source: FeedSource, new_url: str) -> None:
        """A permanent redirect: fetch the new URL from now on, and tell the user."""
        state = self.archive.state
        if (record := state.feed(source.url)) and record.moved_to == new_url:
            return
        state.set_moved(source.url, new_url)
        where = f"{self.config.path}:{source.line}" if source.line else str(self.config.path)
        log.warning(
            "%s: feed %s has moved permanently to %s; polling the new URL, update feeds.yaml",
            where, source.url, new_url,
        )  # fmt: skip

    def _failure(self, source: FeedSource, name: str, error: AggregatorError) -> FeedResult:
        if not isinstance(error, FeedError):
            return FeedResult(source.url, name, ERROR, error=str(error))
        status = error.status if isinstance(error, FetchError) else None
        hint = None
        if isinstance(error, FetchError) and status in (429, 503):
            hint = retry_after(error.retry_after, self.clock())
        gone = status == 410
        if gone:
            self.archive.state.set_gone(source.url, source.settings)
        reason = error.reason + (
            f"; not polled again until {self.config.path} changes it" if gone else ""
        )
        return FeedResult(
            source.url, name, ERROR, error=reason, status=status, hint=hint, gone=gone
        )


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


async def poll_all(
    config: Config,
    archive: Archive,
    *,
    clock: Clock = utc_now,
    transport: httpx.AsyncBaseTransport | None = None,
    on_result: Callable[[FeedResult], None] | None = None,
) -> PassResult:
    """Poll every feed of ``config`` once, then publish if anything changed."""
    # Requests are bounded by Poller's Limits; this bounds bodies waiting to be parsed.
    working = asyncio.Semaphore(2 * config.max_in_flight)
    async with make_client(fetch_settings(config), transport) as client:
        poller = Poller(config, archive, client, clock)

        async def one(source: FeedSource) -> FeedResult:
            async with working:
                result = await poller.poll_feed(source)
            if on_result is not None:
                on_result(result)
            return result

        try:
            results = await asyncio.gather(*(one(s) for s in config.feeds))
        finally:
            poller.close()
    published = False
    if any(r.new for r in results) or outputs_missing(archive.root):
        from aggregator.publish import publish  # noqa: PLC0415 -- not needed on a warm pass

        publish(config, archive, clock())
        published = True
    return PassResult(tuple(results), published)


def run_pass(
    config: Config,
    *,
    clock: Clock = utc_now,
    transport: httpx.AsyncBaseTransport | None = None,
    on_result: Callable[[FeedResult], None] | None = None,
) -> PassResult:
    """Open the archive, settle interrupted writes, poll everything once, publish."""
    with Archive(config.archive) as archive:
        archive.recover()
        return asyncio.run(
            poll_all(config, archive, clock=clock, transport=transport, on_result=on_result)
        )
