"""Faults injected into a running daemon (in this process, its timers driven by the test
with a fake clock) and into single passes. After each, the promise is checked: the feed
is polled again once the fault clears, the merged feed catches up, nothing is archived
twice, no traceback is logged, and /healthz says `degraded` with the reason during the
fault and `ok` after."""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest

import aggregator.archive
import aggregator.config
import aggregator.state
from aggregator.archive import state_path
from aggregator.config import load_config
from aggregator.lifecycle import LOCAL_RETRY
from aggregator.models import Config, FeedSource
from aggregator.pipeline import FeedResult, Poller, run_pass
from aggregator.scheduler import Daemon
from tests.conftest import write_config
from tests.farm import Answer, Farm, rss
from tests.test_scheduler import free_port

ATOM = "{http://www.w3.org/2005/Atom}"
# Far enough ahead that APScheduler (on the real clock) never fires a timer by itself:
# the test fires them, as the clock it controls says.
START = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)


class Clock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def items(prefix: str, n: int) -> list[dict[str, str]]:
    return [
        {"title": f"{prefix} story {i}", "link": f"https://{prefix}.example/{i}"} for i in range(n)
    ]


def make_config(tmp_path: Path, farm: Farm, names: list[str], **top: object) -> Config:
    feeds = [{"url": farm.url(f"/{n}"), "name": f"Feed {n}"} for n in names]
    return load_config(write_config(tmp_path, feeds, workers=0, **top))


@asynccontextmanager
async def running(config: Config, clock: Clock, **options: Any) -> AsyncIterator[Daemon]:
    """The daemon on ``config``, in this event loop; stopped (and checked) at the end."""
    settings: dict[str, Any] = {
        "watch_every": 0.05,
        "watchdog_every": 3600,  # the tests call check() themselves, unless they say
        "start_spread": 0,
        "publish_retry": 0.1,
    }
    daemon = Daemon(
        config, port=free_port(), clock=clock, rng=random.Random(7), **(settings | options)
    )
    task = asyncio.create_task(daemon._main())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait([task, ready], timeout=20, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    assert daemon.ready.is_set(), task.exception() if task.done() else "not ready in 20 s"
    try:
        yield daemon
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, 30) == 0


async def get(
    daemon: Daemon, path: str, headers: dict[str, str | bytes] | None = None
) -> httpx.Response:
    host, port = daemon.address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as http:
        return await http.get(path, headers=headers, timeout=10)


async def healthz(daemon: Daemon) -> dict[str, Any]:
    response = await get(daemon, "/healthz")
    assert response.status_code == 200
    report: dict[str, Any] = response.json()
    return report


async def atom_titles(daemon: Daemon) -> set[str]:
    response = await get(daemon, "/atom.xml")
    if response.status_code != 200:
        return set()
    root = ET.fromstring(response.content)
    return {e.findtext(f"{ATOM}title") or "" for e in root.iter(f"{ATOM}entry")}


async def eventually(check: Callable[[], Any], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def planned(daemon: Daemon, url: str) -> datetime:
    """When the daemon's timer for ``url`` fires (the timer, not what the index says)."""
    job = daemon.scheduler.get_job(url)
    assert job is not None and job.next_run_time is not None, f"no poll planned for {url}"
    when: datetime = job.next_run_time
    return when


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], [
        r.getMessage() for r in caplog.records if r.exc_info
    ]


def run_without_tracebacks(
    scenario: Callable[[], Coroutine[Any, Any, None]], caplog: pytest.LogCaptureFixture
) -> None:
    """Run ``scenario`` in an event loop of its own; no log record may carry a traceback."""
    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    no_tracebacks(caplog)


def post_files(config: Config) -> list[Path]:
    return sorted((config.archive / "_posts").rglob("*.md"))


# Faults at the operating system's edge ----------------------------------------------------


@contextmanager
def disk_full(monkeypatch: pytest.MonkeyPatch, which: Callable[[str], bool]) -> Iterator[None]:
    """Writes of the archive's files whose name ``which`` accepts fail with ENOSPC."""
    real_open = open

    def failing_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if ("w" in mode or "a" in mode) and which(Path(file).name):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(aggregator.archive, "open", failing_open, raising=False)
    try:
        yield
    finally:
        monkeypatch.delattr(aggregator.archive, "open", raising=False)


