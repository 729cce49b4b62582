"""Entry → Post: the feed's options, then the post (see :mod:`aggregator.posts` for its
format). Pure: no disk, no network."""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Iterable
from datetime import datetime

from aggregator.models import Entry, ItemRules, Post
from aggregator.posts import (
    digest_of,
    item_identity,
    key_for,
    post_path,
    render_post,
    truncate_ms,
)
from aggregator.sanitize import html_to_text, sanitize_html
from aggregator.urls import is_http_url, strip_tracking


def is_junk(entry: Entry) -> bool:
    """An item with nothing to show: no title, no text, no link, no file and no picture
    (what a truncated feed leaves behind)."""
    return not (
        entry.title
        or entry.link
        or entry.enclosures
        or entry.media
        or entry.image
        or html_to_text(entry.content).strip()
    )


def keep_line_breaks(content: str) -> str:
    """Text without a single tag keeps its line breaks (a video's description, which
    feeds often label HTML, would otherwise run together)."""
    if "<" not in content and "\n" in content.strip():
        return "<br>\n".join(content.strip().split("\n"))
    return content


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
    return dataclasses.replace(entry, title=title, content=content)


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


def make_post(
    entry: Entry,
    *,
    feed_url: str,
    name: str,
    tags: Iterable[str],
    archived: datetime,
    site_link: str,
    image_proxy: str | None = None,
    identity: tuple[str, tuple[str, ...]] | None = None,
    digest: str | None = None,
    placed: datetime | None = None,
    keep_content: bool = True,
) -> Post:
    """Turn one entry of the feed named ``name`` into a post archived at ``archived``.

    ``site_link`` is where the post's link points when the item has no http(s) URL
    of its own (the feed's web site). ``identity``: :func:`item_identity` of the entry
    as the feed gave it, before the feed's options changed its title or text. ``placed``:
    the newest date the feed gives its other items (see :func:`sort_date`).
    ``keep_content=False``: the post's ``content`` is left empty once its ``text`` is
    rendered (what the archive needs; the workers send posts to the main process).
    """
    archived = truncate_ms(archived)
    title = entry.title or fallback_title(entry)
    source, aliases = identity or item_identity(entry)
    linked = is_http_url(source)
    if linked:
        source = strip_tracking(source)
    key = key_for(source)
    post = Post(
        key=key,
        path=post_path(archived, title, key),
        feed_url=feed_url,
        title=title,
        link=source if linked else site_link,
        source=source,
        published=entry.published,
        archived=archived,
        content=sanitize_html(keep_line_breaks(entry.content), entry.base, image_proxy),
        author=name,
        tags=tuple(dict.fromkeys([name, *tags])),
        categories=(name,),
        item_authors=entry.authors,
        item_categories=entry.categories,
        enclosures=entry.enclosures,
        media=entry.media,
        image=entry.image,
        episode=entry.episode,
        source_updated=entry.updated,
        aliases=tuple(key_for(a) for a in aliases),
        placed=truncate_ms(placed) if placed and not entry.published else None,
    )
    # Completed before anyone sees it (dataclasses.replace would cost more than the render).
    object.__setattr__(post, "digest", digest or digest_of(entry))
    object.__setattr__(post, "text", render_post(post))
    if not keep_content:  # its text holds it: not sent from the worker twice
        object.__setattr__(post, "content", "")
    return post
