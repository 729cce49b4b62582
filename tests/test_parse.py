from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.errors import ParseError
from aggregator.parsers import parse_feed
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


# The plain-XML path must read exactly what feedparser reads ---------------------------


def _documents() -> list[tuple[str, bytes, str | None]]:
    """(name, body, content type): feedparser's corpus, the sample, benchmark-like feeds."""
    import re
    import sys
    import tarfile

    docs: list[tuple[str, bytes, str | None]] = [
        ("sample", (DATA / "seed-source.xml").read_bytes(), "application/rss+xml")
    ]
    with tarfile.open(DATA / "feedparser" / "corpus.tar.gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and (f := tar.extractfile(member)):
                body = f.read()
                match = re.search(
                    rb"^Header:\s*Content-type:\s*(.*?)\s*$", body[:2000], re.M | re.I
                )
                docs.append(
                    (member.name, body, match.group(1).decode() if match else "application/xml")
                )
    sys.path.insert(0, str(DATA.parents[1] / "bench"))
    try:
        from farm import Feed  # the benchmark's realistic RSS and Atom feeds

        for i in range(6):
            docs.append((f"bench-{i}", Feed(i, 12, "http://127.0.0.1:1").body, "application/xml"))
    finally:
        sys.path.pop(0)
    return docs


def test_the_plain_xml_path_reads_what_feedparser_reads() -> None:
    from aggregator.parsers.plain import read_plain_xml

    url = "http://example.com/feeds/feed.xml"
    plain = 0
    for name, body, content_type in _documents():
        if read_plain_xml(body, url, content_type) is None:
            continue
        plain += 1
        fast = parse_feed(body, url, content_type)
        slow = parse_feed(body, url, content_type, plain_xml=False)
        assert fast == slow, name
    assert plain >= 150, f"only {plain} documents took the plain path"  # it is really used


def test_the_plain_xml_path_refuses_what_it_does_not_know() -> None:
    from aggregator.parsers.plain import read_plain_xml

    url = "http://example.com/feed"
    ok = rss([{"title": "t", "link": "http://e.com/1"}])
    assert read_plain_xml(ok, url, "application/rss+xml") is not None
    refused = {
        "doctype": ok.replace(b"<rss", b'<!DOCTYPE rss [<!ENTITY x "y">]><rss', 1),
        "xml:base": ok.replace(b"<channel>", b'<channel xml:base="http://other/">'),
        "latin-1": ok.replace(b"UTF-8", b"ISO-8859-1"),
        "unknown element": ok.replace(
            b"</item>",
            b"<media:title xmlns:media='http://search.yahoo.com/mrss/'>x</media:title></item>",
        ),
        "markup in a title": ok.replace(b"<title>t</title>", b"<title>a <b>b</b></title>"),
        "rss 0.91": ok.replace(b'version="2.0"', b'version="0.91"'),
        "ill-formed": ok[:-10],
    }
    for name, body in refused.items():
        assert read_plain_xml(body, url, "application/rss+xml") is None, name
    assert (
        read_plain_xml(ok, url, "text/xml") is None
    )  # RFC 3023: us-ascii unless a charset says so
    assert read_plain_xml(ok, url, "text/xml; charset=utf-8") is not None
    assert read_plain_xml(ok, url, "application/rss+xml; charset=iso-8859-1") is None


_PIECES = [
    *"abc XYZ 123 &<>\"'#;:/?=.-_\t\n",
    "é",
    "中",
    "\u00a0",
    "€",
    "\x85",
    "Ã©",
    "&amp;",
    "&lt;b&gt;",
    "</b>",
    "<p>",
    "&#233;",
]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=20).map("".join)
_URLS = st.sampled_from(
    [
        "",
        "/a/b?x=1&y=2",
        "rel/path",
        "http://Ex.com/x",
        "https://e.com/a#f",
        "  spaced  ",
        "urn:uuid:1",
        "tag:e.com,2020:1",
        "?q=1",
        "javascript:x",
        "http://e.com/a&amp;b",
    ]
)
_DATES = st.sampled_from(
    [
        "",
        "Wed, 01 May 2024 10:00:00 GMT",
        "2024-05-01T10:00:00Z",
        "2024-05-01",
        "Tue, 31 Dec 9999 23:59:59 +0000",
        "garbage",
        "01 May 2024 10:00 +0200",
        "2024-05-01T10:00:00.123+05:30",
    ]
)


