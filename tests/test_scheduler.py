"""Scheduling with a controlled clock: start-up spreading, persisted next polls, hints,
back-off, 410/301/302 and the request limits. No test waits for minutes."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.archive import Archive
from aggregator.config import load_config
from aggregator.fetch import make_client
from aggregator.lifecycle import after_edit, first_polls
from aggregator.models import Config
from aggregator.pipeline import ERROR, FeedResult, Poller, fetch_settings, run_pass
from aggregator.scheduler import Daemon
from tests.conftest import write_config
from tests.farm import Answer, Farm, Request, rss

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HOUR = 3600
FEED = rss([{"title": "one", "link": "https://ex.com/1"}])


class FakeClock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def config_for(tmp_path: Path, farm: Farm, paths: list[str], **top: object) -> Config:
    return load_config(write_config(tmp_path, [{"url": farm.url(p)} for p in paths], **top))


def poll(config: Config, archive: Archive, clock: FakeClock, url: str) -> FeedResult:
    source = next(f for f in config.feeds if f.url == url)

    async def go() -> FeedResult:
        async with make_client(fetch_settings(config)) as client:
            poller = Poller(config, archive, client, clock)
            try:
                return await poller.poll_feed(source)
            finally:
                await poller.shutdown()  # (its parse workers end here, not with the suite)

    return asyncio.run(go())


def test_due_feeds_are_spread_and_next_polls_survive_a_restart(tmp_path: Path, farm: Farm) -> None:
    for p in ("/a", "/b", "/c"):
        farm.routes[p] = Answer(200, FEED)
    config = config_for(tmp_path, farm, ["/a", "/b", "/c"])
    a, b, c = (f.url for f in config.feeds)
    clock = FakeClock()
    with Archive(config.archive) as archive:
        assert first_polls(archive.state.statuses(), config.feeds, NOW) == {
            a: NOW,
            b: NOW + timedelta(seconds=20),
            c: NOW + timedelta(seconds=40),
        }
        result = poll(config, archive, clock, a)
        when = result.status.next_poll
        assert when is not None and NOW + timedelta(seconds=0.9 * HOUR) <= when <= NOW + timedelta(
            seconds=1.1 * HOUR
        )
    # A restart ten minutes later: a is not due (its stored time stands), b and c are.
    later = NOW + timedelta(minutes=10)
    with Archive(config.archive) as archive:
        plan = first_polls(archive.state.statuses(), config.feeds, later)
    stored = when.replace(microsecond=when.microsecond // 1000 * 1000)  # kept to the millisecond
    assert plan == {a: stored, b: later, c: later + timedelta(seconds=30)}


def test_hints_lengthen_the_wait_and_never_shorten_it(tmp_path: Path, farm: Farm) -> None:
    farm.routes["/long"] = Answer(200, FEED, {"Cache-Control": "max-age=10800"})
    farm.routes["/short"] = Answer(200, FEED, {"Cache-Control": "max-age=60"})
    farm.routes["/ttl"] = Answer(
        200, FEED.replace(b"<description>d</description>", b"<ttl>240</ttl>")
    )
    config = config_for(tmp_path, farm, ["/long", "/short", "/ttl"])
    clock = FakeClock()
    with Archive(config.archive) as archive:
        waits = {}
        for source in config.feeds:
            result = poll(config, archive, clock, source.url)
            when = result.status.next_poll
            assert when is not None
            waits[source.url.rsplit("/", 1)[1]] = (when - NOW).total_seconds() / HOUR
    assert 3 * 0.9 <= waits["long"] <= 3 * 1.1
    assert 0.9 <= waits["short"] <= 1.1
    assert 4 * 0.9 <= waits["ttl"] <= 4 * 1.1


def test_failures_back_off_and_retry_after_is_honoured(tmp_path: Path, farm: Farm) -> None:
    farm.routes["/down"] = Answer(500, b"oops")
    farm.routes["/busy"] = Answer(503, b"busy", {"Retry-After": "18000"})
    farm.routes["/slow-down"] = Answer(429, b"", {"Retry-After": "Wed, 01 May 2024 19:00:00 GMT"})
    config = config_for(tmp_path, farm, ["/down", "/busy", "/slow-down"])
    down, busy, slow = config.feeds
    clock = FakeClock()
    with Archive(config.archive) as archive:
        hours = []
        for _ in range(6):
            result = poll(config, archive, clock, down.url)
            when = result.status.next_poll
            assert when is not None
            hours.append((when - NOW).total_seconds() / HOUR)
        minutes = [5, 15, 45, 135, 405, 1215]  # a first failure is tried again soon
        for got, expected in zip(hours, [m / 60 for m in minutes], strict=True):
            assert expected * 0.9 <= got <= expected * 1.1, hours
        record = archive.state.status(down.url)
        assert record is not None and record.errors_in_a_row == 6 and record.outcome == ERROR

        result = poll(config, archive, clock, busy.url)
        assert result.hint == 18000  # five hours, longer than the 5 min of a first failure
        when = result.status.next_poll
        assert when is not None and 5 * 0.9 <= (when - NOW).total_seconds() / HOUR <= 5 * 1.1

        result = poll(config, archive, clock, slow.url)
        assert result.hint == 7 * HOUR  # the HTTP date form
        # Success resets the back-off.
        farm.routes["/down"] = Answer(200, FEED)
        result = poll(config, archive, clock, down.url)
        when = result.status.next_poll
        assert when is not None and (when - NOW).total_seconds() <= 1.1 * HOUR


def test_gone_feeds_stop_until_their_entry_changes(tmp_path: Path, farm: Farm) -> None:
    farm.routes["/gone"] = Answer(410, b"gone")
    config = config_for(tmp_path, farm, ["/gone"])
    (source,) = config.feeds
    clock = FakeClock()
    with Archive(config.archive) as archive:
        first = poll(config, archive, clock, source.url)
        assert first.status.gone_settings == source.settings and first.status.http_status == 410
        assert first.error == f"HTTP 410 Gone; not polled again until {config.path} changes it"
        assert first.status.next_poll is None
        assert first_polls(archive.state.statuses(), config.feeds, NOW + timedelta(days=3)) == {}
        again = poll(config, archive, clock, source.url)
        assert again.error and again.error.startswith("gone (HTTP 410 on 2024-05-01)")
        assert len(farm.requests_to("/gone")) == 1  # not fetched again
        # The user edits the entry (here: gives it a name): it is polled again.
        edited = replace(source, name="Renamed")
        assert after_edit(archive.state.status(source.url), edited, NOW) == NOW
        farm.routes["/gone"] = Answer(200, FEED)
        back = poll(replace(config, feeds=(edited,)), archive, clock, source.url)
        assert back.outcome == "new" and back.status.gone_settings is None
        assert len(farm.requests_to("/gone")) == 2


@pytest.mark.parametrize("status", [301, 308])
def test_permanent_redirects_move_the_feed(
    tmp_path: Path, farm: Farm, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    farm.routes["/old"] = Answer(status, headers={"Location": "/new"})
    farm.routes["/new"] = Answer(200, FEED)
    config = config_for(tmp_path, farm, ["/old"])
    (source,) = config.feeds
    clock = FakeClock()
    with Archive(config.archive) as archive, caplog.at_level(logging.WARNING):
        assert poll(config, archive, clock, source.url).outcome == "new"
        record = archive.state.status(source.url)
        assert record is not None and record.moved_to == farm.url("/new")
        assert (
            f"{config.path}:{source.line}: feed {source.url} has moved permanently to {farm.url('/new')}"
            in caplog.text
        )
        assert poll(config, archive, clock, source.url).outcome == "unchanged"
    assert len(farm.requests_to("/old")) == 1
    assert len(farm.requests_to("/new")) == 2


@pytest.mark.parametrize("chain", [[302], [307], [301, 302]])
def test_temporary_redirects_keep_the_url(tmp_path: Path, farm: Farm, chain: list[int]) -> None:
    for i, status in enumerate(chain):
        farm.routes[f"/hop{i}"] = Answer(status, headers={"Location": f"/hop{i + 1}"})
    farm.routes[f"/hop{len(chain)}"] = Answer(200, FEED)
    config = config_for(tmp_path, farm, ["/hop0"])
    (source,) = config.feeds
    clock = FakeClock()
    with Archive(config.archive) as archive:
        poll(config, archive, clock, source.url)
        poll(config, archive, clock, source.url)
        record = archive.state.status(source.url)
        assert record is not None and record.moved_to is None
    assert len(farm.requests_to("/hop0")) == 2


class Concurrency:
    """Counts requests in flight, per host and in total, across several farms."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.total = self.total_peak = 0

    def handler(self, host: str):  # type: ignore[no-untyped-def]
        def answer(request: Request) -> Answer:
            with self.lock:
                self.now[host] = self.now.get(host, 0) + 1
                self.total += 1
                self.peak[host] = max(self.peak.get(host, 0), self.now[host])
                self.total_peak = max(self.total_peak, self.total)
            time.sleep(0.25)
            with self.lock:
                self.now[host] -= 1
                self.total -= 1
            return Answer(
                200, rss([{"title": request.path, "link": f"https://{host}{request.path}"}])
            )

        return answer


