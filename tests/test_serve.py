from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree as ET

import httpx
import pytest
from bs4 import BeautifulSoup

from aggregator.archive import Archive
from aggregator.config import load_config
from aggregator.metrics import Metrics
from aggregator.models import Config, FeedStatus, Outcome
from aggregator.pipeline import FeedResult
from aggregator.publish import publish
from aggregator.serve import Site, make_app
from tests.conftest import write_config
from tests.test_publish import fill


class Client:
    """Requests to the app in this thread (the index is a same-thread SQLite connection)."""

    def __init__(self, site: Site) -> None:
        self.app = make_app(site)

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return await http.get(path, headers=headers)

        return asyncio.run(go())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Site, Archive]]:
    config: Config = load_config(
        write_config(
            tmp_path,
            [
                {"url": "https://ex.com/feed", "name": "Ex", "tags": ["news"], "interval": "2h"},
                {"url": "https://broken.example/rss", "interval": "1h"},
            ],
        )
    )
    with Archive(config.archive) as archive:
        fill(archive, 12)
        archive.state.save_statuses(
            [FeedStatus("https://ex.com/feed", last_poll=datetime.now(UTC), outcome=Outcome.NEW)]
        )
        yield Site(config, archive.state, Metrics()), archive


@pytest.fixture
def site(served: tuple[Site, Archive]) -> Site:
    return served[0]


def client(site: Site) -> Client:
    return Client(site)


def test_not_published_yet(site: Site) -> None:
    response = client(site).get("/atom.xml")
    assert response.status_code == 404
    assert "Not published yet" in response.text


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/feed.xml", "application/rss+xml"),
        ("/atom.xml", "application/atom+xml"),
        ("/feed.json", "application/feed+json"),
    ],
)
def test_feeds_with_validators_304_and_gzip(
    served: tuple[Site, Archive], path: str, media_type: str
) -> None:
    site, archive = served
    publish(site.config, archive, datetime.now(UTC))
    http = client(site)
    first = http.get(path, headers={"Accept-Encoding": "identity"})
    assert first.status_code == 200
    assert first.headers["content-type"].startswith(media_type)
    assert first.content == (site.config.archive / path.lstrip("/")).read_bytes()
    assert (
        first.headers["cache-control"] == "public, max-age=900"
    )  # a quarter of the fastest interval
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert http.get(path, headers={"If-None-Match": etag}).status_code == 304
    assert http.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
    assert http.get(path, headers={"If-Modified-Since": modified}).status_code == 304
    assert (
        http.get(path, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code
        == 200
    )
    zipped = http.get(path, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["vary"]
    assert int(zipped.headers["content-length"]) < len(first.content) / 2
    assert zipped.content == first.content  # decoded by the client


def test_only_the_published_files_are_exposed(site: Site) -> None:
    http = client(site)
    for path in (
        "/.aggregator/state.sqlite3",
        "/_posts/",
        "/feeds.yaml",
        "/../feeds.yaml",
        "/atom.xml/../x",
    ):
        assert http.get(path).status_code == 404, path


def test_home_page_lists_items_sources_and_subscribe_links(site: Site) -> None:
    page = client(site).get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    soup = BeautifulSoup(page.text, "html.parser")
    alternates = {a["type"]: a["href"] for a in soup.find_all("link", rel="alternate")}
    assert alternates == {
        "application/atom+xml": "/atom.xml",
        "application/rss+xml": "/feed.xml",
        "application/feed+json": "/feed.json",
    }
    items = soup.find_all("li")
    assert len(items) == 12
    assert items[0].a["href"] == "https://ex.com/11"
    assert "<script>" not in page.text and "&lt;&amp;&gt;" in page.text  # titles are escaped
    rows = [r.get_text(" ", strip=True) for r in soup.find_all("tr")[1:]]
    assert rows[0].startswith("Ex new") and rows[1].startswith("broken.example not polled yet")


def test_opml_lists_the_sources(site: Site) -> None:
    response = client(site).get("/opml.xml")
    assert response.status_code == 200
    root = ET.fromstring(response.content)
    assert root.tag == "opml" and root.get("version") == "2.0"
    outlines = root.findall("./body/outline")
    assert [(o.get("text"), o.get("xmlUrl"), o.get("category")) for o in outlines] == [
        ("Ex", "https://ex.com/feed", "news"),
        ("https://broken.example/rss", "https://broken.example/rss", None),
    ]


def test_healthz_and_metrics(served: tuple[Site, Archive]) -> None:
    site, archive = served
    http = client(site)
    # Posts were archived but never published: the merged feed is behind.
    behind = http.get("/healthz").json()
    assert behind["status"] == "degraded"
    assert behind["reasons"] == ["publish: posts were archived that the merged feed lacks"]
    publish(site.config, archive, datetime.now(UTC))
    healthy = http.get("/healthz")
    assert healthy.status_code == 200 and healthy.json()["status"] == "ok"
    site.state.save_statuses(
        [
            FeedStatus(
                "https://broken.example/rss",
                last_poll=datetime.now(UTC),
                outcome=Outcome.ERROR,
                error="HTTP 500",
            )
        ]
    )
    degraded = http.get("/healthz")
    assert degraded.status_code == 200  # alive; the body tells the sources' health
    report = degraded.json()
    assert report["status"] == "degraded" and report["feeds"] == 2
    assert report["feeds_in_error"] == [
        {"name": "broken.example", "url": "https://broken.example/rss", "error": "HTTP 500"}
    ]
    assert report["reasons"] == ["feed broken.example (https://broken.example/rss): HTTP 500"]
    assert report["last_pass"]

    assert site.metrics is not None
    good = FeedStatus("https://ex.com/feed", outcome=Outcome.NEW)
    bad = FeedStatus("https://broken.example/rss", outcome=Outcome.ERROR, error="x")
    site.metrics.observe(FeedResult(good.url, "Ex", good, new=3, fetch_seconds=0.2))
    site.metrics.observe(FeedResult(bad.url, "b", bad, error="x"))
    text = http.get("/metrics").text
    assert 'aggregator_polls_total{outcome="new"} 1.0' in text
    assert 'aggregator_polls_total{outcome="error"} 1.0' in text
    assert "aggregator_items_archived_total 3.0" in text
    assert 'aggregator_fetch_duration_seconds_bucket{le="0.25"} 1.0' in text
    assert "aggregator_feeds_in_error 1.0" in text
    assert "aggregator_feeds 2.0" in text
    assert "aggregator_last_publish_timestamp_seconds" in text
