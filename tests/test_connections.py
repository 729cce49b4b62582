"""The HTTP/1.1 connections of the fetch, against servers that misbehave at the socket.

Each test scripts a loopback server connection by connection and checks what a poll
relies on: the right answer, or a FetchError that says what went wrong; a connection
kept only when it can carry the next request; nothing left open.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from aggregator.connections import Origin
from aggregator.errors import FetchError
from aggregator.fetch import FetchSettings, default_user_agent, fetch_feed, make_client
from aggregator.models import Fetched, NotModified, Validators
from tests.farm import rss

FEED = rss([{"title": "a", "link": "http://ex.com/a"}])
SETTINGS = FetchSettings(user_agent=default_user_agent("https://mine.example/"), timeout=2.0)
VALIDATORS = Validators('"v1"')

# A connection's script: it reads the requests and writes what it likes; ``n`` counts the
# connections the server accepted, from 0.
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


def answer(status: int = 200, body: bytes = FEED, extra: str = "") -> bytes:
    reason = {200: "OK", 304: "Not Modified"}.get(status, "Other")
    head = f'HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\nETag: "v1"\r\n{extra}'
    return head.encode() + b"\r\n" + body


async def request_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def conditional(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    """A sound server: every request of the connection answered, 304 to the validator."""
    while True:
        head = await request_head(reader)
        writer.write(answer(304, b"") if b'If-None-Match: "v1"' in head else answer())
        await writer.drain()


def copies_over_connections(script: Script, times: int, connections: int) -> None:
    """``times`` fetches from a server running ``script`` each get the feed whole, over
    ``connections`` connections in all."""

    async def go() -> None:
        async with serving(script) as server, client() as c:
            for _ in range(times):  # (no validators: the whole feed each time)
                got = await fetch_feed(c, server.url, Validators(), SETTINGS)
                assert isinstance(got, Fetched) and got.status == 200 and got.content == FEED
            assert server.connections == connections

    run(go())


class Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0  # accepted so far
        self.url = ""
        self.handlers: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n, self.connections = self.connections, self.connections + 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await self.script(reader, writer, n)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up, or the test is over
        finally:
            writer.close()


@asynccontextmanager
async def serving(script: Script, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(script)
    listening = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=tls)
    port = listening.sockets[0].getsockname()[1]
    server.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/feed"
    try:
        yield server
    finally:
        listening.close()
        for task in server.handlers:  # (scripts that would serve for ever)
            task.cancel()
        await asyncio.gather(*server.handlers, return_exceptions=True)
        await listening.wait_closed()


@asynccontextmanager
async def client(settings: FetchSettings = SETTINGS) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(settings) as c:
        yield c


def run(coroutine: Awaitable[None]) -> None:
    """Runs the test's coroutine and fails on any socket or transport left unclosed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        asyncio.run(coroutine)  # type: ignore[arg-type]
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    """A server that closes kept-alive connections (its keep-alive timeout) costs the
    next poll a new connection, not an error."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await request_head(reader)
        writer.write(answer())
        await writer.drain()  # then closed: an idle connection the server drops

    async def go() -> None:
        async with serving(script) as server, client() as c:
            first = await fetch_feed(c, server.url, Validators(), SETTINGS)
            await asyncio.sleep(0.1)  # the close reaches the client
            second = await fetch_feed(c, server.url, Validators(), SETTINGS)
            assert isinstance(first, Fetched) and isinstance(second, Fetched)
            assert second.content == FEED and server.connections == 2

    run(go())


def test_kept_alive_connections_carry_the_next_requests() -> None:
    async def go() -> None:
        async with serving(conditional) as server, client() as c:
            answers = [await fetch_feed(c, server.url, VALIDATORS, SETTINGS) for _ in range(5)]
            assert all(isinstance(a, NotModified) for a in answers)
            assert server.connections == 1

    run(go())


def test_a_connection_idle_too_long_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past a few seconds idle a server may close the connection at any moment, maybe
    just as a request is sent on it: such a connection is closed rather than reused."""
    monkeypatch.setattr(Origin, "EXPIRY", 1.0)

    async def go() -> None:
        async with serving(conditional) as server, client() as c:
            for pause in (0, 0.05, 1.3, 0.05):
                await asyncio.sleep(pause)
                assert isinstance(
                    await fetch_feed(c, server.url, VALIDATORS, SETTINGS), NotModified
                )
            assert server.connections == 2  # (a new one after the long pause only)

    run(go())


