"""Bytes and headers → :class:`ParsedFeed`. The only module that imports feedparser.

feedparser gets the body as a stream, never a URL or a path, so it never opens
anything itself; its own sanitizer and relative-URI rewriting are off because
:mod:`aggregator.sanitize` does both, once, with an allowlist. JSON Feed goes to
:mod:`aggregator.jsonfeed`.
"""

from __future__ import annotations

import contextlib
import html
import io
import re
from datetime import UTC, datetime
from typing import Any

from aggregator.errors import ParseError
from aggregator.jsonfeed import looks_like_json, parse_json_feed
from aggregator.models import Entry, ParsedFeed
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


def newest(dates: list[datetime | None], limit: int) -> list[int]:
    """Indexes of at most ``limit`` entries: the newest dated ones, then undated ones, in
    document order. A feed that dumps 50,000 items must not flood the archive."""
    if len(dates) <= limit:
        return list(range(len(dates)))
    order = sorted(
        range(len(dates)), key=lambda i: (dates[i] is None, -(dates[i] or _EPOCH).timestamp(), i)
    )
    return sorted(order[:limit])


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


# The plain-XML path ------------------------------------------------------------------
# feedparser spends about 0.8 ms on each entry of a typical feed. A well-formed UTF-8
# RSS 2.0 or Atom 1.0 document made only of the elements below is read here with lxml
# instead, ten times faster, into the same structure feedparser would have produced,
# with feedparser's own text clean-ups, URL joining and date parsing. Anything else
# (a DOCTYPE, xml:base, other encodings, XHTML content, unknown elements, markup in a
# text element) goes to feedparser. tests/test_parse.py checks, over feedparser's own
# corpus and the benchmark's feeds, that both paths give identical results.

_A = "{http://www.w3.org/2005/Atom}"
_CONTENT_ENCODED = "{http://purl.org/rss/1.0/modules/content/}encoded"
_DC = "{http://purl.org/dc/elements/1.1/}"
_RSS_CHANNEL = frozenset(
    {
        "title", "link", "description", "language", "copyright", "managingEditor", "webMaster",
        "pubDate", "lastBuildDate", "category", "generator", "docs", "ttl", "cloud", "rating",
        "skipHours", "skipDays", "item", _A + "link",
    }
)  # fmt: skip
_RSS_ITEM = frozenset(
    {
        "title", "link", "description", "guid", "pubDate", "author", "category", "comments",
        "enclosure", _CONTENT_ENCODED, _DC + "creator", _DC + "date", _DC + "subject", _A + "link",
    }
)  # fmt: skip
_ATOM_FEED = frozenset(
    _A + t
    for t in ("title", "subtitle", "link", "id", "updated", "author", "category", "generator",
              "icon", "logo", "rights", "contributor", "entry")
)  # fmt: skip
_ATOM_ENTRY = frozenset(
    _A + t
    for t in ("title", "link", "id", "updated", "published", "content", "summary", "author",
              "category", "contributor", "rights")
)  # fmt: skip
_ATOM_TEXT_TYPES = {
    "text": "text/plain",
    "html": "text/html",
    "text/html": "text/html",
    "text/plain": "text/plain",
}
_XML_MIME = frozenset({"application/xml", "application/rss+xml", "application/atom+xml"})
_ENTITY_IN_LINK = re.compile("&([A-Za-z0-9_]+);")
_C1_CONTROLS = re.compile("[\x80-\x9f]")  # what feedparser maps from windows-1252
_DECLARED = re.compile(rb"^(?:\xef\xbb\xbf)?<\?xml[^>]*?encoding=[\"']([A-Za-z0-9._-]+)[\"']")


_PERSON_PARTS = frozenset({_A + "name", _A + "email", _A + "uri"})
# Elements that may appear several times in one item (feedparser's rules for repeated
# titles, dates, ... differ from element to element: those documents go to it).
_REPEATABLE = frozenset(
    {
        "item",
        "category",
        _A + "entry",
        _A + "link",
        _A + "category",
        _A + "author",
        _A + "contributor",
    }
)


def _children(node: Any, allowed: frozenset[str]) -> Any:
    """The child elements, if all are known and none that matters is repeated."""
    seen: set[str] = set()
    for element in node:
        tag = element.tag
        if tag not in allowed or (tag in seen and tag not in _REPEATABLE):
            raise _NotPlain
        seen.add(tag)
        yield element


def _check_ignored(element: Any) -> None:
    """An element whose value is not used: feedparser must not find anything in it either."""
    for child in element:
        if child.tag not in _PERSON_PARTS or len(child):
            raise _NotPlain


