"""Bytes and headers → :class:`ParsedFeed`. The only module that imports feedparser.

feedparser gets the body as a stream, never a URL or a path, so it never opens
anything itself; its own sanitizer and relative-URI rewriting are off because
:mod:`aggregator.sanitize` does both, once, with an allowlist. JSON Feed goes to
:mod:`aggregator.jsonfeed`.
"""

from __future__ import annotations

import html
import io
from datetime import datetime
from typing import Any

from aggregator.errors import ParseError
from aggregator.jsonfeed import looks_like_json, parse_json_feed
from aggregator.models import Entry, ParsedFeed, newest
from aggregator.plainxml import read_plain_xml, struct_date
from aggregator.sanitize import html_to_text, xml_safe
from aggregator.urls import resolve_url

_HTML_TYPES = ("text/html", "application/xhtml+xml")


def parse_feed(
    content: bytes,
    url: str,
    content_type: str | None = None,
    *,
    max_entries: int | None = None,
    plain_xml: bool = True,
) -> ParsedFeed:
    """Parse a feed body fetched from ``url`` (the final URL, after redirects).

    Keeps the newest ``max_entries`` entries (see :func:`newest`). ``plain_xml=False``
    always uses feedparser (tests compare the two paths).
    """
    if not content.strip():
        raise ParseError(url, "empty body")
    if looks_like_json(content, content_type):
        return parse_json_feed(content, url, max_entries)
    d = (plain_xml and read_plain_xml(content, url, content_type, max_entries)) or (
        _read_with_feedparser(content, url, content_type)
    )
    entries = d.get("entries") or []
    if not d.get("version") and not entries:
        raise ParseError(url, _not_a_feed_reason(d, content_type))
    feed = d.get("feed", {})
    base = feed.get("link") and resolve_url(feed["link"], url)
    warning = None
    if d.get("bozo"):
        warning = f"ill-formed feed, read anyway: {_one_line(d.get('bozo_exception'))}"
    total = d.get("total_entries", len(entries))
    if max_entries is not None and len(entries) > max_entries:
        entries = [entries[i] for i in newest([_entry_date(e) for e in entries], max_entries)]
    return ParsedFeed(
        url=url,
        title=_text(feed.get("title_detail")) or None,
        link=base or None,
        entries=tuple(_entry(e, url) for e in entries),
        warning=warning,
        ttl=_ttl(feed.get("ttl")),
        total_entries=total,
    )


def _read_with_feedparser(content: bytes, url: str, content_type: str | None) -> Any:
    import feedparser  # noqa: PLC0415 -- heavy import, only needed when a body changed

    headers = {"content-type": content_type or "application/xml", "content-location": url}
    try:
        return feedparser.parse(
            io.BytesIO(content),
            response_headers=headers,
            sanitize_html=False,
            resolve_relative_uris=False,
        )
    except Exception as e:  # feedparser should not raise, but it reads hostile input
        raise ParseError(url, f"feed parser failed: {type(e).__name__}: {e}") from e


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
    return _html(detail), detail.get("base")


def _html(detail: Any) -> str:
    """A feedparser text construct as HTML."""
    value = xml_safe(str(detail.get("value") or ""))
    if detail.get("type") not in _HTML_TYPES:
        value = html.escape(value, quote=False)
    return value


def _entry_date(e: Any) -> datetime | None:
    # dict.get: feedparser's own get() maps a missing updated_parsed to published_parsed.
    return struct_date(dict.get(e, "published_parsed")) or struct_date(
        dict.get(e, "updated_parsed")
    )


def _entry(e: Any, feed_url: str) -> Entry:
    content, base = _content(e)
    link = e.get("link") and resolve_url(str(e["link"]), base or feed_url)
    guid = str(e.get("id") or "").strip() or None
    published = _entry_date(e)
    # A summary besides the content; without a content element the content *is* the
    # summary (and a 10 MiB one is not copied again).
    summary = _html(e["summary_detail"]) if e.get("content") and e.get("summary_detail") else ""
    return Entry(
        title=_text(e.get("title_detail")),
        link=link or None,
        guid=xml_safe(guid) if guid else None,
        content=content,
        base=base or link or feed_url,
        published=published,
        # feedparser copies a content without summary into the summary: not a summary.
        summary="" if summary == content else summary,
    )
