"""The parse workers. Starting them never stalls the event loop (the parser host's imports
take a fifth of a second, during which fetches go on), every poll waiting for it shares
one start, and a start still under way when the pass ends is ended with it. Jobs and
answers of any size cross the workers' sockets whole, in order; a worker that dies fails
its own jobs only and is replaced. On one CPU, a poll that will surely parse starts the
parser host before its own imports. What a worker sends arrives whole.

The workers here are threads of the test running the workers' own loop (``serve``) on the
far end of a socket pair: the sockets, the framing and the event loop's side are those of
a pass; the processes themselves are tested in test_processes.py."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import socket
import struct
import threading
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from aggregator.archive import state_path, surely_downloads
from aggregator.errors import ParseError
from aggregator.host import serve
from aggregator.models import Episode, FeedStatus, Media, Post, Validators, pickled_by_fields
from aggregator.state import State
from aggregator.workers import Launched, Prepared, Workers, _header, _take_message


class _Worker:
    """Stands for a worker process: ``serve`` in a thread, on the far end of a socket."""

    def __init__(self, far: socket.socket) -> None:
        self.far = far  # (kept to be shut down from outside, as a killed worker's is)
        connection = Connection(os.dup(far.fileno()))
        self.thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
        self.thread.start()

    def _serve(self, connection: Connection) -> None:
        try:
            serve(connection)
        except SystemExit:  # (_die: the worker "dies")
            pass
        finally:  # (as a process's end closes its socket)
            connection.close()
            self.far.close()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def terminate(self) -> None:
        raise AssertionError("a worker went on after its socket was closed")


def _crew(count: int) -> list[Launched]:
    launched = []
    for _ in range(count):
        here, there = socket.socketpair()
        launched.append(Launched(_Worker(there), here))  # type: ignore[arg-type]
    return launched


def _hired(monkeypatch: pytest.MonkeyPatch, count: int) -> tuple[Workers, list[Launched]]:
    """Workers whose start hires these thread workers."""
    workers, crew = Workers(count), _crew(count)
    monkeypatch.setattr(workers, "_start", lambda count: crew)
    return workers, crew


def _ended(crew: list[Launched]) -> bool:
    return all(not one.process.is_alive() and one.socket.fileno() == -1 for one in crew)


def _die(text: str) -> int:
    """A job that ends its worker (as the out-of-memory killer would) unless asked not to."""
    if text == "die":
        raise SystemExit
    return len(text)


def _fail(url: str) -> int:
    raise ParseError(url, "not a feed")


def _double(data: bytes) -> bytes:
    return data + data


_GO_ON = threading.Event()


def _wait_then_len(text: str) -> int:
    _GO_ON.wait(timeout=10)
    return len(text)


def test_the_event_loop_runs_while_the_workers_start(monkeypatch: pytest.MonkeyPatch) -> None:
    workers, crew = Workers(2), _crew(2)
    looped = threading.Event()
    starts: list[tuple[int, bool]] = []

    def start(count: int) -> list[Launched]:  # (as the host's imports would, it waits)
        starts.append((count, looped.wait(timeout=10)))  # set only if the loop runs meanwhile
        return crew

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

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == [3, 2]
    assert starts == [(2, True)]  # one start for both, and the loop ran during it
    assert _ended(crew)


def test_a_start_under_way_when_the_pass_ends_is_ended_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workers, crew = Workers(2), _crew(2)
    began, release = threading.Event(), threading.Event()

    def start(count: int) -> list[Launched]:
        began.set()
        release.wait(timeout=10)
        return crew

    monkeypatch.setattr(workers, "_start", start)

    async def scenario() -> None:
        poll = asyncio.create_task(workers._run(len, "abc", "u"))
        assert await asyncio.to_thread(began.wait, 10)
        poll.cancel()  # the pass is stopped while the workers start
        closing = asyncio.create_task(workers.close())
        await asyncio.sleep(0)  # (close waits for the start)
        release.set()
        await closing

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert _ended(crew)


def test_a_start_that_has_just_ended_when_the_pass_ends_is_ended_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The start is over but has not hired its workers yet when the pass ends."""
    workers, crew = _hired(monkeypatch, 2)

    async def scenario() -> None:
        poll = asyncio.create_task(workers._run(len, "abc", "u"))
        while workers._starting is None or not workers._starting.done():
            await asyncio.sleep(0)
        poll.cancel()
        await workers.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert _ended(crew)


