"""What a poll means for its feed: the one place that decides a feed's status.

After every poll, :func:`after_poll` turns the previous :class:`FeedStatus` and what the
poll saw (an :class:`Observation`) into the next status: outcome, error, failures in a
row, validators, name, moved/gone, and when to poll next. The scheduler, ``poll``,
``status``, the home page and ``/healthz`` all read that one value; :func:`assess` says
whether a feed is healthy at a given time.

Pure: the time and the randomness come in as arguments; nothing here does I/O.

The rules (timing.py has the arithmetic):

- a feed is polled every ``interval`` ± 10 %; the server's hints can lengthen that wait,
  never shorten it; failures back off exponentially, up to 24 h (or the interval, if
  longer);
- a failure on this side (the archive or the index could not be written) is not the
  feed's fault: it does not count towards the feed's back-off, and is retried after 5
  minutes, then 10, 20, ... up to the feed's interval;
- 410 Gone stops the polls until the feed's entry in feeds.yaml changes;
- a plan made while the clock was ahead (the last poll is dated after now) is moved back
  by as much; a planned time further ahead than any wait allows is not believed: the
  feed is due now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit

from aggregator.models import FeedSource, FeedStatus, Outcome, Validators, format_time
from aggregator.timing import JITTER, MAX_WAIT, START_SPREAD, next_delay, spread

LOCAL_RETRY = 300.0  # seconds: a failure of our own (disk, index) is first retried this soon
OVERDUE_FACTOR = 2  # a feed this many intervals late is overdue
CLOCK_SLACK = 60.0  # seconds a last poll may be dated after now before the clock is doubted


@dataclass(frozen=True, slots=True)
class Observation:
    """What one poll saw, before anything is decided."""

    outcome: Outcome
    error: str | None = None
    http_status: int | None = None
    hint: float | None = None  # seconds the server asked us to wait
    name: str | None = None  # the feed's own title
    icon: str | None = None  # the feed's own icon
    validators: Validators | None = None  # to send next time (None: keep the old ones)
    moved_to: str | None = None  # every redirect was permanent: the feed lives there now
    gone: bool = False  # 410 Gone
    local: bool = False  # the failure is on this side (archive, index), not the feed's


def longest_wait(source: FeedSource) -> float:
    """The longest wait any poll can plan for this feed, in seconds (jitter included)."""
    return max(float(source.interval), float(MAX_WAIT)) * (1 + JITTER)


def is_gone(status: FeedStatus | None, source: FeedSource) -> bool:
    """The feed answered 410 Gone and its feeds.yaml entry has not changed since."""
    return status is not None and status.gone_settings == source.settings


def display_name(source: FeedSource, status: FeedStatus | None) -> str:
    """feeds.yaml's name, else the feed's own title, else its host."""
    return (
        source.name
        or (status.name if status else None)
        or urlsplit(source.url).hostname
        or (source.url)
    )


def after_poll(
    previous: FeedStatus | None,
    seen: Observation,
    source: FeedSource,
    now: datetime,
    jitter: float = 0.0,
) -> FeedStatus:
    """The feed's status after a poll that saw ``seen`` at ``now``.

    ``jitter`` is in [-1, 1] (random in the daemon), spreading polls by ±10 %.
    """
    previous = previous or FeedStatus(source.url)
    failed = seen.outcome is Outcome.ERROR
    errors = previous.errors_in_a_row + 1 if failed else 0
    local = previous.local_errors + int(seen.local) if failed else 0
    if seen.gone:
        next_poll = None
    elif seen.local:
        wait = min(float(source.interval), LOCAL_RETRY * 2.0 ** min(local - 1, 20))
        next_poll = _later(now, wait * (1 + JITTER * jitter))
    else:
        delay = next_delay(source.interval, errors=errors - local, hint=seen.hint, jitter=jitter)
        next_poll = _later(now, delay)
    return FeedStatus(
        url=source.url,
        name=seen.name or previous.name,
        validators=previous.validators if failed or seen.validators is None else seen.validators,
        last_poll=now,
        outcome=seen.outcome,
        error=seen.error if failed else None,
        http_status=seen.http_status,
        errors_in_a_row=errors,
        local_errors=local,
        next_poll=next_poll,
        moved_to=seen.moved_to or previous.moved_to,
        gone_settings=source.settings if seen.gone else None,
        icon=seen.icon or previous.icon,
    )


def gone_reason(status: FeedStatus) -> str:
    """Why a gone feed is not polled."""
    when = status.last_poll.date() if status.last_poll else "earlier"
    return f"gone (HTTP 410 on {when}); change or remove its entry in feeds.yaml"


def first_polls(
    statuses: Mapping[str, FeedStatus],
    sources: Iterable[FeedSource],
    now: datetime,
    window: float = START_SPREAD,
) -> dict[str, datetime]:
    """When the daemon first polls each feed at start-up.

    A feed keeps its stored next poll (:func:`planned_poll`) when that is still ahead (no
    refetch storm on a restart); the others are due and are spread over the first
    ``window`` seconds. Gone feeds are left out.
    """
    plan: dict[str, datetime] = {}
    due = []
    for source in sources:
        status = statuses.get(source.url)
        if is_gone(status, source):
            continue
        when = planned_poll(status, source, now)
        if when is not None and when > now:
            plan[source.url] = when
        else:
            due.append(source)
    for source, when in zip(due, spread(len(due), now, window), strict=True):
        plan[source.url] = when
    return plan


def planned_poll(status: FeedStatus | None, source: FeedSource, now: datetime) -> datetime | None:
    """The feed's planned next poll as the clock now reads. A plan made while the clock was
    ahead (its last poll is dated after now) keeps its wait but starts from now; one still
    further ahead than any wait allows is due now. None: nothing planned."""
    if status is None or status.next_poll is None:
        return None
    when = status.next_poll
    if clock_went_back(status, now):
        assert status.last_poll is not None
        when = _later(now, max(0.0, (status.next_poll - status.last_poll).total_seconds()))
    return now if stray(when, source, now) else when


def clock_went_back(status: FeedStatus | None, now: datetime) -> bool:
    """The feed's last poll is dated after ``now``: the clock was ahead then, or is behind."""
    last = status.last_poll if status else None
    return last is not None and (last - now).total_seconds() > CLOCK_SLACK


