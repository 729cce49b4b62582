"""The merged feed: the newest items of every source as RSS 2.0, Atom 1.0 and JSON Feed 1.1.

Publishing reads the index for the newest ``max_items`` items and then only those
posts, so its cost does not grow with the archive. Each file is replaced atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape as xml_escape

from feedgen.feed import FeedGenerator

from aggregator import __version__
from aggregator.archive import (
    ATOM_FILE,
    FEED_STYLESHEET,
    JSON_FILE,
    RSS_FILE,
    Archive,
    write_file_atomic,
)
from aggregator.errors import ArchiveError
from aggregator.models import Config, Episode, Media, Podcast, Post
from aggregator.posts import LOCAL_MEDIA
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
    authors: tuple[str, ...]  # the item's own people, else its source's name
    categories: tuple[str, ...]  # the item's own, then the tags of its feed
    date: datetime
    updated: datetime  # advances when the source edits the item
    content: str
    summary: str
    source: str  # the source's name
    feed_url: str | None
    enclosures: tuple[Media, ...]
    media: tuple[Media, ...]
    image: str | None
    episode: Episode


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
    podcast: Podcast = field(default_factory=Podcast)
    stylesheet: str = ""  # path (from the host's root) of the site's assets/feed.xsl


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
    stylesheet = f"{urlsplit(base).path}assets/{FEED_STYLESHEET}"
    mark = archive.state.publish_mark()  # (before the index is read)
    main = Channel(config.title, config.description, config.link, base, config.podcast, stylesheet)
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
            tag.podcast,
            stylesheet,
        )
        records = archive.state.newest(config.max_items, feeds=tag.feed_urls)
        tagged = _load_items(archive, records, known, config.link)
        paths += _write_feed(archive.root / TAGS_DIR / tag.slug, channel, tagged, now)
    install_site(archive.root)
    write_site_data(config, archive.root, tags, archive.state)
    archive.state.published(mark)
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


def _absolute(url: str, site: str) -> str:
    """A file the archive keeps (``/media/...``) as a URL under the site's link (which
    may be a folder of its host: the site is served there)."""
    return site.rstrip("/") + url if url.startswith("/media/") else url


def _absolute_media(media: tuple[Media, ...], site: str) -> tuple[Media, ...]:
    return tuple(dataclasses.replace(m, url=_absolute(m.url, site)) for m in media)


_KEPT_IN_CONTENT = re.compile(f'(?<==")({LOCAL_MEDIA.pattern})(?=")')


def _item(post: Post, key: str, feed_url: str | None, site: str) -> _Item:
    content = xml_safe(post.content)
    if "/media/" in content:  # pictures kept in the archive: absolute under the site
        content = _KEPT_IN_CONTENT.sub(lambda m: _absolute(m[1], site), content)
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
    name = xml_safe(post.author) or "unknown"
    date = post.sort_date
    tags = [t for t in post.tags if t != post.author]
    return _Item(
        key=key,
        id=source
        if scheme in _ID_SCHEMES
        else "urn:sha256:" + hashlib.sha256(key.encode()).hexdigest(),
        guid=source or key,
        guid_is_link=is_http_url(source),
        title=xml_safe(post.title),
        link=link,
        authors=tuple(xml_safe(a) for a in post.item_authors) or (name,),
        categories=tuple(dict.fromkeys(xml_safe(t) for t in (*post.item_categories, *tags))),
        date=date,
        updated=max(date, post.updated) if post.updated else date,
        content=content,
        summary=text,
        source=name,
        feed_url=feed_url,
        enclosures=_absolute_media(post.enclosures, site),
        media=_absolute_media(post.media, site),
        image=_absolute(post.image, site) if post.image else None,
        episode=post.episode,
    )


def _build_xml(
    channel: Channel, items: list[_Item], now: datetime, self_url: str, atom: bool
) -> bytes:
    fg = FeedGenerator()
    fg.load_extension("dc", atom=False, rss=True)
    fg.load_extension("media", atom=True, rss=True)
    podcast = not atom and (channel.podcast or any(i.episode for i in items))
    if podcast:
        fg.load_extension("podcast", atom=False, rss=True)
        _channel_podcast(fg, channel.podcast)
    if channel.podcast.language:
        fg.language(channel.podcast.language)
    fg.id(channel.link)
    fg.title(xml_safe(channel.title))
    fg.subtitle(xml_safe(channel.description) or xml_safe(channel.title))
    fg.link(
        href=self_url, rel="self", type="application/atom+xml" if atom else "application/rss+xml"
    )
    fg.link(href=channel.link, rel="alternate", type="text/html")  # last: feedgen's RSS <link>
    fg.generator("aggregator", __version__)
    fg.updated(max((i.updated for i in items), default=now))
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
        fe.updated(item.updated)
        if atom:
            fe.author([{"name": a} for a in item.authors])
        else:  # RSS <author> must be an e-mail address: names go in dc:creator
            fe.dc.dc_creator(list(item.authors))
        if item.categories:
            fe.category([{"term": t} for t in item.categories])
        fe.content(item.content, type="html")
        fe.summary(item.summary or item.title)  # RSS description, Atom summary
        if item.feed_url:
            fe.source(url=item.feed_url, title=item.source)
        _files(fe, item, atom)
        if podcast and not atom:
            _episode(fe, item)
    document: bytes = fg.atom_str(pretty=True) if atom else fg.rss_str(pretty=True)
    if atom:
        document = _with_atom_enclosures(document, items)
    return _with_stylesheet(document, channel.stylesheet) if channel.stylesheet else document


def _with_stylesheet(document: bytes, path: str) -> bytes:
    """The feed with an ``xml-stylesheet`` instruction: a browser shows it as a page that
    says how to subscribe (assets/feed.xsl of the site); readers ignore it. Its ``path``
    is the site's own (same origin, as browsers require of a stylesheet), from its root."""
    href = xml_escape(path, {'"': "&quot;"})
    instruction = f'<?xml-stylesheet type="text/xsl" href="{href}"?>\n'.encode()
    declaration_end = document.find(b"?>") + 2 if document.startswith(b"<?xml") else 0
    return b"%s\n%s%s" % (
        document[:declaration_end],
        instruction,
        document[declaration_end:].lstrip(b"\n"),
    )


