"""The daemon: every feed on its own schedule (APScheduler), feeds.yaml reloaded live,
the merged feed served over HTTP, a watchdog, and a clean stop on SIGTERM/SIGINT.

When each feed is polled is decided by :mod:`aggregator.lifecycle` (pure, tested with a
fake clock); APScheduler only fires the timers. Whatever happens during a poll, the feed
gets a next poll; the watchdog checks that every feed has one that the clock can reach,
retries what failed (storing feed statuses, publishing) and keeps ``/healthz`` honest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from aggregator.archive import Archive, lock_archive, publish_due
from aggregator.config import load_config
from aggregator.control import MAX_REQUEST, listen
from aggregator.control import socket_path as control_path
from aggregator.errors import AggregatorError, ConfigError, ConfigUnreadable
from aggregator.fetch import make_client
from aggregator.health import CONFIG, INDEX, PUBLISH, Problems
from aggregator.lifecycle import (
    CLOCK_SLACK,
    LOCAL_RETRY,
    Observation,
    after_edit,
    clock_went_back,
    display_name,
    first_polls,
    is_gone,
    planned_poll,
    stray,
)
from aggregator.metrics import Metrics
from aggregator.models import Config, FeedSource, FeedStatus, Outcome, format_time
from aggregator.pipeline import Clock, FeedResult, Poller, fetch_settings, utc_now
from aggregator.publish import publish
from aggregator.serve import Site, bind, make_server, quiet_accept_errors, raise_open_file_limit
from aggregator.site import config_tags
from aggregator.timing import START_SPREAD

log = logging.getLogger(__name__)

GRACE_SECONDS = 20.0  # how long a stop waits for polls in flight
PUBLISH_DELAY = 1.0  # coalesce the publishes of feeds that finish together
PUBLISH_RETRY, PUBLISH_RETRY_MAX = 5.0, 300.0  # a failed publish is retried: 5 s, 10 s, ..., 5 min
WATCHDOG_EVERY = 30.0


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
        watchdog_every: float = WATCHDOG_EVERY,
        start_spread: float = START_SPREAD,
        publish_retry: float = PUBLISH_RETRY,
    ) -> None:
        self.config = config
        self._sources = {f.url: f for f in config.feeds}
        self.host = host or config.host
        self.port = config.port if port is None else port
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 -- jitter, not secrets
        self.transport = transport
        self.watch_every = watch_every  # seconds between looks at feeds.yaml
        self.watchdog_every = watchdog_every
        self.start_spread = start_spread  # seconds over which the first polls are spread
        self.publish_retry = publish_retry  # first pause after a failed publish, then doubled
        self.metrics = Metrics()
        self.ready = asyncio.Event()  # set once it serves and its feeds are scheduled
        self._broken: str | None = None  # why it stopped on its own
        self.problems = Problems()
        self._stopping = asyncio.Event()
        self._reload = asyncio.Event()
        self._publish_wanted = asyncio.Event()
        self._polling: set[str] = set()  # feeds being polled now
        self._submitted: set[str] = set()  # feeds whose timer fired, poll not started yet
        self._in_flight: set[asyncio.Task[None]] = set()
        self._waiters: dict[str, list[asyncio.Future[FeedResult]]] = {}  # poll_now's

    def run(self) -> int:
        return asyncio.run(self._main())

    async def _main(self) -> int:
        raise_open_file_limit()
        asyncio.get_running_loop().set_exception_handler(quiet_accept_errors)
        with lock_archive(self.config.archive), Archive(self.config.archive) as archive:
            archive.prepare(self.config.feeds, self.clock(), check=True)
            self.archive = archive
            sock = bind(self.host, self.port)
            async with make_client(fetch_settings(self.config), self.transport) as client:
                self.poller = Poller(self.config, archive, client, self.clock, rng=self.rng)
                self.site = Site(
                    self.config, archive.state, self.metrics, self.clock,
                    statuses=lambda: self.poller.statuses, problems=self.problems.current,
                )  # fmt: skip
                server = make_server(self.site)
                self.scheduler = AsyncIOScheduler(timezone=UTC)
                self.scheduler.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)
                self.scheduler.start()
                if publish_due(archive):
                    self._publish_wanted.set()
                plan = first_polls(
                    self.poller.statuses, self.config.feeds, self.clock(), self.start_spread
                )
                for url, when in plan.items():
                    self._schedule(url, when)
                self._install_signals()
                control = await self._open_control(archive.root)
                tasks = [
                    self._supervised(server.serve(sockets=[sock]), "the web server"),
                    self._supervised(self._watch(), "the feeds.yaml watcher"),
                    self._supervised(self._watchdog(), "the watchdog"),
                    self._supervised(self._publisher(), "the publisher"),
                ]
                address = sock.getsockname()
                log.info(
                    "running pid=%d feeds=%d serving=http://%s:%d/ archive=%s",
                    os.getpid(), len(self.config.feeds), address[0], address[1], archive.root,
                )  # fmt: skip
                self.address = (str(address[0]), int(address[1]))
                self.ready.set()
                await self._stopping.wait()
                if self._in_flight:
                    log.info("stopping: waiting for %d polls in flight", len(self._in_flight))
                self.scheduler.pause()  # shutdown() would cancel the polls in flight
                if control is not None:
                    control.close()
                    with contextlib.suppress(OSError):
                        os.unlink(control_path(archive.root))
                for task in tasks[1:]:
                    task.cancel()
                await asyncio.gather(*tasks[1:], return_exceptions=True)
                await self._drain()
                self.scheduler.shutdown(wait=False)
                await self.poller.shutdown()
                if self._publish_wanted.is_set():
                    self._publish()
                server.should_exit = True
                await asyncio.gather(tasks[0], return_exceptions=True)
        if self._broken:
            log.error("stopped: %s", self._broken)
            return 1
        log.info("stopped")
        return 0

    def _supervised(self, work: Coroutine[Any, Any, object], what: str) -> asyncio.Task[object]:
        """A task of the daemon's own: if it ends before the daemon stops, the daemon stops
        (exit status 1, so that a supervisor restarts it) rather than run without it."""
        task = asyncio.create_task(work)

        def ended(task: asyncio.Task[object]) -> None:
            if self._stopping.is_set() or task.cancelled():
                return
            error = task.exception()
            log.error("%s stopped unexpectedly", what, exc_info=error)
            self._broken = f"{what} stopped unexpectedly: {error!r}"
            self._stopping.set()

        task.add_done_callback(ended)
        return task

    # Signals and stopping ------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)

    def stop(self) -> None:
        self._stopping.set()

    async def _drain(self) -> None:
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
        self.scheduler.add_job(
            self._poll_job,
            DateTrigger(run_date=when),
            args=[url],
            id=url,
            replace_existing=True,
            misfire_grace_time=None,
            coalesce=True,
        )

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        """A timer fired: its poll is on its way, though its task has not started yet."""
        self._submitted.add(event.job_id)

    def _unschedule(self, url: str) -> None:
        if self.scheduler.get_job(url) is not None:
            self.scheduler.remove_job(url)

    async def _poll_job(self, url: str) -> None:
        """One feed's poll. Whatever happens, the feed leaves with its next poll planned."""
        self._submitted.discard(url)
        source = self._sources.get(url)
        if source is None or self._stopping.is_set() or url in self._polling:
            return
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        self._polling.add(url)
        before = self.poller.statuses.get(url)
        result: FeedResult | None = None
        try:
            result = await self.poller.poll_feed(source)
        except asyncio.CancelledError:
            if self._stopping.is_set():  # abandoned at stop: planned again at the next start
                return
            raise
        except Exception as e:  # poll_feed never raises; if it did, the feed still goes on
            log.exception("feed=%s url=%s internal error", source.name, url)
            error = f"internal error: {type(e).__name__}: {e}"
            status = self.poller.record(source, Observation(Outcome.ERROR, error=error))
            result = FeedResult(url, display_name(source, status), status, error=error)
        finally:
            self._polling.discard(url)
            self._in_flight.discard(task)
            self._plan_next(url, source, before)
        for waiter in self._waiters.pop(url, []):
            if not waiter.done():
                waiter.set_result(result)
        if self.poller.damage is not None:
            await self._repair_index()
        self._index_health()
        if result is not None:
            self.metrics.observe(result)
            if result.new or result.updated:
                self._publish_wanted.set()

    async def poll_now(self, urls: list[str]) -> AsyncIterator[FeedResult]:
        """Poll these feeds now, whatever their schedule or back-off (a poll in flight
        counts), and yield each result as it comes; :class:`AggregatorError` if the daemon
        stops first."""
        loop = asyncio.get_running_loop()
        waiting: dict[asyncio.Future[FeedResult], str] = {}
        for url in urls:
            waiter: asyncio.Future[FeedResult] = loop.create_future()
            self._waiters.setdefault(url, []).append(waiter)
            waiting[waiter] = url
            if url not in self._polling:
                self._schedule(url, self.clock())
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        try:
            while waiting:
                watched: list[asyncio.Future[Any]] = [*waiting, stopping]
                done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    raise AggregatorError("the daemon is stopping")
                for finished in done:
                    del waiting[finished]
                    yield finished.result()
        finally:
            stopping.cancel()
            for waiter, url in waiting.items():
                with contextlib.suppress(KeyError, ValueError):
                    self._waiters[url].remove(waiter)

    async def _open_control(self, root: Path) -> asyncio.Server | None:
        """Listen on the control socket (see :mod:`aggregator.control`); a daemon that
        cannot still runs (`poll` and `refresh` then say the archive is in use)."""
        try:
            sock = listen(root)
        except OSError as e:
            log.warning(
                "no control socket at %s (%s): `poll` and `refresh` cannot ask this daemon",
                control_path(root), e.strerror or e,
            )  # fmt: skip
            return None
        return await asyncio.start_unix_server(self._answer, sock=sock, limit=MAX_REQUEST)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request on the control socket: poll the feeds it names, answer each."""

        async def say(answer: dict[str, Any]) -> None:
            writer.write(json.dumps(answer, ensure_ascii=False).encode() + b"\n")
            await writer.drain()

        try:
            try:
                asked = json.loads(await reader.readline()).get("poll")
                urls = list(self._sources) if asked is None else [str(u) for u in asked]
            except (ValueError, AttributeError, TypeError, asyncio.LimitOverrunError):
                await say({"refused": 'not a request: send {"poll": [URL, ...] | null}'})
                return
            unknown = [u for u in urls if u not in self._sources]
            if unknown:
                await say({"refused": "not in feeds.yaml: " + ", ".join(unknown)})
                return
            log.info("polling %d feeds now, as asked on the control socket", len(urls))
            try:
                async for r in self.poll_now(urls):
                    await say(
                        {"url": r.url, "name": r.name, "outcome": str(r.outcome), "new": r.new,
                         "updated": r.updated, "error": r.error}
                    )  # fmt: skip
            except AggregatorError as e:
                await say({"refused": str(e)})
                return
            await say({"done": True})
        except ConnectionError:  # the asker went away: the polls go on
            pass
        finally:
            writer.close()

    async def _repair_index(self) -> None:
        """The index was found damaged during a poll: rebuild it now from the posts."""
        try:
            await self.poller.repair_index(self.config.feeds)
        except AggregatorError as e:  # tried again after the next poll
            log.error("cannot rebuild the damaged index: %s", e)
        self.site.reopen(self.archive.state)
        self._publish_wanted.set()

    def _plan_next(self, url: str, polled: FeedSource, before: FeedStatus | None) -> None:
        """Set the timer of the feed's next poll, as its status says."""
        source = self._sources.get(url)
        if source is None or self._stopping.is_set():
            return
        status = self.poller.statuses.get(url)
        if status is before:  # nothing was recorded (a bug): try again, but not at once
            log.error("feed=%s url=%s: its poll left no status; retried later", polled.name, url)
            self._schedule(url, self.clock() + timedelta(seconds=LOCAL_RETRY))
            return
        if source.settings != polled.settings:  # feeds.yaml changed during the poll
            self.poller.plan(source, after_edit(status, source, self.clock()))
            status = self.poller.statuses[url]
        if status is None or status.next_poll is None:  # gone
            self._unschedule(url)
            return
        self._schedule(url, status.next_poll)

    # The watchdog --------------------------------------------------------------------

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.watchdog_every)
            try:
                self.check(self.clock())
            except Exception:  # the watchdog itself must not die
                log.exception("watchdog check failed")

    def check(self, now: datetime) -> list[str]:
        """Make sure every feed will be polled: one without a timer, or with a timer further
        ahead than any wait allows (the clock went back), is polled now. Retry storing
        feed statuses. Returns the URLs rescheduled."""
        fixed = []
        for url, source in self._sources.items():
            status = self.poller.statuses.get(url)
            if url in self._polling or url in self._submitted or is_gone(status, source):
                continue
            job = self.scheduler.get_job(url)
            name = display_name(source, status)
            when = now
            if job is None or job.next_run_time is None:
                log.error("feed=%s url=%s had no poll planned; polling it now", name, url)
            elif clock_went_back(status, now) and job.next_run_time > now:
                assert status is not None and status.last_poll is not None
                when = planned_poll(status, source, now) or now
                if abs((job.next_run_time - when).total_seconds()) < CLOCK_SLACK:
                    continue  # already moved back
                log.warning(
                    "feed=%s url=%s: last polled at %s, after the current time (did the "
                    "clock go back?); next poll moved to %s",
                    name, url, format_time(status.last_poll), format_time(when),
                )  # fmt: skip
            elif stray(job.next_run_time, source, now):
                log.warning(
                    "feed=%s url=%s: next poll %s is further ahead than any wait allows "
                    "(did the clock go back?); polling it now",
                    name, url, job.next_run_time.isoformat(timespec="seconds"),
                )  # fmt: skip
            else:
                continue
            self._schedule(url, when)
            fixed.append(url)
        self.poller.flush()
        self._index_health()
        return fixed

    def _index_health(self) -> None:
        if self.poller.damage is not None:
            self.problems.set(INDEX, f"damaged, and not rebuilt yet: {self.poller.damage}")
        elif self.poller.index_error is not None:
            self.problems.set(INDEX, f"feed statuses cannot be recorded: {self.poller.index_error}")
        else:
            self.problems.clear(INDEX)

    # Publishing ----------------------------------------------------------------------

    async def _publisher(self) -> None:
        """Publish when asked (coalescing requests), and retry a failed publish with
        growing pauses until it succeeds."""
        pause = self.publish_retry
        while True:
            await self._publish_wanted.wait()
            await asyncio.sleep(PUBLISH_DELAY)
            if self._publish():
                pause = self.publish_retry
            else:
                await asyncio.sleep(pause)
                pause = min(pause * 2, PUBLISH_RETRY_MAX)

    def _publish(self) -> bool:
        """Publish now; on failure the request stays, and /healthz says so."""
        self._publish_wanted.clear()
        try:
            publish(self.config, self.archive, self.clock())
        except Exception as e:
            if isinstance(e, AggregatorError):
                log.error("publish failed (retried): %s", e)
            else:
                log.exception("publish failed (retried)")
            self._publish_wanted.set()
            self.metrics.publish_failures.inc()
            self.problems.set(PUBLISH, f"the merged feed could not be written: {e}")
            return False
        self.problems.clear(PUBLISH)
        self.metrics.last_publish.set(time.time())
        return True

    # feeds.yaml ----------------------------------------------------------------------

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.config.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def _watch(self) -> None:
        """Reload feeds.yaml when it changes (checked every second) or on SIGHUP; a file
        that could not be read is read again at the next check."""
        seen, unread = self._signature(), False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), timeout=self.watch_every)
            forced, current = self._reload.is_set(), self._signature()
            self._reload.clear()
            if not (forced or unread or current != seen):
                continue
            try:
                unread = not self.reload()
            except Exception as e:  # a bug in applying it: said once, not every second
                log.exception("applying %s failed", self.config.path)
                self.problems.set(CONFIG, f"applying it failed: {type(e).__name__}: {e}")
                unread = False
            if not unread:
                seen = current

    def reload(self) -> bool:
        """Apply feeds.yaml as it is now; an invalid file changes nothing. Returns False
        when the file could not be read (then it is worth trying again)."""
        try:
            new = load_config(self.config.path)
        except ConfigUnreadable as e:
            if CONFIG not in self.problems.current():
                log.error("%s; still running on its last valid version, retrying", e)
            self.problems.set(CONFIG, f"{e}; running on its last valid version")
            return False
        except ConfigError as e:
            log.error("%s is invalid; still running on its last valid version:", self.config.path)
            for problem in e.problems:
                log.error("  %s", problem)
            self.problems.set(
                CONFIG, f"{self.config.path} is invalid ({e.problems[0]}); running on its last "
                "valid version",
            )  # fmt: skip
            return True
        self.problems.clear(CONFIG)
        self.reconfigure(new)
        return True

    def reconfigure(self, new: Config) -> None:
        """Run on ``new`` from now on: its collaborators told, its feeds (re)scheduled."""
        old, now = self.config, self.clock()
        if new.archive != old.archive:
            log.warning("archive moved to %s in feeds.yaml: restart to use it", new.archive)
            new = replace(new, archive=old.archive)
        if (new.host, new.port, new.workers) != (old.host, old.port, old.workers):
            log.warning("serve address or workers changed in feeds.yaml: restart to use them")
        self.config = new
        self._sources = {f.url: f for f in new.feeds}
        self.poller.reconfigure(new)
        self.site.reconfigure(new)
        before = {f.url: f for f in old.feeds}
        for url in before.keys() - self._sources.keys():
            self._unschedule(url)
            log.info("feed removed: url=%s (its posts stay)", url)
            for waiter in self._waiters.pop(url, []):  # asked for on the control socket
                if not waiter.done():
                    waiter.set_exception(AggregatorError(f"{url} left feeds.yaml"))
        for url, source in self._sources.items():
            if url not in before:
                log.info("feed added: url=%s, polling it now", url)
                self._schedule(url, now)
            elif source.settings != before[url].settings:
                when = after_edit(self.poller.statuses.get(url), source, now)
                log.info(
                    "feed changed: url=%s, next poll %s", url, when.isoformat(timespec="seconds")
                )
                self.poller.plan(source, when)
                if url not in self._polling:  # (asked for now: polled now)
                    self._schedule(url, now if self._waiters.get(url) else when)
        if (
            new.title, new.link, new.description, new.max_items, config_tags(new),
            new.podcast, new.tag_podcasts,
        ) != (
            old.title, old.link, old.description, old.max_items, config_tags(old),
            old.podcast, old.tag_podcasts,
        ):  # fmt: skip
            self._publish_wanted.set()  # the feeds' headers, the tag feeds and the site's data
        log.info("reloaded %s: %d feeds", new.path, len(new.feeds))
