"""HTTP: the merged feed with ETag/304/gzip, an OPML list of the sources, a small home
page, ``/healthz`` and ``/metrics``.

Only these routes exist: the archive folder itself (posts, the index) is never exposed.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aggregator import __version__
from aggregator.archive import ATOM_FILE, JSON_FILE, RSS_FILE
from aggregator.errors import AggregatorError
from aggregator.metrics import CONTENT_TYPE, Metrics
from aggregator.models import Config
from aggregator.site import TAGS_DIR, Tag, config_tags
from aggregator.sources import export_opml
from aggregator.state import State
from aggregator.urls import is_http_url

FEED_TYPES = {
    RSS_FILE: "application/rss+xml; charset=utf-8",
    ATOM_FILE: "application/atom+xml; charset=utf-8",
    JSON_FILE: "application/feed+json; charset=utf-8",
}
HOME_ITEMS = 50


@dataclass
class Site:
    """What the web app shows; the daemon swaps ``config`` when feeds.yaml changes."""

    config: Config
    state: State
    metrics: Metrics | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    @property
    def cache_seconds(self) -> int:
        """Readers need not come back sooner than a quarter of our fastest poll interval."""
        fastest = min((f.interval for f in self.config.feeds), default=self.config.interval)
        return max(60, min(3600, fastest // 4))


def _conditional(
    request: Request, body: bytes, media_type: str, modified: datetime, cache: int
) -> Response:
    """``body`` with validators, or 304 when the client already has it."""
    etag = 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {
        "ETag": etag,
        "Last-Modified": format_datetime(modified.astimezone(UTC), usegmt=True),
        "Cache-Control": f"public, max-age={cache}",
    }
    match = request.headers.get("if-none-match")
    if match is not None:
        fresh = any(tag.strip() in (etag, etag[2:], "*") for tag in match.split(","))
    else:
        fresh = _not_modified_since(request.headers.get("if-modified-since"), modified)
    if fresh:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def _not_modified_since(value: str | None, modified: datetime) -> bool:
    if not value:
        return False
    try:
        since = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return since.tzinfo is not None and modified.replace(microsecond=0) <= since


def make_app(site: Site) -> Starlette:
    async def feed_file(request: Request) -> Response:
        name = request.url.path.rsplit("/", 1)[1]
        path = site.config.archive / name
        slug = request.path_params.get("slug")
        if slug is not None:
            if slug not in {t.slug for t in config_tags(site.config)}:
                return Response("No such tag in feeds.yaml.\n", 404)
            path = site.config.archive / TAGS_DIR / slug / name
        try:
            body = path.read_bytes()
            modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except FileNotFoundError:
            return Response("Not published yet: the first poll has not finished.\n", 404)
        return _conditional(request, body, FEED_TYPES[name], modified, site.cache_seconds)

    async def opml(request: Request) -> Response:
        body = export_opml(site.config, site.state.feed_names())
        return _conditional(
            request, body, "text/x-opml; charset=utf-8", site.clock(), site.cache_seconds
        )

    async def home(request: Request) -> Response:
        body = render_home(site).encode()
        return _conditional(request, body, "text/html; charset=utf-8", site.clock(), 60)

    async def tag_page(request: Request) -> Response:
        tag = next(
            (t for t in config_tags(site.config) if t.slug == request.path_params["slug"]), None
        )
        if tag is None:
            return Response("No such tag in feeds.yaml.\n", 404)
        body = render_home(site, tag).encode()
        return _conditional(request, body, "text/html; charset=utf-8", site.clock(), 60)

    async def healthz(request: Request) -> Response:
        report = health(site)
        # 200 either way: the process is alive; "degraded" means some sources fail.
        return Response(
            json.dumps(report, ensure_ascii=False, indent=1), media_type="application/json"
        )

    async def metrics(request: Request) -> Response:
        if site.metrics is None:
            return Response("metrics are collected by `aggregator run`\n", 404)
        in_error = sum(1 for f in _health_rows(site) if f["outcome"] == "error")
        site.metrics.feeds.set(len(site.config.feeds))
        site.metrics.feeds_in_error.set(in_error)
        return Response(site.metrics.render(), media_type=CONTENT_TYPE)

    routes = [Route(f"/{name}", feed_file) for name in FEED_TYPES]
    routes += [Route(f"/{TAGS_DIR}/{{slug}}/{name}", feed_file) for name in FEED_TYPES]
    routes += [
        Route(f"/{TAGS_DIR}/{{slug}}/", tag_page),
        Route("/opml.xml", opml),
        Route("/", home),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes, middleware=[Middleware(GZipMiddleware, minimum_size=1000)])


def _health_rows(site: Site) -> list[dict[str, Any]]:
    records = site.state.feeds()
    rows = []
    for source in site.config.feeds:
        record = records.get(source.url)
        rows.append(
            {
                "name": source.name or (record.name if record else None) or source.url,
                "url": source.url,
                "last_poll": record.last_poll.isoformat() if record and record.last_poll else None,
                "outcome": record.last_outcome if record else None,
                "error": record.last_error if record else None,
                "errors_in_a_row": record.error_count if record else 0,
                "next_poll": record.next_poll.isoformat() if record and record.next_poll else None,
            }
        )
    return rows


def health(site: Site) -> dict[str, Any]:
    """ok when every feed's last poll succeeded, else degraded; last_pass: the latest poll."""
    rows = _health_rows(site)
    failing = [{k: r[k] for k in ("name", "url", "error")} for r in rows if r["outcome"] == "error"]
    polls = [r["last_poll"] for r in rows if r["last_poll"]]
    return {
        "status": "degraded" if failing else "ok",
        "last_pass": max(polls, default=None),
        "feeds": len(rows),
        "feeds_in_error": failing,
        "version": __version__,
    }


