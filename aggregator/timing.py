"""When to poll next: intervals, jitter, server hints, back-off. Pure: time comes in.

- A feed is polled every ``interval`` (default 1 h, at least 5 min), ±10 % jitter.
- The server's hints (``Cache-Control: max-age``, ``Expires``, RSS ``<ttl>``, and
  ``Retry-After`` on 429/503) can only lengthen that wait, each capped at 24 h.
- Failures are retried soon, then less and less often: 5 min after the first, then 15
  min, 45 min, 2h15m, 6h45m, 20h15m and 24 h (or the interval, if longer) from then on,
  whatever the interval. A feed is never disabled by failures; only 410 Gone stops it
  (until feeds.yaml changes it).
- At start-up the feeds that are due are spread over the first minute.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

DEFAULT_INTERVAL = 3600
MIN_INTERVAL = 300
MAX_WAIT = 24 * 3600
FIRST_RETRY = 300  # seconds after a first failure
RETRY_GROWTH = 3  # each failure in a row waits this many times longer
JITTER = 0.10
START_SPREAD = 60.0

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)\s*([smhd])")


def parse_duration(text: str) -> int:
    """``"15m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` → seconds; ValueError otherwise."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not parts or _DURATION.sub("", compact).strip():
        raise ValueError(f"{text!r} is not a duration such as 15m, 2h or 1d")
    return sum(int(n) * _UNITS[unit] for n, unit in parts)


def format_duration(seconds: float) -> str:
    """Seconds as a short human duration: ``1h30m``, ``45s``."""
    seconds = round(seconds)
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not out):
            count, seconds = divmod(seconds, size)
            out += f"{count}{unit}"
    return out


def backoff(interval: float, errors: int) -> float:
    """The wait after ``errors`` failures in a row: 5 min × 3^(errors - 1), up to 24 h
    (or the interval, when it is longer); the interval itself after a success."""
    if errors <= 0:
        return interval
    return min(FIRST_RETRY * float(RETRY_GROWTH) ** min(errors - 1, 32), max(interval, MAX_WAIT))


def next_delay(
    interval: float, *, errors: int = 0, hint: float | None = None, jitter: float = 0.0
) -> float:
    """Seconds until the next poll.

    ``jitter`` is a number in [-1, 1] (random in the daemon); ``hint`` the wait the server
    asked for, which can lengthen the wait but never shorten it.
    """
    wait = backoff(interval, errors)
    if hint is not None:
        wait = max(wait, min(hint, MAX_WAIT))
    return wait * (1 + JITTER * max(-1.0, min(1.0, jitter)))


def spread(count: int, start: datetime, window: float = START_SPREAD) -> list[datetime]:
    """``count`` start times spread evenly over ``window`` seconds from ``start``."""
    if count <= 0:
        return []
    step = window / count
    return [start + timedelta(seconds=i * step) for i in range(count)]


def retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` (seconds or an HTTP date) as seconds from ``now``."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is true, and int() refuses it
        return min(float(value), float(MAX_WAIT))  # float: 5,000 digits are no error
    when = http_date(value)
    return None if when is None else max(0.0, (when - now).total_seconds())


def cache_hint(headers: Mapping[str, str], ttl_minutes: int | None, now: datetime) -> float | None:
    """The longest wait the response asks for: max-age, Expires or RSS <ttl>, in seconds."""
    hints: list[float] = []
    control = headers.get("cache-control", "").lower()
    if match := re.search(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", control):
        hints.append(float(match.group(1)))
    if (expires := http_date(headers.get("expires", ""))) is not None:
        date = http_date(headers.get("date", "")) or now
        hints.append((expires - date).total_seconds())
    if ttl_minutes is not None and ttl_minutes > 0:
        hints.append(ttl_minutes * 60.0)
    best = max(hints, default=0.0)
    return min(best, MAX_WAIT) if best > 0 else None


def http_date(value: str | None) -> datetime | None:
    """An HTTP date (RFC 9110: ``Wed, 01 May 2024 19:00:00 GMT``) as an aware UTC datetime,
    or None when it is absent or not a date this program can represent.

    Servers and clients send anything here: a year of 99999999999 must not raise.
    """
    if not value:
        return None
    from email.utils import parsedate_to_datetime  # noqa: PLC0415 -- 15 ms, rarely needed

    try:
        when = parsedate_to_datetime(value.strip())
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
