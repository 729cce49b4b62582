from __future__ import annotations

import pytest

from aggregator.urls import is_http_url, normalize_url, resolve_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTP://Example.COM/Path?a=1", "http://example.com/Path?a=1"),
        ("https://example.com:443/x", "https://example.com/x"),
        ("http://example.com:80/x", "http://example.com/x"),
        ("http://example.com:8080/x", "http://example.com:8080/x"),
        ("https://example.com/x#section", "https://example.com/x"),
        ("https://example.com", "https://example.com/"),
        (
            "https://example.com/a?utm_source=rss&id=7&UTM_Medium=x&fbclid=1&b=2&gclid=3"
            "&mc_cid=4&mc_eid=5#top",
            "https://example.com/a?id=7&b=2",
        ),
        ("https://example.com/a?z=1&a=2", "https://example.com/a?z=1&a=2"),  # order kept
        ("https://example.com/a?utm_source=x", "https://example.com/a"),
        ("https://user:pw@Example.com/feed", "https://user:pw@example.com/feed"),
        ("http://[::1]:80/x", "http://[::1]/x"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


def test_relative_links_resolve_against_the_feed() -> None:
    assert (
        normalize_url("../b/c?utm_campaign=x", "https://ex.com/a/feed.xml") == "https://ex.com/b/c"
    )
    assert normalize_url("/p/1", "http://ex.com/feed") == "http://ex.com/p/1"


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "ftp://ex.com/f",
        "mailto:a@b.c",
        "",
        "http://",
        "http://ex.com:99999/",
    ],
)
def test_non_http_urls_are_rejected(url: str) -> None:
    assert normalize_url(url) is None
    assert not is_http_url(url)


def test_resolve_url_keeps_query_and_fragment() -> None:
    assert (
        resolve_url("x?utm_source=1#f", "https://ex.com/a/") == "https://ex.com/a/x?utm_source=1#f"
    )
    assert resolve_url("data:text/html,hi", "https://ex.com/") is None