def test_jobs_that_come_as_the_start_ends_are_run_by_the_workers_it_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start that has ended but whose callback has not run yet (it hires the workers)
    is awaited at once: its jobs are still run by the workers it started (they failed,
    "could not be started", when a worker was replaced at that moment)."""
    workers, crew = _hired(monkeypatch, 2)
    hire = workers._started
    calls: list[object] = []

    def late(future: asyncio.Future[list[Launched]]) -> None:
        calls.append(future)
        if len(calls) == 1:  # (the start's own callback: the loop has not run it yet)
            asyncio.get_running_loop().call_later(0.2, hire, future)
        else:
            hire(future)

    monkeypatch.setattr(workers, "_started", late)

    async def scenario() -> list[int]:
        try:
            return list(await asyncio.gather(*(workers._run(len, "x" * n, "u") for n in (1, 2))))
        finally:
            await workers.close()

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == [1, 2]
    assert _ended(crew)


def test_workers_that_cannot_be_started_fail_the_feed_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The parser host could not be started, or died at once: the feed fails, saying so."""
    workers = Workers(2)

    def start(count: int) -> list[Launched]:
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(workers, "_start", start)

    async def scenario() -> None:
        try:
            with pytest.raises(ParseError, match="could not be started: Connection reset"):
                await workers._run(len, "abc", "https://a.example/feed")
        finally:
            await workers.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_worker_that_dies_fails_its_own_jobs_and_another_takes_its_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workers = Workers(2)
    crews: list[list[Launched]] = []

    def start(count: int) -> list[Launched]:
        crews.append(_crew(count))
        return crews[-1]

    monkeypatch.setattr(workers, "_start", start)

    _GO_ON.clear()

    async def scenario() -> list[object]:
        dying = asyncio.create_task(workers._run(_die, "die", "https://a.example/feed"))
        other = asyncio.create_task(  # (the other worker's, still at work when one dies)
            workers._run(_wait_then_len, "abcd", "https://b.example/feed")
        )
        queued = asyncio.create_task(  # (behind the dying one, in the same worker)
            workers._run(len, "never", "https://q.example/feed")
        )
        await asyncio.wait([dying])
        _GO_ON.set()
        outcomes = await asyncio.gather(dying, other, queued, return_exceptions=True)
        after = [await workers._run(_die, "x" * n, "u") for n in (1, 2, 3)]
        while workers._starting is not None:  # (the new one starts meanwhile)
            await asyncio.sleep(0.01)
        assert len(workers._crew) == 2  # the one left, and the new one
        after += await asyncio.gather(*(workers._run(_die, "y" * n, "u") for n in (4, 5)))
        await workers.close()
        return [*outcomes, *after]

    died, other, queued, *after = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert isinstance(died, ParseError) and died.url == "https://a.example/feed"
    assert died.reason.startswith("the parser process died on this document")
    assert isinstance(queued, ParseError) and queued.url == "https://q.example/feed"
    assert queued.reason.startswith("the parser process died on another document")
    assert other == 4 and after == [1, 2, 3, 4, 5]
    assert [len(c) for c in crews] == [2, 1]  # the dead one replaced, once
    assert all(_ended(c) for c in crews)


def test_a_worker_found_dead_while_its_job_is_sent_fails_that_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It died, and the event loop has not read its end yet: the job sent to it fails at
    once rather than wait for an answer that cannot come."""
    workers, crew = _hired(monkeypatch, 1)

    async def scenario() -> object:
        assert await workers._run(len, "ab", "u") == 2
        crew[0].process.far.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
        try:  # (no await between: the loop cannot have seen the end)
            return await workers._run(len, "abc", "https://d.example/feed")
        except ParseError as e:
            return e
        finally:
            await workers.close()

    outcome = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert isinstance(outcome, ParseError) and "the parser process died" in outcome.reason
    assert _ended(crew)


def test_a_job_still_held_when_the_workers_end_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing waits for ever on a worker that was sent away."""
    workers, crew = _hired(monkeypatch, 1)
    _GO_ON.clear()

    async def scenario() -> bool:
        held = asyncio.create_task(workers._run(_wait_then_len, "abc", "u"))
        while not workers._crew or not workers._crew[0].waiting:  # (until it is sent)
            await asyncio.sleep(0)
        closing = asyncio.create_task(workers.close())
        await asyncio.sleep(0)
        _GO_ON.set()  # (the worker's job ends; its answer has nowhere to go)
        await closing
        await asyncio.wait([held])
        return held.cancelled()

    assert asyncio.run(asyncio.wait_for(scenario(), 30))
    assert _ended(crew)


