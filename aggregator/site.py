"""The archive as a Jekyll site: layouts, a home page, a page and a feed folder per tag.

The layouts, ``index.html`` and ``_config.yml`` are written once, when missing, so that
the user may edit them. ``_data/aggregator.yml`` (the title, description and tags from
feeds.yaml) and ``tags/<slug>/index.html`` belong to the aggregator and are rewritten
when feeds.yaml changes; a tag that leaves feeds.yaml takes its folder with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from aggregator.archive import ATOM_FILE, FEED_STYLESHEET, JSON_FILE, RSS_FILE, write_file_atomic
from aggregator.models import Config, Podcast
from aggregator.posts import slugify, yaml_quoted
from aggregator.state import State

log = logging.getLogger(__name__)

SITE_FILES = (
    "_config.yml",
    "_includes/time.html",
    "_layouts/default.html",
    "_layouts/post.html",
    "_layouts/river.html",
    "_layouts/tag.html",
    "index.html",
    "assets/local-time.js",
    f"assets/{FEED_STYLESHEET}",
)
TAGS_DIR = "tags"
DATA_FILE = "_data/aggregator.yml"
TAG_PAGE = "index.html"
PAGES_DIR = "page"  # page/2/index.html, ...: the river's later pages (home and tags)
PER_PAGE = 25  # posts a page of the river, on the site and the daemon's pages alike
HOME_FRONT = "---\nlayout: river\n---\n"  # of the home page's later pages
_TAG_FILES = (TAG_PAGE, RSS_FILE, ATOM_FILE, JSON_FILE)  # what a tag folder may hold of ours


@dataclass(frozen=True, slots=True)
class Tag:
    """A tag of feeds.yaml: its text, its folder name, the feeds that carry it, and the
    podcast fields of its feeds (``tags: {TAG: {podcast: ...}}`` over ``podcast:``)."""

    name: str
    slug: str
    feed_urls: tuple[str, ...]
    podcast: Podcast = field(default_factory=Podcast)


def config_tags(config: Config) -> list[Tag]:
    """Every tag of feeds.yaml, in order of appearance; tags with the same slug merge
    (their settings too, however each is spelled)."""
    names: dict[str, str] = {}
    feeds: dict[str, list[str]] = {}
    for source in config.feeds:
        for tag in source.tags:
            slug = slugify(tag)
            names.setdefault(slug, tag)
            if source.url not in feeds.setdefault(slug, []):
                feeds[slug].append(source.url)
    podcasts = {slugify(tag): podcast for tag, podcast in config.tag_podcasts}
    return [
        Tag(names[slug], slug, tuple(urls), podcasts[slug].over(config.podcast))
        if slug in podcasts
        else Tag(names[slug], slug, tuple(urls), config.podcast)
        for slug, urls in feeds.items()
    ]


# SHA-256 of the versions of the site files that earlier releases wrote. A file still
# exactly as shipped was not edited by the user, so it is brought up to date: the post
# layouts that linked any `from:` containing "://" (a javascript:// GUID included), then
# that showed no player, picture, author or category, then the title three times and the
# source date as raw text; the _config.yml that let Jekyll hide posts dated after the
# build; the home, tag and default layouts of bare lists of titles.
_SHIPPED_BEFORE = {
    "_config.yml": {
        "fb9091f35e6e6489aca81926aee8313d154ae7705ce3468066473df1a0c24228",
        "1bfe3692d853ee9f70110cd7c3425a35ead730a166a5d553b21d02d1289f6e44",
    },
    "_layouts/default.html": {"c9d82bda882e187cccfec52a1bbf14841268c39f7670e2ada6391b926312e8b3"},
    "_layouts/post.html": {
        "a16f6d59c93a3e55bc42a665e3c4dc34e48135d893afe9720c4273d360c2b647",
        "fcd08894a2467f9cc76863f058a24722b0bcec22ca57ad1e3fa131386c32ea5f",
        "83cdcf03d52ab50f2c5fab060610001711f467f25c3f7bc09ad20ed8b977ccef",
        "8e5671d059064c8a9159647124e89212b691b1bc04f25514ee28dfb378d6dd88",
    },
    "_layouts/tag.html": {"3774c019e7cf6968c2c6ed9c2f4e2782d23f4bfbbb9f58586a319bf12c247ea1"},
    "index.html": {"4e150ff6b106cc6c6c276d08eb55461c052ab19a76fc753c8201e87462eeb998"},
}


def install_site(root: Path) -> list[str]:
    """Write the site files that are missing, and replace those still exactly as an
    earlier version shipped them; return their names. Edited files are left alone."""
    template = resources.files("aggregator") / "site"
    written = []
    for name in SITE_FILES:
        target = root / name
        try:
            current = target.read_bytes()
        except FileNotFoundError:
            current = None
        if current is None or _digest(current) in _SHIPPED_BEFORE.get(name, ()):
            write_file_atomic(target, (template / name).read_bytes())
            written.append(name)
    if written:
        log.info("site files written: %s", ", ".join(written))
    return written


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_site_data(config: Config, root: Path, tags: list[Tag], state: State) -> None:
    """``_data/aggregator.yml``, one page per tag and the river's later pages (home and
    tags), rewritten only when they change."""
    icons = {s.name: s.icon for s in state.statuses().values() if s.icon and s.name}
    data = {
        "title": config.title,
        "description": config.description,
        "link": config.link,
        "max_items": config.max_items,
        "per_page": PER_PAGE,
        "tags": [{"name": t.name, "slug": t.slug} for t in tags],
        "icons": dict(sorted(icons.items())),
    }
    if config.image_proxy:
        data["image_proxy"] = config.image_proxy  # the post layout's pictures use it too
    header = "# Written by aggregator from feeds.yaml on every publish; edits are replaced.\n"
    _write_if_changed(
        root / DATA_FILE,
        (header + yaml.safe_dump(data, allow_unicode=True, sort_keys=False)).encode(),
    )
    for tag in tags:
        page = (
            "---\n"
            "layout: tag\n"
            f"title: {yaml_quoted(tag.name)}\n"
            f"tag: {yaml_quoted(tag.name)}\n"
            f"tag_slug: {tag.slug}\n"
            "---\n"
        )
        changed = _write_if_changed(root / TAGS_DIR / tag.slug / TAG_PAGE, page.encode())
        posts = state.count(feeds=tag.feed_urls)
        _write_pages(root / TAGS_DIR / tag.slug, page, posts, rewrite=changed)
    _write_pages(root, HOME_FRONT, state.count())
    remove_stale_tags(root, {t.slug for t in tags})


def page_count(posts: int) -> int:
    """The pages of a river of ``posts`` posts (one, empty, when there are none)."""
    return max(1, -(-posts // PER_PAGE))


def _write_pages(folder: Path, front: str, posts: int, rewrite: bool = False) -> None:
    """``folder/page/N/index.html`` for every page after the first of ``posts`` posts
    (the front matter of the first, plus its number); those beyond are removed.

    A page's file depends on its number and the first page's front matter only: those
    already there are written again only when that front matter changed (``rewrite``), so
    that a publish costs one listing of the folder, not a read of every page."""
    pages = page_count(posts)
    listed = folder / PAGES_DIR
    try:
        there = {entry.name: entry for entry in os.scandir(listed)}
    except FileNotFoundError:
        there = {}
    for number in range(2, pages + 1):
        if rewrite or str(number) not in there:
            text = front.removesuffix("---\n") + f"number: {number}\n---\n"
            # (one a page: no fsync each; one lost in a crash is written at the next publish)
            _write_if_changed(listed / str(number) / TAG_PAGE, text.encode(), False)
    for name, entry in there.items():
        number = int(name) if name.isascii() and name.isdigit() else 0
        if number > pages and not entry.is_symlink():
            (listed / name / TAG_PAGE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the user put something else there
                (listed / name).rmdir()


def remove_stale_tags(root: Path, keep: set[str]) -> None:
    """Remove the pages and feeds of tags that feeds.yaml no longer has (and only those)."""
    folder = root / TAGS_DIR
    if not folder.is_dir():
        return
    for sub in folder.iterdir():
        if sub.name in keep or not sub.is_dir() or sub.is_symlink():
            continue
        for name in _TAG_FILES:
            (sub / name).unlink(missing_ok=True)
        _write_pages(sub, "", 0)  # its later pages
        with contextlib.suppress(OSError):
            (sub / PAGES_DIR).rmdir()
        try:
            sub.rmdir()
        except OSError:  # the user put something else there: leave it
            log.info("kept %s: it holds files the aggregator did not write", sub)
        else:
            log.info("removed the feeds of tag %r, gone from feeds.yaml", sub.name)


def _write_if_changed(path: Path, data: bytes, durable: bool = True) -> bool:
    """Write ``path`` unless it holds ``data`` already; whether it was written."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_file_atomic(path, data, durable=durable)
    return True
