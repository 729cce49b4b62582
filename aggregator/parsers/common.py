"""What every format's adapter shares: a feed read into feedparser's vocabulary (the
dictionary keys of its public API: ``title_detail``, ``links``, ``media_content``, ...)
becomes the typed :class:`ParsedFeed`, with the same clean-ups whichever adapter read it.

The plain-XML fast path (:mod:`.plain`) and the feedparser fallback (:mod:`.loose`) both
produce that vocabulary; JSON Feed (:mod:`.jsonfeed`) builds its entries with the helpers
below. No module here imports feedparser.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aggregator.models import Entry, Episode, Media, ParsedFeed, newest
from aggregator.sanitize import html_to_text, xml_safe
from aggregator.urls import is_http_url, resolve_url

MAX_ICON_URL = 2000

HTML_TYPES = ("text/html", "application/xhtml+xml")


def parsed_feed(
    d: Mapping[str, Any], url: str, max_entries: int | None, warning: str | None
) -> ParsedFeed:
    """A document in feedparser's vocabulary as a :class:`ParsedFeed`; keeps the newest
    ``max_entries`` entries (see :func:`newest`)."""
    entries = d.get("entries") or []
    feed = d.get("feed", {})
    base = feed.get("link") and resolve_url(feed["link"], url)
    total = d.get("total_entries", len(entries))
    if max_entries is not None and len(entries) > max_entries:
        entries = [entries[i] for i in newest([entry_date(e) for e in entries], max_entries)]
    return ParsedFeed(
        url=url,
        title=text_of(feed.get("title_detail")) or None,
        link=base or None,
        entries=tuple(_entry(e, url) for e in entries),
        warning=warning,
        ttl=_ttl(feed.get("ttl")),
        total_entries=total,
        icon=feed_icon(
            (feed.get("icon"), (feed.get("image") or {}).get("href"), feed.get("logo")), url
        ),
    )


def feed_icon(candidates: Iterable[object], base: str) -> str | None:
    """The first of ``candidates`` that is an http(s) URL (relative ones resolved)."""
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.strip():
            icon = resolve_url(candidate.strip(), base)
            if (
                icon
                and is_http_url(icon)
                and len(icon) <= MAX_ICON_URL
                and not any(c.isspace() or ord(c) < 32 for c in icon)
            ):
                return icon
    return None


def struct_date(parsed: Any) -> datetime | None:
    """A time tuple as an aware UTC datetime, or None if it is not a valid date."""
    if not parsed:
        return None
    try:
        year, month, day, hour, minute, second = parsed[:6]
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def entry_date(e: Mapping[str, Any]) -> datetime | None:
    """The entry's own date: published, else updated."""
    return struct_date(_own(e, "published_parsed")) or struct_date(_own(e, "updated_parsed"))


def _own(e: Mapping[str, Any], key: str) -> Any:
    """``e[key]`` if ``e`` has it (feedparser's get() maps a missing updated_parsed to
    published_parsed, which is not the entry's own)."""
    return dict.get(e, key) if isinstance(e, dict) else e.get(key)


def text_of(detail: Mapping[str, Any] | None) -> str:
    """Plain text of a text construct, whitespace collapsed."""
    if not detail:
        return ""
    value = str(detail.get("value") or "")
    if detail.get("type") in HTML_TYPES:
        value = html_to_text(value)
    return one_line(value)


def one_line(value: str) -> str:
    return " ".join(xml_safe(value).split())


def html_of(detail: Mapping[str, Any]) -> str:
    """A text construct as HTML."""
    value = xml_safe(str(detail.get("value") or ""))
    if detail.get("type") not in HTML_TYPES:
        value = html.escape(value, quote=False)
    return value


def _ttl(value: object) -> int | None:
    """RSS ``<ttl>`` in minutes, if it is a sane number."""
    try:
        minutes = int(str(value).strip())
    except ValueError:
        return None
    return minutes if 0 < minutes <= 7 * 24 * 60 else None


def _content(entry: Mapping[str, Any]) -> tuple[str, str | None]:
    """The entry's full content as HTML (else its summary), and its xml:base.

    An HTML content element first; else an HTML summary (a podcast's show notes, where
    the content is a plain ``itunes:summary``); else whatever text there is.
    """
    candidates = list(entry.get("content") or [])
    summary = entry.get("summary_detail")
    detail = next((c for c in candidates if c.get("type") in HTML_TYPES), None)
    if detail is None and summary and summary.get("type") in HTML_TYPES and summary.get("value"):
        detail = summary
    detail = detail or (candidates[0] if candidates else summary)
    if not detail:
        return "", None
    return html_of(detail), detail.get("base")


def _entry(e: Mapping[str, Any], feed_url: str) -> Entry:
    content, base = _content(e)
    link = e.get("link") and resolve_url(str(e["link"]), base or feed_url)
    guid = str(e.get("id") or "").strip() or None
    # A summary besides the content; without a content element the content *is* the
    # summary (and a 10 MiB one is not copied again).
    summary_detail = e.get("summary_detail")
    summary = html_of(summary_detail) if e.get("content") and summary_detail else ""
    where = base or link or feed_url
    return Entry(
        title=text_of(e.get("title_detail")),
        link=link or None,
        guid=xml_safe(guid) if guid else None,
        content=content,
        base=where,
        published=entry_date(e),
        # feedparser copies a content without summary into the summary: not a summary.
        summary="" if summary == content else summary,
        updated=struct_date(_own(e, "updated_parsed")),
        authors=_people(e.get("authors")),
        categories=_categories(e.get("tags")),
        enclosures=_enclosures(e.get("links"), where),
        media=_media(e.get("media_content"), where),
        image=_image(e, where),
        episode=_episode(e) if any(k in e for k in _EPISODE_KEYS) else _NO_EPISODE,
    )


