"""An article page → the article's HTML, for feeds that publish only a teaser
(``full_text``). Pure and CPU-bound: the parse workers run it.

``full_text: true`` finds the main content automatically (trafilatura); a CSS selector
keeps exactly the elements it matches. Either way the feed's ``strip`` selectors are
removed after, and the result goes through the same sanitizer as the feed's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aggregator.process import strip_selectors
from aggregator.sanitize import html_to_text, sanitize_html

MIN_TEXT = 200  # characters: less is a page without an article (a login wall, an error)
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class PageJob:
    content: bytes
    url: str  # the page's URL after redirects: relative links resolve against it
    content_type: str | None
    selector: str | None  # None: find the main content automatically
    strip: tuple[str, ...] = ()
    image_proxy: str | None = None


def decode(content: bytes, content_type: str | None) -> str:
    """The page's text: the charset of its Content-Type, else of its ``<meta>``, else
    UTF-8 (bytes that are not are replaced)."""
    candidates = []
    if content_type and "charset=" in content_type.lower():
        candidates.append(content_type.lower().split("charset=")[1].split(";")[0].strip(" \"'"))
    if found := _CHARSET.search(content[:4096]):
        candidates.append(found.group(1).decode("ascii").lower())
    for charset in [*candidates, "utf-8"]:
        try:
            return content.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return content.decode("utf-8", errors="replace")


def article_html(job: PageJob) -> str | None:
    """The sanitized HTML of the page's article, or None when the page has none (or too
    little text to be one)."""
    page = decode(job.content, job.content_type)
    found = _selected(page, job.selector) if job.selector else _main_content(page, job.url)
    if not found:
        return None
    if job.strip:
        found = strip_selectors(found, job.strip)
    clean = sanitize_html(found, job.url, job.image_proxy)
    if len(" ".join(html_to_text(clean).split())) < (MIN_TEXT if not job.selector else 1):
        return None
    return clean


def _selected(page: str, selector: str) -> str:
    """The elements of ``page`` that ``selector`` matches, in document order."""
    from bs4 import BeautifulSoup  # noqa: PLC0415

    soup = BeautifulSoup(page, "lxml")
    return "\n".join(str(element) for element in soup.select(selector))


def _main_content(page: str, url: str) -> str | None:
    """The page's main content as HTML, found by trafilatura (navigation, comments,
    footers and link lists left out; pictures and links kept)."""
    import trafilatura  # noqa: PLC0415 -- only feeds with full_text need it

    tree = trafilatura.load_html(page)
    if tree is None:
        return None
    # trafilatura resolves links against the site's root only: made absolute first.
    tree.make_links_absolute(url, resolve_base_href=True, handle_failures="discard")
    found: str | None = trafilatura.extract(
        tree,
        url=url,
        output_format="html",
        include_images=True,
        include_links=True,
        include_comments=False,
        include_tables=True,
    )
    return found
