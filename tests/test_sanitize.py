from __future__ import annotations

import pytest
from bs4 import BeautifulSoup
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.sanitize import html_to_text, sanitize_html, xml_safe
from tests.feedcheck import FORBIDDEN_TAGS, assert_inert_html

BASE = "https://ex.com/blog/post.html"


def clean(html: str, proxy: str | None = None) -> str:
    return sanitize_html(html, BASE, proxy)


def test_keeps_what_articles_use() -> None:
    html = (
        '<p>a<br><small style="color: #999;">s</small><i>i</i><b>b</b></p><hr>'
        '<img src="https://ex.com/i.png" width="100%" alt="x"><ul><li>1</li></ul><ol start="3"><li>2</li></ol>'
        '<table><thead><tr><th>h</th></tr></thead><tbody><tr><td colspan="2">d</td></tr></tbody></table>'
        "<h2>t</h2><blockquote>q</blockquote><pre><code>x = 1</code></pre>"
    )
    assert clean(html) == html.replace('colspan="2"', 'colspan="2"')


def test_links_get_rel_and_relative_urls_resolve() -> None:
    assert clean('<a href="../x?a=1&amp;b=2" target="_blank">x</a>') == (
        '<a href="https://ex.com/x?a=1&amp;b=2" target="_blank" rel="noopener noreferrer">x</a>'
    )
    assert clean('<img src="/i.png">') == '<img src="https://ex.com/i.png">'
    assert (
        clean('<a href="mailto:a@ex.com">m</a>')
        == '<a href="mailto:a@ex.com" rel="noopener noreferrer">m</a>'
    )


def test_image_proxy() -> None:
    assert clean('<img src="https://cdn.ex.com/a.jpg?x=1">', "https://p.ex/?url={url}") == (
        '<img src="https://p.ex/?url=cdn.ex.com/a.jpg?x=1">'
    )


@pytest.mark.parametrize(
    "html",
    [
        "<script>alert(1)</script>",
        '<img src="x.png" onerror="alert(1)">',
        '<body onload="alert(1)">',
        '<a href="javascript:alert(1)">x</a>',
        '<a href="JaVaScRiPt:alert(1)">x</a>',
        '<a href="  javascript:alert(1)">x</a>',
        '<a href="vbscript:msgbox(1)">x</a>',
        '<img src="data:image/svg+xml;base64,PHN2Zz4=">',
        '<a href="data:text/html,<script>alert(1)</script>">x</a>',
        '<iframe src="https://evil.example/"></iframe>',
        '<object data="x.swf"></object><embed src="x.swf">',
        '<form action="https://evil.example/"><input name="p"></form>',
        '<meta http-equiv="refresh" content="0;url=https://evil.example/">',
        "<style>body{background:url(javascript:alert(1))}</style>",
        '<p style="width: expression(alert(1))">x</p>',
        '<p style="background: url(https://evil.example/t.png)">x</p>',
        "<svg><script>alert(1)</script></svg>",
        '<base href="https://evil.example/">',
        "<<script>script>alert(1)<</script>/script>",
        "<img src=x onerror=alert(1)//",
        "<scr<script>ipt>alert(1)</script>",
        '<a href="jav&#x09;ascript:alert(1)">x</a>',
        '<a href="&#106;avascript:alert(1)">x</a>',
        '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    ],
)
def test_drops_executable_constructs(html: str) -> None:
    out = clean(html)
    assert_inert_html(out)  # parsed with an HTML parser, not searched as text
    tags = {tag.name for tag in BeautifulSoup(out, "html.parser").find_all(True)}
    assert not tags & (FORBIDDEN_TAGS | {"body"})


def test_html_to_text_and_xml_safe() -> None:
    assert html_to_text("A &lt;b&gt; <b>bold</b> &amp; <script>x</script>") == "A <b> bold & "
    assert html_to_text("plain") == "plain"
    assert xml_safe("a\x00b\x1fc\td\ne\ufffe") == "abc\td\ne"


def _xml_allows(c: str) -> bool:
    """XML 1.0's Char production."""
    n = ord(c)
    return c in "\t\n\r" or 0x20 <= n <= 0xD7FF or 0xE000 <= n <= 0xFFFD or n >= 0x10000


@settings(max_examples=500)
@given(
    st.one_of(
        st.text(alphabet=st.characters(exclude_categories=())),
        st.text(alphabet="a国\x00\x0b\x1f\t\n\r\ud800\udfff\ufffe\uffff\U0001f600"),
    )
)
def test_xml_safe_drops_exactly_what_xml_forbids(text: str) -> None:
    assert xml_safe(text) == "".join(c for c in text if _xml_allows(c))


def test_audio_and_video_keep_their_player_never_their_scripts() -> None:
    html = (
        '<audio controls autoplay src="/a.mp3" onplay="steal()"><source src="javascript:x"'
        ' type="audio/mpeg"><source src="b.ogg" type="audio/ogg"></audio>'
        '<video controls poster="p.jpg" src="data:video/mp4;base64,AAAA"><source src="v.mp4"></video>'
    )
    out = clean(html, "https://p.ex/?url={url}")
    assert out == (
        '<audio controls="" src="https://ex.com/a.mp3" preload="none"><source type="audio/mpeg">'
        '<source src="https://ex.com/blog/b.ogg" type="audio/ogg"></audio>'
        '<video controls="" poster="https://p.ex/?url=ex.com/blog/p.jpg" preload="none">'
        '<source src="https://ex.com/blog/v.mp4"></video>'
    )  # nothing is downloaded before the reader asks
    assert_inert_html(out)


def test_text_keeps_the_spaces_that_markup_made() -> None:
    assert " ".join(html_to_text("<p>18:15</p><p>Weekends</p>").split()) == "18:15 Weekends"
    assert " ".join(html_to_text("one<br>two<li>three</li>").split()) == "one two three"
    assert html_to_text("<b>bo</b>ld <i>it</i>alic") == "bold italic"  # inline: no space