# Each of these is absent from most entries: nothing is built for them then.


def _people(people: Any) -> tuple[str, ...]:
    if not people:
        return ()
    return names(p.get("name") for p in people if isinstance(p, Mapping))


def _categories(tags: Any) -> tuple[str, ...]:
    if not tags:
        return ()
    return names(t.get("label") or t.get("term") for t in tags if isinstance(t, Mapping))


def _enclosures(links: Any, base: str) -> tuple[Media, ...]:
    if not links:
        return ()
    return unique_files(
        media(link.get("href"), base, type=link.get("type"), length=link.get("length"))
        for link in links
        if isinstance(link, Mapping) and link.get("rel") == "enclosure"
    )


def _media(contents: Any, base: str) -> tuple[Media, ...]:
    if not contents:
        return ()
    return unique_files(
        media(
            m.get("url"),
            base,
            type=m.get("type"),
            length=m.get("filesize"),
            medium=m.get("medium"),
            duration=m.get("duration"),
            width=m.get("width"),
            height=m.get("height"),
        )
        for m in contents
        if isinstance(m, Mapping)
    )


_EPISODE_KEYS = (
    "itunes_duration",
    "itunes_episode",
    "itunes_season",
    "itunes_episodetype",
    "itunes_explicit",
)
_NO_EPISODE = Episode()


def _episode(e: Mapping[str, Any]) -> Episode:
    explicit = e.get("itunes_explicit")
    return Episode(
        duration=seconds(e.get("itunes_duration")),
        number=count(e.get("itunes_episode")),
        season=count(e.get("itunes_season")),
        kind=_episode_type(e.get("itunes_episodetype")),
        explicit=explicit if isinstance(explicit, bool) else None,
    )


def _image(e: Mapping[str, Any], base: str) -> str | None:
    """The item's picture: its first ``media:thumbnail``, else its ``itunes:image``."""
    if "media_thumbnail" not in e and "image" not in e:
        return None
    for thumbnail in e.get("media_thumbnail") or ():
        if isinstance(thumbnail, Mapping) and (url := _url(thumbnail.get("url"), base)):
            return url
    image = e.get("image")
    return _url(image.get("href"), base) if isinstance(image, Mapping) else None


def names(values: Iterable[object]) -> tuple[str, ...]:
    """Distinct non-empty names, on one line each, in order."""
    found: dict[str, None] = {}
    for value in values:
        if isinstance(value, str) and (name := one_line(value)):
            found.setdefault(name[:200], None)
    return tuple(found)


def _url(value: object, base: str) -> str | None:
    return resolve_url(xml_safe(value), base) if isinstance(value, str) and value else None


def media(
    url: object,
    base: str,
    *,
    type: object = None,
    length: object = None,
    medium: object = None,
    duration: object = None,
    width: object = None,
    height: object = None,
) -> Media | None:
    """One file of an item, its URL made absolute; None unless it is http(s)."""
    absolute = _url(url, base)
    if absolute is None:
        return None
    kind = one_line(type).lower() if isinstance(type, str) else ""
    return Media(
        url=absolute,
        type=kind if _MIME.fullmatch(kind) else None,
        length=count(length),
        medium=medium.lower() if isinstance(medium, str) and medium.lower() in _MEDIA else None,
        duration=seconds(duration),
        width=count(width),
        height=count(height),
    )


_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,127}")
_MEDIA = frozenset({"image", "audio", "video", "document", "executable"})
MAX_FILES = 20  # per item: a feed listing thousands must not bloat every post


def unique_files(found: Iterable[Media | None]) -> tuple[Media, ...]:
    """The files found, each URL once, at most :data:`MAX_FILES`."""
    unique: dict[str, Media] = {}
    for item in found:
        if item is not None and item.url not in unique and len(unique) < MAX_FILES:
            unique[item.url] = item
    return tuple(unique.values())


def count(value: object) -> int | None:
    """A non-negative whole number a feed wrote as text (or a number), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value) if 0 <= value < 2**53 else None
    if isinstance(value, str) and (text := value.strip()).isascii() and text.isdigit():
        return int(text) if len(text) <= 15 else None
    return None


_CLOCK = re.compile(r"(?:(\d{1,4}):)?(\d{1,4}):(\d{1,2})(?:\.\d+)?")


def seconds(value: object) -> int | None:
    """A duration: seconds (``2530``), or ``MM:SS`` / ``HH:MM:SS``."""
    if (whole := count(value)) is not None:
        return whole
    if isinstance(value, str) and (m := _CLOCK.fullmatch(value.strip())):
        hours, minutes, secs = (int(g) if g else 0 for g in m.groups())
        return hours * 3600 + minutes * 60 + secs if secs < 60 else None
    return None


def _episode_type(value: object) -> str | None:
    kind = value.strip().lower() if isinstance(value, str) else ""
    return kind if kind in ("full", "trailer", "bonus") else None
