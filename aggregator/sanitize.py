"""Allowlist HTML sanitizing of feed content, and plain text from HTML.

The allowlist keeps what readable articles use (paragraphs, images, links, lists,
tables, headings, quotes, code, small/italic text, simple inline colours) and drops
everything that can run code or reach out: scripts, event handlers, ``javascript:``
and ``data:`` URLs, iframes, objects, forms, style sheets and CSS functions.
Relative URLs are made absolute against the entry's base; images may be routed
through an image proxy.
"""

from __future__ import annotations

import functools
import html
import re
import threading

import nh3

from aggregator.urls import resolve_url

ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "audio", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del",
        "div", "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6",
        "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small",
        "source", "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th",
        "thead", "time", "tr", "u", "ul", "video",
    }
)  # fmt: skip

# Tags removed together with everything inside them.
DROPPED_WITH_CONTENT = frozenset(
    {
        "applet", "button", "embed", "form", "frame", "frameset", "head", "iframe", "math",
        "noscript", "object", "script", "select", "style", "svg", "template", "textarea",
        "title",
    }
)  # fmt: skip

_STYLED = ("div", "p", "span", "small", "a", "img", "td", "th", "table")
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "audio": {"src", "controls"},  # never autoplay; preload is set to none
    "source": {"src", "type"},
    "video": {"src", "controls", "poster", "width", "height"},
    "blockquote": {"cite"},
    "del": {"cite", "datetime"},
    "img": {"src", "alt", "title", "width", "height"},
    "ins": {"cite", "datetime"},
    "li": {"value"},
    "ol": {"start", "reversed", "type"},
    "q": {"cite"},
    "td": {"colspan", "rowspan", "align"},
    "th": {"colspan", "rowspan", "align", "scope"},
    "time": {"datetime"},
}
for _tag in _STYLED:
    ALLOWED_ATTRIBUTES.setdefault(_tag, set()).add("style")

_URL_ATTRIBUTES = frozenset({"href", "src", "cite", "poster"})
_LINK_SCHEMES = ("mailto:",)

_SAFE_STYLE_PROPERTIES = frozenset(
    {
        "background-color", "border", "border-bottom", "border-left", "border-right",
        "border-top", "color", "font-size", "font-style", "font-weight", "height",
        "line-height", "margin", "margin-bottom", "margin-left", "margin-right",
        "margin-top", "max-width", "padding", "padding-bottom", "padding-left",
        "padding-right", "padding-top", "text-align", "text-decoration", "vertical-align",
        "white-space", "width",
    }
)  # fmt: skip
# A declaration value: words, numbers, units, percentages and #colours; no functions,
# quotes, escapes, comments or URLs.
_SAFE_STYLE_VALUE = re.compile(r"[#a-zA-Z0-9 .,%-]+")


def _is_safe_style(style: str) -> bool:
    """True if every declaration of ``style`` is allowlisted property: plain value."""
    declarations = [d for d in style.split(";") if d.strip()]
    if not declarations:
        return False
    for declaration in declarations:
        prop, colon, value = declaration.partition(":")
        if not colon or prop.strip().lower() not in _SAFE_STYLE_PROPERTIES:
            return False
        if not _SAFE_STYLE_VALUE.fullmatch(value.strip()):
            return False
    return True


def proxy_image(url: str, template: str) -> str:
    """Route an http(s) image URL through ``template`` (``{url}`` = URL without scheme)."""
    return template.replace("{url}", url.split("://", 1)[1])


class _Fragment(threading.local):
    """What the attribute filter needs of the fragment being cleaned (one cleaner serves
    every fragment; each thread cleans one at a time)."""

    base: str = ""
    image_proxy: str | None = None


_fragment = _Fragment()


def _keep(tag: str, attribute: str, value: str) -> str | None:
    if attribute == "style":
        return value if _is_safe_style(value) else None
    if attribute not in _URL_ATTRIBUTES:
        return value
    if tag == "a" and value.lstrip()[:7].lower().startswith(_LINK_SCHEMES):
        return value.strip()
    url = resolve_url(value, _fragment.base)
    if url is None:  # javascript:, data:, vbscript:, garbage ...
        return None
    proxy = _fragment.image_proxy
    if proxy and (tag, attribute) in (("img", "src"), ("video", "poster")):
        return proxy_image(url, proxy)
    return url


@functools.cache
def _cleaner() -> nh3.Cleaner:
    """Made once: building the rules costs as much as cleaning a 3 KB fragment."""
    return nh3.Cleaner(
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(DROPPED_WITH_CONTENT),
        attributes=ALLOWED_ATTRIBUTES,
        tag_attribute_values={"a": {"target": {"_blank"}}},
        # A page view downloads no audio or video from a third party: only a click does.
        set_tag_attribute_values={"audio": {"preload": "none"}, "video": {"preload": "none"}},
        attribute_filter=_keep,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
        strip_comments=True,
    )


def sanitize_html(fragment: str, base: str, image_proxy: str | None = None) -> str:
    """Sanitized HTML of ``fragment``; relative URLs resolved against ``base``."""
    _fragment.base, _fragment.image_proxy = base, image_proxy
    return _cleaner().clean(fragment)


# Tags that separate words: the text on either side of them is not one word.
_BREAKS = re.compile(
    r"<(?=/?(?:address|article|aside|blockquote|br|dd|div|dl|dt|figcaption|figure|footer|"
    r"h[1-6]|header|hr|img|li|main|nav|ol|p|pre|section|table|td|th|tr|ul)\b)",
    re.IGNORECASE,
)


def html_to_text(fragment: str) -> str:
    """The text of an HTML fragment, tags dropped and entities decoded; block elements
    and line breaks become spaces (``<p>18:15</p><p>Weekends</p>`` is two words)."""
    if "<" not in fragment and "&" not in fragment:
        return fragment
    spaced = _BREAKS.sub(" <", fragment) if "<" in fragment else fragment
    return html.unescape(nh3.clean(spaced, tags=set(), clean_content_tags={"script", "style"}))


# Characters XML 1.0 cannot carry (C0 controls other than tab/newline/return,
# surrogates, U+FFFE/U+FFFF); feeds we publish must stay well-formed.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_NOT_XML_C0 = bytes(c for c in range(0x20) if c not in (0x09, 0x0A, 0x0D))


def xml_safe(text: str) -> str:
    """``text`` without the characters that XML 1.0 forbids."""
    if not text.isascii() and _xml_allows(text):
        return text
    return _NOT_XML.sub("", text)


def _xml_allows(text: str) -> bool:
    """Whether ``text`` has none of ``_NOT_XML``, told from its UTF-8 bytes: a surrogate
    does not encode, U+FFFE and U+FFFF encode as EF BF BE and EF BF BF, a C0 control as
    itself. Over a long text beyond ASCII (a CJK article) this takes about a third less
    time than the pattern's scan."""
    try:
        data = text.encode()
    except UnicodeEncodeError:
        return False
    return (
        len(data.translate(None, _NOT_XML_C0)) == len(data)
        and b"\xef\xbf\xbe" not in data
        and b"\xef\xbf\xbf" not in data
    )