def _files(fe: Any, item: _Item, atom: bool) -> None:
    """RSS: the first enclosure as ``<enclosure>`` (RSS allows one), the others and the
    item's media as ``media:content``; Atom: media only (enclosures are added after,
    see :func:`_with_atom_enclosures`). Both: the picture as ``media:thumbnail``."""
    rest = item.enclosures if atom else item.enclosures[1:]
    if item.enclosures and not atom:
        first = item.enclosures[0]
        fe.enclosure(first.url, str(first.length or 0), first.type or _DEFAULT_TYPE)
    for media in (*([] if atom else rest), *item.media):
        fe.media.content(_media_attributes(media), group=None)
    if item.image:
        fe.media.thumbnail({"url": item.image}, group=None)


_DEFAULT_TYPE = "application/octet-stream"


def _media_attributes(media: Media) -> dict[str, str]:
    attributes = {"url": media.url}
    for name, value in (
        ("fileSize", media.length),
        ("type", media.type),
        ("medium", media.medium),
        ("duration", media.duration),
        ("width", media.width),
        ("height", media.height),
    ):
        if value is not None:
            attributes[name] = str(value)
    return attributes


def _with_atom_enclosures(document: bytes, items: list[_Item]) -> bytes:
    """Atom ``link rel="enclosure"`` elements with their type and length, which feedgen
    1.0 writes without attributes."""
    if not any(item.enclosures for item in items):
        return document
    from lxml import etree  # noqa: PLC0415

    atom = "{http://www.w3.org/2005/Atom}"
    parser = etree.XMLParser(resolve_entities=False, huge_tree=True, remove_blank_text=True)
    root = etree.fromstring(document, parser)
    for entry, item in zip(root.iter(f"{atom}entry"), items, strict=True):
        after = entry.find(f"{atom}link")
        position = list(entry).index(after) + 1 if after is not None else len(entry)
        for offset, media in enumerate(item.enclosures):
            link = etree.Element(f"{atom}link", rel="enclosure", href=media.url)
            link.set("type", media.type or _DEFAULT_TYPE)
            if media.length is not None:
                link.set("length", str(media.length))
            entry.insert(position + offset, link)
    result: bytes = etree.tostring(root, pretty_print=True, xml_declaration=True, encoding="UTF-8")
    return result


def _channel_podcast(fg: Any, podcast: Podcast) -> None:
    if podcast.author:
        fg.podcast.itunes_author(podcast.author)
    if podcast.author and podcast.email:
        fg.podcast.itunes_owner(name=podcast.author, email=podcast.email)
    if podcast.image:
        fg.podcast.itunes_image(podcast.image)
    if podcast.category:
        category = {"cat": podcast.category}  # (config refuses quotes: feedgen queries by it)
        fg.podcast.itunes_category(
            category | {"sub": podcast.subcategory} if podcast.subcategory else category
        )
    if podcast.explicit is not None:
        fg.podcast.itunes_explicit("yes" if podcast.explicit else "no")


def _episode(fe: Any, item: _Item) -> None:
    episode = item.episode
    if episode.duration is not None:
        fe.podcast.itunes_duration(episode.duration)
    if episode.number:
        fe.podcast.itunes_episode(episode.number)
    if episode.season:
        fe.podcast.itunes_season(episode.season)
    if episode.kind:
        fe.podcast.itunes_episode_type(episode.kind)
    if episode.explicit is not None:
        fe.podcast.itunes_explicit("yes" if episode.explicit else "no")
    if item.image and item.image.endswith((".jpg", ".png")):
        fe.podcast.itunes_image(item.image)  # feedgen refuses any other (a query string too)


def _build_json(channel: Channel, items: list[_Item], self_url: str) -> bytes:
    feed: dict[str, Any] = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": channel.title,
        "home_page_url": channel.link,
        "feed_url": self_url,
        "description": channel.description,
        "items": [_json_item(item) for item in items],
    }
    if channel.podcast.image:
        feed["icon"] = channel.podcast.image
    if channel.podcast.language:
        feed["language"] = channel.podcast.language
    return json.dumps(feed, ensure_ascii=False, indent=1).encode() + b"\n"


def _json_item(item: _Item) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": item.id,
        "url": item.link,
        "title": item.title,
        "content_html": item.content,
        "summary": item.summary,
        "date_published": item.date.isoformat(),
        "authors": [{"name": a} for a in item.authors],
        "tags": list(item.categories),
    }
    if item.updated != item.date:
        out["date_modified"] = item.updated.isoformat()
    if item.image:
        out["image"] = item.image
    if item.enclosures:
        out["attachments"] = [_attachment(m) for m in item.enclosures]
    source = {"title": item.source}
    if item.feed_url:
        source["feed_url"] = item.feed_url
    out["_source"] = source
    return out


def _attachment(media: Media) -> dict[str, Any]:
    attachment: dict[str, Any] = {"url": media.url, "mime_type": media.type or _DEFAULT_TYPE}
    if media.length is not None:
        attachment["size_in_bytes"] = media.length
    if media.duration is not None:
        attachment["duration_in_seconds"] = media.duration
    return attachment
