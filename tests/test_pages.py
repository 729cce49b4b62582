"""The pages as a reader sees them, in a real headless Chromium: the daemon's river of
news and its feeds through their stylesheet, and the Jekyll site's home and post pages.
No console error, the expected text, dates in the reader's own time zone."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aggregator.demo import serve_folder
from tests.browser import Browser
from tests.conftest import debian_program, write_config
from tests.farm import Answer, Farm, png, rss
from tests.test_cli import aggregator
from tests.test_daemon import wait_for
from tests.test_scheduler import free_port

pytestmark = pytest.mark.slow
READER_ZONE = "Asia/Tokyo"  # UTC+9, no daylight saving time


def atom(farm: Farm, count: int) -> bytes:
    """An Atom feed with an icon and ``count`` dated entries, newest first; the newest
    has a picture in its text and markup in its title."""
    entries = []
    for i in range(count, 0, -1):
        day = f"2024-05-{i:02d}"  # (count ≤ 31)
        title = "Harbour &lt;b&gt;reopens&lt;/b&gt; at dawn" if i == count else f"Story number {i}"
        picture = f'&lt;img src="{farm.url("/pic.png")}"&gt;' if i == count else ""
        entries.append(
            f"<entry><title type='text'>{title}</title><id>urn:story:{i}</id>"
            f"<link href='https://a.example/{i}'/><published>{day}T10:00:00Z</published>"
            f"<updated>{day}T10:00:00Z</updated><content type='html'>{picture}&lt;p&gt;The "
            f"text of story {i} goes on for a few words.&lt;/p&gt;</content></entry>"
        )
    return (
        "<?xml version='1.0' encoding='utf-8'?><feed xmlns='http://www.w3.org/2005/Atom'>"
        f"<title>Feed A</title><id>urn:feed:a</id><updated>2024-06-01T00:00:00Z</updated>"
        f"<icon>{farm.url('/icon.png')}</icon>{''.join(entries)}</feed>"
    ).encode()


@pytest.fixture
def config(tmp_path: Path, farm: Farm) -> Path:
    """The feeds.yaml of an archive of 31 posts (two pages of the river) from two feeds,
    one with an icon."""
    farm.routes["/icon.png"] = farm.routes["/pic.png"] = Answer(
        200, png(0), {"Content-Type": "image/png"}
    )
    farm.routes["/a"] = Answer(200, atom(farm, 30))
    farm.routes["/b"] = Answer(200, rss([{"title": "A word from B", "link": "https://b.example/1",
                                          "pubDate": "Mon, 01 Jan 2024 08:00:00 GMT",
                                          "description": "B says hello."}], title="Feed B"))  # fmt: skip
    path = write_config(
        tmp_path,
        [{"url": farm.url("/a"), "tags": ["harbour"]}, {"url": farm.url("/b")}],
        link="http://127.0.0.1:4000/",
    )
    run = aggregator("poll", "-c", str(path))
    assert run.returncode == 0, run.stderr
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser(debian_program("chromium", "chromium")) as running:
        yield running


def test_the_daemon_pages_and_feeds_in_a_browser(config: Path, browser: Browser) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "serve", "-c", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(base), "the server")
        page = browser.load(base + "/", timezone=READER_ZONE)
        assert page.errors == []
        text = page.text()
        assert "Harbour <b>reopens</b> at dawn" in text  # a title is text, never markup
        assert "The text of story 30 goes on for a few words." in text  # its excerpt
        assert "Page 1 of 2" in text and "Older →" in text
        assert not re.search(r"\d{4}-\d\d-\d\dT", text)  # no raw ISO time, sources' included
        first = page.evaluate(
            "(async () => { const li = document.querySelector('.river li');"
            " const t = li.querySelector('time'); const icon = li.querySelector('.icon');"
            " if (!icon.complete) await new Promise(done => {"  # (lazy: after the load event)
            " icon.onload = done; icon.onerror = done; });"
            " return [t.dateTime, t.textContent, icon.src, icon.naturalWidth,"
            " li.querySelector('.thumb').src, li.querySelector('.meta').textContent]; })()"
        )
        when, shown, icon, icon_width, thumb, meta = first
        assert when == "2024-05-30T10:00:00Z"  # the item's own date, not the archive time
        assert "19:00" in shown or "7:00" in shown, shown  # 10:00 UTC in Tokyo
        assert "UTC" not in shown
        assert icon.endswith("/icon.png") and icon_width == 1  # the feed's icon, loaded
        assert thumb.endswith("/pic.png") and "Feed A" in meta
        older = browser.load(base + "/page/2/", timezone=READER_ZONE)
        assert older.errors == []
        assert "A word from B" in older.text() and "Page 2 of 2" in older.text()
        assert "← Newer" in older.text()
        for first, root in (("/page/1/", "/"), ("/tags/harbour/page/1/", "/tags/harbour/")):
            again = httpx.get(base + first)  # one address a page
            assert again.status_code == 301 and again.headers["location"] == root
        assert httpx.get(base + "/page/3/").status_code == 404
        assert httpx.get(base + "/tags/nowhere/").status_code == 404
        assert "script-src 'self'" in httpx.get(base + "/").headers["content-security-policy"]
        for where in ("/assets/feed.xsl", "/news/assets/feed.xsl"):  # (a link in a folder)
            assert httpx.get(base + where).headers["content-type"].startswith("text/xsl")
        assert httpx.get(base + "/assets/feeds.yaml").status_code == 404
        tag = browser.load(base + "/tags/harbour/")
        assert tag.errors == [] and "Story number 29" in tag.text()
        assert "A word from B" not in tag.text()

        # The feeds, opened in the browser: a page through the stylesheet, not XML text.
        # (A browser asks for text/html first and gets XML, which it styles; a reader
        # gets the feed's own type.)
        assert page.errors == []  # (the lazy pictures included, loaded by now)
        for accept, expected in (
            ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "application/xml"),
            ("application/atom+xml, application/rss+xml;q=0.9, */*;q=0.1", "application/atom+xml"),
            ("*/*", "application/atom+xml"),
        ):
            answer = httpx.get(f"{base}/atom.xml", headers={"Accept": accept})
            assert answer.headers["content-type"].startswith(expected), accept
            assert "Accept" in answer.headers["vary"]
            assert b'<?xml-stylesheet type="text/xsl" href="/assets/feed.xsl"?>' in answer.content
        for name in ("atom.xml", "feed.xml", "tags/harbour/atom.xml"):
            feed = browser.load(f"{base}/{name}")
            assert feed.errors == [], name
            shown = feed.text()
            assert "Harbour <b>reopens</b> at dawn" in shown and "Story number 29" in shown
            assert "<entry>" not in shown and "<item>" not in shown and "<title>" not in shown
            assert "feed reader" in shown  # how to subscribe
            assert feed.evaluate("document.querySelectorAll('a').length") > 10
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_the_jekyll_site_in_a_browser(config: Path, browser: Browser, tmp_path: Path) -> None:
    jekyll = debian_program("jekyll", "jekyll")
    root = config.parent / "archive"
    site = tmp_path / "_site"
    build = subprocess.run(
        [jekyll, "build", "--source", str(root), "--destination", str(site), "--quiet"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    assert build.stdout.strip() == "" and build.stderr.strip() == ""  # no Liquid warning
    with serve_folder(site) as base:
        home = browser.load(base, timezone=READER_ZONE)
        assert home.errors == []
        text = home.text()
        # (posts are in the order they were archived: a feed's newest first)
        a_items = [text.find(t) for t in ("Harbour <b>reopens", "Story number 29", "number 28")]
        assert -1 < a_items[0] < a_items[1] < a_items[2], text
        assert "The text of story 30" in text and "Page 1 of 2" in text
        when, shown, icon, picture = home.evaluate(
            "(() => { const li = [...document.querySelectorAll('ul.river li')]"
            ".find(li => li.textContent.includes('reopens'));"
            " const t = li.querySelector('time');"
            " return [t.dateTime, t.textContent, li.querySelector('img.icon').src,"
            " li.querySelector('img.picture').src]; })()"
        )
        assert when == "2024-05-30T10:00:00Z" and ("19:00" in shown or "7:00" in shown), shown
        assert icon.endswith("/icon.png")
        assert picture.endswith("/pic.png")  # the first picture of its text
        older = browser.load(base + "page/2/")
        assert older.errors == [] and "Page 2 of 2" in older.text()
        assert "A word from B" in text + older.text()
        tag = browser.load(base + "tags/harbour/")
        assert tag.errors == [] and "Story number 29" in tag.text()
        assert "A word from B" not in tag.text() and "Page 1 of 2" in tag.text()
        assert home.errors == []  # (its lazy pictures loaded meanwhile)

        # The published feeds, as a static server sends them, through the site's stylesheet.
        feed = browser.load(base + "atom.xml")
        assert feed.errors == [] and "Harbour <b>reopens</b> at dawn" in feed.text()
        assert "<entry>" not in feed.text() and "feed reader" in feed.text()

        link = home.evaluate(
            "[...document.querySelectorAll('ul.river li h2 a')]"
            ".find(a => a.textContent.includes('reopens')).href"
        )
        post = browser.load(link, timezone=READER_ZONE)
        assert post.errors == []
        body = post.text()
        assert body.count("Harbour <b>reopens</b> at dawn") == 1  # the title, once
        assert "The text of story 30 goes on" in body
        assert "GMT" not in body  # no raw RFC 822 date
        source_date = post.evaluate(
            "[...document.querySelectorAll('time')].map(t => [t.dateTime, t.textContent])"
        )
        assert [d for d, _ in source_date][:1] == ["2024-05-30T10:00:00Z"], source_date
        assert "19:00" in source_date[0][1] or "7:00" in source_date[0][1]


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
