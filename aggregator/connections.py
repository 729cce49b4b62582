"""The kept-alive HTTP/1.1 connections to one origin, for httpx's client.

httpx's own transport reaches the network through httpcore and anyio, and that costs
about 1.4 ms of CPU a request: a pass of 200 feeds answering 304 spent 0.29 s in it.
This transport speaks HTTP/1.1 with h11 (the parser httpcore uses) over an asyncio
protocol, and does the same in 0.18 s. It keeps what the client relies on: the client's
connect and read timeouts (a request is small enough to go into the socket's buffer at
once), httpx's exceptions (with the OS error as their cause), TLS with the given context
(hostname checked, SNI), a body handed over piece by piece as it arrives (reading paused
while it waits), and a connection reused only when its previous answer was read to its
end and nothing has arrived on it since. Proxies are left to httpx's transport.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from typing import cast

import h11
import httpx

READ_SIZE = 64 * 1024  # bytes asked of the socket at a time (httpcore's figure)
MAX_HEAD = 100 * 1024  # an answer's status line and headers (httpcore's figure)


class _Connection(asyncio.Protocol):
    """One connection (TCP, or TLS over it): what arrived is kept until h11 asks for it,
    and reading pauses while more than two reads' worth waits (a big download does not
    pile up in memory)."""

    _transport: asyncio.Transport  # (set by connection_made, before anything else is called)

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.idle_since = 0.0
        self._received = bytearray()
        self._ended = False  # the server closed (or the connection broke)
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._received += data
        if len(self._received) > 2 * READ_SIZE and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> None:
        self._ended = True
        self._wake()  # (returning None lets a TCP transport close itself; TLS closes anyway)

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def reusable(self, now: float, expiry: float) -> bool:
        """Idle and sound: nothing arrived since its last answer (a stray byte, or a
        server's "408 Request Timeout" before it closes), not closed by the server, and
        not idle too long (a server closes idle connections after a while of its own,
        and a request sent just then would be lost)."""
        return (
            now - self.idle_since < expiry
            and not self._received
            and not self._ended
            and not self._transport.is_closing()
        )

    def send(self, data: bytes) -> None:
        """Hand ``data`` to the transport. A request is a few hundred bytes: it goes into
        the socket's buffer at once (a server that never reads it is caught by the read
        timeout)."""
        if self._transport.is_closing():
            raise ConnectionResetError("the connection closed before the request was sent")
        self._transport.write(data)

    def close(self) -> None:
        """Closed at once: nothing is pending (the answer is read, or abandoned)."""
        self._transport.abort()

    async def _read(self) -> bytes:
        """What arrived (at least a byte), or b"" once the server has closed."""
        while not self._received and not self._ended:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if not self._received and self._error is not None:
            raise self._error
        data = bytes(self._received)
        self._received.clear()
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        return data

    async def next_event(self, request: httpx.Request, timeout: float | None) -> object:
        """The next thing h11 makes of the answer, reading as much as it needs."""
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                raise httpx.RemoteProtocolError(str(e), request=request) from e
            if event is not h11.NEED_DATA:
                return event
            try:
                async with asyncio.timeout(timeout):
                    data = await self._read()
            except TimeoutError:
                raise httpx.ReadTimeout("timed out reading the answer", request=request) from None
            except OSError as e:
                raise httpx.ReadError(str(e) or type(e).__name__, request=request) from e
            if not data and self.h11.their_state is h11.SEND_RESPONSE:
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                )
            self.h11.receive_data(data)  # (b"" tells h11 that the server closed)


class Origin(httpx.AsyncBaseTransport):
    """Connections to one scheme, host and port; up to ``keep`` of them kept idle."""

    EXPIRY = 5.0  # seconds an idle connection is kept for (httpx's default too)

    def __init__(self, tls: ssl.SSLContext | None, keep: int = 8) -> None:
        self._tls = tls
        self._keep = keep
        self._idle: collections.deque[_Connection] = collections.deque()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        connection = self._reuse() or await self._connect(request, timeouts.get("connect"))
        try:
            await self._send(connection, request)
            event = None
            while not isinstance(event, h11.Response):  # (a 1xx answer is passed over)
                event = await connection.next_event(request, timeouts.get("read"))
        except BaseException:  # cancelled too: the answer would be the next request's
            connection.close()
            raise
        return httpx.Response(
            event.status_code,
            headers=event.headers.raw_items(),
            stream=_Body(self, connection, request, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": event.reason},
        )

    def _reuse(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used
            if connection.reusable(now, self.EXPIRY):
                return connection
            connection.close()
        return None

    async def _connect(self, request: httpx.Request, timeout: float | None) -> _Connection:
        url = request.url
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        tls = self._tls if url.scheme == "https" else None
        connection = _Connection()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().create_connection(
                    lambda: connection,
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                    happy_eyeballs_delay=0.25,  # (RFC 8305's figure; anyio's too)
                )  # (asyncio sets TCP_NODELAY)
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out connecting", request=request) from None
        except OSError as e:  # (ssl.SSLError and socket.gaierror are OSErrors)
            raise httpx.ConnectError(str(e) or type(e).__name__, request=request) from e
        except UnicodeError as e:  # a name IDNA cannot encode ("a..b", a label too long)
            raise httpx.ConnectError(f"invalid host name {host!r}: {e}", request=request) from e
        return connection

    @staticmethod
    async def _send(connection: _Connection, request: httpx.Request) -> None:
        try:
            data = connection.h11.send(
                h11.Request(
                    method=request.method, target=request.url.raw_path, headers=request.headers.raw
                )
            )
            async for chunk in cast(httpx.AsyncByteStream, request.stream):
                data += connection.h11.send(h11.Data(data=chunk))
            data += connection.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as e:  # a header value with a line break, say
            raise httpx.LocalProtocolError(str(e), request=request) from e
        try:
            connection.send(data)
        except OSError as e:
            raise httpx.WriteError(str(e), request=request) from e

    def release(self, connection: _Connection, complete: bool) -> None:
        """The answer on ``connection`` ended (read to its end if ``complete``): keep the
        connection for the next request, or close it."""
        state = connection.h11
        if (
            complete
            and state.our_state is h11.DONE
            and state.their_state is h11.DONE
            and state.trailing_data == (b"", False)  # (bytes past the answer, or a close)
            and len(self._idle) < self._keep
        ):
            state.start_next_cycle()
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()


class _Body(httpx.AsyncByteStream):
    """An answer's body, as it arrives; its connection goes back to the origin at the
    end, or is closed if the body is left unread (httpx closes every answer's body)."""

    def __init__(
        self, origin: Origin, connection: _Connection, request: httpx.Request, timeout: float | None
    ) -> None:
        self._origin = origin
        self._connection: _Connection | None = connection  # (None once it is given back)
        self._request, self._timeout = request, timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (connection := self._connection) is not None:
            event = await connection.next_event(self._request, self._timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self._end(complete=isinstance(event, h11.EndOfMessage))

    def _end(self, *, complete: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._origin.release(connection, complete)

    async def aclose(self) -> None:
        self._end(complete=False)
