"""Prometheus metrics of the daemon, in a registry of its own (no module-level state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        for outcome in ("new", "unchanged", "error"):
            self.polls.labels(outcome)  # show zeros before the first poll

    def observe(self, result: FeedResult) -> None:
        self.polls.labels(result.outcome).inc()
        self.items.inc(result.new)
        if result.fetch_seconds is not None:
            self.fetch_seconds.observe(result.fetch_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