@st.composite
def _rss_documents(draw: st.DrawFn) -> bytes:
    from xml.sax.saxutils import escape, quoteattr

    parts = [f"<title>{escape(draw(_TEXT))}</title>", f"<link>{escape(draw(_URLS))}</link>"]
    for _ in range(draw(st.integers(0, 4))):
        fields = []
        kinds = [
            "title",
            "link",
            "guid",
            "guid-false",
            "description",
            "pubDate",
            "content",
            "dcdate",
            "category",
            "author",
            "creator",
            "subject",
            "enclosure",
        ]
        for tag in draw(st.lists(st.sampled_from(kinds), max_size=7)):
            if tag == "title":
                fields.append(f"<title>{escape(draw(_TEXT))}</title>")
            elif tag == "link":
                fields.append(f"<link>{escape(draw(_URLS))}</link>")
            elif tag == "guid":
                fields.append(f"<guid>{escape(draw(_URLS))}</guid>")
            elif tag == "guid-false":
                fields.append(f'<guid isPermaLink="false">{escape(draw(_URLS))}</guid>')
            elif tag == "description":
                fields.append(f"<description>{escape(draw(_TEXT))}</description>")
            elif tag == "content":
                fields.append(
                    f"<content:encoded><![CDATA[{draw(_TEXT).replace(']]>', '')}]]></content:encoded>"
                )
            elif tag == "pubDate":
                fields.append(f"<pubDate>{draw(_DATES)}</pubDate>")
            elif tag == "dcdate":
                fields.append(f"<dc:date>{draw(_DATES)}</dc:date>")
            elif tag in ("author", "creator", "subject"):
                name = {"author": "author", "creator": "dc:creator", "subject": "dc:subject"}[tag]
                fields.append(f"<{name}>{escape(draw(_TEXT))}</{name}>")
            elif tag == "enclosure":
                length = draw(st.sampled_from(["", ' length="123"', ' length="x"']))
                kind = draw(st.sampled_from(["", ' type="audio/mpeg"', ' type="Video/MP4"']))
                fields.append(f"<enclosure url={quoteattr(draw(_URLS))}{length}{kind}/>")
            else:
                fields.append(
                    f"<category domain={quoteattr(draw(_URLS))}>{escape(draw(_TEXT))}</category>"
                )
        parts.append("<item>" + "".join(fields) + "</item>")
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"'
        ' xmlns:dc="http://purl.org/dc/elements/1.1/"><channel>'
        + "".join(parts)
        + "</channel></rss>"
    ).encode()


@st.composite
def _atom_documents(draw: st.DrawFn) -> bytes:
    from xml.sax.saxutils import escape, quoteattr

    def text(tag: str) -> str:
        kind = draw(st.sampled_from(["", ' type="text"', ' type="html"']))
        return f"<{tag}{kind}>{escape(draw(_TEXT))}</{tag}>"

    def link() -> str:
        rel = draw(st.sampled_from(["", ' rel="alternate"', ' rel="self"', ' rel="enclosure"']))
        kind = draw(st.sampled_from(["", ' type="text/html"', ' type="application/atom+xml"']))
        return f"<link{rel}{kind} href={quoteattr(draw(_URLS))}/>"

    parts = [text("title"), link(), f"<id>{escape(draw(_URLS))}</id>"]
    for _ in range(draw(st.integers(0, 4))):
        pieces = {
            "title": lambda: text("title"),
            "link": link,
            "id": lambda: f"<id>{escape(draw(_URLS))}</id>",
            "updated": lambda: f"<updated>{draw(_DATES)}</updated>",
            "published": lambda: f"<published>{draw(_DATES)}</published>",
            "content": lambda: text("content"),
            "summary": lambda: text("summary"),
            "author": lambda: f"<author><name>{escape(draw(_TEXT))}</name></author>",
            "category": lambda: (
                f"<category term={quoteattr(draw(_TEXT))} label={quoteattr(draw(_TEXT))}/>"
            ),
            "enclosure": lambda: (
                f'<link rel="enclosure" type="audio/mpeg" length="9" href={quoteattr(draw(_URLS))}/>'
            ),
        }
        order = draw(st.lists(st.sampled_from(list(pieces)), max_size=8))
        parts.append("<entry>" + "".join(pieces[p]() for p in order) + "</entry>")
    return (
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        + "".join(parts)
        + "</feed>"
    ).encode()


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(_rss_documents(), _atom_documents()))
def test_both_paths_agree_on_generated_documents(body: bytes) -> None:
    from aggregator.parsers.plain import read_plain_xml

    url = "http://example.com/feeds/feed.xml"
    if read_plain_xml(body, url, "application/xml") is None:
        return
    assert parse_feed(body, url, "application/xml") == parse_feed(
        body, url, "application/xml", plain_xml=False
    )


@settings(max_examples=500)
@given(
    st.sampled_from(["http://a.example/x/", "https://b.example", "", "HTTP://c.example/p?q"]),
    st.sampled_from(["http://", "https://", "HTTP://", "http:///", ""]),
    st.text(alphabet="ab.-:0123/?#;% \\é\x00", max_size=12),
)
def test_plain_links_join_as_feedparser_joins_them(base: str, scheme: str, rest: str) -> None:
    from urllib.parse import urljoin

    from aggregator.parsers.mimic import _SCHEME_SLASHES, join

    uri = scheme + rest
    try:
        expected = urljoin(base, _SCHEME_SLASHES.sub(r"\1\3", uri))
    except ValueError:
        expected = ""
    assert join(base, uri) == expected


def _mojibake(text: str) -> str:
    """UTF-8 read as Latin-1: what feedparser's clean-up reads back."""
    return text.encode("utf-8").decode("iso-8859-1")


@settings(max_examples=500)
@given(
    st.one_of(
        st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF)),
        st.text(alphabet="aé€国\x85\x9d\xa0\xc3\xe2").map(_mojibake),
        st.text(alphabet=st.characters(exclude_categories=())),  # surrogates too
    )
)
def test_the_text_clean_up_is_feedparsers(value: str) -> None:
    """fp_text leaves alone, without trying, the texts that neither step can change."""
    from aggregator.parsers.mimic import _CP1252, fp_text

    expected = value
    if not value.isascii():
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            expected = value.encode("iso-8859-1").decode("utf-8")
        expected = expected.translate(_CP1252)
    assert fp_text(value) == expected
