"""HTTP GET of one feed, politely and defensively.

Conditional requests with the validators of the last good response, our own
User-Agent, connect/read timeouts plus a total deadline, at most five redirects
(http and https only), and a cap on the body that counts decompressed bytes, so a
gzip bomb or an endless body is abandoned early.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import httpx

from aggregator import __version__
from aggregator.connections import Origin
from aggregator.errors import FetchError, TooLarge
from aggregator.models import DEFAULT_MAX_FEED_BYTES, Fetched, NotModified, Validators
from aggregator.secrets import public_url

if TYPE_CHECKING:
    from aggregator.access import Access
from aggregator.urls import is_http_url

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, "
    "application/xml;q=0.9, text/xml;q=0.9, application/json;q=0.8, */*;q=0.5"
)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_KEPT_HEADERS = ("cache-control", "expires", "date")
_PERMANENT = frozenset({301, 308})


@dataclass(frozen=True, slots=True)
class FetchSettings:
    user_agent: str
    max_bytes: int = DEFAULT_MAX_FEED_BYTES
    timeout: float = 10.0  # connect, read, write
    deadline: float = 30.0  # the whole fetch, body included
    max_redirects: int = 5
    accept: str = ACCEPT  # what is asked for: feeds, or a page or a picture


def default_user_agent(link: str) -> str:
    return f"aggregator/{__version__} (+{link})"


ROUTE = "aggregator.route"  # request extension: (proxy URL or None, verify TLS)


class _Transports(httpx.AsyncBaseTransport):
    """A connection pool per origin, each keeping its connections alive between requests:
    an :class:`~aggregator.connections.Origin`, or httpx's own transport through a proxy.

    One pool for every host would scan all of its connections at each request (httpcore
    checks each idle one with a system call): with 50 hosts kept alive that made a pass
    of 304s twice as slow as opening a connection per request. At most :data:`MAX_IDLE`
    pools wait idle (the least recently used beyond are closed, so that a pass over
    thousands of hosts keeps few sockets open), and a pool unused for :data:`IDLE_POOL`
    seconds is closed (the daemon's client lives for months); a pool with a response
    open is never closed. A feed with a proxy or without TLS checks gets pools of its
    own, chosen by the request's :data:`ROUTE` extension. The TLS settings are made once
    for all pools, on the first https request (loading the trust store costs ~40 ms)."""

    IDLE_POOL = 60.0  # seconds
    MAX_IDLE = 64  # pools
    KEEP = 8  # idle connections a pool keeps

    def __init__(self) -> None:
        self._limits = httpx.Limits(max_connections=None, max_keepalive_connections=self.KEEP)
        self._pools: dict[tuple[object, ...], _Pool] = {}
        self._swept = time.monotonic()
        self._tls: dict[bool, ssl.SSLContext] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        proxy, verify = request.extensions.get(ROUTE, (None, True))
        url = request.url
        tls = url.scheme == "https"
        key = (proxy, verify or not tls, url.scheme, url.host, url.port)
        now = time.monotonic()
        if now - self._swept > self.IDLE_POOL:
            self._swept = now
            self._retire([k for k, p in self._pools.items() if now - p.used > self.IDLE_POOL])
        pool = self._pools.get(key)
        if pool is None:
            if len(self._pools) >= self.MAX_IDLE:
                by_age = sorted(self._pools, key=lambda k: self._pools[k].used)
                self._retire(by_age[: len(self._pools) - self.MAX_IDLE + 1])
            context = self._context(tls and verify)
            pool = self._pools[key] = _Pool(
                Origin(context, self.KEEP)
                if proxy is None
                else httpx.AsyncHTTPTransport(limits=self._limits, verify=context, proxy=proxy)
            )
        pool.open += 1
        pool.used = now
        try:
            response = await pool.transport.handle_async_request(request)
        except BaseException:
            pool.open -= 1
            raise
        response.stream = _Closing(response.stream, pool)  # type: ignore[arg-type]
        return response

    def _context(self, verify: bool) -> ssl.SSLContext:
        context = self._tls.get(verify)
        if context is None:  # (verify=False: plain HTTP, or a feed without TLS checks)
            context = self._tls[verify] = httpx.create_ssl_context(verify=verify)
        return context

    def _retire(self, keys: list[tuple[object, ...]]) -> None:
        """Close the pools of ``keys`` that have no response open: taken out at once (no
        request can pick one up meanwhile), closed in a task of their own (a request's
        deadline cannot cut that short)."""
        idle = [self._pools.pop(k) for k in keys if not self._pools[k].open]
        if idle:
            task = asyncio.create_task(_close_all(idle))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*self._closing, return_exceptions=True)
        await _close_all(pools)


async def _close_all(pools: list[_Pool]) -> None:
    for pool in pools:
        with contextlib.suppress(Exception):  # (a connection the server already dropped)
            await pool.transport.aclose()


class _Pool:
    __slots__ = ("open", "transport", "used")

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport
        self.open = 0  # responses not closed yet
        self.used = time.monotonic()


class _Closing(httpx.AsyncByteStream):
    """A response body that tells its pool when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, pool: _Pool) -> None:
        self._stream, self._pool, self._closed = stream, pool, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if not self._closed:
                self._closed = True
                self._pool.open -= 1
                self._pool.used = time.monotonic()


