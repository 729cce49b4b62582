"""What some feeds need after their posts are prepared and before they are archived:
the article page for a teaser feed (``full_text``), pictures and files kept in the
archive (``media: keep``).

Only new items, items the source edited, and items a previous try left unfinished are
worked on; a feed without these options never comes here. Every request goes through
the poll's per-host limits with the poll's user agent, timeouts and size caps. A page or
file that fails leaves the feed's own text or the picture's URL (through the image
proxy, if there is one): the post is archived now and marked unfinished, and later
polls try again, from the archived post, a bounded number of times. Nothing here ever
fails a feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import html
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import httpx

from aggregator.archive import Archive
from aggregator.errors import ArchiveError, FetchError, ParseError, TooLarge, one_line
from aggregator.fetch import FetchSettings, fetch_feed
from aggregator.fulltext import PageJob
from aggregator.media import (
    CONTENT_TYPES,
    Download,
    MediaLimits,
    MediaStore,
    Refused,
    file_kind,
    picture_kind,
)
from aggregator.models import (
    MEDIA_KEEP_ENCLOSURES,
    MEDIA_OFF,
    FeedSource,
    Media,
    NotModified,
    Post,
    Validators,
)
from aggregator.posts import render_post
from aggregator.sanitize import proxy_image
from aggregator.state import Known
from aggregator.urls import is_http_url

log = logging.getLogger(__name__)

MAX_PAGE_BYTES = 5 * 1024 * 1024  # a bigger article page is not read (extraction is slow)
MAX_FILES_PER_POST = 20  # pictures and files kept of one post (the others keep their URLs)
REFUSED = ""  # what the index remembers of a URL whose file is not kept, for good
MAX_TRIES = 3  # polls that try an item's page or pictures before it is left as it is
PAGE_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.1"
IMAGE_ACCEPT = "image/avif, image/webp, image/png, image/jpeg, image/gif;q=0.9, */*;q=0.1"
# An attribute of sanitized HTML that refers to a picture (an image's source, a video's
# poster), as nh3 writes them.
_PICTURE_ATTRIBUTE = re.compile(r'(<img\b[^>]*?\bsrc="|<video\b[^>]*?\bposter=")([^"]*)(")')


@dataclass
class Enriched:
    post: Post
    missing: list[str]  # what could not be fetched (retried later): one line each


class Enricher:
    """Enriches the posts of one poll (see the module docstring)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: FetchSettings,
        archive: Archive,
        limits: MediaLimits | None,
        *,
        slot: Callable[[str], AbstractAsyncContextManager[None]],
        extract: Callable[[PageJob], Awaitable[str | None]],
    ) -> None:
        self.archive = archive
        self.client = client
        self.store = store = MediaStore(archive.root, limits)
        if removed := store.clean_partial():
            log.info("removed %d downloads an earlier run left unfinished", removed)
        self.slot = slot
        self.extract = extract
        self.page_settings = dataclasses.replace(
            settings, accept=PAGE_ACCEPT, max_bytes=min(settings.max_bytes, MAX_PAGE_BYTES)
        )
        self.image_settings = dataclasses.replace(
            settings, accept=IMAGE_ACCEPT, max_bytes=store.limits.image, deadline=60.0
        )
        self.file_settings = dataclasses.replace(
            settings, accept="*/*", max_bytes=store.limits.enclosure, deadline=600.0
        )
        self._kept: dict[str, asyncio.Task[str]] = {}  # URL → its local path
        self._internal: dict[str, bool] = {}  # host → on a private or local address

    async def new_posts(
        self, source: FeedSource, posts: list[Post], proxy: str | None
    ) -> tuple[list[Post], dict[str, bool]]:
        """The posts with their article pages and kept pictures, for the items that are
        new, or edited at the source in a way the archive takes (the others are archived
        already); and, for each item worked on, whether something is left unfetched."""
        state = self.archive.state
        first: dict[str, Post] = {}
        for post in posts:
            first.setdefault(post.key, post)
        new = {p.key for p in self.archive.new_posts(first.values())}
        old = [p for k, p in first.items() if k not in new]
        edited = state.changed((p.key, p.digest) for p in old) if source.updates else {}
        chosen = [
            p for k, p in first.items()
            if k in new or (k in edited and self.archive.may_revise(p, edited[k]))
        ]  # fmt: skip
        if not chosen:
            return posts, {}
        done = await asyncio.gather(*(self.enrich(source, p, proxy) for p in chosen))
        _say_missing(done)
        better = {e.post.key: e.post for e in done}
        out, seen = [], set()
        for post in posts:
            if post.key in better and post.key not in seen:
                seen.add(post.key)
                out.append(better[post.key])
            else:
                out.append(post)
        return out, {key: post.unfinished for key, post in better.items()}

    async def after_archiving(
        self, source: FeedSource, proxy: str | None, worked: dict[str, bool], revised: list[Post]
    ) -> None:
        """Record what the posts rewritten for an edit left unfetched (new posts carry it
        in their row), then try again the feed's other unfinished posts."""
        state = self.archive.state
        try:
            state.note_unfinished((p.key, int(worked.get(p.key, False))) for p in revised)
        except ArchiveError as e:
            log.warning("feed=%s cannot record what is left to fetch: %s", source.url, e)
        await self.retry(source, proxy, skip=set(worked))

    async def retry(
        self, source: FeedSource, proxy: str | None, skip: set[str] | None = None
    ) -> None:
        """Try again what earlier polls could not fetch for the feed's archived posts (at
        most MAX_TRIES polls in all, whether the feed changed or not; not those of ``skip``,
        worked on in this poll); rewrite in place the posts a try improves. A failure to
        read or write is logged, not the feed's; the tries are counted all the same."""
        state = self.archive.state
        counts: dict[str, int] = {}
        pairs: list[tuple[Post, Known]] = []
        try:
            for was in state.unfinished(source.url, MAX_TRIES):
                if skip and was.key in skip:
                    continue
                try:
                    post = self.archive.read_post(was.path)
                except ArchiveError as e:  # (removed or broken by hand): given up
                    log.warning("feed=%s cannot try %s again: %s", source.url, was.path, e)
                    counts[was.key] = MAX_TRIES
                    continue
                pairs.append((dataclasses.replace(post, key=was.key, feed_url=source.url), was))
            tried = await asyncio.gather(*(self.enrich(source, p, proxy) for p, _ in pairs))
            _say_missing(tried)
            done = [(e.post, was) for e, (_, was) in zip(tried, pairs, strict=True)]
            counts |= {was.key: was.unfinished + 1 if p.unfinished else 0 for p, was in done}
            self.archive.finish(done)
        except ArchiveError as e:
            log.warning("feed=%s its unfinished posts wait: %s", source.url, e)
        finally:
            with contextlib.suppress(ArchiveError):
                state.note_unfinished(counts.items())

    async def enrich(self, source: FeedSource, post: Post, image_proxy: str | None) -> Enriched:
        missing: list[str] = []
        content, text_from = post.content, post.text_from
        if source.full_text and not text_from and is_http_url(post.source):
            try:
                page = await self._page(source, post.link, image_proxy)
            except (FetchError, ParseError) as e:
                missing.append(f"its page: {e.reason}")
            except Refused as e:
                log.warning("feed=%s item %s: its page not read: %s", post.author, post.link, e)
            except Exception as e:  # the extractor's bug on this page: never the feed's failure
                log.exception("feed=%s item %s: reading its page failed", post.author, post.link)
                missing.append(f"its page: internal error: {type(e).__name__}: {one_line(e, 300)}")
            else:
                if page is None:
                    log.info(
                        "feed=%s item %s: no article found in its page; the feed's text is kept",
                        post.author, post.link,
                    )  # fmt: skip
                else:
                    content, text_from = page, post.link
        image, media, enclosures = post.image, post.media, post.enclosures
        if source.media != MEDIA_OFF:
            wanted = [html.unescape(url) for _, url, _ in _PICTURE_ATTRIBUTE.findall(content)]
            wanted += [image] if image else []
            wanted += [m.url for m in (*media, *enclosures) if _is_picture(m)]
            files = []
            if source.media == MEDIA_KEEP_ENCLOSURES:
                files += [m.url for m in (*enclosures, *media) if not _is_picture(m)]
            chosen = {u: True for u in wanted if is_http_url(u)}
            chosen |= {u: False for u in files if is_http_url(u) and u not in chosen}
            if len(chosen) > MAX_FILES_PER_POST:
                log.info(
                    "feed=%s item %s: keeping its first %d files of %d", post.author,
                    post.link, MAX_FILES_PER_POST, len(chosen),
                )  # fmt: skip
            chosen = dict(list(chosen.items())[:MAX_FILES_PER_POST])
            kept = await asyncio.gather(
                *(self._keep(source, url, picture) for url, picture in chosen.items()),
                return_exceptions=True,
            )
            local: dict[str, str] = {}
            for url, result in zip(chosen, kept, strict=True):
                if isinstance(result, str):
                    local[url] = result
                elif isinstance(result, Refused | TooLarge):  # for good: its URL stays
                    log.info("feed=%s %s not kept: %s", post.author, url, _reason(result))
                elif isinstance(result, FetchError | OSError):
                    missing.append(f"{url}: {_reason(result)}")
                else:  # a bug, on this file only: said, and tried again later
                    log.error("feed=%s %s: internal error", post.author, url, exc_info=result)
                    missing.append(f"{url}: internal error: {type(result).__name__}")
            content = _relink(content, local, image_proxy)
            image = local.get(image, image) if image else None
            media = tuple(_moved(m, local) for m in media)
            enclosures = tuple(_moved(m, local) for m in enclosures)
        changed = dataclasses.replace(
            post, content=content, text_from=text_from, image=image, media=media,
            enclosures=enclosures, unfinished=bool(missing),
        )  # fmt: skip
        object.__setattr__(changed, "text", render_post(changed))
        return Enriched(changed, missing)

    async def _page(self, source: FeedSource, url: str, image_proxy: str | None) -> str | None:
        await self._check_address(source, url)
        async with self.slot(url):
            fetched = await fetch_feed(
                self.client, url, Validators(), self.page_settings, source.access,
                home=source.fetch_url, hop=lambda target: self._check_address(source, target),
            )  # fmt: skip
        assert not isinstance(fetched, NotModified)  # (asked without validators)
        selector = source.full_text if isinstance(source.full_text, str) else None
        proxy = None if source.media != MEDIA_OFF else image_proxy
        job = PageJob(
            fetched.content, fetched.final_url, fetched.content_type, selector,
            source.rules.strip, proxy,
        )  # fmt: skip
        return await self.extract(job)

    async def _keep(self, source: FeedSource, url: str, picture: bool) -> str:
        """The local path of the file at ``url``: downloaded once however many posts
        show it, now or later (the index remembers what each URL gave)."""
        known = self.archive.state.kept_path(url)
        if known == REFUSED:
            raise Refused("refused before")
        if known is not None and self.store.has(known):
            return known
        task = self._kept.get(url)
        if task is None or (task.done() and task.exception() is not None):
            if len(self._kept) >= 1000:  # (a daemon's enricher lives long: forget the done)
                self._kept = {u: t for u, t in self._kept.items() if not t.done()}
            task = self._kept[url] = asyncio.ensure_future(self._download(source, url, picture))
        return await asyncio.shield(task)

    async def _download(self, source: FeedSource, url: str, picture: bool) -> str:
        await self._check_address(source, url)
        async with self.slot(url):
            download = Download(self.store)  # (opened once a request slot is ours)
            try:
                await fetch_feed(
                    self.client, url, Validators(),
                    self.image_settings if picture else self.file_settings,
                    source.access, home=source.fetch_url, sink=download.write,
                    hop=lambda target: self._check_address(source, target),
                )  # fmt: skip
                kind = picture_kind(download.head) if picture else file_kind(download.head)
            except (Refused, TooLarge):  # for good: not asked for again
                download.discard()
                self.archive.state.note_kept(url, REFUSED)
                raise
            except BaseException:
                download.discard()
                raise
        path = download.keep(kind)
        self.archive.state.note_kept(url, path)
        return path

    async def _check_address(self, source: FeedSource, url: str) -> None:
        """Refuse a page or a file on a private, loopback or link-local address, unless
        the feed is on one itself: a public feed must not make the aggregator read (and
        publish) what only its own network can see."""
        if await self._is_internal(source.fetch_url):
            return
        if await self._is_internal(url):
            raise Refused("on a private or local address, and the feed is not")

    async def _is_internal(self, url: str) -> bool:
        """Whether ``url``'s host is (or resolves to) a private or local address; a URL
        whose host cannot even be looked up (``a..b``) counts as one: it is not fetched."""
        try:
            host = httpx.URL(url).host
        except (httpx.InvalidURL, ValueError):
            return True
        if host not in self._internal:
            try:
                addresses = [ipaddress.ip_address(host)]
            except ValueError:
                try:
                    found = await asyncio.get_running_loop().getaddrinfo(host, None)
                except OSError:  # (the fetch will say it cannot resolve it)
                    found = []
                except (UnicodeError, ValueError):  # not a name DNS can carry
                    self._internal[host] = True
                    return True
                addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]
            self._internal[host] = any(_internal(a) for a in addresses)
        return self._internal[host]


