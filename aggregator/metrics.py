"""Prometheus metrics of the daemon, in a registry of its own (no module-level state)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from aggregator.health import CONFIG, INDEX, PUBLISH
from aggregator.pipeline import FeedResult

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.polls = Counter(
            "aggregator_polls", "Feed polls by outcome.", ["outcome"], registry=self.registry
        )
        self.items = Counter(
            "aggregator_items_archived", "Items archived as new posts.", registry=self.registry
        )
        self.fetch_seconds = Histogram(
            "aggregator_fetch_duration_seconds",
            "Time to fetch a feed, from request to full body.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.feeds = Gauge("aggregator_feeds", "Feeds in feeds.yaml.", registry=self.registry)
        self.feeds_in_error = Gauge(
            "aggregator_feeds_in_error", "Feeds whose last poll failed.", registry=self.registry
        )
        self.last_publish = Gauge(
            "aggregator_last_publish_timestamp_seconds",
            "When the merged feed was last written (Unix time).",
            registry=self.registry,
        )
        self.feeds_overdue = Gauge(
            "aggregator_feeds_overdue",
            "Feeds not polled for more than twice their interval past their planned poll.",
            registry=self.registry,
        )
        self.healthy = Gauge(
            "aggregator_healthy", "1 when /healthz says ok, else 0.", registry=self.registry
        )
        self.problem = Gauge(
            "aggregator_problem",
            "1 while the daemon has a problem of its own of this kind (publish: the merged "
            "feed could not be written; config: feeds.yaml cannot be read or is invalid; "
            "index: the index cannot be written).",
            ["kind"],
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "aggregator_publish_failures", "Failed attempts to publish.", registry=self.registry
        )
        for outcome in ("new", "unchanged", "error"):
            self.polls.labels(outcome)  # show zeros before the first poll
        for kind in (PUBLISH, CONFIG, INDEX):
            self.problem.labels(kind)

    def update(self, report: Mapping[str, Any]) -> None:
        """Set the gauges from a /healthz report."""
        self.feeds.set(report["feeds"])
        self.feeds_in_error.set(len(report["feeds_in_error"]))
        self.feeds_overdue.set(len(report["feeds_overdue"]))
        self.healthy.set(int(report["status"] == "ok"))
        for kind in (PUBLISH, CONFIG, INDEX):
            self.problem.labels(kind).set(int(kind in report["problems"]))

    def observe(self, result: FeedResult) -> None:
        self.polls.labels(result.outcome.value).inc()
        self.items.inc(result.new)
        if result.fetch_seconds is not None:
            self.fetch_seconds.observe(result.fetch_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
