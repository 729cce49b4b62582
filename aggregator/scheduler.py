"""The daemon: every feed on its own schedule (APScheduler), feeds.yaml reloaded live,
the merged feed served over HTTP, and a clean stop on SIGTERM/SIGINT.

Scheduling decisions (when is a feed due, when next) are methods that take the time as
an argument, so tests drive them with a fake clock; APScheduler only fires the timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from aggregator.archive import Archive, lock_archive, outputs_missing
from aggregator.config import load_config
from aggregator.errors import AggregatorError, ConfigError
from aggregator.fetch import make_client
from aggregator.metrics import Metrics
from aggregator.models import Config, FeedSource
from aggregator.pipeline import Clock, FeedResult, Limits, Poller, fetch_settings, utc_now
from aggregator.publish import publish
from aggregator.serve import Site, bind, make_server
from aggregator.site import config_tags
from aggregator.state import State
from aggregator.timing import START_SPREAD, next_delay, spread

log = logging.getLogger(__name__)

GRACE_SECONDS = 20.0  # how long a stop waits for polls in flight
PUBLISH_DELAY = 1.0  # coalesce the publishes of feeds that finish together


class Planner:
    """When each feed is polled: at start-up, after a poll, after an edit of feeds.yaml."""

    def __init__(
        self, state: State, rng: random.Random, start_spread: float = START_SPREAD
    ) -> None:
        self.state = state
        self.rng = rng
        self.start_spread = start_spread

    def at_start(self, feeds: tuple[FeedSource, ...], now: datetime) -> dict[str, datetime]:
        """First poll of each feed: its stored next poll if still ahead, else soon.

        Feeds that are due are spread over the first minute; gone feeds are left out.
        """
        records = self.state.feeds()
        plan: dict[str, datetime] = {}
        due = []
        for source in feeds:
            record = records.get(source.url)
            if record and record.gone_settings == source.settings:
                continue
            if record and record.next_poll and record.next_poll > now:
                plan[source.url] = record.next_poll
            else:
                due.append(source)
        for source, when in zip(due, spread(len(due), now, self.start_spread), strict=True):
            plan[source.url] = when
        return plan

    def after_poll(self, source: FeedSource, result: FeedResult, now: datetime) -> datetime | None:
        """The next poll: interval ± jitter, lengthened by hints, backed off on errors."""
        if result.gone:
            return None
        record = self.state.feed(source.url)
        errors = record.error_count if record else 0
        jitter = self.rng.uniform(-1.0, 1.0)
        delay = next_delay(source.interval, errors=errors, hint=result.hint, jitter=jitter)
        return now + timedelta(seconds=delay)

    def after_edit(self, source: FeedSource, now: datetime) -> datetime:
        """A feed whose settings changed: due one (new) interval after its last poll."""
        record = self.state.feed(source.url)
        if record is None or record.last_poll is None or record.gone_settings:
            return now
        return max(now, record.last_poll + timedelta(seconds=source.interval))


class Daemon:
    """``aggregator run``."""

    def __init__(
        self,
        config: Config,
        *,
        host: str | None = None,
        port: int | None = None,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        watch_every: float = 1.0,
        start_spread: float = START_SPREAD,
    ) -> None:
        self.config = config
        self._sources = {f.url: f for f in config.feeds}
        self.host = host or config.host
        self.port = config.port if port is None else port
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 -- jitter, not secrets
        self.transport = transport
        self.watch_every = watch_every
        self.start_spread = start_spread  # seconds over which the first polls are spread
        self.metrics = Metrics()
        self._stopping = asyncio.Event()
        self._reload = asyncio.Event()

    def run(self) -> int:
        return asyncio.run(self._main())

    async def _main(self) -> int:
        self._in_flight: set[asyncio.Task[None]] = set()
        self._publish_task: asyncio.Task[None] | None = None
        self._dirty = False
        with lock_archive(self.config.archive), Archive(self.config.archive) as archive:
            archive.recover()
            self.archive = archive
            self.planner = Planner(archive.state, self.rng, self.start_spread)
            self.site = Site(self.config, archive.state, self.metrics, self.clock)
            sock = bind(self.host, self.port)
            server = make_server(self.site)
            async with make_client(fetch_settings(self.config), self.transport) as client:
                self.client = client
                self.poller = Poller(self.config, archive, client, self.clock)
                self.scheduler = AsyncIOScheduler(timezone=UTC)
                self.scheduler.start()
                if outputs_missing(archive.root):
                    self._publish()
                for url, when in self.planner.at_start(self.config.feeds, self.clock()).items():
                    self._schedule(url, when)
                self._install_signals()
                served = asyncio.create_task(server.serve(sockets=[sock]))
                watcher = asyncio.create_task(self._watch())
                address = sock.getsockname()
                log.info(
                    "running pid=%d feeds=%d serving=http://%s:%d/ archive=%s",
                    os.getpid(), len(self.config.feeds), address[0], address[1], archive.root,
                )  # fmt: skip
                await self._stopping.wait()
                log.info("stopping: no new polls; waiting for %d in flight", len(self._in_flight))
                self.scheduler.pause()  # shutdown() would cancel the polls in flight
                watcher.cancel()
                await self._drain()
                self.scheduler.shutdown(wait=False)
                self.poller.close()
                if self._dirty:
                    self._publish()
                server.should_exit = True
                await served
        log.info("stopped")
        return 0

    # Signals and stopping ------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)

    def stop(self) -> None:
        self._stopping.set()

    async def _drain(self) -> None:
        if self._publish_task is not None:
            self._publish_task.cancel()
        if not self._in_flight:
            return
        _, late = await asyncio.wait(set(self._in_flight), timeout=GRACE_SECONDS)
        for task in late:
            task.cancel()
        if late:
            log.warning(
                "stopping: abandoned %d polls still fetching after %gs", len(late), GRACE_SECONDS
            )
            await asyncio.wait(late)

    # Polling -------------------------------------------------------------------------

    def _schedule(self, url: str, when: datetime) -> None:
        self.archive.state.set_next_poll(url, when)
        self.scheduler.add_job(
            self._poll_job,
            DateTrigger(run_date=when),
            args=[url],
            id=url,
            replace_existing=True,
            misfire_grace_time=None,
            coalesce=True,
        )

    def _unschedule(self, url: str) -> None:
        if self.scheduler.get_job(url) is not None:
            self.scheduler.remove_job(url)

    async def _poll_job(self, url: str) -> None:
        source = self._sources.get(url)
        if source is None or self._stopping.is_set():
            return
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            result = await self.poller.poll_feed(source)
        finally:
            self._in_flight.discard(task)
        self.metrics.observe(result)
        source = self._sources.get(url, source)  # feeds.yaml may have changed meanwhile
        when = self.planner.after_poll(source, result, self.clock())
        if when is None:
            self.archive.state.set_next_poll(url, None)
        elif not self._stopping.is_set():
            self._schedule(url, when)
        else:
            self.archive.state.set_next_poll(url, when)  # for the next start
        if result.new:
            self._dirty = True
            if self._publish_task is None or self._publish_task.done():
                self._publish_task = asyncio.create_task(self._publish_later())

    async def _publish_later(self) -> None:
        await asyncio.sleep(PUBLISH_DELAY)
        self._publish()

    def _publish(self) -> None:
        self._dirty = False
        try:
            publish(self.config, self.archive, self.clock())
        except AggregatorError as e:
            log.error("publish failed: %s", e)
            return
        self.metrics.last_publish.set(time.time())

    # feeds.yaml ----------------------------------------------------------------------

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.config.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def _watch(self) -> None:
        """Reload feeds.yaml when it changes (checked every second) or on SIGHUP."""
        seen = self._signature()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), timeout=self.watch_every)
            forced, current = self._reload.is_set(), self._signature()
            self._reload.clear()
            if forced or current != seen:
                seen = current
                self.reload()

    def reload(self) -> None:
        """Apply feeds.yaml as it is now; an invalid file changes nothing."""
        try:
            new = load_config(self.config.path)
        except ConfigError as e:
            log.error("%s is invalid; still running on its last valid version:", self.config.path)
            for problem in e.problems:
                log.error("  %s", problem)
            return
        self.apply(new)

    def apply(self, new: Config) -> None:
        old, now = self.config, self.clock()
        if new.archive != old.archive:
            log.warning("archive moved to %s in feeds.yaml: restart to use it", new.archive)
            new = replace(new, archive=old.archive)
        if (new.host, new.port, new.workers) != (old.host, old.port, old.workers):
            log.warning("serve address or workers changed in feeds.yaml: restart to use them")
        self.config = self.site.config = self.poller.config = new
        self._sources = {f.url: f for f in new.feeds}
        self.poller.settings = fetch_settings(new)
        self.client.headers["User-Agent"] = self.poller.settings.user_agent
        if (new.max_in_flight, new.max_in_flight_per_host) != (
            old.max_in_flight,
            old.max_in_flight_per_host,
        ):
            self.poller.limits = Limits(new.max_in_flight, new.max_in_flight_per_host)
        before = {f.url: f for f in old.feeds}
        after = {f.url: f for f in new.feeds}
        for url in before.keys() - after.keys():
            self._unschedule(url)
            log.info("feed removed: url=%s (its posts stay)", url)
        for url, source in after.items():
            if url not in before:
                log.info("feed added: url=%s, polling it now", url)
                self._schedule(url, now)
            elif source.settings != before[url].settings:
                when = self.planner.after_edit(source, now)
                log.info(
                    "feed changed: url=%s, next poll %s", url, when.isoformat(timespec="seconds")
                )
                self._schedule(url, when)
        if (new.title, new.link, new.description, new.max_items, config_tags(new)) != (
            old.title, old.link, old.description, old.max_items, config_tags(old),
        ):  # fmt: skip
            self._publish()  # the feeds' headers, the tag feeds and the site's data
        log.info("reloaded %s: %d feeds", new.path, len(new.feeds))