def after_edit(status: FeedStatus | None, source: FeedSource, now: datetime) -> datetime:
    """A feed whose feeds.yaml entry changed: due one (new) interval after its last poll."""
    if status is None or status.last_poll is None or status.gone_settings:
        return now
    if clock_went_back(status, now):  # when it was really polled is unknown
        return now
    return max(now, _later(status.last_poll, source.interval))


def stray(planned: datetime, source: FeedSource, now: datetime) -> bool:
    """A planned poll no wait can explain: the clock went back since it was planned."""
    return planned > _later(now, longest_wait(source))


class Health(StrEnum):
    OK = "ok"
    NEW = "new"  # not polled yet
    FAILING = "failing"  # the last poll failed
    OVERDUE = "overdue"  # not polled when it should have been
    GONE = "gone"  # 410: needs an edit of feeds.yaml


@dataclass(frozen=True, slots=True)
class FeedHealth:
    state: Health
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.state in (Health.OK, Health.NEW)

    def describe(self) -> str:
        """``error: …``, ``overdue: …``, ``gone: …``, as the status table and home page say."""
        label = "error" if self.state is Health.FAILING else str(self.state)
        return f"{label}: {self.reason}" if self.reason else label


def assess(status: FeedStatus | None, source: FeedSource, now: datetime) -> FeedHealth:
    """Is this feed being polled as it should, and did its last poll work?"""
    if is_gone(status, source):
        assert status is not None
        return FeedHealth(Health.GONE, gone_reason(status))
    if status is None or status.last_poll is None:
        return FeedHealth(Health.NEW)
    if status.next_poll is not None and stray(status.next_poll, source, now):
        return FeedHealth(
            Health.OVERDUE,
            f"next poll planned for {format_time(status.next_poll)}, further ahead than any "
            "wait allows (was the clock wrong?)",
        )
    if clock_went_back(status, now):
        return FeedHealth(
            Health.OVERDUE,
            f"last polled at {format_time(status.last_poll)}, after the current time (was "
            "the clock wrong?); its next poll is planned from now",
        )
    due = status.next_poll or _later(status.last_poll, source.interval)
    late = (now - due).total_seconds()
    if late > OVERDUE_FACTOR * source.interval:
        return FeedHealth(
            Health.OVERDUE,
            f"not polled since {format_time(status.last_poll)}: due {format_time(due)}, "
            f"more than {OVERDUE_FACTOR} intervals ago",
        )
    if status.outcome is Outcome.ERROR:
        return FeedHealth(Health.FAILING, status.error)
    return FeedHealth(Health.OK)


def with_next_poll(status: FeedStatus | None, source: FeedSource, when: datetime) -> FeedStatus:
    """``status`` with a new planned poll (after an edit of feeds.yaml)."""
    return replace(status or FeedStatus(source.url), next_poll=when)


def _later(moment: datetime, seconds: float) -> datetime:
    """``moment`` + ``seconds``, saturating at the largest representable time."""
    try:
        return moment + timedelta(seconds=seconds)
    except OverflowError:
        return datetime.max.replace(tzinfo=moment.tzinfo)
