"""The merged feed: the newest items of every source as RSS 2.0, Atom 1.0 and JSON Feed 1.1.

Publishing reads the index for the newest ``max_items`` items and then only those
posts, so its cost does not grow with the archive. Each file is replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from feedgen.feed import FeedGenerator

from aggregator import __version__
from aggregator.archive import (
    ATOM_FILE,
    JSON_FILE,
    RSS_FILE,
    Archive,
    StoredPost,
    write_file_atomic,
)
from aggregator.errors import ArchiveError
from aggregator.models import Config, sort_date
from aggregator.sanitize import html_to_text, xml_safe
from aggregator.urls import is_http_url

log = logging.getLogger(__name__)

SUMMARY_CHARS = 300


@dataclass(frozen=True, slots=True)
class _Item:
    """One item of the merged feed."""

    id: str  # an IRI, as Atom requires
    guid: str
    guid_is_link: bool
    title: str
    link: str
    author: str
    tags: tuple[str, ...]
    date: datetime
    content: str
    summary: str
    feed_url: str | None


def site_base(link: str) -> str:
    """The site URL with a trailing slash, so that file names join under it."""
    return link if link.endswith("/") else link + "/"


def publish(config: Config, archive: Archive, now: datetime) -> list[Path]:
    """Write feed.xml, atom.xml and feed.json; return their paths."""
    items = _load_items(archive, config.max_items)
    base = site_base(config.link)
    builders: dict[str, Callable[[], bytes]] = {
        RSS_FILE: lambda: _build_xml(config, items, now, base + RSS_FILE, atom=False),
        ATOM_FILE: lambda: _build_xml(config, items, now, base + ATOM_FILE, atom=True),
        JSON_FILE: lambda: _build_json(config, items, base + JSON_FILE),
    }
    paths = []
    for name, build in builders.items():  # one at a time: big items are not held thrice
        path = archive.root / name
        write_file_atomic(path, build())
        paths.append(path)
    log.info("published items=%d files=%s", len(items), ",".join(builders))
    return paths


def _load_items(archive: Archive, limit: int) -> list[_Item]:
    items = []
    for record in archive.state.newest(limit):
        try:
            post = archive.read_post(record.path)
        except ArchiveError as e:
            log.warning("skipped in merged feed: %s (run `aggregator reindex`)", e)
            continue
        items.append(_item(post, record.key, record.feed_url))
    return items


def _item(post: StoredPost, key: str, feed_url: str | None) -> _Item:
    content = xml_safe(post.content)
    # The summary needs the start of the text only; a 10 MB item is not stripped whole.
    text = " ".join(html_to_text(content[: SUMMARY_CHARS * 20]).split())
    if len(text) > SUMMARY_CHARS:
        text = text[: SUMMARY_CHARS - 1].rstrip() + "…"
    source = xml_safe(post.source)
    has_scheme = ":" in source and source.split(":", 1)[0].isalpha()
    return _Item(
        id=source if has_scheme else "urn:sha256:" + hashlib.sha256(key.encode()).hexdigest(),
        guid=source or key,
        guid_is_link=is_http_url(source),
        title=xml_safe(post.title),
        link=xml_safe(post.link),
        author=xml_safe(post.author) or "unknown",
        tags=tuple(xml_safe(t) for t in post.tags),
        date=sort_date(post.published, post.archived),
        content=content,
        summary=text,
        feed_url=feed_url,
    )


def _build_xml(
    config: Config, items: list[_Item], now: datetime, self_url: str, atom: bool
) -> bytes:
    fg = FeedGenerator()
    if not atom:
        fg.load_extension("dc", atom=False, rss=True)
    fg.id(config.link)
    fg.title(xml_safe(config.title))
    fg.subtitle(xml_safe(config.description) or xml_safe(config.title))
    fg.link(
        href=self_url, rel="self", type="application/atom+xml" if atom else "application/rss+xml"
    )
    fg.link(href=config.link, rel="alternate", type="text/html")  # last: feedgen's RSS <link>
    fg.generator("aggregator", __version__)
    fg.updated(max((i.date for i in items), default=now))
    fg.lastBuildDate(now)
    for item in items:
        fe = fg.add_entry(order="append")
        if atom:  # feedgen keeps one identifier for both formats
            fe.id(item.id)
        else:
            fe.guid(item.guid, permalink=item.guid_is_link)
        fe.title(item.title or item.link)
        fe.link(href=item.link)
        fe.published(item.date)
        fe.updated(item.date)
        fe.author(name=item.author)
        if not atom:
            fe.dc.dc_creator(item.author)
        if item.tags:
            fe.category([{"term": t} for t in item.tags])
        fe.content(item.content, type="html")
        fe.summary(item.summary or item.title)  # RSS description, Atom summary
        if item.feed_url:
            fe.source(url=item.feed_url, title=item.author)
    result: bytes = fg.atom_str(pretty=True) if atom else fg.rss_str(pretty=True)
    return result


def _build_json(config: Config, items: list[_Item], self_url: str) -> bytes:
    feed: dict[str, Any] = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": config.title,
        "home_page_url": config.link,
        "feed_url": self_url,
        "description": config.description,
        "items": [
            {
                "id": item.id,
                "url": item.link,
                "title": item.title,
                "content_html": item.content,
                "summary": item.summary,
                "date_published": item.date.isoformat(),
                "authors": [{"name": item.author}],
                "tags": list(item.tags),
            }
            for item in items
        ],
    }
    return json.dumps(feed, ensure_ascii=False, indent=1).encode() + b"\n"
