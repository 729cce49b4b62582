"""Any XML feed, read by feedparser: the fallback for what :mod:`.plain` does not read.

The only module that imports feedparser, and only its public API. feedparser gets the
body as a stream, never a URL or a path, so it never opens anything itself; its own
sanitizer and relative-URI rewriting are off because :mod:`aggregator.sanitize` does
both, once, with an allowlist.
"""

from __future__ import annotations

import io
from typing import Any

import feedparser

from aggregator.errors import ParseError


def read_with_feedparser(content: bytes, url: str, content_type: str | None) -> Any:
    """The document in feedparser's vocabulary (see :mod:`.common`)."""
    headers = {"content-type": content_type or "application/xml", "content-location": url}
    try:
        return feedparser.parse(
            io.BytesIO(content),
            response_headers=headers,
            sanitize_html=False,
            resolve_relative_uris=False,
        )
    except Exception as e:  # feedparser should not raise, but it reads hostile input
        raise ParseError(url, f"feed parser failed: {type(e).__name__}: {e}") from e
