"""JSON Feed 1.0/1.1 → :class:`ParsedFeed` (feedparser 6 does not read JSON Feed)."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import Any

from aggregator.errors import ParseError
from aggregator.models import Entry, ParsedFeed, newest
from aggregator.parsers.common import feed_icon, media, names, unique_files
from aggregator.sanitize import xml_safe
from aggregator.urls import resolve_url


def looks_like_json(content: bytes, content_type: str | None) -> bool:
    if content_type and "json" in content_type.lower():
        return True
    return content.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{"


def parse_json_feed(content: bytes, url: str, max_entries: int | None = None) -> ParsedFeed:
    try:
        data = json.loads(content.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = " ".join(str(e).split())[:200]
        raise ParseError(url, f"not a feed: invalid JSON ({reason})") from e
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, str) or not version.startswith("https://jsonfeed.org/version/"):
        raise ParseError(url, "not a feed: JSON without a JSON Feed version")
    items = data.get("items")
    if not isinstance(items, list):
        raise ParseError(url, "not a feed: JSON Feed without an items list")
    home = _json_str(data, "home_page_url")
    entries = [_json_entry(i, url) for i in items if isinstance(i, dict)]
    total = len(entries)
    if max_entries is not None and total > max_entries:
        entries = [entries[i] for i in newest([e.published for e in entries], max_entries)]
    return ParsedFeed(
        url=url,
        title=" ".join(_json_str(data, "title").split()) or None,
        link=resolve_url(home, url) if home else None,
        entries=tuple(entries),
        total_entries=total,
        icon=feed_icon((_json_str(data, "favicon"), _json_str(data, "icon")), url),
    )


def _json_str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    return xml_safe(value) if isinstance(value, str) else ""


def _json_list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    return value if isinstance(value, list) else []


def _json_date(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _json_entry(item: dict[str, Any], feed_url: str) -> Entry:
    link = resolve_url(_json_str(item, "url"), feed_url) if _json_str(item, "url") else None
    content = _json_str(item, "content_html")
    if not content:
        text = _json_str(item, "content_text") or _json_str(item, "summary")
        content = html.escape(text, quote=False)
    guid = item.get("id")
    base = link or feed_url
    people = _json_list(item, "authors")
    if isinstance(item.get("author"), dict):  # JSON Feed 1.0
        people = [*people, item["author"]]
    attachments = _json_list(item, "attachments")
    tags = _json_list(item, "tags")
    files = (
        media(
            a.get("url"),
            base,
            type=a.get("mime_type"),
            length=a.get("size_in_bytes"),
            duration=a.get("duration_in_seconds"),
        )
        for a in attachments
        if isinstance(a, dict)
    )
    image = _json_str(item, "image") or _json_str(item, "banner_image")
    return Entry(
        title=" ".join(_json_str(item, "title").split()),
        link=link,
        guid=xml_safe(str(guid)).strip() or None if guid is not None else None,
        content=content,
        base=base,
        published=_json_date(_json_str(item, "date_published"))
        or _json_date(_json_str(item, "date_modified")),
        summary=html.escape(_json_str(item, "summary"), quote=False),
        updated=_json_date(_json_str(item, "date_modified")),
        authors=names(p.get("name") for p in people if isinstance(p, dict)),
        categories=names(tags),
        enclosures=unique_files(files),
        image=resolve_url(image, base) if image else None,
    )