def test_jobs_and_answers_of_any_size_cross_whole_and_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bigger than a socket's buffer, several at once to one worker, a failure among them,
    and one whose poll was cancelled: each answer reaches its own job."""
    workers, crew = _hired(monkeypatch, 1)
    big = bytes(range(256)) * 40_000  # 10 MB

    errors: list[dict[str, Any]] = []  # (what the event loop's callbacks raised)

    async def scenario() -> list[Any]:
        asyncio.get_running_loop().set_exception_handler(lambda _, error: errors.append(error))
        cancelled = asyncio.create_task(workers._run(_double, b"gone", "u0"))
        while not workers._crew or not workers._crew[0].waiting:  # (until it is sent)
            await asyncio.sleep(0)
        cancelled.cancel()
        outcomes = await asyncio.gather(
            workers._run(_double, big, "u1"),
            workers._run(_fail, "https://c.example/feed", "u2"),
            workers._run(len, big, "u3"),
            workers._run(_double, b"small", "u4"),
            return_exceptions=True,
        )
        await workers.close()
        return outcomes

    doubled, failed, length, small = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert doubled == big + big and length == len(big) and small == b"smallsmall"
    assert isinstance(failed, ParseError) and failed.reason == "not a feed"
    assert errors == []
    assert _ended(crew)


def _stop(_: object) -> int:
    raise StopIteration  # (a parser bug: next() of an empty iterator)


def _bug(text: str) -> int:
    raise ValueError(f"a bug in the parser: {text}")


def test_a_bug_in_a_worker_comes_back_with_where_it_happened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error, with the worker's own frames as its cause (a logged bug shows them);
    even a StopIteration, which a future refuses, ends its poll rather than hang it."""
    workers, crew = _hired(monkeypatch, 1)

    async def scenario() -> list[Any]:
        outcomes = await asyncio.gather(
            workers._run(_bug, "x", "u1"),
            workers._run(_stop, None, "u2"),
            workers._run(len, "after", "u3"),
            return_exceptions=True,
        )
        await workers.close()
        return outcomes

    bug, stopped, after = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert isinstance(bug, ValueError) and str(bug) == "a bug in the parser: x"
    assert "in _bug" in str(bug.__cause__) and "in serve" in str(bug.__cause__)
    assert isinstance(stopped, RuntimeError) and "StopIteration" in str(stopped)
    assert after == 5
    assert _ended(crew)


@pytest.mark.parametrize("size", [0, 5, 70_000, 2**31])
def test_messages_are_framed_as_multiprocessing_frames_them(size: int) -> None:
    """The worker reads and writes with a multiprocessing Connection: the event loop's
    side frames the same way (the longest form, for 2 GiB and more, checked by its
    header alone)."""
    if size >= 2**31:
        assert _header(size) == struct.pack("!i", -1) + struct.pack("!Q", size)
        inbox = bytearray(struct.pack("!i", -1) + struct.pack("!Q", 3) + b"abcrest")
        assert _take_message(inbox) == b"abc" and inbox == bytearray(b"rest")
        return
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    here, there = socket.socketpair()
    far = Connection(there.detach())
    try:
        far.send_bytes(payload)  # (the worker's framing, read by ours)
        inbox = bytearray()
        while (message := _take_message(inbox)) is None:
            inbox += here.recv(1 << 20)
        assert message == payload and inbox == bytearray()
        here.sendall(_header(size) + payload)  # (ours, read by the worker's)
        assert far.recv_bytes() == payload
    finally:
        here.close()
        far.close()


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
