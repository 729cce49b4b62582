from __future__ import annotations

from urllib.parse import urljoin

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

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


@settings(max_examples=500)
@given(
    st.sampled_from(
        [
            "http://a.example",
            "https://a.example/",
            "http://a.example/x/y?q=1#f",
            "https://b-c.example/p/",
            "http://a.example:8080/x",
            "http://a.example:99999/x",
            "http://a.example:0/",
            "http://127.0.0.1:18400",
            "HTTP://A.example/x",
            "http://a.example/x/../y",
        ]
    ),
    st.text(alphabet="/.?#%;:@=&+~ abc\\\t\x00é", max_size=12),
)
def test_root_relative_links_resolve_as_urljoin_does(base: str, tail: str) -> None:
    url = "/" + tail
    joined = urljoin(base, url.strip())
    assert resolve_url(url, base) == (joined if is_http_url(joined) else None)


@given(
    st.sampled_from(["http", "https", "HTTP", "ftp"]),
    st.sampled_from(["a.example", "127.0.0.1", "a_b.example", "é.example", ""]),
    st.text(alphabet="0123456789:", max_size=7),
    st.text(alphabet="/?#abc %\\\x00", max_size=6),
)
def test_absolute_urls_with_ports_are_checked_as_urlsplit_does(
    scheme: str, host: str, port: str, rest: str
) -> None:
    from aggregator.urls import _split_http

    url = f"{scheme}://{host}{':' if port else ''}{port}{rest}"
    assert is_http_url(url) == (_split_http(url) is not None), url


@settings(max_examples=500)
@given(
    st.sampled_from(["http", "https", "HTTP", "Https"]),
    st.sampled_from(["a.example", "A.example", "127.0.0.1", "a-b.example.", "a_b.example"]),
    st.sampled_from(["", ":80", ":443", ":8080", ":0080", ":0", ":65535", ":65536", ":"]),
    st.text(alphabet="/.?#%;:@=&+~ aB\\\t\x00é\xa0\x85\u3000", max_size=12),
)
@example("http", "a.example", "", "/x\xa0")  # (Unicode space at the end: urlsplit strips it)
def test_dedupe_keys_of_the_common_shape_are_those_of_the_general_rule(
    scheme: str, host: str, port: str, rest: str
) -> None:
    """Read alone, and as the base of a link that names only the scheme."""
    from aggregator.urls import _normalized

    url = f"{scheme}://{host}{port}{rest}"
    for link, base in ((url, None), ("http:", url)):
        absolute = resolve_url(link, base)
        expected = None if absolute is None else _normalized(absolute)
        assert normalize_url(link, base) == expected, (link, base)
