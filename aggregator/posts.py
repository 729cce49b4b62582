"""THE post format: render, read, file name, key and escaping. Pure: no disk, no network.

The format is the contract (``tests/data/seed-post.md`` is a reference post)::

    ---
    layout: post
    title: "<title, always double-quoted>"
    date: <archive time, UTC, ISO-8601 with milliseconds and Z>
    author: <source name>
    from: <the item's source URL>
    tags: [ <name>, <tag>, ... ]
    categories: [ <name> ]
    <extra keys, each only when the item has it: see EXTRA_KEYS>
    ---
    <!--<archive time in epoch milliseconds>-->
    [<title>](<url>)
    ------

    <div>
    <div><i><published, RFC 1123 GMT></i></div><sanitized content>
    </div>

The extra keys come after the reference post's keys and only when present, so a post
of an item with none of them is byte for byte the reference format.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import yaml
from anyascii import anyascii

from aggregator.errors import one_line
from aggregator.models import (
    FORMATTED_TIME,
    Entry,
    Episode,
    Media,
    Post,
    format_time,
    parse_time,
)
from aggregator.timing import http_date
from aggregator.urls import is_http_url, normalize_url

SLUG_MAX = 60
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The keys a post may carry after the reference post's, in this order.
EXTRA_KEYS = (
    "updated",  # when the post was rewritten for an edit at the source
    "placed",  # undated item: the newest date of its feed's other items (see sort_date)
    "text_from",  # the page the text was taken from (a feed with full_text)
    "item_authors",  # the item's own people, when the feed names them
    "item_categories",  # the item's own categories
    "image",  # its picture (media:thumbnail, itunes:image, JSON Feed image)
    "enclosures",  # files it carries: [ { url, type, length, duration } ]
    "media",  # media:content besides enclosures: [ { url, type, medium, width, height } ]
    "duration",  # podcast episode: seconds
    "episode",
    "season",
    "episode_type",
    "explicit",
)


# Identity: keys and names ------------------------------------------------------------


def item_identity(entry: Entry) -> tuple[str, tuple[str, ...]]:
    """What identifies the item at its source (the post's ``from``), and the other keys
    it is known by.

    Its link, else its GUID, else (neither) a hash of what stays stable when a publisher
    corrects a dated item: its title and date, not its text; the hash of its title and
    text, what earlier versions used, is its alias (so that those items stay known, and an
    item re-dated at every fetch with the same text stays one). An item without a title
    or a date has only its text to tell it from the feed's other items.
    """
    if entry.link:
        return entry.link, ()
    if entry.guid:
        return entry.guid, ()
    by_text = _hash_source(f"{entry.title}\0{entry.content}")
    if not (entry.title and entry.published):
        return by_text, ()
    return _hash_source(f"{entry.title}\0{format_time(entry.published)}"), (by_text,)


def _hash_source(text: str) -> str:
    return f"urn:sha256:{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def key_for(source: str) -> str:
    """The dedupe key of a source: for an http(s) URL, its normalized form without the
    scheme and a leading ``www.`` (a publisher moving to https, or to or from www., does
    not make its items new); anything else is its own key.

    Also used by ``reindex``, which only has the post's ``from`` to go on.
    """
    normal = normalize_url(source)
    if normal is None:
        return source
    rest = normal.split("://", 1)[1]
    return "//" + (rest[4:] if rest.startswith("www.") else rest)


def slugify(title: str) -> str:
    """ASCII transliteration of ``title``: ``[a-z0-9-]``, at most 60 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", anyascii(title).lower()).strip("-")
    return slug[:SLUG_MAX].rstrip("-") or "item"


def post_path(archived: datetime, title: str, key: str, hash_chars: int = 8) -> str:
    """``_posts/YYYY/MM/YYYY-MM-DD-<slug>-<hash>.md``, relative to the archive."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:hash_chars]
    day = format_time(archived)[:10]  # YYYY-MM-DD, zero-padded whatever the year
    return f"_posts/{day[:4]}/{day[5:7]}/{day}-{slugify(title)}-{digest}.md"


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


@functools.lru_cache(maxsize=1024)  # (a feed's name and tags, in each of its posts)
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


def render_post(post: Post) -> str:
    """The text of a post file (see the module docstring)."""
    published = post.published
    head = (
        f"<div><i>{format_datetime(published.astimezone(UTC), usegmt=True)}</i></div>"
        if published
        else ""
    )
    return (
        "---\n"
        "layout: post\n"
        f"title: {yaml_quoted(post.title)}\n"
        f"date: {format_time(post.archived)}\n"
        f"author: {yaml_scalar(post.author)}\n"
        f"from: {yaml_scalar(post.source)}\n"
        f"tags: {_flow_list(post.tags)}\n"
        f"categories: {_flow_list(post.categories)}\n"
        f"{_extra_keys(post)}"
        "---\n"
        f"<!--{epoch_ms(post.archived)}-->\n"
        f"[{markdown_text(post.title)}]({markdown_url(post.link)})\n"
        "------\n"
        "\n"
        "<div>\n"
        f"{head}{_LIQUID_OPEN.sub('&#123;', post.content)}\n"
        "</div>\n"
    )


def _extra_keys(post: Post) -> str:
    lines = []
    if post.updated:
        lines.append(f"updated: {format_time(post.updated)}")
    if post.placed and not post.published:
        lines.append(f"placed: {format_time(post.placed)}")
    if post.text_from:
        lines.append(f"text_from: {yaml_quoted(post.text_from)}")
    if post.item_authors:
        lines.append(f"item_authors: {_flow_list(post.item_authors)}")
    if post.item_categories:
        lines.append(f"item_categories: {_flow_list(post.item_categories)}")
    if post.image:
        lines.append(f"image: {yaml_quoted(post.image)}")
    for key, files in (("enclosures", post.enclosures), ("media", post.media)):
        if files:
            lines.append(f"{key}:")
            lines.extend(f"  - {_flow_media(m)}" for m in files)
    episode = post.episode
    for key, value in (
        ("duration", episode.duration),
        ("episode", episode.number),
        ("season", episode.season),
        ("episode_type", episode.kind and yaml_scalar(episode.kind)),
        ("explicit", None if episode.explicit is None else str(episode.explicit).lower()),
    ):
        if value is not None:
            lines.append(f"{key}: {value}")
    return "".join(line + "\n" for line in lines)


_MEDIA_FIELDS = ("type", "length", "medium", "duration", "width", "height")


def _flow_media(media: Media) -> str:
    parts = [f"url: {yaml_quoted(media.url)}"]
    for name in _MEDIA_FIELDS:
        value = getattr(media, name)
        if value is not None:
            text = yaml_scalar(value, flow=True) if isinstance(value, str) else str(value)
            parts.append(f"{name}: {text}")
    return "{ " + ", ".join(parts) + " }"


def digest_of(entry: Entry) -> str:
    """A hash of what the source said of the item, as its feed gave it (before the feed's
    options and the sanitizer): when it changes, the source edited the item. Not of its
    URL (a move to https is no edit)."""
    digest = hashlib.sha256(entry.content.encode())
    digest.update(f"\0{entry.title}\0{entry.published}".encode())
    if (  # most items carry none of these: no repr for them
        entry.authors or entry.categories or entry.image or entry.enclosures or entry.media
        or entry.episode
    ):  # fmt: skip
        carried = (
            entry.authors, entry.categories, entry.image, entry.enclosures, entry.media,
            entry.episode,
        )  # fmt: skip
        digest.update(repr(carried).encode())
    return digest.hexdigest()[:32]


# Reading ------------------------------------------------------------------------------


def read_post(text: str, path: str) -> Post:
    """A post file's text read back (publish and reindex). Raises ValueError when it is
    not a post: no front matter, or no valid ``date``."""
    meta, body = _split_front_matter(text)
    archived = _aware(meta.get("date"))
    if archived is None:
        raise ValueError("front matter has no valid `date`")
    published, content = _split_body(body)
    source = _str(meta.get("from"))
    return Post(
        key=key_for(source) if source else f"post:{path}",
        path=path,
        feed_url="",
        title=_str(meta.get("title")),
        link=_link_line(body) or source,
        source=source,
        published=published,
        archived=archived,
        content=content,
        author=_str(meta.get("author")),
        tags=_strings(meta.get("tags")),
        categories=_strings(meta.get("categories")),
        updated=_aware(meta.get("updated")),
        placed=_aware(meta.get("placed")),
        text_from=_url(meta.get("text_from")),
        item_authors=_strings(meta.get("item_authors")),
        item_categories=_strings(meta.get("item_categories")),
        image=_url(meta.get("image")),
        enclosures=_media_list(meta.get("enclosures")),
        media=_media_list(meta.get("media")),
        episode=Episode(
            duration=_int(meta.get("duration")),
            number=_int(meta.get("episode")),
            season=_int(meta.get("season")),
            kind=_str(meta.get("episode_type")) or None,
            explicit=meta.get("explicit") if isinstance(meta.get("explicit"), bool) else None,
        ),
    )


def _str(value: object) -> str:
    return "" if value is None else str(value)


def _strings(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _url(value: object) -> str | None:
    """An http(s) URL, or the path of a file kept in the archive (``/media/...``)."""
    if not isinstance(value, str):
        return None
    return value if is_http_url(value) or LOCAL_MEDIA.fullmatch(value) else None


# Where a post refers to a file the archive keeps (see aggregator.media): root-relative.
LOCAL_MEDIA = re.compile(r"/media/[0-9a-f]{2}/[0-9a-f]{64}\.[a-z0-9]{2,5}")


def _aware(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _media_list(value: object) -> tuple[Media, ...]:
    """The files a post lists; entries a hand edit broke are left out."""
    if not isinstance(value, list):
        return ()
    found = []
    for item in value:
        if isinstance(item, dict) and (url := _url(item.get("url"))):
            fields: dict[str, Any] = {}
            for name in _MEDIA_FIELDS:
                v = item.get(name)
                fields[name] = (_str(v) or None) if name in ("type", "medium") else _int(v)
            found.append(Media(url=url, **fields))
    return tuple(found)


def _split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    import frontmatter  # noqa: PLC0415 -- only publish and reindex read posts
    from frontmatter.default_handlers import YAMLHandler  # noqa: PLC0415

    found = frontmatter.detect_format(text.strip(), frontmatter.handlers)
    handler = _own_yaml() if isinstance(found, YAMLHandler) else found  # (not found again)
    try:
        post = frontmatter.loads(text, handler=handler)
    except yaml.YAMLError as e:  # (a hand edit broke it)
        raise ValueError(f"front matter is not valid YAML: {one_line(str(e))}") from None
    if not post.metadata:
        raise ValueError("no front matter")
    return dict(post.metadata), str(post.content)


@functools.cache
def _own_yaml() -> Any:
    from frontmatter.default_handlers import YAMLHandler  # noqa: PLC0415

    class OwnYAML(YAMLHandler):
        """Front matter as render_post writes it is read without YAML's parser (a tenth
        of the time, at every publish); anything else is YAML's."""

        def load(self, fm: str, **kwargs: object) -> Any:
            own = read_own_front_matter(fm)
            return super().load(fm, **kwargs) if own is None else own

    return OwnYAML()


