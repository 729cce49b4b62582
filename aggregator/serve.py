"""HTTP: the merged feed with ETag/304/gzip, an OPML list of the sources, a small home
page, ``/healthz``, ``/metrics``, and the files ``media: keep`` kept (``/media/...``, by
their hash names only).

Only these routes exist: the rest of the archive folder (posts, the index) is never exposed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from gzip import compress as gzip_compress
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from aggregator.archive import ATOM_FILE, FEED_STYLESHEET, JSON_FILE, RSS_FILE, load_post
from aggregator.errors import AggregatorError
from aggregator.health import INDEX, PUBLISH, report
from aggregator.media import CONTENT_TYPES as MEDIA_TYPES
from aggregator.metrics import CONTENT_TYPE, Metrics
from aggregator.models import Config, FeedStatus, Post
from aggregator.posts import LOCAL_MEDIA
from aggregator.river import Excerpts, render_river
from aggregator.site import TAGS_DIR, config_tags
from aggregator.sources.opml import export_opml
from aggregator.state import State
from aggregator.timing import http_date

FEED_TYPES = {
    RSS_FILE: "application/rss+xml; charset=utf-8",
    ATOM_FILE: "application/atom+xml; charset=utf-8",
    JSON_FILE: "application/feed+json; charset=utf-8",
}
GZIP_MIN_BYTES = 1000
# The files of aggregator/site/assets/ the pages use (also written into the archive).
ASSETS = {
    "local-time.js": "text/javascript; charset=utf-8",
    FEED_STYLESHEET: "text/xsl; charset=utf-8",
}
# The pages' own script and style only; pictures from anywhere (the feeds' own, or the
# image proxy's); nothing may frame them.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "img-src 'self' http: https: data:; frame-ancestors 'none'; base-uri 'none'"
)


def _feed_type(request: Request, name: str) -> str:
    """A browser that navigates to an RSS or Atom feed (it asks for text/html) gets it as
    XML, which it renders through the feed's stylesheet; readers get the feed's own type."""
    if name != JSON_FILE and _accepts(request.headers.get("accept", ""), "text/html"):
        return "application/xml; charset=utf-8"
    return FEED_TYPES[name]


def _accepts(header: str, token: str) -> bool:
    """``token`` (``text/html``, ``gzip``) is in an Accept or Accept-Encoding header's
    list, and not refused with ``q=0``."""
    for part in header.lower().split(","):
        name, *parameters = (p.strip() for p in part.split(";"))
        if name == token:
            return not any(
                p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in parameters
            )
    return False


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Version:
    """What is known of one version of a published file."""

    signature: tuple[int, int, int]  # inode, size, mtime (ns)
    etag: str
    modified: datetime
    gzipped: bytes | None = None


class FileCache:
    """The ETag and the gzip-compressed bytes of each published file, computed once per
    version of the file (once per publish), not on every request: a conditional request
    costs a stat, a gzip one a dictionary lookup."""

    def __init__(self) -> None:
        self._known: dict[Path, _Version] = {}

    def version(self, path: Path) -> _Version:
        """The file's version as it is now (read and hashed once per version)."""
        st = os.stat(path)
        known = self._known.get(path)
        if known is not None and known.signature == _signature(st):
            return known
        self._read(path)
        return self._known[path]

    def body(self, path: Path, version: _Version, gzip: bool) -> tuple[bytes, bool] | None:
        """(bytes, compressed) of that version; gzip-compressed when asked and worth it.
        None when the file has been replaced since: ask for its version again."""
        if gzip and version.signature[1] >= GZIP_MIN_BYTES:
            known = self._known.get(path)
            if known is not None and known.signature == version.signature and known.gzipped:
                return known.gzipped, True
        body, current = self._read(path)
        if current.signature != version.signature:
            return None
        if not gzip or len(body) < GZIP_MIN_BYTES:
            return body, False
        compressed = gzip_compress(body, compresslevel=6, mtime=0)
        self._known[path] = replace(current, gzipped=compressed)
        return compressed, True

    def _read(self, path: Path) -> tuple[bytes, _Version]:
        with open(path, "rb") as f:  # one open file: its stat and its bytes agree
            st = os.fstat(f.fileno())
            body = f.read()
        known = self._known.get(path)
        if known is None or known.signature != _signature(st):
            etag = 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            modified = datetime.fromtimestamp(st.st_mtime, UTC)
            known = self._known[path] = _Version(_signature(st), etag, modified)
        return body, known


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class Site:
    """What the web app shows. The daemon gives its live feed statuses and problems, and
    calls :meth:`reconfigure` when feeds.yaml changes; ``serve`` reads the index."""

    config: Config
    state: State
    metrics: Metrics | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    statuses: Callable[[], Mapping[str, FeedStatus]] | None = None  # None: read the index
    problems: Callable[[], Mapping[str, str]] = dict
    files: FileCache = field(default_factory=FileCache)
    excerpts: Excerpts = field(default_factory=Excerpts)

    def archive_post(self, path: str) -> Post:
        return load_post(self.config.archive, path)

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def reopen(self, state: State) -> None:
        """Read this index from now on (the daemon rebuilt a damaged one)."""
        self.state = state

    def feed_statuses(self) -> Mapping[str, FeedStatus]:
        return self.statuses() if self.statuses is not None else self.state.statuses()

    def health(self) -> dict[str, Any]:
        """The /healthz report; an index that cannot be read is itself a reason."""
        problems = dict(self.problems())
        try:
            statuses = self.feed_statuses()
            if self.statuses is None and self.state.publish_needed():
                problems.setdefault(PUBLISH, "posts were archived that the merged feed lacks")
        except AggregatorError as e:
            statuses, problems[INDEX] = {}, str(e)
        return report(self.config, statuses, self.clock(), problems)

    @property
    def cache_seconds(self) -> int:
        """Readers need not come back sooner than a quarter of our fastest poll interval."""
        fastest = min((f.interval for f in self.config.feeds), default=self.config.interval)
        return max(60, min(3600, fastest // 4))


def _validators(etag: str, modified: datetime, cache: int) -> dict[str, str]:
    return {
        "ETag": etag,
        "Last-Modified": format_datetime(modified.astimezone(UTC), usegmt=True),
        "Cache-Control": f"public, max-age={cache}",
    }


def _fresh(request: Request, etag: str, modified: datetime) -> bool:
    """The client already has this version."""
    match = request.headers.get("if-none-match")
    if match is not None:
        return any(tag.strip() in (etag, etag[2:], "*") for tag in match.split(","))
    return _not_modified_since(request.headers.get("if-modified-since"), modified)


def _conditional(
    request: Request, body: bytes, media_type: str, modified: datetime, cache: int
) -> Response:
    """``body`` with validators, or 304 when the client already has it."""
    etag = 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = _validators(etag, modified, cache)
    if _fresh(request, etag, modified):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def _not_modified_since(value: str | None, modified: datetime) -> bool:
    since = http_date(value)  # None for anything that is not a representable date
    return since is not None and modified.replace(microsecond=0) <= since


def _accepts_gzip(request: Request) -> bool:
    return _accepts(request.headers.get("accept-encoding", ""), "gzip")


def make_app(site: Site) -> Starlette:  # noqa: PLR0915 -- every route in one place
    async def feed_file(request: Request) -> Response:
        name = request.url.path.rsplit("/", 1)[1]
        path = site.config.archive / name
        slug = request.path_params.get("slug")
        if slug is not None:
            if slug not in {t.slug for t in config_tags(site.config)}:
                return Response("No such tag in feeds.yaml.\n", 404)
            path = site.config.archive / TAGS_DIR / slug / name
        gzip = _accepts_gzip(request)
        for _ in range(3):  # the file may be replaced by a publish meanwhile
            try:
                version = site.files.version(path)
                headers = _validators(version.etag, version.modified, site.cache_seconds)
                headers["Vary"] = "Accept-Encoding, Accept"
                if _fresh(request, version.etag, version.modified):
                    return Response(status_code=304, headers=headers)
                got = site.files.body(path, version, gzip)
            except FileNotFoundError:
                return Response("Not published yet: the first poll has not finished.\n", 404)
            except OSError as e:
                return Response(f"Cannot read {name}: {e.strerror or e}\n", 503)
            if got is None:
                continue
            body, compressed = got
            if compressed:  # the GZip middleware leaves an encoded body alone
                headers["Content-Encoding"] = "gzip"
            return Response(body, media_type=_feed_type(request, name), headers=headers)
        return Response(f"{name} is being rewritten; try again\n", 503)

    async def opml(request: Request) -> Response:
        body = export_opml(site.config, site.state.feed_names())
        return _conditional(
            request, body, "text/x-opml; charset=utf-8", site.clock(), site.cache_seconds
        )

    async def river(request: Request) -> Response:
        tag, slug = None, request.path_params.get("slug")
        if slug is not None:
            tag = next((t for t in config_tags(site.config) if t.slug == slug), None)
            if tag is None:
                return Response("No such tag in feeds.yaml.\n", 404)
        number = request.path_params.get("number", 1)
        if number == 1 and "number" in request.path_params:  # (page 1 is the folder itself)
            return RedirectResponse(f"/{TAGS_DIR}/{slug}/" if slug else "/", 301)
        page = render_river(site, tag, number)
        if page is None:
            return Response("No such page.\n", 404)
        response = _conditional(
            request, page.encode(), "text/html; charset=utf-8", site.clock(), 60
        )
        response.headers["Content-Security-Policy"] = PAGE_POLICY
        return response

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return Response("Not found.\n", 404)
        try:  # the archive's own copy (it may be edited), else the one that came with us
            body = (site.config.archive / "assets" / name).read_bytes()
        except OSError:
            body = (resources.files("aggregator") / "site" / "assets" / name).read_bytes()
        return _conditional(request, body, ASSETS[name], site.clock(), site.cache_seconds)

    async def healthz(request: Request) -> Response:
        # 200 either way: the process is alive; "degraded" says what needs attention.
        return Response(
            json.dumps(site.health(), ensure_ascii=False, indent=1),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def metrics(request: Request) -> Response:
        if site.metrics is None:
            return Response("metrics are collected by `aggregator run`\n", 404)
        site.metrics.update(site.health())
        return Response(site.metrics.render(), media_type=CONTENT_TYPE)

    async def kept_file(request: Request) -> Response:
        """A file ``media: keep`` kept (its name is its content's hash: cached for ever)."""
        path = request.url.path
        if not LOCAL_MEDIA.fullmatch(path):
            return Response("Not found.\n", 404)
        kind = path.rsplit(".", 1)[1]
        headers = {
            "Cache-Control": "public, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        }
        file = site.config.archive / path.lstrip("/")
        if not file.is_file():
            return Response("Not found.\n", 404)
        return FileResponse(
            file, media_type=MEDIA_TYPES.get(kind, MEDIA_TYPES["bin"]), headers=headers
        )

    async def unavailable(request: Request, error: Exception) -> Response:
        """The index (or a file) cannot be read now: say so, rather than a bare 500."""
        return Response(f"Service unavailable: {error}\n", 503)

    routes = [Route(f"/{name}", feed_file) for name in FEED_TYPES]
    routes += [Route(f"/{TAGS_DIR}/{{slug}}/{name}", feed_file) for name in FEED_TYPES]
    routes += [
        Route(f"/{TAGS_DIR}/{{slug}}/", river),
        Route(f"/{TAGS_DIR}/{{slug}}/page/{{number:int}}/", river),
        Route("/opml.xml", opml),
        Route("/", river),
        Route("/page/{number:int}/", river),
        Route("/assets/{name}", asset),
        # (feeds name their stylesheet under `link`'s path, which may be a proxy's folder)
        Route("/{folder:path}/assets/{name}", asset),
        Route("/healthz", healthz),
        Route("/media/{folder}/{name}", kept_file),
        Route("/metrics", metrics),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES)],
        exception_handlers={AggregatorError: unavailable},
    )


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass

    def capture_signals(self) -> Any:  # newer uvicorn
        from contextlib import nullcontext  # noqa: PLC0415

        return nullcontext()


# Connections ---------------------------------------------------------------------------
# uvicorn closes a kept-alive connection after 5 s of silence, but not a connection that
# never completes a request, nor one whose client stops reading; and it accepts as many
# connections as there are file descriptors, after which the daemon can open nothing else.

REQUEST_TIMEOUT = 10.0  # seconds for a new or kept-alive connection to send its request
RESPONSE_TIMEOUT = 60.0  # seconds for a request to be answered and the answer taken
KEEP_ALIVE = 5.0
# Connections accepted in one go. asyncio accepts up to this many before any of them is
# seen by the protocol (which makes room), and on "too many open files" it schedules a
# retry per remaining attempt: small bursts keep both bounded.
ACCEPT_BURST = 64
RESERVE_FILES = 256  # descriptors kept for feeds, the index, the posts and the workers


def max_connections() -> int:
    """How many client connections to keep at once: what the open-file limit leaves after
    the reserve and three bursts of accepts (accepted before room is made); at most 4096."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(16, min(4096, soft - RESERVE_FILES - 3 * ACCEPT_BURST))


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (as Go programs
    do): systemd's default of 1024 is too few for a server. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Throttled:
    """Logs a kind of event at most once per ``every`` seconds, with how many were left out."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def log(self, kind: str, level: int, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.every) < self.every:
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return
        self._last[kind] = now
        if left := self._quiet.pop(kind, 0):
            message += f" ({left} more since the last such message)"
        log.log(level, message, *args)


_throttled = _Throttled()


class Connection(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with deadlines, and room made for new connections.

    - a connection must send a complete request within ``REQUEST_TIMEOUT`` of opening (or
      of its previous answer), and a request must be answered and taken within
      ``RESPONSE_TIMEOUT``: slow or silent clients are dropped;
    - at most :func:`max_connections` at once: a new one evicts the connection that has
      waited longest without a request in progress, so a thousand idle clients cannot lock
      out a health probe.
    """

    limit: int = 1024  # set by make_server
    request_timeout: float = REQUEST_TIMEOUT
    response_timeout: float = RESPONSE_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = time.monotonic()
        self._deadline: asyncio.TimerHandle | None = None
        self._arm(self.request_timeout)
        # Connections accepted in one go all arrive here before any evicted one is gone:
        # count only the ones not already closing.
        connections = [c for c in self.connections if isinstance(c, Connection)]
        live = [c for c in connections if not c.transport.is_closing()]
        if len(live) > self.limit:
            self._make_room(live)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request began
            self._restart_clock()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._restart_clock()

    def _restart_clock(self) -> None:
        self._since = time.monotonic()
        if self._deadline is not None:
            self._deadline.cancel()
        self._arm(self.response_timeout if self._busy() else self.request_timeout)

    def _arm(self, seconds: float) -> None:
        self._deadline = self.loop.call_later(seconds, self._check)

    def _busy(self) -> bool:
        """A request is being answered, or its answer is not all taken by the client yet
        (the app hands over a whole body at once; the kernel and the transport buffer it)."""
        if self.cycle is not None and not self.cycle.response_complete:
            return True
        return bool(self.transport.get_write_buffer_size())

    def _check(self) -> None:
        self._deadline = None
        busy = self._busy()
        if self.transport.is_closing() and not busy:
            return  # nothing left to send: it is gone in a moment
        limit = self.response_timeout if busy else self.request_timeout
        left = limit - (time.monotonic() - self._since)
        if left > 0:
            self._arm(left)
            return
        _throttled.log(
            "timeout", logging.INFO, "closed connections that sent or took nothing in time"
        )
        self.transport.abort()

    def _make_room(self, live: list[Connection]) -> None:
        excess = len(live) - self.limit
        idle = sorted((c for c in live if c is not self and not c._busy()), key=lambda c: c._since)
        victims = idle[:excess]
        if len(victims) < excess:  # every other one is busy: this one waits its turn
            victims.append(self)
        _throttled.log(
            "evict", logging.WARNING,
            "%d connections open, the most allowed: closing the longest idle ones",
            self.limit,
        )  # fmt: skip
        for victim in victims:
            victim.transport.abort()


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's error handler: a failed accept() (out of file descriptors) is
    logged once a minute, not with a traceback per attempt."""
    message = str(context.get("message", ""))
    error = context.get("exception")
    if message.startswith("socket.accept() out of system resource"):
        _throttled.log(
            "accept", logging.ERROR,
            "cannot accept connections: %s (raise LimitNOFILE / ulimit -n)",
            getattr(error, "strerror", None) or error,
        )  # fmt: skip
        return
    if "_start_serving" in repr(context.get("handle")) and isinstance(error, ValueError | OSError):
        # asyncio's retry of accept() after such an error, firing after the server closed
        log.debug("accept retry after the server closed: %s", error)
        return
    loop.default_exception_handler(context)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or an error that says what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise AggregatorError(
            f"cannot listen on {host}:{port}: {e.strerror or e} (choose another with --port "
            "or `serve: {port: …}` in feeds.yaml)"
        ) from e
    sock.setblocking(False)
    return sock


def make_server(
    site: Site,
    *,
    connections: int | None = None,
    request_timeout: float = REQUEST_TIMEOUT,
    response_timeout: float = RESPONSE_TIMEOUT,
) -> uvicorn.Server:
    protocol = type(
        "Connection",
        (Connection,),
        {
            "limit": connections or max_connections(),
            "request_timeout": request_timeout,
            "response_timeout": response_timeout,
        },
    )
    config = uvicorn.Config(
        make_app(site),
        http=protocol,
        log_config=None,
        lifespan="off",
        access_log=True,
        timeout_keep_alive=int(KEEP_ALIVE),
        backlog=ACCEPT_BURST,
        timeout_graceful_shutdown=int(KEEP_ALIVE),  # then connections still open are cut
        h11_max_incomplete_event_size=16 * 1024,  # a request's headers
    )
    return _Server(config)


def serve_archive(config: Config, host: str, port: int) -> None:
    """``aggregator serve``: the web app over an existing archive, until Ctrl-C/SIGTERM."""
    from aggregator.archive import read_index  # noqa: PLC0415

    state = read_index(config.archive)

    async def main() -> None:
        raise_open_file_limit()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(quiet_accept_errors)
        sock = bind(host, port)
        server = make_server(Site(config, state))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, setattr, server, "should_exit", True)
        log.info("serving http://%s:%d/ archive=%s", host, port, config.archive)
        await server.serve(sockets=[sock])

    try:
        asyncio.run(main())
    finally:
        state.close()