@contextmanager
def index_locked(config: Config) -> Iterator[None]:
    """Another process holds the index's write lock (an exclusive SQLite transaction)."""
    other = sqlite3.connect(state_path(config.archive), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


# The tests ----------------------------------------------------------------------------------


def test_a_locked_index_delays_a_feed_and_it_catches_up(
    tmp_path: Path, farm: Farm, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(aggregator.state, "BUSY_TIMEOUT_MS", 200)
    farm.routes["/a"] = Answer(200, rss(items("a", 3)))
    config = make_config(tmp_path, farm, ["a"])
    url = config.feeds[0].url
    clock = Clock()

    async def scenario() -> None:
        async with running(config, clock) as daemon:
            assert planned(daemon, url) == START
            with index_locked(config):
                await daemon._poll_job(url)  # the timer fires while the lock is held
                status = daemon.poller.statuses[url]
                assert status.outcome == "error" and status.error and "locked" in status.error
                # Not the feed's fault: retried within minutes, not after a back-off.
                wait = (planned(daemon, url) - START).total_seconds()
                assert 0.9 * LOCAL_RETRY <= wait <= 1.1 * LOCAL_RETRY
                report = await healthz(daemon)
                assert report["status"] == "degraded"
                assert report["problems"]["index"].startswith("feed statuses cannot be recorded")
                assert any("locked" in r for r in report["reasons"])
            clock.advance(LOCAL_RETRY)
            await daemon._poll_job(url)
            assert daemon.poller.statuses[url].outcome == "new"
            await eventually(
                lambda: atom_titles(daemon), "the items in the merged feed"
            )  # published
            assert await atom_titles(daemon) == {f"a story {i}" for i in range(3)}
            assert (await healthz(daemon))["status"] == "ok"
        with aggregator.archive.Archive(config.archive) as archive:  # stored, too
            status = archive.state.status(url)
            assert status is not None and status.outcome == "new"

    run_without_tracebacks(scenario, caplog)
    assert len(post_files(config)) == 3


def test_a_full_disk_while_archiving_leaves_nothing_half_written_and_is_retried(
    tmp_path: Path, farm: Farm, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    farm.routes["/a"] = Answer(200, rss(items("a", 2)))
    config = make_config(tmp_path, farm, ["a"])
    url = config.feeds[0].url
    clock = Clock()

    async def scenario() -> None:
        async with running(config, clock) as daemon:
            with disk_full(monkeypatch, lambda name: name.endswith(".md.tmp")):
                await daemon._poll_job(url)
                status = daemon.poller.statuses[url]
                assert status.error and "No space left on device" in status.error
                assert planned(daemon, url) <= START + timedelta(seconds=1.1 * LOCAL_RETRY)
                assert (await healthz(daemon))["status"] == "degraded"
            assert post_files(config) == []
            assert list(config.archive.rglob("*.tmp")) == []
            clock.advance(LOCAL_RETRY)
            await daemon._poll_job(url)
            await eventually(lambda: atom_titles(daemon), "the merged feed")
            assert await atom_titles(daemon) == {"a story 0", "a story 1"}
            assert (await healthz(daemon))["status"] == "ok"

    run_without_tracebacks(scenario, caplog)
    assert len(post_files(config)) == 2


def test_a_failed_publish_is_retried_until_the_merged_feed_catches_up(
    tmp_path: Path, farm: Farm, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    farm.routes["/a"] = Answer(200, rss(items("a", 2)), {"ETag": '"1"'})
    config = make_config(tmp_path, farm, ["a"])
    url = config.feeds[0].url
    clock = Clock()
    feeds = {".feed.xml.tmp", ".atom.xml.tmp", ".feed.json.tmp"}

    async def scenario() -> None:
        async with running(config, clock) as daemon:
            with disk_full(monkeypatch, lambda name: name in feeds):
                await daemon._poll_job(url)  # the posts are written; the publish is not
                assert len(post_files(config)) == 2
                await eventually(
                    lambda: daemon.metrics.publish_failures._value.get() >= 2, "retries"
                )
                report = await healthz(daemon)
                assert report["status"] == "degraded"
                assert "No space left on device" in report["problems"]["publish"]
                metrics = (await get(daemon, "/metrics")).text
                assert 'aggregator_problem{kind="publish"} 1.0' in metrics
            # No new poll is needed: the pending publish is retried by itself.
            await eventually(lambda: atom_titles(daemon), "the merged feed", 5)
            assert await atom_titles(daemon) == {"a story 0", "a story 1"}
            assert (await healthz(daemon))["status"] == "ok"
        assert len(farm.requests_to("/a")) == 1

    run_without_tracebacks(scenario, caplog)


def test_a_failed_publish_in_a_pass_is_done_by_the_next_pass(
    tmp_path: Path, farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    farm.routes["/a"] = Answer(200, rss(items("a", 2)), {"ETag": '"1"'})
    farm.routes["/b"] = Answer(200, rss(items("b", 1)))
    config = make_config(tmp_path, farm, ["a", "b"])
    with disk_full(monkeypatch, lambda name: name == ".atom.xml.tmp"):
        first = run_pass(config)
    assert first.new == 3 and not first.published
    assert first.publish_error and "No space left on device" in first.publish_error
    # The feeds are unchanged at the next pass (a answers 304), yet it publishes.
    farm.routes["/b"] = Answer(304)
    second = run_pass(config)
    assert second.new == 0 and second.published and second.publish_error is None
    atom = ET.fromstring((config.archive / "atom.xml").read_bytes())
    assert {e.findtext(f"{ATOM}title") for e in atom.iter(f"{ATOM}entry")} == {
        "a story 0",
        "a story 1",
        "b story 0",
    }
    assert not run_pass(config).published  # and then not again


def test_an_exception_escaping_a_poll_still_leaves_the_feed_a_next_poll(
    tmp_path: Path, farm: Farm, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    farm.routes["/a"] = Answer(200, rss(items("a", 1)))
    config = make_config(tmp_path, farm, ["a"])
    url = config.feeds[0].url
    clock = Clock()
    real = Poller.poll_feed

    async def broken(self: Poller, source: object) -> object:
        raise RuntimeError("a bug")

    async def scenario() -> None:
        async with running(config, clock) as daemon:
            monkeypatch.setattr(Poller, "poll_feed", broken)
            await daemon._poll_job(url)
            status = daemon.poller.statuses[url]
            assert status.error == "internal error: RuntimeError: a bug"
            assert planned(daemon, url) > START  # still planned
            report = await healthz(daemon)
            assert report["feeds_in_error"][0]["error"] == "internal error: RuntimeError: a bug"
            monkeypatch.setattr(Poller, "poll_feed", real)
            # The watchdog: a feed that lost its timer (whatever the cause) gets one back.
            daemon.scheduler.remove_job(url)
            assert daemon.check(clock()) == [url]
            assert planned(daemon, url) == clock()
            await daemon._poll_job(url)
            assert daemon.poller.statuses[url].outcome == "new"
            assert daemon.check(clock()) == []

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    bugs = [r for r in caplog.records if r.exc_info]
    assert len(bugs) == 1 and "internal error" in bugs[0].getMessage()  # said loudly, once
    assert "had no poll planned; polling it now" in caplog.text


def test_the_watchdog_runs_by_itself(tmp_path: Path, farm: Farm) -> None:
    farm.routes["/a"] = Answer(200, rss(items("a", 1)))
    config = make_config(tmp_path, farm, ["a"])
    url = config.feeds[0].url
    clock = Clock()

    async def scenario() -> None:
        async with running(config, clock, watchdog_every=0.1) as daemon:
            daemon.scheduler.remove_job(url)  # a timer lost, whatever the cause
            await eventually(lambda: daemon.scheduler.get_job(url), "a timer again", 5)
            assert planned(daemon, url) == clock.now

    asyncio.run(scenario())


def test_a_feed_edited_during_its_poll_is_planned_by_its_new_settings(
    tmp_path: Path, farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    farm.routes["/a"] = Answer(200, rss(items("a", 1)))
    config = make_config(tmp_path, farm, ["a"])
    (source,) = config.feeds
    clock = Clock()
    release = asyncio.Event()
    real = Poller.poll_feed

    async def slow(self: Poller, source: FeedSource) -> FeedResult:
        await release.wait()
        return await real(self, source)

    async def scenario() -> None:
        async with running(config, clock) as daemon:
            monkeypatch.setattr(Poller, "poll_feed", slow)
            polling = asyncio.create_task(daemon._poll_job(source.url))
            await asyncio.sleep(0.1)
            daemon.reconfigure(replace(config, feeds=(replace(source, interval=7200),)))
            release.set()
            await polling
            # Planned from the poll by the new interval (2 h), not the old one (1 h ± 10 %).
            assert planned(daemon, source.url) == clock.now + timedelta(hours=2)

    asyncio.run(scenario())


def test_an_unreadable_feeds_yaml_is_read_again_when_it_can_be(
    tmp_path: Path, farm: Farm, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    farm.routes["/a"] = Answer(200, rss(items("a", 1)))
    farm.routes["/b"] = Answer(200, rss(items("b", 1)))
    config = make_config(tmp_path, farm, ["a"])
    (tmp_path / "next").mkdir()
    with_b = make_config(tmp_path / "next", farm, ["a", "b"])
    clock = Clock()
    real_read = Path.read_bytes

    def too_many_open_files(self: Path) -> bytes:
        if self == config.path:
            raise OSError(errno.EMFILE, "Too many open files", str(self))
        return real_read(self)

    async def scenario() -> None:
        async with running(config, clock) as daemon:
            monkeypatch.setattr(Path, "read_bytes", too_many_open_files)
            config.path.write_bytes(real_read(with_b.path))  # b added while unreadable
            await eventually(lambda: "config" in daemon.problems.current(), "the config problem", 5)
            report = await healthz(daemon)
            assert report["status"] == "degraded"
            assert "Too many open files" in report["problems"]["config"]
            assert daemon.scheduler.get_job(with_b.feeds[1].url) is None
            monkeypatch.setattr(Path, "read_bytes", real_read)  # the file did not change since
            await eventually(
                lambda: daemon.scheduler.get_job(with_b.feeds[1].url), "b scheduled", 5
            )
            assert (await healthz(daemon))["problems"] == {}
            # An invalid edit is a problem too, until the next valid one.
            config.path.write_text(real_read(with_b.path).decode() + "  - url: [broken\n")
            await eventually(lambda: "config" in daemon.problems.current(), "invalid", 5)
            assert "is invalid" in (await healthz(daemon))["problems"]["config"]
            await asyncio.sleep(0.5)  # ten more looks at the unchanged, invalid file
            config.path.write_bytes(real_read(with_b.path))
            await eventually(lambda: not daemon.problems.current(), "valid again", 5)

    run_without_tracebacks(scenario, caplog)
    # Said once each, though the file was looked at 20 times a second.
    assert caplog.text.count("Too many open files; still running on its last valid") == 1
    assert caplog.text.count("is invalid; still running on its last valid version") == 1


def test_a_clock_that_jumped_back_stalls_nothing(
    tmp_path: Path, farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    farm.routes["/a"] = Answer(200, rss(items("a", 1)))
    farm.routes["/b"] = Answer(200, rss(items("b", 1)))
    config = make_config(tmp_path, farm, ["a", "b"])
    a, b = (f.url for f in config.feeds)
    clock = Clock()

    async def ahead() -> None:
        async with running(config, clock) as daemon:
            clock.advance(400 * 86400)  # the clock runs 400 days ahead, polls happen
            await daemon._poll_job(a)
            await daemon._poll_job(b)
            assert planned(daemon, a) > START + timedelta(days=400)
            clock.now = START  # and comes back while the daemon runs
            report = await healthz(daemon)
            assert report["status"] == "degraded"
            assert "further ahead than any wait allows" in report["feeds_overdue"][0]["error"]
            assert sorted(daemon.check(clock())) == sorted([a, b])  # the watchdog
            for url in (a, b):  # each keeps its wait, counted from now
                assert hour_or_so(planned(daemon, url) - START), url
            assert daemon.check(clock()) == []  # and once is enough
            clock.advance(3600)
            await daemon._poll_job(a)
            assert hour_or_so(planned(daemon, a) - clock.now)

    async def restarted() -> None:
        clock.now = START + timedelta(hours=1, minutes=1)
        async with running(config, clock) as daemon:  # b's stored next poll: 400 days away
            assert hour_or_so(planned(daemon, b) - clock.now)  # its wait, from now
            assert planned(daemon, a) > clock.now  # a was polled at the right time: kept

    run_without_tracebacks(ahead, caplog)
    run_without_tracebacks(restarted, caplog)
    assert "did the clock go back?" in caplog.text


def hour_or_so(wait: timedelta) -> bool:
    """An interval of one hour, give or take the 10 % of jitter."""
    return 0.9 * 3600 <= wait.total_seconds() <= 1.1 * 3600


def test_items_archived_under_a_clock_that_ran_ahead_do_not_stay_on_top(
    tmp_path: Path, farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    farm.routes["/a"] = Answer(200, rss(items("a", 2)))
    config = make_config(tmp_path, farm, ["a"])
    run_pass(config, clock=Clock(datetime.now(UTC) + timedelta(days=400)))
    farm.routes["/a"] = Answer(200, rss(items("a", 2) + items("late", 2)))
    with caplog.at_level(logging.WARNING):
        result = run_pass(config)
    assert result.new == 2
    assert "2 items were archived with dates ahead of the clock" in caplog.text
    atom = ET.fromstring((config.archive / "atom.xml").read_bytes())
    titles = [e.findtext(f"{ATOM}title") for e in atom.iter(f"{ATOM}entry")]
    assert set(titles[:2]) == {"late story 0", "late story 1"}  # the newest items lead
    assert set(titles[2:]) == {"a story 0", "a story 1"}


def test_an_item_dated_far_in_the_future_does_not_lead_the_merged_feed(
    tmp_path: Path, farm: Farm
) -> None:
    future = {"title": "from 2099", "link": "https://f.example/1", "pubDate": "Thu, 01 Jan 2099 00:00:00 GMT"}  # fmt: skip
    farm.routes["/a"] = Answer(200, rss([future]))
    config = make_config(tmp_path, farm, ["a"])
    run_pass(config)
    farm.routes["/a"] = Answer(200, rss([future, *items("a", 1)]))
    run_pass(config)
    atom = ET.fromstring((config.archive / "atom.xml").read_bytes())
    entries = list(atom.iter(f"{ATOM}entry"))
    assert [e.findtext(f"{ATOM}title") for e in entries] == ["a story 0", "from 2099"]
    assert not any((e.findtext(f"{ATOM}updated") or "").startswith("2099") for e in entries)


HOSTILE_DATE = "Wed, 01 May 99999999999 19:00:00 GMT"


def test_hostile_http_dates_and_numbers_crash_nothing(
    tmp_path: Path, farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    body = rss(items("a", 1))
    farm.routes["/a"] = Answer(
        200,
        body,
        {
            "Expires": HOSTILE_DATE,
            "Date": "Fri, 31 Dec 9999 23:59:59 -2359",
            "Last-Modified": HOSTILE_DATE,
            "Cache-Control": "max-age=" + "9" * 5000,
        },
    )
    farm.routes["/busy"] = Answer(503, b"", {"Retry-After": HOSTILE_DATE})
    farm.routes["/slow"] = Answer(429, b"", {"Retry-After": "9" * 5000})
    farm.routes["/odd"] = Answer(503, b"", {"Retry-After": "²"})
    config = make_config(tmp_path, farm, ["a", "busy", "slow", "odd"])
    clock = Clock()
    with caplog.at_level(logging.INFO):
        result = run_pass(config, clock=clock)
    no_tracebacks(caplog)
    outcomes = {r.url.rsplit("/", 1)[1]: r for r in result.results}
    assert outcomes["a"].new == 1 and result.published  # the good feed is published
    for name, r in outcomes.items():
        assert r.status.next_poll is not None, name
        assert r.status.next_poll <= START + timedelta(hours=24 * 1.1), name
    assert [r.status.http_status for r in result.failed] == [503, 429, 503]

    # The daemon's own server, asked with an overflowing If-Modified-Since.
    async def scenario() -> None:
        async with running(config, clock) as daemon:
            for header in (HOSTILE_DATE, "Fri, 31 Dec 9999 23:59:59 -2359", "²"):
                value = header.encode("latin-1")
                response = await get(daemon, "/atom.xml", {"If-Modified-Since": value})
                assert response.status_code == 200, header

    asyncio.run(scenario())