_KEY_LINE = re.compile(r"([a-z_]+): (.+)")
_ESCAPED = re.compile(r"\\(x[0-9A-F]{2}|u[0-9A-F]{4}|.)")
_UNNAMED = {escape[1]: char for char, escape in _YAML_NAMED.items()}
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOW_ITEM = re.compile(r'"(?:[^"\\]|\\.)*"|[^,]*')  # (a plain one has no comma)
_SURROGATE = re.compile("[\ud800-\udfff]")


def read_own_front_matter(fm: str) -> dict[str, Any] | None:
    """What YAML reads ``fm`` as, if every line is ``key: value`` with a value exactly as
    render_post writes one (checked by writing it again); else None. Its forms: a
    double-quoted string, a plain string, a time, an integer, true or false, a flow list
    of strings. (So what YAML would read otherwise, a hand edit or a list of files, is
    left to YAML.)"""
    meta: dict[str, Any] = {}
    for line in fm.split("\n"):
        if not line:
            continue
        match = _KEY_LINE.fullmatch(line)
        if match is None or yaml_scalar(match[1]) != match[1]:  # ("on:" is a true key)
            return None
        value = _own_value(match[2])
        if value is None:
            return None
        meta[match[1]] = value
    return meta or None


def _own_value(text: str) -> object:
    if text.startswith('"'):
        return _own_quoted(text)
    if text.startswith("["):
        if not text.endswith(" ]") or not text.startswith("[ "):
            return None
        items = [] if text == "[  ]" else _own_items(text[2:-2])
        return items if items is not None and _flow_list(items) == text else None
    if text in ("true", "false"):
        return text == "true"
    if _INTEGER.fullmatch(text):
        return int(text)
    if FORMATTED_TIME.fullmatch(text):  # (YAML reads the same time; a day out of range:)
        with contextlib.suppress(ValueError):
            return parse_time(text)
        return None
    return text if yaml_scalar(text) == text else None