def make_client(
    settings: FetchSettings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """A client shared by every fetch of a pass (the Poller's Limits bound its requests)."""
    return httpx.AsyncClient(
        transport=transport or _Transports(),
        timeout=httpx.Timeout(settings.timeout),
        follow_redirects=False,  # followed by hand: scheme check, permanence, count
        headers={
            "User-Agent": settings.user_agent,
            "Accept": ACCEPT,
            "Accept-Encoding": "gzip, deflate",
        },
    )


async def fetch_feed(
    client: httpx.AsyncClient,
    url: str,
    validators: Validators,
    settings: FetchSettings,
    access: Access | None = None,
    *,
    home: str | None = None,
    sink: Callable[[bytes], None] | None = None,
    hop: Callable[[str], Awaitable[None]] | None = None,
) -> Fetched | NotModified:
    """GET ``url`` conditionally; raise :class:`FetchError` on any failure.

    ``access``: the feed's credentials and transport; its credentials go to the origin
    of ``home`` (default: ``url``) only, never to where a redirect leads elsewhere. What
    the answer and errors say of the URL is its public form. ``sink``: takes the body
    piece by piece (a big file is not held in memory; the answer's content is then empty).
    ``hop``: called with each redirect's target before it is followed (it may raise).
    """
    if access is not None and access.missing:
        raise FetchError(public_url(url)[0], f"not fetched: {access.missing}")
    try:
        async with asyncio.timeout(settings.deadline):
            return await _fetch(
                client,
                url,
                validators,
                settings,
                access,
                origin=home or url,
                sink=sink,
                hop=hop,
            )
    except (TimeoutError, httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as e:
        cause = None if isinstance(e, TimeoutError) else e
        raise FetchError(public_url(url)[0], _reason(e, settings)) from cause


def _reason(error: Exception, settings: FetchSettings) -> str:
    """Why a fetch failed, in one line (the URL is said apart)."""
    if isinstance(error, TimeoutError):  # the whole fetch's deadline
        return f"no complete answer within {settings.deadline:g} s"
    if isinstance(error, httpx.TimeoutException):
        return f"timed out ({type(error).__name__})"
    if isinstance(error, httpx.HTTPError):
        return _describe(error)
    if isinstance(error, httpx.InvalidURL):  # raised for a bad Location header too
        return f"invalid URL: {error}"
    return f"{type(error).__name__}: {error}"


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = error
    for _ in range(10):  # the chain from httpx's error to the OS error is short
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(e: httpx.HTTPError) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, httpx.ConnectError):
        if _caused_by(e, socket.gaierror):
            try:
                host = e.request.url.host
            except RuntimeError:  # httpx raises it when the error carries no request
                host = "the host"
            return (
                f"cannot connect: no address for {host}: {text} (check the URL, DNS or the network)"
            )
        if _caused_by(e, ConnectionRefusedError):
            return "cannot connect: connection refused (is the server up? check the URL's port)"
        return f"cannot connect: {text}"
    return f"{type(e).__name__}: {text}"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = httpx.URL(url)
    return parts.scheme, parts.host, parts.port


def access_headers(access: Access) -> dict[str, str]:
    """The request headers ``access`` adds (credentials among them)."""
    headers = dict(access.headers)
    if access.username is not None:
        pair = f"{access.username}:{access.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    if access.cookie:
        headers["Cookie"] = access.cookie
    return headers


async def _fetch(
    client: httpx.AsyncClient,
    url: str,
    validators: Validators,
    settings: FetchSettings,
    access: Access | None,
    *,
    origin: str,
    sink: Callable[[bytes], None] | None = None,
    hop: Callable[[str], Awaitable[None]] | None = None,
) -> Fetched | NotModified:
    headers = {} if settings.accept == ACCEPT else {"Accept": settings.accept}
    if validators.etag:
        headers["If-None-Match"] = validators.etag
    if validators.last_modified:
        headers["If-Modified-Since"] = validators.last_modified
    private = access_headers(access) if access is not None else {}
    extensions = {}
    if access is not None and (access.proxy or not access.verify_tls):
        extensions[ROUTE] = (access.proxy, access.verify_tls)
    home = _origin(origin) if private else None  # (a plain feed: nothing to keep home)
    shown = public_url(url)[0] if access is not None else url
    target = url
    permanent = True  # every hop so far was 301/308
    for _ in range(settings.max_redirects + 1):
        sent = {**headers, **private} if private and _origin(target) == home else headers
        if access is not None and access.user_agent:  # (not a secret: sent everywhere)
            sent = {**sent, "User-Agent": access.user_agent}
        request = client.build_request("GET", target, headers=sent, extensions=extensions)
        response = await client.send(request, stream=True)
        try:
            status = response.status_code
            if status in _REDIRECTS and "location" in response.headers:
                target = _redirect_target(shown, target, response.headers["location"])
                permanent = permanent and status in _PERMANENT
                if hop is not None:
                    await hop(target)
                continue
            new_validators = Validators(
                response.headers.get("etag") or validators.etag,
                response.headers.get("last-modified") or validators.last_modified,
            )
            if status == 304:
                await response.aread()  # (no body: the end seen, the connection is kept)
                if not validators:
                    raise FetchError(shown, "HTTP 304 Not Modified to a request without validators")
                kept = {k: response.headers[k] for k in _KEPT_HEADERS if k in response.headers}
                return NotModified(shown, new_validators, kept)
            if not 200 <= status < 300:
                reason = f"HTTP {status} {response.reason_phrase or ''}".strip()
                raise FetchError(shown, reason, status, response.headers.get("retry-after"))
            body = await _read_body(response, shown, settings.max_bytes, sink)
            moved = public_url(target)[0] if permanent and target != url else None
            return Fetched(
                url=shown,
                final_url=public_url(str(response.url))[0],
                status=status,
                content=body,
                content_type=response.headers.get("content-type"),
                validators=Validators(
                    response.headers.get("etag"), response.headers.get("last-modified")
                ),
                headers={k: response.headers[k] for k in _KEPT_HEADERS if k in response.headers},
                # (kept only when it needs no secret: the moved-to URL is stored)
                moved_to=moved if moved == target else None,
            )
        finally:
            await response.aclose()
    raise FetchError(shown, f"more than {settings.max_redirects} redirects")


def _redirect_target(url: str, current: str, location: str) -> str:
    try:
        target = urljoin(current, location.strip())
    except ValueError:
        raise FetchError(url, f"redirect to an invalid URL {location[:200]!r}") from None
    if not is_http_url(target):
        raise FetchError(url, f"redirect to a non-http URL {target[:200]!r}")
    return target


class _Inflater:
    """Incremental Content-Encoding decoder that never produces more than it is asked for.

    gzip may hold several members; "deflate" is zlib-wrapped by the standard but raw
    DEFLATE from many servers, so both are accepted.
    """

    def __init__(self, url: str, encoding: str) -> None:
        self.url = url
        self.encoding = encoding.strip().lower()
        if self.encoding in ("gzip", "x-gzip"):
            self.wbits = 16 + zlib.MAX_WBITS
        elif self.encoding == "deflate":
            self.wbits = zlib.MAX_WBITS
        else:
            raise FetchError(url, f"unsupported Content-Encoding {encoding[:40]!r}")
        self.decoder = zlib.decompressobj(self.wbits)
        self.started = False

    def feed(self, data: bytes, limit: int) -> list[bytes]:
        out: list[bytes] = []
        produced = 0
        while data and produced < limit:
            try:
                piece = self.decoder.decompress(data, limit - produced)
            except zlib.error:
                if self.wbits == zlib.MAX_WBITS and not self.started:  # raw DEFLATE
                    self.wbits = -zlib.MAX_WBITS
                    self.decoder = zlib.decompressobj(self.wbits)
                    continue
                raise FetchError(self.url, f"corrupt {self.encoding} body") from None
            self.started = True
            out.append(piece)
            produced += len(piece)
            if not self.decoder.eof:
                data = self.decoder.unconsumed_tail
            elif self.wbits > zlib.MAX_WBITS and self.decoder.unused_data.strip(b"\0"):
                data = self.decoder.unused_data  # the next gzip member
                self.decoder = zlib.decompressobj(self.wbits)
            else:
                break  # trailing bytes after the stream are ignored
        return out


async def _read_body(
    response: httpx.Response, url: str, max_bytes: int, sink: Callable[[bytes], None] | None
) -> bytes:
    """The decoded body (or given to ``sink``); abandoned as soon as it would exceed
    ``max_bytes``."""
    too_big = TooLarge(url, f"larger than the {max_bytes:,}-byte limit")
    length = response.headers.get("content-length", "")
    encoding = response.headers.get("content-encoding", "").strip()
    if not encoding and length.isdigit() and int(length) > max_bytes:
        raise too_big
    inflater = _Inflater(url, encoding) if encoding.lower() not in ("", "identity") else None
    chunks: list[bytes] = []
    size = 0
    async for raw in response.aiter_raw():
        for piece in inflater.feed(raw, max_bytes - size + 1) if inflater else [raw]:
            size += len(piece)
            if size > max_bytes:
                raise too_big
            if sink is None:
                chunks.append(piece)
            else:
                sink(piece)
    return b"".join(chunks)
