"""The planner that decides a feed's status after each poll, with a fake clock: back-off,
hints, local faults, gone, clock faults and health."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from aggregator.lifecycle import (
    LOCAL_RETRY,
    Health,
    Observation,
    after_edit,
    after_poll,
    assess,
    display_name,
    first_polls,
    longest_wait,
    planned_poll,
    stray,
)
from aggregator.models import FeedSource, FeedStatus, Outcome, Validators
from aggregator.timing import MAX_WAIT

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HOUR = 3600.0
FEED = FeedSource("https://ex.com/feed", interval=int(HOUR))
OK = Observation(Outcome.NEW, http_status=200, name="Ex", validators=Validators('"e1"'))
DOWN = Observation(Outcome.ERROR, error="HTTP 500 Internal Server Error", http_status=500)


def hours(status: FeedStatus) -> float:
    assert status.next_poll is not None
    return (status.next_poll - NOW).total_seconds() / HOUR


def test_a_good_poll_keeps_what_it_learned() -> None:
    status = after_poll(None, OK, FEED, NOW)
    assert status == FeedStatus(
        url=FEED.url,
        name="Ex",
        validators=Validators('"e1"'),
        last_poll=NOW,
        outcome=Outcome.NEW,
        http_status=200,
        next_poll=NOW + timedelta(hours=1),
    )
    assert display_name(FEED, status) == "Ex"
    assert display_name(FEED, None) == "ex.com"
    assert display_name(replace(FEED, name="Mine"), status) == "Mine"


def test_failures_back_off_keep_the_validators_and_reset_on_success() -> None:
    status = after_poll(None, OK, FEED, NOW)
    waits = []
    for _ in range(7):
        status = after_poll(status, DOWN, FEED, NOW)
        waits.append(hours(status))
    assert [round(h * 60) for h in waits] == [5, 15, 45, 135, 405, 1215, 1440]  # minutes
    assert status.errors_in_a_row == 7 and status.error == DOWN.error
    assert status.validators == Validators('"e1"')  # a failed poll does not forget them
    assert status.name == "Ex"
    back = after_poll(status, OK, FEED, NOW)
    assert hours(back) == 1 and back.errors_in_a_row == 0 and back.error is None


DISK_FULL = Observation(Outcome.ERROR, error="cannot write: disk full", local=True)


def test_a_fault_on_this_side_is_retried_soon_and_is_not_held_against_the_feed() -> None:
    status = after_poll(None, OK, FEED, NOW)
    for _ in range(7):
        status = after_poll(status, DOWN, FEED, NOW)
    assert hours(status) == 24
    status = after_poll(status, DISK_FULL, FEED, NOW)
    assert status.next_poll == NOW + timedelta(seconds=LOCAL_RETRY)
    assert status.outcome is Outcome.ERROR and status.error == "cannot write: disk full"
    assert (status.errors_in_a_row, status.local_errors) == (8, 1)
    # A lasting fault is retried less and less often, never less often than the interval.
    waits = []
    for _ in range(5):
        status = after_poll(status, DISK_FULL, FEED, NOW)
        waits.append(hours(status) * 60)
    assert waits == [10, 20, 40, 60, 60]
    # And the feed's own back-off only counts the feed's failures.
    fresh = after_poll(None, OK, FEED, NOW)
    for _ in range(6):
        fresh = after_poll(fresh, DISK_FULL, FEED, NOW)
    after = after_poll(fresh, DOWN, FEED, NOW)
    assert hours(after) * 60 == 5 and after.errors_in_a_row == 7  # its first failure
    assert after_poll(after, OK, FEED, NOW).local_errors == 0


def test_hints_lengthen_never_shorten_and_jitter_stays_within_ten_percent() -> None:
    long = after_poll(None, replace(OK, hint=5 * HOUR), FEED, NOW)
    short = after_poll(None, replace(OK, hint=60), FEED, NOW)
    huge = after_poll(None, replace(OK, hint=1e300), FEED, NOW)
    assert (hours(long), hours(short), hours(huge)) == (5, 1, MAX_WAIT / HOUR)
    early = after_poll(None, OK, FEED, NOW, jitter=-1.0)
    late = after_poll(None, OK, FEED, NOW, jitter=1.0)
    assert round(hours(early), 6) == 0.9 and round(hours(late), 6) == 1.1


def test_gone_stops_polls_until_the_entry_changes() -> None:
    seen = Observation(Outcome.ERROR, error="HTTP 410 Gone", http_status=410, gone=True)
    status = after_poll(None, seen, FEED, NOW)
    assert status.next_poll is None and status.gone_settings == FEED.settings
    assert first_polls({FEED.url: status}, [FEED], NOW) == {}
    assert assess(status, FEED, NOW + timedelta(days=30)).state is Health.GONE
    edited = replace(FEED, name="Renamed")
    assert first_polls({FEED.url: status}, [edited], NOW) == {FEED.url: NOW}
    assert after_edit(status, edited, NOW) == NOW
    assert assess(status, edited, NOW).state is not Health.GONE


def test_a_plan_made_while_the_clock_was_ahead_keeps_its_wait_from_now() -> None:
    """The clock ran ahead while the next polls were planned, then came back."""
    other = FeedSource("https://ex.org/feed", interval=int(HOUR))
    fine = after_poll(None, OK, other, NOW - timedelta(minutes=30))  # due in 30 minutes
    for ahead in (timedelta(hours=20), timedelta(days=400)):
        status = after_poll(None, OK, FEED, NOW + ahead)  # planned an hour after that
        plan = first_polls({FEED.url: status, other.url: fine}, [FEED, other], NOW, window=60)
        assert plan == {FEED.url: NOW + timedelta(hours=1), other.url: fine.next_poll}, ahead
        assert planned_poll(status, FEED, NOW) == NOW + timedelta(hours=1)
        health = assess(status, FEED, NOW)
        assert health.state is Health.OVERDUE and health.reason is not None
    assert status.next_poll is not None and stray(status.next_poll, FEED, NOW)
    assert "further ahead than any wait allows" in health.reason
    assert (
        "after the current time"
        in assess(after_poll(None, OK, FEED, NOW + timedelta(hours=20)), FEED, NOW).reason
    )  # type: ignore[operator]
    # A next poll stored far ahead without a last poll to explain it: due now.
    lone = FeedStatus(FEED.url, next_poll=NOW + timedelta(days=400))
    assert first_polls({FEED.url: lone}, [FEED], NOW) == {FEED.url: NOW}
    # A minute of difference between clocks is not a fault.
    assert assess(after_poll(None, OK, FEED, NOW + timedelta(seconds=30)), FEED, NOW).ok
    # An edited entry is due at once: when it was really polled last is unknown.
    assert after_edit(status, replace(FEED, name="x"), NOW) == NOW
    # A feed polled daily by its own interval may be planned a day ahead, and that is fine.
    daily = FeedSource("https://ex.net/feed", interval=86400)
    planned = after_poll(None, replace(OK, hint=86400), daily, NOW)
    assert planned.next_poll is not None and not stray(planned.next_poll, daily, NOW)
    assert longest_wait(daily) == 86400 * 1.1


def test_overdue_is_twice_the_interval_past_the_planned_poll() -> None:
    status = after_poll(None, OK, FEED, NOW)  # next poll at NOW + 1 h
    assert assess(status, FEED, NOW + timedelta(hours=2, minutes=59)).state is Health.OK
    late = assess(status, FEED, NOW + timedelta(hours=3, minutes=1))
    assert late.state is Health.OVERDUE and late.reason is not None
    assert late.reason.startswith("not polled since 2024-05-01T12:00:00.000Z")
    failing = after_poll(status, DOWN, FEED, NOW)
    health = assess(failing, FEED, NOW)
    assert (health.state, health.reason) == (Health.FAILING, DOWN.error)
    assert health.describe() == "error: HTTP 500 Internal Server Error"
    assert late.describe().startswith("overdue: not polled since")
    assert assess(None, FEED, NOW).state is Health.NEW and assess(None, FEED, NOW).ok


def test_times_near_the_end_of_the_calendar_do_not_overflow() -> None:
    end = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
    status = after_poll(None, replace(OK, hint=1e9), FEED, end)
    assert status.next_poll is not None and status.next_poll.year == 9999
    assert first_polls({FEED.url: status}, [FEED], end) == {FEED.url: status.next_poll}
    assert assess(status, FEED, end).ok