def _own_items(inner: str) -> list[str] | None:
    items: list[str] = []
    at = 0
    while True:
        match = _FLOW_ITEM.match(inner, at)
        token = match[0] if match else ""
        value = _own_quoted(token) if token.startswith('"') else token
        if not isinstance(value, str):
            return None
        items.append(value)
        at += len(token)
        if at == len(inner):
            return items
        if not inner.startswith(", ", at):
            return None
        at += 2


def _own_quoted(text: str) -> str | None:
    if len(text) < 2 or not text.endswith('"'):
        return None
    try:
        value = _ESCAPED.sub(_unescaped, text[1:-1])
    except ValueError:
        return None
    if _SURROGATE.search(value):  # (libyaml refuses to read them: left to it)
        return None
    return value if yaml_quoted(value) == text else None


def _unescaped(match: re.Match[str]) -> str:
    code = match[1]
    if len(code) > 1:
        return chr(int(code[1:], 16))
    if code not in _UNNAMED:
        raise ValueError(code)
    return _UNNAMED[code]


_DATE_OPEN, _DATE_CLOSE = "<div><i>", "</i></div>"


def _split_body(body: str) -> tuple[datetime | None, str]:
    """The published date and the content inside the post's ``<div>`` block."""
    start = body.find("\n------\n")
    inner = body[start + len("\n------\n") :] if start >= 0 else body
    inner = inner.strip()
    if inner.startswith("<div>\n") and inner.endswith("\n</div>"):
        inner = inner[len("<div>\n") : -len("\n</div>")]
    published = None
    if inner.startswith(_DATE_OPEN) and (end := inner.find(_DATE_CLOSE)) > 0:
        published = http_date(inner[len(_DATE_OPEN) : end])
        if published is not None:
            inner = inner[end + len(_DATE_CLOSE) :]
    return published, inner


def _link_line(body: str) -> str | None:
    """The URL of the post's ``[title](url)`` line."""
    for line in body.splitlines()[:3]:
        if line.startswith("[") and line.endswith(")") and "](" in line:
            return line[line.rindex("](") + 2 : -1]
    return None
