"""Starting the parse workers: it never stalls the event loop (the forkserver's imports
take a fifth of a second, during which fetches go on), every poll waiting for it shares
one start, and a start still under way when the pass ends is ended with it. A poll that
will surely parse starts the forkserver before its own imports. What a worker sends
arrives whole."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.archive import state_path, surely_downloads
from aggregator.models import Episode, FeedStatus, Media, Post, Validators, pickled_by_fields
from aggregator.state import State
from aggregator.workers import Prepared, Workers


class _Pool(Executor):
    """Runs work in this process; remembers being shut down."""

    def __init__(self) -> None:
        self.threads = ThreadPoolExecutor(1)
        self.shut = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self.threads.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.shut = True
        self.threads.shutdown(wait=wait, cancel_futures=cancel_futures)


def test_the_event_loop_runs_while_the_workers_start(monkeypatch: pytest.MonkeyPatch) -> None:
    workers, pool = Workers(2), _Pool()
    looped = threading.Event()
    starts: list[bool] = []

    def start() -> Executor:  # (as the forkserver's imports would, it takes a while)
        starts.append(looped.wait(timeout=10))  # set only if the loop runs meanwhile
        return pool

    monkeypatch.setattr(workers, "_start", start)

    async def scenario() -> list[int]:
        async def meanwhile() -> None:
            await asyncio.sleep(0)
            looped.set()

        first, second, _ = await asyncio.gather(
            workers._run(len, "abc", "u1"), workers._run(len, "de", "u2"), meanwhile()
        )
        await workers.close()
        return [first, second]

    assert asyncio.run(scenario()) == [3, 2]
    assert starts == [True]  # one start for both, and the loop ran during it
    assert pool.shut


def test_a_start_under_way_when_the_pass_ends_is_ended_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workers, pool = Workers(2), _Pool()
    began, release = threading.Event(), threading.Event()

    def start() -> Executor:
        began.set()
        release.wait(timeout=10)
        return pool

    monkeypatch.setattr(workers, "_start", start)

    async def scenario() -> None:
        poll = asyncio.create_task(workers._run(len, "abc", "u"))
        assert await asyncio.to_thread(began.wait, 10)
        poll.cancel()  # the pass is stopped while the workers start
        closing = asyncio.create_task(workers.close())
        await asyncio.sleep(0)  # (close waits for the start)
        release.set()
        await closing

    asyncio.run(scenario())
    assert pool.shut


def test_a_start_that_has_just_ended_when_the_pass_ends_is_ended_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The start is over but has not installed its pool yet when the pass ends."""
    workers, pool = Workers(2), _Pool()
    monkeypatch.setattr(workers, "_start", lambda: pool)

    async def scenario() -> None:
        poll = asyncio.create_task(workers._run(len, "abc", "u"))
        while workers._starting is None or not workers._starting.done():
            await asyncio.sleep(0)
        poll.cancel()
        await workers.close()

    asyncio.run(scenario())
    assert pool.shut


def _index_with(root: Path, *statuses: FeedStatus) -> None:
    state = State(state_path(root))
    try:
        state.save_statuses(statuses)
    finally:
        state.close()


def test_a_pass_surely_parses_when_a_feed_has_nothing_to_ask_conditionally(
    tmp_path: Path,
) -> None:
    root = tmp_path / "archive"
    a, b = "https://a.example/feed", "https://b.example/feed"
    assert surely_downloads(root, [a])  # no index yet: the first pass fetches everything
    polled = datetime(2026, 1, 1, tzinfo=UTC)
    _index_with(
        root,
        FeedStatus(a, validators=Validators(etag='"1"'), last_poll=polled),
        FeedStatus(b, validators=Validators(), last_poll=polled),  # (its server sends none)
    )
    assert not surely_downloads(root, [a])
    assert surely_downloads(root, [a, b])
    assert surely_downloads(root, [a, "https://new.example/feed"])  # never polled


def test_gone_feeds_and_no_feeds_are_no_reason_to_start_the_parsers(tmp_path: Path) -> None:
    """A feed that answered 410 Gone is not asked again (until feeds.yaml changes it):
    it needs no parser, though the index has no validators for it. Neither does a pass
    over no feed at all, even on a new archive."""
    root = tmp_path / "archive"
    assert not surely_downloads(root, [])
    a, gone = "https://a.example/feed", "https://gone.example/feed"
    polled = datetime(2026, 1, 1, tzinfo=UTC)
    _index_with(
        root,
        FeedStatus(a, validators=Validators(last_modified="x"), last_poll=polled),
        FeedStatus(gone, last_poll=polled, http_status=410, gone_settings="{}"),
    )
    assert not surely_downloads(root, [a, gone])
    assert not surely_downloads(root, [])


def test_a_damaged_index_is_left_for_the_pass_to_report(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    state_path(root).parent.mkdir(parents=True)
    state_path(root).write_bytes(b"not a database" * 100)
    assert not surely_downloads(root, ["https://a.example/feed"])


def test_what_a_worker_sends_arrives_whole() -> None:
    """Posts cross from the workers pickled as their fields: every field arrives."""
    moment = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    post = Post(
        key="https://a.example/1", path="_posts/2026-01-02-one.md", feed_url="u", title="t",
        link="https://a.example/1", source="https://a.example/1", published=moment,
        archived=moment, content="<p>c</p>", author="A", tags=("A", "x"), categories=("A",),
        updated=moment, item_authors=("Ann",), item_categories=("c",),
        enclosures=(Media("https://a.example/1.mp3", "audio/mpeg", 123, None, 60),),
        media=(Media("https://a.example/1.jpg", width=1, height=2, medium="image"),),
        image="https://a.example/i.png", episode=Episode(60, 1, 2, "full", False),
        digest="d", source_updated=moment, aliases=("k",), placed=moment,
        text_from="https://a.example/page", unfinished=True, text="---\n",
    )  # fmt: skip
    # (every field away from its default, so that one lost on the way would show)
    assert [f.name for f in dataclasses.fields(Post) if getattr(post, f.name) == f.default] == []
    prepared = Prepared("A", "warning", 30, 1, (post,), 2, "https://a.example/i.ico")
    assert pickle.loads(pickle.dumps(prepared)) == prepared


def test_a_class_of_one_field_crosses_whole_too() -> None:
    @pickled_by_fields
    @dataclasses.dataclass(frozen=True, slots=True)
    class One:
        value: str

    globals()["One"] = One  # (pickle finds a class by its module and name)
    One.__qualname__ = "One"
    assert pickle.loads(pickle.dumps(One("x"))) == One("x")
