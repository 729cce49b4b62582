"""Entry → Post: dedupe keys, file names and the post format. Pure: no disk, no network.

The post format is the contract (``tests/data/seed-post.md`` is a reference post)::

    ---
    layout: post
    title: "<title, always double-quoted>"
    date: <archive time, UTC, ISO-8601 with milliseconds and Z>
    author: <source name>
    from: <the item's source URL>
    tags: [ <name>, <tag>, ... ]
    categories: [ <name> ]
    ---
    <!--<archive time in epoch milliseconds>-->
    [<title>](<url>)
    ------

    <div>
    <div><i><published, RFC 1123 GMT></i></div><sanitized content>
    </div>
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import yaml
from anyascii import anyascii

from aggregator.models import Entry, ItemRules, Post, format_time
from aggregator.sanitize import html_to_text, sanitize_html
from aggregator.urls import is_http_url, normalize_url

SLUG_MAX = 60
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# Keys and names ---------------------------------------------------------------------


def item_source(entry: Entry) -> str:
    """What identifies the item: its link, else its GUID, else a hash of its text."""
    if entry.link:
        return entry.link
    if entry.guid:
        return entry.guid
    digest = hashlib.sha256(f"{entry.title}\0{entry.content}".encode()).hexdigest()
    return f"urn:sha256:{digest[:32]}"


def key_for(source: str) -> str:
    """The dedupe key of a source: normalized if it is an http(s) URL, else itself.

    Also used by ``reindex``, which only has the post's ``from`` to go on.
    """
    return normalize_url(source) or source


def slugify(title: str) -> str:
    """ASCII transliteration of ``title``: ``[a-z0-9-]``, at most 60 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", anyascii(title).lower()).strip("-")
    return slug[:SLUG_MAX].rstrip("-") or "item"


