"""The CPU-heavy half of a poll — parse, sanitize, render — on every core.

A :class:`Job` is a fetched body plus what its posts need from the config; the result is
the feed's metadata and one rendered :class:`~aggregator.models.Post` per entry
considered (the newest ``max_entries``), oldest first. The main process then only
dedupes and writes. Jobs run in worker processes forked by the parser host, which has
the parsing modules imported (:mod:`aggregator.host`), or in a thread when ``workers: 0``.
None of them outlives this process (see :mod:`aggregator.lifeline`). The same workers find
the article of a page for feeds with ``full_text`` (:func:`extract`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar, cast

from aggregator.errors import ParseError
from aggregator.models import Entry, ItemRules, Post, pickled_by_fields

if TYPE_CHECKING:
    from aggregator.fulltext import PageJob
    from aggregator.host import Forked

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


class Workers:
    """Runs :func:`prepare` in ``count`` processes (started on first use), or in a thread.

    Each worker is fed through a socket that the event loop itself writes and reads
    (a job's pickle goes down, its result's comes back, framed as multiprocessing's
    connections frame them): no thread of this process stands between them, where a
    process pool's two threads cost the main process a tenth of its CPU in a cold pass.
    A worker that dies fails the jobs it held, and another takes its place.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._crew: list[_Worker] = []
        self._starting: asyncio.Future[list[Launched]] | None = None

    def _start(self, count: int) -> list[Launched]:
        """``count`` worker processes, each with this side of its socket. In a thread:
        the first start waits for the parser host's imports (about 0.2 s), which would
        stall the event loop; a later one takes a few milliseconds."""
        from aggregator.host import fork_workers  # noqa: PLC0415

        return [Launched(*forked) for forked in fork_workers(count)]

    def _started(self, future: asyncio.Future[list[Launched]]) -> None:
        if self._starting is future:
            self._starting = None
            if not future.cancelled() and future.exception() is None:
                loop = asyncio.get_running_loop()
                self._crew += [_Worker(one, loop) for one in future.result()]

    async def prepare(self, job: Job) -> Prepared:
        return await self._run(prepare, job, job.feed_url)

    async def extract(self, job: PageJob) -> str | None:
        """The article of a page (see :mod:`aggregator.fulltext`)."""
        return await self._run(extract, job, job.url)

    async def _run(self, work: Callable[[J], R], job: J, url: str) -> R:
        if self.count == 0:
            return await asyncio.to_thread(work, job)
        self._crew = [w for w in self._crew if w.alive]
        missing = self.count - len(self._crew)
        if missing and self._starting is None:  # (the first start, or a dead one replaced)
            self._starting = asyncio.ensure_future(asyncio.to_thread(self._start, missing))
            self._starting.add_done_callback(self._started)
        if not self._crew and self._starting is not None:
            starting = self._starting
            try:
                await asyncio.shield(starting)  # (one start for every waiter)
            except OSError as e:  # (the host could not be started, or could not fork)
                why = f"the parser processes could not be started: {e.strerror or e}"
                raise ParseError(url, why) from e
            # A start that had just ended when this job came is awaited at once, before
            # its callback has hired its workers: hire them now (once, whoever is first).
            self._started(starting)
            self._crew = [w for w in self._crew if w.alive]
        if not self._crew:  # (they ended as soon as they started)
            raise ParseError(url, "the parser processes could not be started")
        worker = min(self._crew, key=_load)
        try:
            return cast(R, await worker.run(work, job))
        except _Died as e:
            why = (
                "the parser process died on this document (out of memory?)"
                if e.on_this
                else "the parser process died on another document while this one waited"
            )
            raise ParseError(url, why) from None

    async def close(self) -> None:
        """End the workers, those of a start under way included."""
        starting, self._starting = self._starting, None  # (its workers are not hired now)
        crew, self._crew = self._crew, []
        for worker in crew:
            worker.dismiss()
        ending = [w.launched for w in crew]
        if starting is not None:
            try:
                ending += await asyncio.shield(starting)
            except asyncio.CancelledError:  # (those started are ended when they come)
                starting.add_done_callback(_end_started)
                _end_aside(ending)
                raise
            except Exception:  # noqa: S110 -- a start that failed left no worker
                pass
        if ending:
            await asyncio.to_thread(_end, ending)


class Launched:
    """A worker process, and this process's end of the socket it is fed through. (A
    plain class: a dataclass costs a warm pass, which starts no worker, 1.5 ms.)"""

    __slots__ = ("process", "socket")

    def __init__(self, process: Forked, end: socket.socket) -> None:
        self.process = process
        self.socket = end


class _Died(Exception):
    """The worker ended (killed, out of memory) before it answered: while on this job
    (the first it held), or before it began it."""

    def __init__(self, on_this: bool) -> None:
        super().__init__()
        self.on_this = on_this


def _load(worker: _Worker) -> int:
    return len(worker.waiting)


