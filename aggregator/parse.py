"""Bytes and headers → :class:`ParsedFeed`. The only module that imports feedparser.

feedparser gets the body as a stream, never a URL or a path, so it never opens
anything itself; its own sanitizer and relative-URI rewriting are off because
:mod:`aggregator.sanitize` does both, once, with an allowlist. JSON Feed 1.0/1.1,
which feedparser 6 does not read, is parsed here.
"""

from __future__ import annotations

import html
import io
import json
from datetime import UTC, datetime
from typing import Any

from aggregator.errors import ParseError
from aggregator.models import Entry, ParsedFeed
from aggregator.sanitize import html_to_text, xml_safe
from aggregator.urls import resolve_url

_HTML_TYPES = ("text/html", "application/xhtml+xml")


def parse_feed(content: bytes, url: str, content_type: str | None = None) -> ParsedFeed:
    """Parse a feed body fetched from ``url`` (the final URL, after redirects)."""
    if not content.strip():
        raise ParseError(url, "empty body")
    if _looks_like_json(content, content_type):
        return _parse_json_feed(content, url)
    import feedparser  # noqa: PLC0415 -- heavy import, only needed when a body changed

    headers = {"content-type": content_type or "application/xml", "content-location": url}
    try:
        d = feedparser.parse(
            io.BytesIO(content),
            response_headers=headers,
            sanitize_html=False,
            resolve_relative_uris=False,
        )
    except Exception as e:  # feedparser should not raise, but it reads hostile input
        raise ParseError(url, f"feed parser failed: {type(e).__name__}: {e}") from e
    entries = d.get("entries") or []
    if not d.get("version") and not entries:
        raise ParseError(url, _not_a_feed_reason(d, content_type))
    feed = d.get("feed", {})
    base = feed.get("link") and resolve_url(feed["link"], url)
    warning = None
    if d.get("bozo"):
        warning = f"ill-formed feed, read anyway: {_one_line(d.get('bozo_exception'))}"
    return ParsedFeed(
        url=url,
        title=_text(feed.get("title_detail")) or None,
        link=base or None,
        entries=tuple(_entry(e, url) for e in entries),
        warning=warning,
        ttl=_ttl(feed.get("ttl")),
    )


def _ttl(value: object) -> int | None:
    """RSS ``<ttl>`` in minutes, if it is a sane number."""
    try:
        minutes = int(str(value).strip())
    except ValueError:
        return None
    return minutes if 0 < minutes <= 7 * 24 * 60 else None


def _not_a_feed_reason(d: Any, content_type: str | None) -> str:
    exc = d.get("bozo_exception")
    if content_type and "html" in content_type:
        return f"not a feed: the server sent an HTML page ({content_type})"
    if exc is not None:
        return f"not a feed: {_one_line(exc)}"
    return "not a feed: no RSS, Atom or JSON Feed document found"


def _one_line(value: object, limit: int = 200) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(detail: Any) -> str:
    """Plain text of a feedparser text construct, whitespace collapsed."""
    if not detail:
        return ""
    value = str(detail.get("value") or "")
    if detail.get("type") in _HTML_TYPES:
        value = html_to_text(value)
    return " ".join(xml_safe(value).split())


def _content(entry: Any) -> tuple[str, str | None]:
    """The entry's full content as HTML (else its summary), and its xml:base."""
    candidates = list(entry.get("content") or [])
    detail = next((c for c in candidates if c.get("type") in _HTML_TYPES), None)
    detail = detail or (candidates[0] if candidates else entry.get("summary_detail"))
    if not detail:
        return "", None
    value = xml_safe(str(detail.get("value") or ""))
    if detail.get("type") not in _HTML_TYPES:
        value = html.escape(value, quote=False)
    return value, detail.get("base")


def _date(parsed: Any) -> datetime | None:
    if not parsed:
        return None
    try:
        year, month, day, hour, minute, second = parsed[:6]
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def _entry(e: Any, feed_url: str) -> Entry:
    content, base = _content(e)
    link = e.get("link") and resolve_url(str(e["link"]), base or feed_url)
    guid = str(e.get("id") or "").strip() or None
    published = _date(e.get("published_parsed")) or _date(e.get("updated_parsed"))
    return Entry(
        title=_text(e.get("title_detail")),
        link=link or None,
        guid=xml_safe(guid) if guid else None,
        content=content,
        base=base or link or feed_url,
        published=published,
    )


# JSON Feed ---------------------------------------------------------------------------


def _looks_like_json(content: bytes, content_type: str | None) -> bool:
    if content_type and "json" in content_type.lower():
        return True
    return content.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{"


def _parse_json_feed(content: bytes, url: str) -> ParsedFeed:
    try:
        data = json.loads(content.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ParseError(url, f"not a feed: invalid JSON ({_one_line(e)})") from e
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, str) or not version.startswith("https://jsonfeed.org/version/"):
        raise ParseError(url, "not a feed: JSON without a JSON Feed version")
    items = data.get("items")
    if not isinstance(items, list):
        raise ParseError(url, "not a feed: JSON Feed without an items list")
    home = _json_str(data, "home_page_url")
    return ParsedFeed(
        url=url,
        title=" ".join(_json_str(data, "title").split()) or None,
        link=resolve_url(home, url) if home else None,
        entries=tuple(_json_entry(i, url) for i in items if isinstance(i, dict)),
    )


def _json_str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    return xml_safe(value) if isinstance(value, str) else ""


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
    return Entry(
        title=" ".join(_json_str(item, "title").split()),
        link=link,
        guid=xml_safe(str(guid)).strip() or None if guid is not None else None,
        content=content,
        base=link or feed_url,
        published=_json_date(_json_str(item, "date_published"))
        or _json_date(_json_str(item, "date_modified")),
    )
