"""Bytes and headers → :class:`ParsedFeed`: one dispatcher, one adapter per format.

- :mod:`.plain`: plain RSS 2.0 and Atom 1.0 documents, read with lxml (the fast path);
- :mod:`.loose`: everything else XML, read by feedparser (the only module importing it);
- :mod:`.jsonfeed`: JSON Feed 1.0/1.1.

The XML adapters read a document into feedparser's vocabulary; :mod:`.common` turns that
into the typed :class:`ParsedFeed`, with the clean-ups every format shares.
"""

from __future__ import annotations

from typing import Any

from aggregator.errors import ParseError, one_line
from aggregator.models import ParsedFeed
from aggregator.parsers.common import parsed_feed
from aggregator.parsers.jsonfeed import looks_like_json, parse_json_feed
from aggregator.parsers.plain import read_plain_xml


def parse_feed(
    content: bytes,
    url: str,
    content_type: str | None = None,
    *,
    max_entries: int | None = None,
    plain_xml: bool = True,
) -> ParsedFeed:
    """Parse a feed body fetched from ``url`` (the final URL, after redirects).

    Keeps the newest ``max_entries`` entries. ``plain_xml=False`` always uses feedparser
    for XML (tests compare the two paths).
    """
    if not content.strip():
        raise ParseError(url, "empty body")
    if looks_like_json(content, content_type):
        return parse_json_feed(content, url, max_entries)
    d = plain_xml and read_plain_xml(content, url, content_type, max_entries)
    if not d:
        from aggregator.parsers.loose import read_with_feedparser  # noqa: PLC0415 -- heavy

        d = read_with_feedparser(content, url, content_type)
    if not d.get("version") and not d.get("entries"):
        raise ParseError(url, _not_a_feed_reason(d, content_type))
    warning = None
    if d.get("bozo"):
        warning = f"ill-formed feed, read anyway: {one_line(d.get('bozo_exception'))}"
    return parsed_feed(d, url, max_entries, warning)


def _not_a_feed_reason(d: Any, content_type: str | None) -> str:
    exc = d.get("bozo_exception")
    if content_type and "html" in content_type:
        return f"not a feed: the server sent an HTML page ({content_type})"
    if exc is not None:
        return f"not a feed: {one_line(exc)}"
    return "not a feed: no RSS, Atom or JSON Feed document found"