class _NotPlain(Exception):
    """The document needs feedparser."""


def read_plain_xml(
    content: bytes, url: str, content_type: str | None, max_entries: int | None = None
) -> dict[str, Any] | None:
    """The document as feedparser would have read it, or None when feedparser must read it."""
    if not _plain_encoding(content, content_type):
        return None
    if b"<!DOCTYPE" in content or b"<!ENTITY" in content or b"xml:base" in content:
        return None
    from lxml import etree  # noqa: PLC0415

    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        root = etree.fromstring(content, parser)
    except etree.XMLSyntaxError:
        return None
    try:
        if (
            root.tag == "rss"
            and root.get("version") == "2.0"
            and [c.tag for c in root] == ["channel"]
        ):
            return _plain_rss(root[0], url, max_entries)
        if root.tag == _A + "feed":
            return _plain_atom(root, url, max_entries)
    except _NotPlain:
        return None
    return None


def _plain_encoding(content: bytes, content_type: str | None) -> bool:
    """UTF-8 by every account: the HTTP header, the XML declaration, the bytes' start."""
    mime, _, params = (content_type or "application/xml").partition(";")
    charset = ""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip("\"'").lower()
    mime = mime.strip().lower()
    if charset not in ("", "utf-8") or not (mime in _XML_MIME or (mime == "text/xml" and charset)):
        return False
    declared = _DECLARED.match(content)
    if declared and declared.group(1).lower() != b"utf-8":
        return False
    return not content.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00", b"\x3c\x00"))


def _fp_text(value: str) -> str:
    """feedparser's clean-up of every text value of a UTF-8 document (see mixin.pop)."""
    from feedparser.html import _cp1252  # noqa: PLC0415

    if value.isascii():  # the usual case, which neither step changes
        return value
    with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
        value = value.encode("iso-8859-1").decode("utf-8")
    return value.translate(_cp1252) if _C1_CONTROLS.search(value) else value


def _text_of(element: Any) -> str:
    if len(element) or element.attrib.get("{http://www.w3.org/XML/1998/namespace}base"):
        raise _NotPlain  # markup inside a text element
    return str(element.text or "").strip()


def _uri_of(element: Any, url: str, resolve: bool = True) -> str:
    from feedparser.urls import _urljoin  # noqa: PLC0415

    value = _text_of(element)
    return _fp_text(_urljoin(url, value) if value and resolve else value)


def _date_of(element: Any) -> Any:
    from feedparser.datetimes import _parse_date  # noqa: PLC0415

    return _parse_date(_fp_text(_text_of(element)))


def _rss_text(element: Any, url: str) -> dict[str, str]:
    from feedparser.mixin import _FeedParserMixin  # noqa: PLC0415

    value = _fp_text(_text_of(element))
    kind = "text/html" if _FeedParserMixin.looks_like_html(value) else "text/plain"
    return {"type": kind, "value": value, "base": url}


def _html_detail(element: Any, url: str) -> dict[str, str]:
    return {"type": "text/html", "value": _fp_text(_text_of(element)), "base": url}


def _atom_text(element: Any, url: str) -> dict[str, str]:
    kind = _ATOM_TEXT_TYPES.get(element.get("type", "text").lower())
    if kind is None or set(element.attrib) - {"type", "{http://www.w3.org/XML/1998/namespace}lang"}:
        raise _NotPlain  # xhtml, base64, src=...
    return {"type": kind, "value": _fp_text(_text_of(element)), "base": url}


def _atom_link(element: Any, url: str, context: dict[str, Any]) -> None:
    from feedparser.urls import _urljoin  # noqa: PLC0415

    href = element.get("href")
    if href is None or len(element):
        raise _NotPlain
    rel = element.get("rel", "alternate")
    kind = (
        element.get("type") or ("application/atom+xml" if rel == "self" else "text/html")
    ).lower()
    if rel == "alternate" and kind in ("text/html", "application/xhtml+xml", "html", "xhtml"):
        context["link"] = _urljoin(url, href)


def _id_as_link(value: str, context: dict[str, Any]) -> None:
    """feedparser takes a permalink GUID (and any Atom id) as the link, if none came first."""
    context["id"] = value
    context.setdefault("link", value)


def _selected(
    items: list[Any], allowed: frozenset[str], dated: tuple[str, str], limit: int | None
) -> list[Any]:
    """The items worth reading: all, or the newest ``limit`` by their date elements
    (published, then updated: what the entry's date will be) when there are more."""
    for item in items:  # every item is checked, read or not
        for _ in _children(item, allowed):
            pass
    if limit is None or len(items) <= limit:
        return items
    dates = []
    for item in items:
        found = {child.tag: child for child in item if child.tag in dated}
        parsed = [_date(_date_of(found[tag])) if tag in found else None for tag in dated]
        dates.append(parsed[0] or parsed[1])
    return [items[i] for i in newest(dates, limit)]