def test_connection_close_and_a_body_ended_by_the_close_are_read_then_dropped() -> None:
    """`Connection: close`, and an HTTP/1.0-style body with neither length nor chunks,
    each end their connection: the next request opens another."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await request_head(reader)
            if n == 0:
                writer.write(answer(extra="Connection: close\r\n"))
            elif n == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\n\r\n" + FEED)
            else:
                writer.write(answer())
            await writer.drain()
            if n == 0:  # the client must not wait for the close to end this answer
                await reader.read()
            if n < 2:  # (the second answer ends with the close)
                return

    copies_over_connections(script, 3, 3)


@pytest.mark.parametrize(
    ("late", "closes"),
    [
        (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", True),
        (b"\r\n", False),
    ],
    ids=["408-then-close", "a-stray-byte"],
)
def test_bytes_arriving_on_an_idle_connection_make_it_unusable(late: bytes, closes: bool) -> None:
    """A server that answers, then writes to the idle connection (its "408 Request
    Timeout" before it closes, or a stray byte): the next request goes on a new
    connection and gets its own answer, not those bytes."""

    written = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await request_head(reader)
            writer.write(answer())
            await writer.drain()
            if n == 0:
                await asyncio.sleep(0.05)
                writer.write(late)
                await writer.drain()
                written.set()
                if closes:
                    return
                await asyncio.sleep(10)  # (it still holds the connection open)

    async def go() -> None:
        async with serving(script) as server, client() as c:
            first = await fetch_feed(c, server.url, Validators(), SETTINGS)
            await written.wait()
            await asyncio.sleep(0.05)  # (the event loop hands the late bytes over)
            second = await fetch_feed(c, server.url, Validators(), SETTINGS)
            assert isinstance(first, Fetched) and isinstance(second, Fetched)
            assert second.content == FEED and server.connections == 2

    run(go())


def test_a_host_name_that_cannot_be_encoded_is_a_connect_error() -> None:
    """A name IDNA cannot encode (an empty or a 64-letter label: a feed's own URL, or a
    redirect to it) fails its fetch with a reason that names it, not an internal error."""

    async def go() -> None:
        async with client() as c:
            for host in ("a..example", "a" * 64 + ".example"):
                with pytest.raises(FetchError, match=f"invalid host name '{host}'"):
                    await fetch_feed(c, f"http://{host}/feed", Validators(), SETTINGS)

    run(go())


def test_chunks_and_an_informational_answer_before_the_real_one() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await request_head(reader)
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(FEED), 100):
                piece = FEED[i : i + 100]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")

    copies_over_connections(script, 2, 1)


def test_bytes_past_the_answer_cannot_become_the_next_answer() -> None:
    """A server that writes more than its Content-Length (here a whole second answer)
    has that ignored, and its connection is not used again: the next request gets its
    own answer."""
    smuggled = answer(body=b"<rss><channel><title>smuggled</title></channel></rss>")

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await request_head(reader)
            writer.write(answer() + (smuggled if n == 0 else b""))
            await writer.drain()

    copies_over_connections(script, 2, 2)


def test_a_big_body_arrives_whole() -> None:
    """A body far bigger than what the connection holds before it pauses reading (two
    reads' worth) arrives whole: reading resumes as the client takes it."""
    big = bytes(range(256)) * (12 * 1024)  # 3 MiB

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await request_head(reader)
        writer.write(answer(body=big))
        await writer.drain()

    async def go() -> None:
        async with serving(script) as server, client() as c:
            got = await fetch_feed(c, server.url, Validators(), SETTINGS)
            assert isinstance(got, Fetched) and got.content == big

    run(go())


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (b"", "Server disconnected without sending a response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n<rss>", "without sending complete"),
        (b"HELLO THERE\r\n\r\n", "RemoteProtocolError"),
        (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 200_000, "RemoteProtocolError"),
    ],
    ids=["nothing", "cut-short", "not-http", "endless-headers"],
)
def test_a_broken_answer_is_an_error_that_says_how(sent: bytes, reason: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await request_head(reader)
        writer.write(sent)
        await writer.drain()

    async def go() -> None:
        async with serving(script) as server, client() as c:
            with pytest.raises(FetchError, match=reason) as raised:
                await fetch_feed(c, server.url, Validators(), SETTINGS)
            assert raised.value.url == server.url

    run(go())


def test_timeouts_name_what_was_slow() -> None:
    """The read timeout (here 0.5 s) counts between pieces of the answer; a deadline cut
    leaves nothing open and the next fetch gets a connection of its own."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await request_head(reader)
        if n == 0:
            await asyncio.sleep(10)  # no answer at all
        elif n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            while True:  # a body that never ends within the deadline
                writer.write(b"<")
                await writer.drain()
                await asyncio.sleep(0.2)
        else:
            writer.write(answer())
            await writer.drain()

    short = FetchSettings(user_agent=SETTINGS.user_agent, timeout=0.5, deadline=1.5)

    async def go() -> None:
        async with serving(script) as server, client(short) as c:
            with pytest.raises(FetchError, match=r"timed out \(ReadTimeout\)"):
                await fetch_feed(c, server.url, Validators(), short)
            with pytest.raises(FetchError, match=r"no complete answer within 1\.5 s"):
                await fetch_feed(c, server.url, Validators(), short)
            got = await fetch_feed(c, server.url, Validators(), short)
            assert isinstance(got, Fetched) and server.connections == 3

    run(go())


def test_an_abandoned_body_closes_its_connection() -> None:
    """A body over the size limit is left unread: its connection is closed at once, not
    kept with the rest of the body in it."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await request_head(reader)
            writer.write(answer(body=FEED * 200 if n == 0 else FEED))
            await writer.drain()

    small = FetchSettings(user_agent=SETTINGS.user_agent, max_bytes=len(FEED) * 10)

    async def go() -> None:
        async with serving(script) as server, client() as c:
            with pytest.raises(FetchError, match="larger than"):
                await fetch_feed(c, server.url, Validators(), small)
            got = await fetch_feed(c, server.url, Validators(), small)
            assert isinstance(got, Fetched) and got.content == FEED
            assert server.connections == 2

    run(go())


def test_tls_checks_the_name_and_keeps_connections_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over TLS the certificate must name the host asked for (here 127.0.0.1, not
    localhost) and a trusted connection is kept alive like a plain one."""
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(served)
    real = httpx.create_ssl_context

    def trusting(**kw: object) -> ssl.SSLContext:
        context = real(**kw)  # type: ignore[arg-type]
        authority.configure_trust(context)
        return context

    monkeypatch.setattr("aggregator.fetch.httpx.create_ssl_context", trusting)

    async def go() -> None:
        async with serving(conditional, tls=served) as server, client() as c:
            answers = [await fetch_feed(c, server.url, VALIDATORS, SETTINGS) for _ in range(3)]
            assert all(isinstance(a, NotModified) for a in answers)
            assert server.connections == 1
            elsewhere = server.url.replace("127.0.0.1", "localhost")
            with pytest.raises(FetchError, match=r"CERTIFICATE_VERIFY_FAILED.*match"):
                await fetch_feed(c, elsewhere, VALIDATORS, SETTINGS)

    run(go())