def _say_missing(done: Iterable[Enriched]) -> None:
    for enriched in done:
        if enriched.missing:
            log.warning(
                "feed=%s item %s: %s not fetched; archived without, tried again at its "
                "next polls", enriched.post.author, enriched.post.link,
                "; ".join(enriched.missing),
            )  # fmt: skip


def _proxy_head(template: str) -> str:
    """What every URL through the proxy starts with."""
    return template.split("{url}", 1)[0]


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        address.is_private or address.is_loopback or address.is_link_local
        or address.is_reserved or address.is_multicast or address.is_unspecified
    )  # fmt: skip


def _reason(error: BaseException) -> str:
    if isinstance(error, FetchError):
        return error.reason
    if isinstance(error, OSError):
        return f"cannot write it: {error.strerror or error}"
    return str(error)


def _is_picture(media: Media) -> bool:
    return media.medium == "image" or (media.type or "").startswith("image/")


def _moved(media: Media, local: dict[str, str]) -> Media:
    if media.url not in local:
        return media
    kind = local[media.url].rsplit(".", 1)[1]
    return dataclasses.replace(media, url=local[media.url], type=CONTENT_TYPES.get(kind))


def _relink(content: str, local: dict[str, str], image_proxy: str | None) -> str:
    """Pictures of sanitized ``content`` pointed at their kept copies; the others through
    the image proxy, if there is one (a later try downloads them from there)."""

    def swap(match: re.Match[str]) -> str:
        url = html.unescape(match[2])
        if url in local:
            url = local[url]
        elif image_proxy and is_http_url(url) and not url.startswith(_proxy_head(image_proxy)):
            url = proxy_image(url, image_proxy)
        else:
            return match[0]
        return match[1] + html.escape(url) + match[3]

    return _PICTURE_ATTRIBUTE.sub(swap, content)
