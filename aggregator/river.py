"""The daemon's home and tag pages: a river of news.

Newest first, ``PER_PAGE`` a page (``/``, ``/page/2/``, ...; ``/tags/<slug>/`` likewise),
each item with its title, its source (and the source's icon when the feed has one), its
own publication date and an excerpt or its picture; then the sources and their health.
Dates are written in UTC and rewritten in the reader's own time zone and style by
``/assets/local-time.js`` (the page works without it). Pictures and icons go through
feeds.yaml's ``image_proxy`` when it has one.
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aggregator import __version__
from aggregator.archive import ATOM_FILE, JSON_FILE, RSS_FILE
from aggregator.errors import AggregatorError
from aggregator.health import FeedRow, feed_rows
from aggregator.posts import LOCAL_MEDIA
from aggregator.sanitize import html_to_text, proxy_image
from aggregator.site import PER_PAGE, TAGS_DIR, Tag, config_tags, page_count
from aggregator.state import ItemRecord
from aggregator.urls import is_http_url

if TYPE_CHECKING:
    from aggregator.serve import Site

EXCERPT_WORDS = 40
_CACHED = 2048  # posts whose excerpt is kept in memory
_FIRST_IMAGE = re.compile(r"""<img\s[^>]*?src="([^"]+)\"""")

STYLE = """
:root{color-scheme:light dark;--muted:#666;--line:#ddd}
@media (prefers-color-scheme:dark){:root{--muted:#aaa;--line:#444}}
body{font:16px/1.5 system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem}
a{color:inherit}h1{margin-bottom:.2rem}
.river{list-style:none;padding:0}
.river li{padding:.8rem 0;border-bottom:1px solid var(--line);overflow:hidden}
.river h2{font-size:1.1rem;margin:0 0 .2rem}.river h2 a{text-decoration:none}
.meta,small,.pages{color:var(--muted);font-size:.9rem}
.icon{vertical-align:-2px;margin-right:.3rem}
.excerpt{margin:.3rem 0 0}.thumb{float:right;max-width:8rem;max-height:6rem;margin:0 0 .4rem .8rem}
.pages{display:flex;gap:1rem;justify-content:space-between;margin:1rem 0}
td,th{padding:.2rem .6rem;vertical-align:top;text-align:left}
""".strip()


class Excerpts:
    """Each post's excerpt and picture, read once from each version of its file (an edit
    at the source rewrites it in place), bounded in memory."""

    def __init__(self) -> None:
        self._known: OrderedDict[tuple[str, int], tuple[str, str | None]] = OrderedDict()

    def of(self, site: Site, record: ItemRecord) -> tuple[str, str | None]:
        try:
            version = (record.path, (site.config.archive / record.path).stat().st_mtime_ns)
            found = self._known.get(version)
            if found is not None:
                self._known.move_to_end(version)
                return found
            post = site.archive_post(record.path)
        except (OSError, AggregatorError):  # moved or damaged since: the title is enough
            return "", None
        words = html_to_text(post.content).split()
        excerpt = " ".join(words[:EXCERPT_WORDS]) + (" …" if len(words) > EXCERPT_WORDS else "")
        picture = post.image  # (read_post keeps only an http(s) URL or a kept file)
        if picture is None:
            first = _FIRST_IMAGE.search(post.content)
            picture = html.unescape(first.group(1)) if first else None
        elif is_http_url(picture) and site.config.image_proxy:
            picture = proxy_image(picture, site.config.image_proxy)
        self._known[version] = found = (excerpt, picture if _shown(picture) else None)
        if len(self._known) > _CACHED:
            self._known.popitem(last=False)
        return found


def _shown(url: str | None) -> bool:
    return bool(url) and (is_http_url(url or "") or LOCAL_MEDIA.fullmatch(url or "") is not None)


def readable(moment: datetime) -> str:
    """``15 Apr 2021, 13:23 UTC``: what the page says before the reader's script runs."""
    moment = moment.astimezone(UTC)
    return f"{moment.day} {moment:%b %Y, %H:%M} UTC"


def time_element(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f'<time datetime="{moment:%Y-%m-%dT%H:%M:%SZ}">{readable(moment)}</time>'


def render_river(site: Site, tag: Tag | None = None, number: int = 1) -> str | None:
    """Page ``number`` of the home page (or of ``tag``'s); None when there is no such page."""
    cfg, e = site.config, html.escape
    feeds = tag.feed_urls if tag else None
    total = site.state.count(feeds=feeds)
    pages = page_count(total)
    if not 1 <= number <= pages:
        return None
    statuses = site.feed_statuses()
    rows = feed_rows(cfg, statuses, site.clock())
    icons = {url: s.icon for url, s in statuses.items() if s.icon}
    names = {row.url: row.name for row in rows}
    if cfg.image_proxy:
        icons = {url: proxy_image(icon, cfg.image_proxy) for url, icon in icons.items()}
    root = f"/{TAGS_DIR}/{tag.slug}/" if tag else "/"
    items = []
    for record in site.state.newest(PER_PAGE, feeds=feeds, offset=(number - 1) * PER_PAGE):
        excerpt, picture = site.excerpts.of(site, record)
        title = e(record.title) or "(untitled)"
        if record.link:
            title = f'<a href="{e(record.link)}">{title}</a>'
        feed = record.feed_url or ""
        source = _icon(icons.get(feed)) + e(names.get(feed) or record.author or "")
        thumb = f'<img class="thumb" src="{e(picture)}" alt="" loading="lazy">' if picture else ""
        items.append(
            f"<li>{thumb}<h2>{title}</h2>"
            f'<p class="meta">{source} · {time_element(record.published or record.archived)}</p>'
            + (f'<p class="excerpt">{e(excerpt)}</p>' if excerpt else "")
            + "</li>"
        )
    newer = (root if number == 2 else f"{root}page/{number - 1}/") if number > 1 else ""
    older = f"{root}page/{number + 1}/" if number < pages else ""
    nav = (
        '<nav class="pages">'
        + (f'<a href="{newer}" rel="prev">← Newer</a>' if newer else "<span></span>")
        + f"<span>Page {number} of {pages}</span>"
        + (f'<a href="{older}" rel="next">Older →</a>' if older else "<span></span>")
        + "</nav>"
    )
    river = "\n".join(items) or "<li>Nothing archived yet: the first poll has not finished.</li>"
    return _page(site, tag, f'<ol class="river">\n{river}\n</ol>\n{nav}', icons, rows)


def _icon(url: str | None) -> str:
    if not url:
        return ""
    src = html.escape(url)
    return f'<img class="icon" src="{src}" alt="" width="16" height="16" loading="lazy">'


def _page(
    site: Site, tag: Tag | None, river: str, icons: dict[str, str], rows: list[FeedRow]
) -> str:
    cfg, e = site.config, html.escape
    title = f"{cfg.title}: {tag.name}" if tag else cfg.title
    root = f"/{TAGS_DIR}/{tag.slug}/" if tag else "/"
    sources = []
    for row in rows:
        if tag and row.url not in tag.feed_urls:
            continue
        status = row.status
        last = time_element(status.last_poll) if status and status.last_poll else ""
        link = e(row.url) if is_http_url(row.url) else ""
        sources.append(
            f'<tr><td>{_icon(icons.get(row.url))}<a href="{link}">{e(row.name)}</a></td>'
            f"<td>{e(row.shown)}</td><td>{last}</td></tr>"
        )
    alternates = "\n".join(
        f'<link rel="alternate" type="{kind}" title="{e(title)} ({label})" href="{root}{name}">'
        for name, kind, label in (
            (ATOM_FILE, "application/atom+xml", "Atom"),
            (RSS_FILE, "application/rss+xml", "RSS"),
            (JSON_FILE, "application/feed+json", "JSON Feed"),
        )
    )
    tags = config_tags(cfg)
    tag_links = " · ".join(
        f'<a href="/{TAGS_DIR}/{t.slug}/">{e(t.name)}</a> '
        f'(<a href="/{TAGS_DIR}/{t.slug}/atom.xml">Atom</a>, '
        f'<a href="/{TAGS_DIR}/{t.slug}/feed.xml">RSS</a>, '
        f'<a href="/{TAGS_DIR}/{t.slug}/feed.json">JSON</a>)'
        for t in tags
    )
    back = '<p><a href="/">← all feeds</a></p>' if tag else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
{alternates}
<style>{STYLE}</style>
<script src="/assets/local-time.js" defer></script>
</head><body>
{back}<h1>{e(title)}</h1>
<p>{e(cfg.description)}</p>
<p>Subscribe: <a href="{root}atom.xml">Atom</a> · <a href="{root}feed.xml">RSS</a> ·
<a href="{root}feed.json">JSON Feed</a> · sources as <a href="/opml.xml">OPML</a></p>
{f"<p>By tag: {tag_links}</p>" if tag_links and not tag else ""}
{river}
<h2>Sources</h2>
<table>
<tr><th>Feed</th><th>Last poll</th><th>When</th></tr>
{chr(10).join(sources)}
</table>
<p><small>aggregator {__version__}</small></p>
</body></html>
"""
