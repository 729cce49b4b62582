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
from aggregator.site import TAGS_DIR, config_tags, install_site, write_site_data
from aggregator.state import ItemRecord
from aggregator.urls import is_http_url

log = logging.getLogger(__name__)

SUMMARY_CHARS = 300


@dataclass(frozen=True, slots=True)
class _Item:
    """One item of the merged feed."""

    key: str  # the dedupe key
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


@dataclass(frozen=True, slots=True)
class Channel:
    """What a published feed says of itself."""

    title: str
    description: str
    link: str  # the web page the feed belongs to
    folder: str  # URL of the folder its files are published in


def publish(config: Config, archive: Archive, now: datetime) -> list[Path]:
    """Write the merged feed (feed.xml, atom.xml, feed.json), the same three files per
    tag under ``tags/<slug>/``, and the site's data; return the feeds' paths.

    Raises :class:`ArchiveError` if anything cannot be written; the index then still
    says that a publish is due (:meth:`State.publish_needed`), so it is retried.
    """
    try:
        return _publish(config, archive, now)
    except OSError as e:  # the site's files; the feeds' own writes say which file
        raise ArchiveError(f"publishing in {archive.root} failed: {e.strerror or e}") from e


def _publish(config: Config, archive: Archive, now: datetime) -> list[Path]:
    base = site_base(config.link)
    main = Channel(config.title, config.description, config.link, base)
    items = _load_items(archive, archive.state.newest(config.max_items), {}, config.link)
    paths = _write_feed(archive.root, main, items, now)
    known = {item.key: item for item in items}  # tag feeds mostly hold these same items
    tags = config_tags(config)
    for tag in tags:
        folder = f"{base}{TAGS_DIR}/{tag.slug}/"
        channel = Channel(
            f"{config.title}: {tag.name}",
            f"The newest items tagged {tag.name}. {config.description}".strip(),
            folder,
            folder,
        )
        records = archive.state.newest(config.max_items, feeds=tag.feed_urls)
        tagged = _load_items(archive, records, known, config.link)
        paths += _write_feed(archive.root / TAGS_DIR / tag.slug, channel, tagged, now)
    install_site(archive.root)
    write_site_data(config, archive.root, tags)
    archive.state.published()
    log.info("published items=%d tags=%d", len(items), len(tags))
    return paths


def _write_feed(folder: Path, channel: Channel, items: list[_Item], now: datetime) -> list[Path]:
    builders: dict[str, Callable[[], bytes]] = {
        RSS_FILE: lambda: _build_xml(channel, items, now, channel.folder + RSS_FILE, atom=False),
        ATOM_FILE: lambda: _build_xml(channel, items, now, channel.folder + ATOM_FILE, atom=True),
        JSON_FILE: lambda: _build_json(channel, items, channel.folder + JSON_FILE),
    }
    paths = []
    for name, build in builders.items():  # one at a time: big items are not held thrice
        path = folder / name
        write_file_atomic(path, build())
        paths.append(path)
    return paths


def _load_items(
    archive: Archive, records: list[ItemRecord], known: dict[str, _Item], site: str
) -> list[_Item]:
    items = []
    for record in records:
        if record.key in known:
            items.append(known[record.key])
            continue
        try:
            post = archive.read_post(record.path)
        except ArchiveError as e:
            log.warning("skipped in merged feed: %s (run `aggregator reindex`)", e)
            continue
        items.append(_item(post, record.key, record.feed_url, site))
    return items


_ID_SCHEMES = frozenset({"http", "https", "urn", "tag"})


def _item(post: StoredPost, key: str, feed_url: str | None, site: str) -> _Item:
    content = xml_safe(post.content)
    # The summary needs the start of the text only; a 10 MB item is not stripped whole.
    text = " ".join(html_to_text(content[: SUMMARY_CHARS * 20]).split())
    if len(text) > SUMMARY_CHARS:
        text = text[: SUMMARY_CHARS - 1].rstrip() + "…"
    source = xml_safe(post.source)
    scheme = source.split(":", 1)[0].lower() if ":" in source else ""
    # Only http(s) is ever linked: a post whose link is anything else (a hand edit, an
    # item known by a javascript:// GUID) links to its source if that is http(s), else
    # to the site. Identifiers keep the schemes readers expect of them.
    link = next((u for u in (xml_safe(post.link), source) if is_http_url(u)), site)
    return _Item(
        key=key,
        id=source
        if scheme in _ID_SCHEMES
        else "urn:sha256:" + hashlib.sha256(key.encode()).hexdigest(),
        guid=source or key,
        guid_is_link=is_http_url(source),
        title=xml_safe(post.title),
        link=link,
        author=xml_safe(post.author) or "unknown",
        tags=tuple(xml_safe(t) for t in post.tags),
        date=sort_date(post.published, post.archived),
        content=content,
        summary=text,
        feed_url=feed_url,
    )


def _build_xml(
    config: Channel, items: list[_Item], now: datetime, self_url: str, atom: bool
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


def _build_json(config: Channel, items: list[_Item], self_url: str) -> bytes:
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
