"""The kept-alive HTTP/1.1 connections to one origin, for httpx's client.

httpx's own transport reaches the network through httpcore and anyio, and that costs
about 1.4 ms of CPU a request: a pass of 200 feeds answering 304 spent 0.29 s in it.
This transport speaks HTTP/1.1 with h11 (the parser httpcore uses) over asyncio's
streams, and does the same in 0.18 s. It keeps what the client relies on: the client's
connect, read and write timeouts, httpx's exceptions (with the OS error as their cause),
TLS with the given context (hostname checked, SNI), a body handed over piece by piece
as it arrives, and connections kept alive only when the previous answer was read to its
end. Proxies are left to httpx's transport.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import cast

import h11
import httpx

READ_SIZE = 64 * 1024  # bytes asked of the socket at a time (httpcore's figure)
MAX_HEAD = 100 * 1024  # an answer's status line and headers (httpcore's figure)


class _Connection:
    __slots__ = ("h11", "idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.idle_since = 0.0

    def reusable(self, now: float, expiry: float) -> bool:
        """Not closed by the server (its close is seen as the end of the stream) nor
        broken, and not idle too long: a server closes idle connections after a while of
        its own, and a request sent just then would be lost."""
        return (
            now - self.idle_since < expiry
            and not self.reader.at_eof()
            and not self.writer.is_closing()
            and self.reader.exception() is None
        )

    def close(self) -> None:
        """Closed at once: nothing is pending (the answer is read, or abandoned)."""
        self.writer.transport.abort()

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
                    data = await self.reader.read(READ_SIZE)
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
            await self._send(connection, request, timeouts.get("write"))
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
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                    limit=READ_SIZE,
                    happy_eyeballs_delay=0.25,  # (RFC 8305's figure; anyio's too)
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out connecting", request=request) from None
        except OSError as e:  # (ssl.SSLError and socket.gaierror are OSErrors)
            raise httpx.ConnectError(str(e) or type(e).__name__, request=request) from e
        raw = writer.get_extra_info("socket")
        if raw is not None:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    @staticmethod
    async def _send(connection: _Connection, request: httpx.Request, timeout: float | None) -> None:
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
            async with asyncio.timeout(timeout):
                connection.writer.write(data)
                await connection.writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("timed out sending the request", request=request) from None
        except OSError as e:
            raise httpx.WriteError(str(e) or type(e).__name__, request=request) from e

    def release(self, connection: _Connection, complete: bool) -> None:
        """The answer on ``connection`` ended (read to its end if ``complete``): keep the
        connection for the next request, or close it."""
        state = connection.h11
        if (
            complete
            and state.our_state is h11.DONE
            and state.their_state is h11.DONE
            and not state.trailing_data[0]  # (bytes past the answer: not a sane server)
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
