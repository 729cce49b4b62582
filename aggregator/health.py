"""Is the aggregator doing its job? The one report behind ``/healthz``, ``/metrics``, the
home page and ``aggregator status``.

It is ``degraded``, with a reason for each, when a feed failed its last poll, is gone, or
is overdue (:func:`aggregator.lifecycle.assess`), and while the daemon has a problem of
its own: the merged feed could not be published, feeds.yaml cannot be read or is
invalid, the index cannot be written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aggregator import __version__
from aggregator.lifecycle import FeedHealth, Health, assess, display_name
from aggregator.models import Config, FeedSource, FeedStatus

log = logging.getLogger(__name__)

PUBLISH, CONFIG, INDEX = "publish", "config", "index"  # the daemon's own problems


class Problems:
    """The daemon's own faults, each set while it lasts and cleared when it is over."""

    def __init__(self) -> None:
        self._now: dict[str, str] = {}

    def set(self, kind: str, message: str) -> None:
        self._now[kind] = message

    def clear(self, kind: str) -> None:
        self._now.pop(kind, None)

    def current(self) -> dict[str, str]:
        return dict(self._now)


@dataclass(frozen=True, slots=True)
class FeedRow:
    """One feed as the status table, the home page and /healthz show it."""

    source: FeedSource
    status: FeedStatus | None
    health: FeedHealth

    @property
    def name(self) -> str:
        return display_name(self.source, self.status)

    @property
    def url(self) -> str:
        return self.source.url

    @property
    def shown(self) -> str:
        """Its last outcome (``new``, ``unchanged``), ``not polled yet``, or what is wrong."""
        if not self.health.ok:
            return self.health.describe()
        return str(self.status.outcome) if self.status and self.status.outcome else "not polled yet"


def feed_rows(config: Config, statuses: Mapping[str, FeedStatus], now: datetime) -> list[FeedRow]:
    return [
        FeedRow(source, statuses.get(source.url), assess(statuses.get(source.url), source, now))
        for source in config.feeds
    ]


def report(
    config: Config,
    statuses: Mapping[str, FeedStatus],
    now: datetime,
    problems: Mapping[str, str],
) -> dict[str, Any]:
    """/healthz: ``status`` (``ok`` or ``degraded``), ``reasons`` (one line each), the
    latest poll, the failing and overdue feeds, and the daemon's own problems."""
    rows = feed_rows(config, statuses, now)

    def entry(row: FeedRow) -> dict[str, Any]:
        return {"name": row.name, "url": row.url, "error": row.health.reason}

    failing = [entry(r) for r in rows if r.health.state in (Health.FAILING, Health.GONE)]
    overdue = [entry(r) for r in rows if r.health.state is Health.OVERDUE]
    reasons = [f"{kind}: {message}" for kind, message in sorted(problems.items())]
    reasons += [f"feed {f['name']} ({f['url']}): {f['error']}" for f in failing + overdue]
    polls = [r.status.last_poll for r in rows if r.status and r.status.last_poll]
    return {
        "status": "degraded" if reasons else "ok",
        "reasons": reasons,
        "last_pass": max(polls).isoformat() if polls else None,
        "feeds": len(rows),
        "feeds_in_error": failing,
        "feeds_overdue": overdue,
        "problems": dict(problems),
        "version": __version__,
    }
