"""Finding a feed: a feed URL as it is, or the feeds a web page announces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aggregator.errors import SourcesError
from aggregator.models import Fetched, NotModified, Validators
from aggregator.urls import is_http_url, resolve_url

if TYPE_CHECKING:
    from aggregator.fetch import FetchSettings

FEED_MEDIA_TYPES = (
    "application/rss+xml",
    "application/atom+xml",
    "application/feed+json",
    "application/json",
    "application/rdf+xml",
    "application/xml",
    "text/xml",
)


@dataclass(frozen=True, slots=True)
class Found:
    """A feed found at a URL: where it is, its title, and the other feeds a page offered."""

    url: str
    title: str | None
    alternatives: tuple[tuple[str, str | None], ...] = ()  # (url, title) of every feed found


def discover_links(page: bytes, base: str) -> list[tuple[str, str | None]]:
    """The feeds an HTML page announces with ``<link rel="alternate" type=...>``, in order."""
    from bs4 import BeautifulSoup  # noqa: PLC0415

    soup = BeautifulSoup(page, "html.parser")
    found: dict[str, str | None] = {}
    for link in soup.find_all("link", href=True):
        rel: Any = link.get("rel") or []
        rels = {str(r).lower() for r in (rel if isinstance(rel, list) else str(rel).split())}
        kind = str(link.get("type") or "").split(";")[0].strip().lower()
        if "alternate" not in rels or kind not in FEED_MEDIA_TYPES:
            continue
        url = resolve_url(str(link["href"]).strip(), base)
        if url and is_http_url(url) and url not in found:
            title = " ".join(str(link.get("title") or "").split()) or None
            found[url] = title
    return list(found.items())


def _looks_like_html(content: bytes, content_type: str | None) -> bool:
    if content_type and content_type.split(";")[0].strip().lower() in (
        "text/html",
        "application/xhtml+xml",
    ):
        return True
    start = content.lstrip(b"\xef\xbb\xbf \t\r\n")[:200].lower()
    return start.startswith((b"<!doctype html", b"<html"))


async def find_feed(url: str, settings: FetchSettings, transport: Any = None) -> Found:
    """Fetch ``url``; if it is a page, follow its first announced feed; parse the feed once."""
    from aggregator.fetch import fetch_feed, make_client  # noqa: PLC0415
    from aggregator.parsers import parse_feed  # noqa: PLC0415

    async with make_client(settings, transport) as client:

        async def get(url: str) -> Fetched:
            fetched = await fetch_feed(client, url, Validators(), settings)
            if isinstance(fetched, NotModified):  # we sent no validators: a broken server
                raise SourcesError(f"{url}: the server answered 304 to an unconditional request")
            return fetched

        fetched = await get(url)
        alternatives: list[tuple[str, str | None]] = []
        if _looks_like_html(fetched.content, fetched.content_type):
            alternatives = discover_links(fetched.content, fetched.final_url)
            if not alternatives:
                raise SourcesError(
                    f'{url} is a web page that announces no feed (no <link rel="alternate"> '
                    "of an RSS, Atom or JSON Feed type); give the feed's own URL"
                )
            url = alternatives[0][0]
            fetched = await get(url)
    parsed = parse_feed(fetched.content, fetched.final_url, fetched.content_type)
    return Found(url, parsed.title, tuple(alternatives))
