from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from aggregator.errors import ParseError
from aggregator.parse import parse_feed
from tests.conftest import DATA
from tests.farm import rss

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:base="http://ex.com/blog/">
  <title type="html">A &lt;b&gt;bold&lt;/b&gt;
     feed</title>
  <link href="/"/>
  <entry>
    <title type="html">T &amp;lt;x&amp;gt;</title>
    <link href="post/1"/>
    <id>urn:uuid:1</id>
    <updated>2020-01-02T03:04:05Z</updated>
    <content type="xhtml" xml:base="http://other.com/x/"><div xmlns="http://www.w3.org/1999/xhtml"><p>hi <a href="rel">r</a></p></div></content>
    <summary>ignored when content exists</summary>
  </entry>
  <entry><title>plain &amp; text</title><id>urn:uuid:2</id><summary>a &lt; b</summary></entry>
</feed>"""


def test_rss_sample() -> None:
    feed = parse_feed(
        (DATA / "seed-source.xml").read_bytes(), "https://voa.example/feed", "application/rss+xml"
    )
    assert feed.title == "美国之音"
    assert feed.link == "https://www.voachinese.com/"
    assert feed.warning is None
    (e,) = feed.entries
    assert e.title == "克里抵达上海，拜登寻求美中合作的首次努力面临考验"
    assert e.link and e.link.endswith("/5854181.html")
    assert e.published == datetime(2021, 4, 15, 13, 23, 59, tzinfo=UTC)
    assert e.content.startswith('<img src="https://gdb.voanews.com/')


def test_atom_text_constructs_bases_and_dates() -> None:
    feed = parse_feed(ATOM, "http://ex.com/feed.atom", "application/atom+xml")
    assert feed.title == "A bold feed"
    assert feed.link == "http://ex.com/"
    first, second = feed.entries
    assert first.title == "T <x>"
    assert first.link == "http://ex.com/blog/post/1"
    assert first.guid == "urn:uuid:1"
    assert first.content == '<p>hi <a href="rel">r</a></p>'
    assert first.base == "http://other.com/x/"  # relative links in content resolve here
    assert first.published == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert second.title == "plain & text"
    assert second.link is None and second.published is None
    assert second.content == "a &lt; b"  # text content is escaped, not interpreted


def test_json_feed() -> None:
    body = json.dumps(
        {
            "version": "https://jsonfeed.org/version/1.1",
            "title": "J",
            "home_page_url": "https://j.example/",
            "items": [
                {
                    "id": "1",
                    "url": "/p/1",
                    "title": "One",
                    "content_html": "<p>1</p>",
                    "date_published": "2021-01-01T10:00:00+02:00",
                },
                {"id": 2, "content_text": "<two>"},
                "not an object",
            ],
        }
    ).encode()
    feed = parse_feed(body, "https://j.example/feed.json", "application/feed+json")
    assert feed.title == "J" and feed.link == "https://j.example/"
    one, two = feed.entries
    assert one.link == "https://j.example/p/1"
    assert one.published == datetime(2021, 1, 1, 8, tzinfo=UTC)
    assert two.guid == "2" and two.content == "&lt;two&gt;" and two.title == ""


def test_ill_formed_feed_with_entries_is_read_with_a_warning() -> None:
    body = rss([{"title": "ok", "link": "http://ex.com/1"}]).replace(
        b"</channel></rss>", b"<broken"
    )
    feed = parse_feed(body, "http://ex.com/feed", "application/rss+xml")
    assert [e.title for e in feed.entries] == ["ok"]
    assert feed.warning and feed.warning.startswith("ill-formed feed, read anyway:")


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (
            b"<!doctype html><html><body><p>Hello</p></body></html>",
            "text/html; charset=utf-8",
            "not a feed: the server sent an HTML page",
        ),
        (bytes(range(256)) * 4, "application/octet-stream", "not a feed"),
        (b"", "application/rss+xml", "empty body"),
        (b" \r\n", "application/rss+xml", "empty body"),
        (b"{not json", "application/json", "not a feed: invalid JSON"),
        (b'{"version": "1"}', "application/json", "not a feed: JSON without a JSON Feed version"),
        (b"/etc/passwd", None, "not a feed"),
    ],
)
def test_bodies_that_are_not_feeds(body: bytes, content_type: str | None, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_feed(body, "http://ex.com/feed", content_type)
    assert info.value.url == "http://ex.com/feed"
    assert info.value.reason.startswith(reason)
    assert "root:" not in str(info.value)  # a body naming a local file is never opened


def test_control_characters_are_dropped() -> None:
    body = rss([{"title": "a&#1;b", "link": "http://ex.com/1", "description": "x"}])
    body = body.replace(b"a&amp;#1;b", b"a\x01b")
    feed = parse_feed(body, "http://ex.com/feed", "application/rss+xml")
    assert [e.title for e in feed.entries] == ["ab"]
