from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aggregator.models import format_time, parse_time
from aggregator.timing import (
    MAX_WAIT,
    backoff,
    cache_hint,
    format_duration,
    next_delay,
    parse_duration,
    retry_after,
    spread,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HOUR = 3600.0


@pytest.mark.parametrize(
    ("text", "seconds"), [("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), (" 45 s", 45)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10", "5x", "1h soon", "-5m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 45, 300, 5400, 90061)] == [
        "0s",
        "45s",
        "5m",
        "1h30m",
        "1d1h1m1s",
    ]


def test_jitter_stays_within_ten_percent_and_varies() -> None:
    rng = random.Random(7)
    delays = [next_delay(HOUR, jitter=rng.uniform(-1, 1)) for _ in range(200)]
    assert all(0.9 * HOUR <= d <= 1.1 * HOUR for d in delays)
    assert max(delays) - min(delays) > 0.15 * HOUR  # really spread, not a constant
    assert next_delay(HOUR, jitter=5) == pytest.approx(1.1 * HOUR)  # clamped


def test_hints_lengthen_and_never_shorten() -> None:
    assert next_delay(HOUR, hint=4 * HOUR) == 4 * HOUR
    assert next_delay(HOUR, hint=60) == HOUR
    assert next_delay(HOUR, hint=10 * 24 * HOUR) == MAX_WAIT  # capped at 24 h


def test_a_failure_is_retried_soon_then_less_often_up_to_a_day() -> None:
    minutes = [backoff(HOUR, e) / 60 for e in range(9)]
    assert minutes == [60, 5, 15, 45, 135, 405, 1215, 1440, 1440]  # 0 errors: the interval
    assert backoff(DAY := 24 * HOUR, 1) == 300  # a daily feed is not left failing for a day
    assert backoff(300, 1000) == MAX_WAIT  # never overflows, never disabled
    assert backoff(2 * DAY, 30) == 2 * DAY  # a longer interval is the cap
    assert next_delay(HOUR, errors=2, hint=HOUR) == HOUR  # a server's hint lengthens a retry
    assert next_delay(HOUR, errors=5, hint=HOUR) == 405 * 60  # but never shortens one


def test_spread_over_the_first_minute() -> None:
    times = spread(4, NOW)
    assert times == [NOW + timedelta(seconds=s) for s in (0, 15, 30, 45)]
    assert spread(0, NOW) == []


def test_cache_hints() -> None:
    assert cache_hint({"cache-control": "public, max-age=7200"}, None, NOW) == 7200
    assert cache_hint({"cache-control": "no-cache"}, None, NOW) is None
    expires = {"expires": "Wed, 01 May 2024 15:00:00 GMT", "date": "Wed, 01 May 2024 12:00:00 GMT"}
    assert cache_hint(expires, None, NOW) == 3 * HOUR
    assert cache_hint({"expires": "0"}, None, NOW) is None
    assert cache_hint({}, 90, NOW) == 90 * 60  # RSS <ttl> in minutes
    assert cache_hint({"cache-control": "max-age=999999"}, None, NOW) == MAX_WAIT
    assert cache_hint({"cache-control": "max-age=60"}, 120, NOW) == 120 * 60  # the longest wins


def test_retry_after() -> None:
    assert retry_after("120", NOW) == 120
    assert retry_after("Wed, 01 May 2024 14:00:00 GMT", NOW) == 2 * HOUR
    assert retry_after("Wed, 01 May 2024 11:00:00 GMT", NOW) == 0
    assert retry_after("soon", NOW) is None
    assert retry_after(None, NOW) is None
    assert retry_after("99999999", NOW) == MAX_WAIT


@settings(max_examples=500)
@given(
    st.datetimes(min_value=datetime(1, 1, 1), timezones=st.just(UTC)),
    st.lists(st.sampled_from("0123456789-+T:.Z x٣"), min_size=24, max_size=24),
    st.lists(st.integers(0, 23), max_size=3),
)
# (a zone or a sign where the fraction goes, which fromisoformat alone would read)
@example(datetime(2024, 3, 5, 6, 7, 8, tzinfo=UTC), list("2024-03-05T06:07:08.12ZZ"), [22])
@example(datetime(2024, 3, 5, 6, 7, 8, tzinfo=UTC), list("2024-03-05T06:07:08.-05Z"), [20])
@example(datetime(2024, 3, 5, 6, 7, 8, tzinfo=UTC), list("2024-03-05T06:07:08.+05Z"), [20])
def test_index_times_read_as_they_are_written(
    moment: datetime, chars: list[str], spliced: list[int]
) -> None:
    """A time reads back as written (to the millisecond); any other text of that length
    reads as the strict format does, or fails as it does."""
    assert parse_time(format_time(moment)) == moment.replace(
        microsecond=moment.microsecond // 1000 * 1000
    )
    text = list(format_time(moment))
    for i in spliced:  # (mostly the shape it writes, with a few characters changed)
        text[i] = chars[i]
    for candidate in ("".join(text), "".join(chars)):
        try:
            expected: datetime | None = datetime.strptime(
                candidate, "%Y-%m-%dT%H:%M:%S.%fZ"
            ).replace(tzinfo=UTC)
        except ValueError:
            expected = None
        try:
            got: datetime | None = parse_time(candidate)
        except ValueError:
            got = None
        assert got == expected, candidate