def test_requests_in_flight_are_limited_per_host_and_in_total(tmp_path: Path) -> None:
    counter = Concurrency()
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    with ExitStack() as stack:
        farms = [stack.enter_context(Farm(h).running()) for h in hosts]
        feeds = []
        for farm, host in zip(farms, hosts, strict=True):
            for i in range(5):
                farm.routes[f"/f{i}"] = counter.handler(host)
                feeds.append({"url": farm.url(f"/f{i}")})
        config = load_config(
            write_config(tmp_path, feeds, max_in_flight=4, max_in_flight_per_host=2)
        )
        result = run_pass(config)
    assert result.new == 15
    assert counter.peak == dict.fromkeys(hosts, 2)
    assert counter.total_peak == 4


def run_daemon(daemon: Daemon, until: object, timeout: float = 15) -> int:
    """Run the daemon in this thread's event loop until ``until()`` holds, then stop it."""

    async def main() -> int:
        task = asyncio.create_task(daemon._main())
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:  # type: ignore[operator]
            await asyncio.sleep(0.05)
            if task.done():
                break
        daemon.stop()
        return await task

    return asyncio.run(main())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_restart_does_not_refetch_feeds_that_are_not_due(tmp_path: Path, farm: Farm) -> None:
    farm.routes["/a"] = Answer(200, FEED)
    config = config_for(tmp_path, farm, ["/a"])
    assert (
        run_daemon(Daemon(config, port=free_port()), lambda: len(farm.requests_to("/a")) == 1) == 0
    )
    with Archive(config.archive) as archive:
        record = archive.state.status(config.feeds[0].url)
    assert record is not None and record.next_poll is not None
    assert record.next_poll - datetime.now(UTC) > timedelta(minutes=50)
    started = time.monotonic()
    assert run_daemon(Daemon(config, port=free_port()), lambda: time.monotonic() - started > 2) == 0
    assert len(farm.requests_to("/a")) == 1
