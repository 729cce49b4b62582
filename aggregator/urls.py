"""URL checks and the normalization behind dedupe keys."""

from __future__ import annotations

import functools
import re
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

HTTP_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TRACKING_PARAMS = frozenset({"fbclid", "gclid", "mc_cid", "mc_eid"})
_SPACE = re.compile(r"\s")


def _split_http(url: str) -> SplitResult | None:
    """Split ``url`` if it is an absolute http(s) URL with a host, else None."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        return None
    if parts.scheme.lower() not in HTTP_SCHEMES or not parts.hostname:
        return None
    if _SPACE.search(parts.netloc):
        return None
    return parts


# The common shape, recognised without parsing: http(s), a plain ASCII host, a port from 0
# to 65535 if any (written without a leading zero).
_PORT = r"(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_PLAIN_HTTP_URL = re.compile(
    rf"(https?://[A-Za-z0-9.-]+(?::{_PORT})?)(?:[/?#][^\x00-\x20\x7f\\]*)?"
)


def is_http_url(url: str) -> bool:
    """True for an absolute http:// or https:// URL with a host."""
    return _PLAIN_HTTP_URL.fullmatch(url) is not None or _split_http(url) is not None


# A path from the root ("/a/b"), not "//host", without query, fragment or parameters (urljoin
# rewrites empty ones) or anything to escape: against a base of the plain shape, joined by
# hand as urljoin would, unless it has a dot segment.
_ROOT_PATH = re.compile(r"/(?![/\\])[^\x00-\x20\x7f\\?#;]*")


@functools.lru_cache(maxsize=256)
def _plain_origin(base: str) -> str | None:
    """``scheme://host[:port]`` of ``base`` if it has the plain shape, else None."""
    match = _PLAIN_HTTP_URL.fullmatch(base)
    return None if match is None else match[1]


def resolve_url(url: str, base: str | None) -> str | None:
    """``url`` made absolute against ``base``; None unless the result is http(s)."""
    url = url.strip()
    if not url:
        return None
    if _PLAIN_HTTP_URL.fullmatch(url):
        return url
    if base and url[0] == "/" and _ROOT_PATH.fullmatch(url):  # (the common relative link)
        origin = _plain_origin(base)
        if origin is not None and "/." not in url:
            return origin + url
    try:
        absolute = urljoin(base, url) if base else url
    except ValueError:
        return None
    return absolute if is_http_url(absolute) else None


def _is_tracking(param: str) -> bool:
    name = param.split("=", 1)[0].lower()
    return name.startswith("utm_") or name in _TRACKING_PARAMS


def strip_tracking(url: str) -> str:
    """``url`` without its tracking parameters (as :func:`normalize_url` drops them), and
    otherwise exactly as given: what a published link should be."""
    head, mark, rest = url.partition("?")
    if not mark:
        return url
    query, hash_mark, fragment = rest.partition("#")
    kept = [p for p in query.split("&") if p and not _is_tracking(p)]
    if len(kept) == len([p for p in query.split("&") if p]):
        return url
    return head + ("?" + "&".join(kept) if kept else "") + hash_mark + fragment


def normalize_url(url: str, base: str | None = None) -> str | None:
    """The canonical form of an http(s) URL, used as a dedupe key.

    Relative URLs are resolved against ``base``; scheme and host are lowercased; the
    default port, the fragment and tracking parameters (``utm_*``, ``fbclid``,
    ``gclid``, ``mc_cid``, ``mc_eid``) are removed; other query parameters keep their
    order and spelling. Returns None when the result is not an http(s) URL.
    """
    absolute = resolve_url(url, base)
    if absolute is None:
        return None
    # The common shape, read without parsing (ASCII: nothing in it that strip() takes).
    if absolute.isascii() and (plain := _PLAIN_KEY.fullmatch(absolute)):
        scheme, host, port, path = plain.groups()
        if port is not None and int(port) != _DEFAULT_PORTS[scheme]:
            host = f"{host}:{int(port)}"
        return f"{scheme}://{host}{path or '/'}"
    return _normalized(absolute)


# Already in normal form but for its port: lower case, no user, query or fragment.
_PLAIN_KEY = re.compile(rf"(https?)://([a-z0-9.-]+)(?::({_PORT}))?(/[^\x00-\x20\x7f\\?#]*)?")


def _normalized(absolute: str) -> str | None:
    """:func:`normalize_url` of an absolute URL, whatever its shape."""
    parts = _split_http(absolute)
    if parts is None:  # pragma: no cover -- resolve_url already checked
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{netloc}"
    query = "&".join(p for p in parts.query.split("&") if p and not _is_tracking(p))
    return urlunsplit((scheme, netloc, parts.path or "/", query, ""))