def post_path(archived: datetime, title: str, key: str, hash_chars: int = 8) -> str:
    """``_posts/YYYY/MM/YYYY-MM-DD-<slug>-<hash>.md``, relative to the archive."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:hash_chars]
    day = format_time(archived)[:10]  # YYYY-MM-DD, zero-padded whatever the year
    return f"_posts/{day[:4]}/{day[5:7]}/{day}-{slugify(title)}-{digest}.md"


def fallback_title(entry: Entry) -> str:
    """A title for an entry that has none: the start of its text, else its link."""
    text = " ".join(html_to_text(entry.content).split())
    if text:
        return text if len(text) <= 80 else text[:79].rstrip() + "…"
    return entry.link or "Untitled"


# Per-feed rules -----------------------------------------------------------------------

EXCERPT_CHARS = 300


def apply_rules(entry: Entry, rules: ItemRules, name: str) -> Entry | None:
    """``entry`` as the feed's options shape it, or None when ``include``/``exclude`` drop it.

    In order: the summary replaces the content (``full_content: false``), the ``strip``
    selectors are removed, the filters look at the title and the remaining text, and the
    title template is applied.
    """
    content = entry.content
    if not rules.full_content:
        content = entry.summary or _excerpt(content)
    if rules.strip:
        content = strip_selectors(content, rules.strip)
    title = entry.title or fallback_title(dataclasses.replace(entry, content=content))
    if rules.include or rules.exclude:
        text = f"{title}\n{html_to_text(content)}"
        if rules.include and not re.search(rules.include, text, re.IGNORECASE):
            return None
        if rules.exclude and re.search(rules.exclude, text, re.IGNORECASE):
            return None
    if rules.title != "{title}":
        title = _fill(rules.title, {"{title}": title, "{name}": name})
    # An item known by a hash of its text keeps the hash of its original text: changing
    # a feed's options must not make its old items new again.
    guid = entry.guid if entry.link or entry.guid else item_source(entry)
    return dataclasses.replace(entry, title=title, content=content, guid=guid)


def _excerpt(content: str) -> str:
    """The start of the text, for a feed asked for its summary that gives none."""
    text = " ".join(html_to_text(content).split())
    if len(text) > EXCERPT_CHARS:
        text = text[: EXCERPT_CHARS - 1].rstrip() + "…"
    return html.escape(text, quote=False)


def _fill(template: str, values: dict[str, str]) -> str:
    """Replace each placeholder once, left to right: a title containing "{name}" stays so."""
    pattern = "|".join(re.escape(k) for k in values)
    return re.sub(pattern, lambda m: values[m.group()], template)


def strip_selectors(content: str, selectors: tuple[str, ...]) -> str:
    """``content`` without the elements matching any of the CSS ``selectors``."""
    from bs4 import BeautifulSoup  # noqa: PLC0415 -- only feeds with `strip` need it

    soup = BeautifulSoup(content, "html.parser")
    for selector in selectors:
        for element in soup.select(selector):
            element.decompose()
    return str(soup)


# Rendering ----------------------------------------------------------------------------


def epoch_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def truncate_ms(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=moment.microsecond // 1000 * 1000)


# Characters a double-quoted YAML scalar must escape to stay on one printable line.
_YAML_ESCAPE = re.compile(
    '[\\x00-\\x1f\\x7f-\\x9f"\\\\\\u2028\\u2029\\ufeff\\ud800-\\udfff\\ufffe\\uffff]'
)
_YAML_NAMED = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _YAML_NAMED:
        return _YAML_NAMED[char]
    code = ord(char)
    return f"\\x{code:02X}" if code <= 0xFF else f"\\u{code:04X}"


def yaml_quoted(value: str) -> str:
    """``value`` as a double-quoted YAML scalar that ``yaml.safe_load`` reads back as is."""
    return '"' + _YAML_ESCAPE.sub(_escape_char, value) + '"'


_RESOLVER = yaml.resolver.Resolver()
_STR_TAG = "tag:yaml.org,2002:str"
_FLOW_INDICATORS = frozenset(",[]{}:?#")  # end a plain scalar inside [ ... ]


def yaml_scalar(value: str, *, flow: bool = False) -> str:
    """``value`` plain when YAML reads it back as the same string, else double-quoted."""
    plain = (
        value[:1].isalnum()
        and value == value.strip()
        and value.isprintable()
        and ": " not in value
        and " #" not in value
        and not value.endswith(":")
        and not (flow and _FLOW_INDICATORS.intersection(value))
        and _RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) == _STR_TAG  # type: ignore[no-untyped-call]
    )
    return value if plain else yaml_quoted(value)


def _flow_list(values: Iterable[str]) -> str:
    return "[ " + ", ".join(yaml_scalar(v, flow=True) for v in values) + " ]"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|$<>&{}])")
_MD_REPLACE = {"<": "&lt;", ">": "&gt;", "&": "&amp;", "{": "&#123;", "}": "&#125;"}


def markdown_text(text: str) -> str:
    """``text`` safe as Markdown link text on one line: no markup, no raw HTML, no Liquid."""
    text = " ".join(text.split())
    return _MD_SPECIAL.sub(lambda m: _MD_REPLACE.get(m.group(), "\\" + m.group()), text)


_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f<>()\"'`{}|\\^\[\]]")


def markdown_url(url: str) -> str:
    """``url`` with the characters that would end a Markdown link destination encoded."""
    return _URL_UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", url)


_LIQUID_OPEN = re.compile(r"\{(?=[{%])")


def render_post(
    *,
    title: str,
    archived: datetime,
    author: str,
    source: str,
    tags: Iterable[str],
    categories: Iterable[str],
    link: str,
    published: datetime | None,
    content: str,
) -> str:
    """The text of a post file (see the module docstring)."""
    head = (
        f"<div><i>{format_datetime(published.astimezone(UTC), usegmt=True)}</i></div>"
        if published
        else ""
    )
    return (
        "---\n"
        "layout: post\n"
        f"title: {yaml_quoted(title)}\n"
        f"date: {format_time(archived)}\n"
        f"author: {yaml_scalar(author)}\n"
        f"from: {yaml_scalar(source)}\n"
        f"tags: {_flow_list(tags)}\n"
        f"categories: {_flow_list(categories)}\n"
        "---\n"
        f"<!--{epoch_ms(archived)}-->\n"
        f"[{markdown_text(title)}]({markdown_url(link)})\n"
        "------\n"
        "\n"
        "<div>\n"
        f"{head}{_LIQUID_OPEN.sub('&#123;', content)}\n"
        "</div>\n"
    )


def make_post(
    entry: Entry,
    *,
    feed_url: str,
    name: str,
    tags: Iterable[str],
    archived: datetime,
    site_link: str,
    image_proxy: str | None = None,
) -> Post:
    """Turn one entry of the feed named ``name`` into a post archived at ``archived``.

    ``site_link`` is where the post's link points when the item has no http(s) URL
    of its own (the feed's web site).
    """
    archived = truncate_ms(archived)
    title = entry.title or fallback_title(entry)
    source = item_source(entry)
    key = key_for(source)
    link = source if is_http_url(source) else site_link
    text = render_post(
        title=title,
        archived=archived,
        author=name,
        source=source,
        tags=dict.fromkeys([name, *tags]),
        categories=[name],
        link=link,
        published=entry.published,
        content=sanitize_html(entry.content, entry.base, image_proxy),
    )
    return Post(
        key=key,
        path=post_path(archived, title, key),
        feed_url=feed_url,
        title=title,
        link=link,
        published=entry.published,
        archived=archived,
        text=text,
        author=name,
    )