def render_home(site: Site, tag: Tag | None = None) -> str:
    """The home page: subscribe links (discoverable), newest items, tags, sources and
    health; or, for ``tag``, the same for that tag's feeds."""
    cfg, e = site.config, html.escape
    tags = config_tags(cfg)
    title = f"{cfg.title}: {tag.name}" if tag else cfg.title
    prefix = f"/{TAGS_DIR}/{tag.slug}/" if tag else "/"
    items = []
    feeds = tag.feed_urls if tag else None
    for record in site.state.newest(min(cfg.max_items, HOME_ITEMS), feeds=feeds):
        name = e(record.title)
        link = f'<a href="{e(record.key)}">{name}</a>' if is_http_url(record.key) else name
        items.append(f"<li>{link} <small>{record.archived:%Y-%m-%d %H:%M} UTC</small></li>")
    sources = []
    for row in _health_rows(site):
        if tag and row["url"] not in tag.feed_urls:
            continue
        state = row["outcome"] or "not polled yet"
        if state == "error":
            state = f"error: {row['error']}"
        sources.append(
            f'<tr><td><a href="{e(row["url"])}">{e(row["name"])}</a></td>'
            f"<td>{e(state)}</td><td>{e(row['last_poll'] or '')}</td></tr>"
        )
    alternates = "\n".join(
        f'<link rel="alternate" type="{kind}" title="{e(title)} ({label})" href="{prefix}{name}">'
        for name, kind, label in (
            (ATOM_FILE, "application/atom+xml", "Atom"),
            (RSS_FILE, "application/rss+xml", "RSS"),
            (JSON_FILE, "application/feed+json", "JSON Feed"),
        )
    )
    tag_links = " · ".join(
        f'<a href="/{TAGS_DIR}/{t.slug}/">{e(t.name)}</a> '
        f'(<a href="/{TAGS_DIR}/{t.slug}/atom.xml">Atom</a>, '
        f'<a href="/{TAGS_DIR}/{t.slug}/feed.xml">RSS</a>, '
        f'<a href="/{TAGS_DIR}/{t.slug}/feed.json">JSON</a>)'
        for t in tags
    )
    back = '<p><a href="/">← all feeds</a></p>' if tag else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
{alternates}
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}}
td{{padding:.2rem .6rem;vertical-align:top}}small{{color:#666}}</style>
</head><body>
{back}<h1>{e(title)}</h1>
<p>{e(cfg.description)}</p>
<p>Subscribe: <a href="{prefix}atom.xml">Atom</a> · <a href="{prefix}feed.xml">RSS</a> ·
<a href="{prefix}feed.json">JSON Feed</a> · sources as <a href="/opml.xml">OPML</a></p>
{f"<p>By tag: {tag_links}</p>" if tag_links and not tag else ""}
<h2>Newest items</h2>
<ul>
{chr(10).join(items) or "<li>Nothing archived yet.</li>"}
</ul>
<h2>Sources</h2>
<table>
<tr><th>Feed</th><th>Last poll</th><th>When</th></tr>
{chr(10).join(sources)}
</table>
<p><small>aggregator {__version__}</small></p>
</body></html>
"""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass

    def capture_signals(self) -> Any:  # newer uvicorn
        from contextlib import nullcontext  # noqa: PLC0415

        return nullcontext()


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


def make_server(site: Site) -> uvicorn.Server:
    config = uvicorn.Config(make_app(site), log_config=None, lifespan="off", access_log=True)
    return _Server(config)


def serve_archive(config: Config, host: str, port: int) -> None:
    """``aggregator serve``: the web app over an existing archive, until Ctrl-C/SIGTERM."""
    from aggregator.archive import state_path  # noqa: PLC0415

    db = state_path(config.archive)
    if not db.exists():
        raise AggregatorError(f"no archive index at {db}: run `aggregator poll` first")
    state = State(db, readonly=True)

    async def main() -> None:
        sock = bind(host, port)
        server = make_server(Site(config, state))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, setattr, server, "should_exit", True)
        logging.getLogger(__name__).info(
            "serving http://%s:%d/ archive=%s", host, port, config.archive
        )
        await server.serve(sockets=[sock])

    try:
        asyncio.run(main())
    finally:
        state.close()