def _plain_rss(channel: Any, url: str, limit: int | None) -> dict[str, Any]:
    feed: dict[str, Any] = {}
    items = []
    for element in _children(channel, _RSS_CHANNEL):
        tag = element.tag
        if tag == "item":
            items.append(element)
        elif tag == "title":
            feed["title_detail"] = _rss_text(element, url)
        elif tag == "link":
            feed["link"] = _ENTITY_IN_LINK.sub(r"&\g<1>", _uri_of(element, url))
        elif tag == "ttl":
            feed["ttl"] = _fp_text(_text_of(element))
        elif tag == _A + "link":
            _atom_link(element, url, feed)
        else:
            _check_ignored(element)
    chosen = _selected(items, _RSS_ITEM, ("pubDate", _DC + "date"), limit)
    entries = [_plain_rss_item(item, url) for item in chosen]
    return {"version": "rss20", "feed": feed, "entries": entries, "total_entries": len(items)}


def _plain_rss_item(item: Any, url: str) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for element in _children(item, _RSS_ITEM):
        tag = element.tag
        if tag == "title":
            entry["title_detail"] = _rss_text(element, url)
        elif tag == "link":
            link = _uri_of(element, url).replace("&amp;", "&")
            entry["link"] = _ENTITY_IN_LINK.sub(r"&\g<1>", link)
        elif tag == "guid":
            permalink = next(
                (v for k, v in element.attrib.items() if k.lower() == "ispermalink"), "true"
            )
            value = _uri_of(element, url, resolve=permalink == "true")
            if permalink == "true":
                _id_as_link(value, entry)
            else:
                entry["id"] = value
        elif tag == "description":
            entry["summary_detail"] = _html_detail(element, url)
        elif tag == _CONTENT_ENCODED:
            entry["content"] = [_html_detail(element, url)]
        elif tag == "pubDate":
            entry["published_parsed"] = _date_of(element)
        elif tag == _DC + "date":
            entry["updated_parsed"] = _date_of(element)
        elif tag == _A + "link":
            _atom_link(element, url, entry)
        else:
            _check_ignored(element)
    return entry


def _plain_atom(root: Any, url: str, limit: int | None) -> dict[str, Any]:
    feed: dict[str, Any] = {}
    items = []
    for element in _children(root, _ATOM_FEED):
        tag = element.tag
        if tag == _A + "entry":
            items.append(element)
        elif tag == _A + "title":
            feed["title_detail"] = _atom_text(element, url)
        elif tag == _A + "link":
            _atom_link(element, url, feed)
        elif tag == _A + "id":
            _id_as_link(_uri_of(element, url), feed)
        else:
            _check_ignored(element)
    chosen = _selected(items, _ATOM_ENTRY, (_A + "published", _A + "updated"), limit)
    entries = [_plain_atom_entry(item, url) for item in chosen]
    return {"version": "atom10", "feed": feed, "entries": entries, "total_entries": len(items)}


def _plain_atom_entry(node: Any, url: str) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for element in _children(node, _ATOM_ENTRY):
        tag = element.tag
        if tag == _A + "title":
            entry["title_detail"] = _atom_text(element, url)
        elif tag == _A + "link":
            _atom_link(element, url, entry)
        elif tag == _A + "id":
            _id_as_link(_uri_of(element, url), entry)
        elif tag == _A + "updated":
            entry["updated_parsed"] = _date_of(element)
        elif tag == _A + "published":
            entry["published_parsed"] = _date_of(element)
        elif tag == _A + "content":
            entry["content"] = [_atom_text(element, url)]
        elif tag == _A + "summary":
            entry["summary_detail"] = _atom_text(element, url)
        else:
            _check_ignored(element)
    return entry


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


def _entry_date(e: Any) -> datetime | None:
    # dict.get: feedparser's own get() maps a missing updated_parsed to published_parsed.
    return _date(dict.get(e, "published_parsed")) or _date(dict.get(e, "updated_parsed"))


def _entry(e: Any, feed_url: str) -> Entry:
    content, base = _content(e)
    link = e.get("link") and resolve_url(str(e["link"]), base or feed_url)
    guid = str(e.get("id") or "").strip() or None
    published = _entry_date(e)
    return Entry(
        title=_text(e.get("title_detail")),
        link=link or None,
        guid=xml_safe(guid) if guid else None,
        content=content,
        base=base or link or feed_url,
        published=published,
    )
