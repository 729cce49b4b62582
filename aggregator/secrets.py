"""Credentials of private feeds, and the rule that keeps them out of everything we write.

A feed's URL as feeds.yaml gives it may carry secrets: ``user:pass@`` or a query
parameter such as ``?token=``. Its *public* form (:func:`public_url`) has neither, and is
the feed's identity everywhere: the index, posts, merged feeds, OPML, logs, status. The
secrets live only in the feed's :class:`~aggregator.access.Access`, which the fetch uses.
As a last line, :func:`scrub` (and the :class:`ScrubFilter` the command line puts on
every log handler) replaces any known secret value that still reaches a message.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

# Query parameters that carry a secret: their values are never published.
SECRET_PARAMS = frozenset(
    {"auth", "hash", "key", "pass", "passwd", "session", "sid", "sig", "signature"}
)
# ... and any name ending so, once separators are dropped (api_key, api-key, passkey,
# authkey, torrent_pass, access_token, private_token, client_secret, ...)
_SECRET_SUFFIXES = ("token", "secret", "password", "passwd", "pass", "key", "sig")
MIN_SECRET = 4  # shorter values are not scrubbed from messages (they would mangle them)
MASK = "***"


def is_secret_param(name: str) -> bool:
    bare = unquote(name).lower().replace("_", "").replace("-", "").replace(".", "")
    return bare in SECRET_PARAMS or bare.endswith(_SECRET_SUFFIXES)


def public_url(url: str) -> tuple[str, tuple[str, ...], tuple[str, str] | None]:
    """``url`` without its secrets: returns the public URL, the secret query values it
    removed, and the ``(user, password)`` of its userinfo (None when it has none)."""
    if "?" not in url and "@" not in url:  # most feeds: nothing to take out
        return url, (), None
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, (), None
    netloc, userinfo = parts.netloc, None
    if "@" in netloc:
        info, _, netloc = netloc.rpartition("@")
        user, _, password = info.partition(":")
        userinfo = (unquote(user), unquote(password))
    kept, secrets = [], []
    for param in parts.query.split("&") if parts.query else ():
        name, _, value = param.partition("=")
        if is_secret_param(name):
            secrets.append(unquote(value))
        else:
            kept.append(param)
    if userinfo is None and not secrets:
        return url, (), None
    public = urlunsplit((parts.scheme, netloc, parts.path, "&".join(kept), parts.fragment))
    return public, tuple(s for s in secrets if s), userinfo


def without_userinfo(url: str) -> str:
    """``url`` without ``user:pass@`` (a proxy's URL, for messages)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# Every secret value of the loaded config, so that no message can carry one.
_known: set[str] = set()
_pattern: re.Pattern[str] | None = None
_lock = threading.Lock()


def register(values: Iterable[str]) -> None:
    """Remember secret values for :func:`scrub`."""
    global _pattern  # noqa: PLW0603 -- one registry per process, like logging's
    # As given, and as a URL or a form carries it (a log line shows URLs encoded).
    new = {form for v in values for form in (v, quote(v, safe=""), quote_plus(v))}
    new = {v for v in new if len(v) >= MIN_SECRET}
    with _lock:
        if new <= _known:
            return
        _known.update(new)
        ordered = sorted(_known, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in ordered))


def scrub(text: str) -> str:
    """``text`` with every registered secret value replaced by ``***``."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


class ScrubFilter(logging.Filter):
    """Scrubs every record a handler emits: whatever logs it (httpx logs request URLs),
    at any level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is None:
            return True
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