class _Worker:
    """This process's side of one worker: jobs are written to its socket without ever
    blocking the event loop (what the socket cannot take at once waits in ``_outbox``),
    and results are read as they arrive, one future each, in the order of the jobs."""

    def __init__(self, launched: Launched, loop: asyncio.AbstractEventLoop) -> None:
        self.launched = launched
        self.alive = True
        self.waiting: collections.deque[asyncio.Future[object]] = collections.deque()
        self._loop = loop
        self._socket = launched.socket
        self._socket.setblocking(False)
        self._fd = self._socket.fileno()
        self._inbox = bytearray()
        self._outbox: collections.deque[memoryview] = collections.deque()
        loop.add_reader(self._fd, self._readable)

    async def run(self, work: Callable[[J], R], job: J) -> object:
        import pickle  # noqa: PLC0415 -- (2 ms, and a warm pass starts no worker)

        if not self.alive:
            raise _Died(on_this=False)
        message = pickle.dumps((work, job), pickle.HIGHEST_PROTOCOL)
        answer: asyncio.Future[object] = self._loop.create_future()
        self.waiting.append(answer)  # (first: a worker found dead while writing fails it)
        self._outbox.append(memoryview(_header(len(message))))
        self._outbox.append(memoryview(message))
        if len(self._outbox) == 2:  # (nothing was waiting to be written)
            self._writable()
            if self._outbox and self.alive:
                self._loop.add_writer(self._fd, self._writable)
        return await answer

    def _writable(self) -> None:
        while self._outbox:
            try:
                sent = self._socket.send(self._outbox[0])
            except BlockingIOError:
                return
            except OSError:
                self._lost()
                return
            if sent < len(self._outbox[0]):
                self._outbox[0] = self._outbox[0][sent:]
                return
            self._outbox.popleft()
        self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        import pickle  # noqa: PLC0415 -- (see run)

        try:
            data = self._socket.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        self._inbox += data
        while (message := _take_message(self._inbox)) is not None:
            answer = self.waiting.popleft()
            if answer.done():  # (its poll was cancelled meanwhile)
                continue
            try:
                ok, value, trace = pickle.loads(message)  # noqa: S301 -- our own worker's
                if ok:
                    answer.set_result(value)
                else:
                    value.__cause__ = WorkerTraceback(trace)  # (where, in the worker)
                    answer.set_exception(value)
            except Exception as e:  # (unreadable, or StopIteration: its poll reports it)
                if not answer.done():
                    answer.set_exception(RuntimeError(f"a worker's answer: {e!r}"))

    def _lost(self) -> None:
        """The worker ended: every job it held fails, the first as the one it was on."""
        self.hang_up()
        on_this = True
        while self.waiting:
            answer = self.waiting.popleft()
            if not answer.done():
                answer.set_exception(_Died(on_this))
            on_this = False

    def dismiss(self) -> None:
        """Hang up; a job it still holds is cancelled (nobody waits for it any more)."""
        self.hang_up()
        while self.waiting:
            self.waiting.popleft().cancel()

    def hang_up(self) -> None:
        """Stop reading and writing; the worker sees the socket closed and ends."""
        if not self.alive:
            return
        self.alive = False
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._outbox.clear()
        self._socket.close()


_READ_SIZE = 256 * 1024


def _header(size: int) -> bytes:
    """The length that precedes a message, as :class:`multiprocessing.connection.Connection`
    writes it (the worker reads with one)."""
    if size > 0x7FFFFFFF:
        return struct.pack("!i", -1) + struct.pack("!Q", size)
    return struct.pack("!i", size)


def _take_message(inbox: bytearray) -> bytes | None:
    """The first whole message of ``inbox``, removed from it; None until one is whole."""
    if len(inbox) < 4:
        return None
    (size,) = struct.unpack_from("!i", inbox)
    start = 4
    if size == -1:
        if len(inbox) < 12:
            return None
        (size,) = struct.unpack_from("!Q", inbox, 4)
        start = 12
    if len(inbox) < start + size:
        return None
    with memoryview(inbox) as view:
        message = bytes(view[start : start + size])
    del inbox[: start + size]
    return message


def _end(launched: list[Launched]) -> None:
    """Close these workers' sockets and wait for them to end; those still busy with a
    job a second later are stopped (SIGTERM)."""
    for one in launched:
        one.socket.close()
    deadline = time.monotonic() + 1.0
    for one in launched:
        one.process.join(timeout=max(0.0, deadline - time.monotonic()))
    for one in launched:
        if one.process.is_alive():
            one.process.terminate()
            one.process.join()


def _end_aside(launched: list[Launched]) -> None:
    """:func:`_end`, in a thread of the event loop's (it may wait a second)."""
    if launched:
        asyncio.get_running_loop().run_in_executor(None, _end, launched)


def _end_started(start: asyncio.Future[list[Launched]]) -> None:
    if not start.cancelled() and start.exception() is None:
        _end_aside(start.result())


class WorkerTraceback(Exception):
    """Where in the worker an error was raised: the cause of the error it sent back, so
    that a logged bug shows the worker's frames too."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "in the worker:\n" + self.text
