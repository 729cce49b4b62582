"""How feedparser reads a plain document's texts, URLs and dates, written again for the
fast path (:mod:`.plain`), which must give exactly what feedparser gives without
importing it: its clean-up of text decoded twice or carrying windows-1252 characters,
its URL joining, its sniffing of HTML in RSS text elements, and its reading of the two
date forms feeds use (W3C/ISO 8601 and RFC 822 with a numeric or UTC zone). Another
date form is not read here (None): the document then goes to feedparser.
``tests/test_parse.py`` holds the two paths to the same results.
"""

from __future__ import annotations

import contextlib
import html.entities
import re
from datetime import datetime, timedelta
from urllib.parse import urljoin

_C1_CONTROLS = re.compile("[\x80-\x9f]")  # what feedparser maps from windows-1252


# feedparser's reading of windows-1252 bytes a document declared as UTF-8 (C1 controls).
_CP1252 = {
    c: bytes([c]).decode("cp1252")
    for c in range(0x80, 0xA0)
    if c not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}


def fp_text(value: str) -> str:
    """feedparser's clean-up of every text value of a UTF-8 document."""
    # Either step changes a text only if it holds a character from U+0080 to U+00BF (a
    # C1 control, or what a UTF-8 continuation byte reads as in Latin-1), each of which
    # UTF-8 encodes with a first byte of C2: a byte search that is several times faster
    # than a pattern's scan over a long text without one (a CJK article).
    if value.isascii() or b"\xc2" not in value.encode("utf-8", "surrogatepass"):
        return value
    with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
        value = value.encode("iso-8859-1").decode("utf-8")
    return value.translate(_CP1252) if _C1_CONTROLS.search(value) else value


_SCHEME_SLASHES = re.compile("^([A-Za-z][A-Za-z0-9+-.]*://)(/*)(.*?)")


# An absolute http(s) URL that both steps give back unchanged (no slash to drop, no empty
# query, fragment or parameters that urljoin would rewrite): the usual item link.
_PLAIN_ABSOLUTE = re.compile(
    r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[^\x00-\x20\x7f\\?#;]*)?"
    r"(?:\?[^\x00-\x20\x7f\\?#;]+)?(?:#[^\x00-\x20\x7f\\#;]+)?"
)


def join(base: str, uri: str) -> str:
    """feedparser's URL joining: extra slashes after the scheme dropped, then urljoin."""
    if _PLAIN_ABSOLUTE.fullmatch(uri):
        return uri
    uri = _SCHEME_SLASHES.sub(r"\1\3", uri)
    try:
        return urljoin(base, uri)
    except ValueError:
        return ""


_ISO_DATE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)(?:[Tt](\d\d):(\d\d)(?::(\d\d)(?:\.\d+)?)?([Zz]|[+-]\d\d:\d\d))?"
)
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
)}  # fmt: skip
_RFC822_DATE = re.compile(
    r"(?:(?:mon|tue|wed|thu|fri|sat|sun),?\s+)?(\d\d?)\s+([a-z]{3})\s+(\d{4})\s+"
    r"(\d\d):(\d\d)(?::(\d\d))?\s+(gmt|ut|utc|z|[+-]\d\d:?\d\d)"
)


def read_date(text: str) -> datetime | None:
    if m := _ISO_DATE.fullmatch(text):
        year, month, day = (int(g) for g in m.group(1, 2, 3))
        hour, minute, second = (int(g or 0) for g in m.group(4, 5, 6))
        return datetime(year, month, day, hour, minute, second) - _offset(m.group(7))
    if (m := _RFC822_DATE.fullmatch(text.lower())) and (named := _MONTHS.get(m.group(2))):
        hour, minute, second = (int(g or 0) for g in m.group(4, 5, 6))
        moment = datetime(int(m.group(3)), named, int(m.group(1)), hour, minute, second)
        return moment - _offset(m.group(7))
    return None


def _offset(zone: str | None) -> timedelta:
    if not zone or zone[0] not in "+-":
        return timedelta(0)
    digits = zone[1:].replace(":", "")
    sign = -1 if zone[0] == "-" else 1
    return sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))


_HTML_ELEMENTS = frozenset(
    {
         "a", "abbr", "acronym", "address", "area", "article", "aside", "audio", "b", "big",
         "blockquote", "br", "button", "canvas", "caption", "center", "cite", "code", "col",
         "colgroup", "command", "datagrid", "datalist", "dd", "del", "details", "dfn", "dialog",
         "dir", "div", "dl", "dt", "em", "event-source", "fieldset", "figcaption", "figure",
         "font", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "i",
         "img", "input", "ins", "kbd", "keygen", "label", "legend", "li", "m", "map", "menu",
         "meter", "multicol", "nav", "nextid", "noscript", "ol", "optgroup", "option", "output",
         "p", "pre", "progress", "q", "s", "samp", "section", "select", "small", "sound",
         "source", "spacer", "span", "strike", "strong", "sub", "sup", "table", "tbody", "td",
         "textarea", "tfoot", "th", "thead", "time", "tr", "tt", "u", "ul", "var", "video",
    }
)  # fmt: skip


def looks_like_html(value: str) -> bool:
    """feedparser's test of whether an RSS text element holds HTML."""
    if not (re.search(r"</(\w+)>", value) or re.search(r"&#?\w+;", value)):
        return False
    if any(t.lower() not in _HTML_ELEMENTS for t in re.findall(r"</?(\w+)", value)):
        return False
    return all(e in html.entities.entitydefs for e in re.findall(r"&(\w+);", value))
