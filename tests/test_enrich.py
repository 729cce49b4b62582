"""Teaser feeds read in full (``full_text``) and pictures and files kept in the archive
(``media: keep``): what the user gets, and what happens when pages and files fail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO
from xml.etree import ElementTree as ET

import pytest

from aggregator.config import load_config
from aggregator.models import Config
from aggregator.pipeline import run_pass
from aggregator.posts import LOCAL_MEDIA, read_post
from tests.conftest import StepClock, debian_program, write_config
from tests.farm import Answer, Farm, Raw, Request, png

ARTICLE = (Path(__file__).parent / "data" / "fulltext" / "article.html").read_text()
LEFT_OUT = ("COMMENT-MARKER", "FOOTER-MARKER", "RELATED-MARKER", "Subscribe for 1 euro",
            "We use cookies", "window.analytics")  # fmt: skip
SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)">'
    b"<script>alert(document.cookie)</script></svg>"
)


def page(i: int, image: str = "/img/river.png") -> Answer:
    body = ARTICLE.format(title=f"Story {i}", lead=f"LEAD-{i}.", image=image)
    return Answer(200, body.encode(), {"Content-Type": "text/html; charset=utf-8"})


def channel(farm: Farm, title: str, items: str) -> bytes:
    """An RSS 2.0 document of ``items`` (raw XML; the media: namespace is declared)."""
    return (
        '<?xml version="1.0"?><rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/">'
        f"<channel><title>{title}</title><link>{farm.url('/')}</link>"
        f"<description>d</description>{items}</channel></rss>"
    ).encode()


def teaser_feed(farm: Farm, n: int, inside: str = "") -> bytes:
    """``n`` teaser items linking to /news/<i>.html; ``inside``: more XML in each item."""
    items = "".join(
        f"<item><title>Story {i}</title><link>{farm.url(f'/news/{i}.html')}</link>"
        f"<pubDate>Wed, 0{i + 1} May 2024 10:00:00 GMT</pubDate>"
        f"<description>Teaser {i} only.</description>{inside}</item>"
        for i in range(n)
    )
    return channel(farm, "Gazette", items)


def one_feed(tmp_path: Path, farm: Farm, options: dict[str, object], **top: object) -> Config:
    """The config of the farm's /feed with these per-feed ``options`` (and top-level
    keys), parsed in this process."""
    feed = {"url": farm.url("/feed"), **options}
    return load_config(write_config(tmp_path, [feed], workers=0, **top))


def posts_of(archive: Path) -> dict[str, str]:
    """Title → text of every post."""
    found = {}
    for path in archive.rglob("*.md"):
        text = path.read_text()
        found[read_post(text, path.name).title] = text
    return found


def kept_files(archive: Path) -> list[Path]:
    return sorted(
        p for p in (archive / "media").rglob("*") if p.is_file() and ".partial" not in p.parts
    )


@pytest.mark.parametrize(
    ("mode", "strip"),
    [(True, []), ("article .story-body", [".ad", "figcaption"])],
    ids=["automatic", "selector"],
)
def test_a_teaser_feed_is_archived_with_its_articles(
    tmp_path: Path, farm: Farm, clock: StepClock, mode: bool | str, strip: list[str]
) -> None:
    for i in range(2):
        farm.routes[f"/news/{i}.html"] = page(i)
    farm.routes["/img/river.png"] = Answer(200, png(1), {"Content-Type": "image/png"})
    farm.routes["/feed"] = Answer(200, teaser_feed(farm, 2))
    config = one_feed(tmp_path, farm, {"full_text": mode, **({"strip": strip} if strip else {})})
    assert run_pass(config, clock=clock).new == 2
    posts = posts_of(config.archive)
    for i in range(2):
        text = posts[f"Story {i}"]
        assert f'text_from: "{farm.url(f"/news/{i}.html")}"' in text
        assert f"LEAD-{i}." in text and "Residents who spoke at the meeting" in text
        assert f"Teaser {i} only" not in text
        assert [marker for marker in LEFT_OUT if marker in text] == []
        # Links and pictures made absolute against the page; the sanitizer applied.
        assert f'href="{farm.url("/news/related/bridge-history.html")}"' in text
        assert f'src="{farm.url("/img/river.png")}"' in text and "<script" not in text
        if strip:  # the feed's strip rules apply to the page's article too
            assert "Advertisement" not in text and "seen from the old bridge" not in text
    for i in range(2):
        (request,) = farm.requests_to(f"/news/{i}.html")
        assert request.headers["user-agent"].startswith("aggregator/")
        assert "text/html" in request.headers["accept"]
    # Nothing is fetched again for items already archived.
    assert run_pass(config, clock=clock).new == 0
    assert len(farm.requests_to("/news/0.html")) == 1


@pytest.mark.parametrize("unchanged", ["304", "200"])
def test_a_failing_page_keeps_the_feed_text_and_is_tried_again(
    tmp_path: Path, farm: Farm, clock: StepClock, unchanged: str
) -> None:
    """Page 0 fails; page 1 does not wait for it. Page 0 is tried again at the next polls
    (the feed answering 304 meanwhile, or the same 200 again), and its post is rewritten
    in place once it is read; a page that keeps failing is tried at most three polls."""
    farm.routes["/news/0.html"] = Answer(503, b"busy", {"Retry-After": "60"})
    farm.routes["/news/1.html"] = page(1)
    farm.routes["/news/2.html"] = Answer(500, b"broken")
    body = teaser_feed(farm, 3)

    def feed(request: Request) -> Answer:
        if unchanged == "304" and request.headers.get("if-none-match") == '"v1"':
            return Answer(304, b"", {"ETag": '"v1"'})
        return Answer(200, body, {"ETag": '"v1"'} if unchanged == "304" else {})

    farm.routes["/feed"] = feed
    config = one_feed(tmp_path, farm, {"full_text": True})
    first = run_pass(config, clock=clock)
    assert first.new == 3 and not first.failed  # a page's failure is not the feed's
    posts = posts_of(config.archive)
    assert "Teaser 0 only." in posts["Story 0"] and "text_from" not in posts["Story 0"]
    assert "LEAD-1." in posts["Story 1"]
    paths = sorted(p.name for p in config.archive.rglob("*.md"))

    farm.routes["/news/0.html"] = page(0)
    second = run_pass(config, clock=clock)
    assert second.results[0].status.http_status == int(unchanged)
    posts = posts_of(config.archive)
    assert "LEAD-0." in posts["Story 0"] and "Teaser 0 only." not in posts["Story 0"]
    assert "updated:" not in posts["Story 0"]  # not an edit of the source
    assert sorted(p.name for p in config.archive.rglob("*.md")) == paths  # in place
    atom = ET.parse(config.archive / "atom.xml").getroot()
    assert "LEAD-0." in ET.tostring(atom, encoding="unicode")  # republished
    for _ in range(3):
        run_pass(config, clock=clock)
    assert len(farm.requests_to("/news/0.html")) == 2
    assert len(farm.requests_to("/news/1.html")) == 1
    assert len(farm.requests_to("/news/2.html")) == 3  # three polls, then left as it is
    assert "Teaser 2 only." in posts_of(config.archive)["Story 2"]


def test_pictures_are_kept_once_checked_and_capped(
    tmp_path: Path, farm: Farm, clock: StepClock
) -> None:
    """Two posts showing one picture share one kept file; an SVG with a script, a fake
    picture and a picture over the size cap are not kept (their URLs stay); the merged
    feeds give kept files absolute URLs under ``link``; the daemon's route serves them."""
    farm.routes["/img/shared.png"] = Answer(200, png(1), {"Content-Type": "image/png"})
    farm.routes["/img/thumb.png"] = Answer(200, png(2), {"Content-Type": "image/png"})
    farm.routes["/img/evil.svg"] = Answer(200, SVG, {"Content-Type": "image/svg+xml"})
    farm.routes["/img/fake.png"] = Answer(
        200, b"<html>not a picture</html>", {"Content-Type": "image/png"}
    )
    farm.routes["/img/huge.png"] = Answer(200, png(3, size=40_000), {"Content-Type": "image/png"})
    items = "".join(
        f"<item><title>Pic {i}</title><link>{farm.url(f'/p/{i}')}</link>"
        f"<description><![CDATA[<p>Look {i}</p><img src='/img/shared.png'>{extra}]]></description>"
        f"<media:thumbnail url='{farm.url('/img/thumb.png')}'/></item>"
        for i, extra in enumerate(
            ["<img src='/img/evil.svg'>", "<img src='/img/fake.png'><img src='/img/huge.png'>"]
        )
    )
    farm.routes["/feed"] = Answer(200, channel(farm, "Pics", items))
    config = one_feed(
        tmp_path, farm, {"media": "keep"}, media_limits={"image": 20_000},
        link="http://news.example/",
    )  # fmt: skip
    assert run_pass(config, clock=clock).new == 2
    kept = kept_files(config.archive)
    assert sorted(p.read_bytes() for p in kept) == sorted([png(1), png(2)])
    assert len(farm.requests_to("/img/shared.png")) == 1  # once for both posts
    posts = posts_of(config.archive)
    shared = (
        "/"
        + next(p for p in kept if p.read_bytes() == png(1)).relative_to(config.archive).as_posix()
    )
    for i in range(2):
        assert f'<img src="{shared}">' in posts[f"Pic {i}"]
        assert LOCAL_MEDIA.fullmatch(read_post(posts[f"Pic {i}"], "x").image or "")
    assert f'src="{farm.url("/img/evil.svg")}"' in posts["Pic 0"]  # not kept: its URL stays
    assert f'src="{farm.url("/img/fake.png")}"' in posts["Pic 1"]
    assert f'src="{farm.url("/img/huge.png")}"' in posts["Pic 1"]
    # Every picture a post refers to locally is in the archive, whole.
    for text in posts.values():
        for local in LOCAL_MEDIA.findall(text):
            assert (config.archive / local.lstrip("/")).is_file()
    feed = (config.archive / "feed.xml").read_text()
    assert f'src="http://news.example{shared}"' in feed and f'="{shared}"' not in feed
    run_pass(config, clock=clock)  # what was refused is not asked for again
    for name in ("shared", "evil.svg", "fake", "huge"):
        path = f"/img/{name}" if "." in name else f"/img/{name}.png"
        assert len(farm.requests_to(path)) == 1, path

    from aggregator.metrics import Metrics
    from aggregator.serve import Site
    from aggregator.state import State
    from tests.test_serve import Client

    state = State(config.archive / ".aggregator" / "state.sqlite3")
    try:
        http = Client(Site(config, state, Metrics()))
        served = http.get(shared)
        assert served.status_code == 200 and served.content == png(1)
        assert served.headers["content-type"] == "image/png"
        assert served.headers["x-content-type-options"] == "nosniff"
        for path in ("/media/../feeds.yaml", "/media/ab/evil.html", "/media/.partial/1-0",
                     shared.replace(".png", ".svg")):  # fmt: skip
            assert http.get(path).status_code == 404, path
    finally:
        state.close()


def _stalled_picture(half: bytes, total: int, sent: threading.Event) -> Raw:
    def write(out: BinaryIO, stopping: threading.Event) -> None:
        out.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {total}\r\n\r\n".encode()
        )
        out.write(half)
        out.flush()
        sent.set()
        stopping.wait(60)

    return Raw(write)


def test_a_download_killed_midway_leaves_nothing_referenced(tmp_path: Path, farm: Farm) -> None:
    """``kill -9`` while a picture is half downloaded: no post refers to a partial file;
    the next pass removes the leftover and keeps the picture whole."""
    picture = png(9, size=5_000)
    sent = threading.Event()
    farm.routes["/img/slow.png"] = _stalled_picture(picture[:3000], len(picture), sent)
    item = (
        f"<item><title>Slow picture</title><link>{farm.url('/p/slow')}</link>"
        "<description><![CDATA[<img src='/img/slow.png'>]]></description></item>"
    )
    farm.routes["/feed"] = Answer(200, channel(farm, "Slow", item))
    config = write_config(tmp_path, [{"url": farm.url("/feed"), "media": "keep"}])
    archive = tmp_path / "archive"
    poll = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "poll", "-c", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert sent.wait(60), "the download did not start"
        deadline = time.monotonic() + 20
        while not any((archive / "media" / ".partial").glob("*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list((archive / "media" / ".partial").glob("*"))  # half of it sent, then none
    finally:
        os.kill(poll.pid, signal.SIGKILL)
        poll.wait()
    assert kept_files(archive) == []
    for post in archive.rglob("*.md"):  # (the post is written after its pictures, if at all)
        assert LOCAL_MEDIA.findall(post.read_text()) == []

    farm.routes["/img/slow.png"] = Answer(200, picture, {"Content-Type": "image/png"})
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", "poll", "-c", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (kept,) = kept_files(archive)
    assert kept.read_bytes() == picture
    assert list((archive / "media" / ".partial").glob("*")) == []
    (post,) = archive.rglob("*.md")
    assert LOCAL_MEDIA.findall(post.read_text()) == ["/" + kept.relative_to(archive).as_posix()]


def test_enclosures_are_kept_when_asked_within_their_cap(
    tmp_path: Path, farm: Farm, clock: StepClock
) -> None:
    audio = b"ID3\x04\x00" + bytes(range(256)) * 20
    farm.routes["/ep1.mp3"] = Answer(200, audio, {"Content-Type": "audio/mpeg"})
    farm.routes["/ep2.mp3"] = Answer(200, audio * 10, {"Content-Type": "audio/mpeg"})
    farm.routes["/ep3.mp3"] = Answer(
        200, b"<html><script>x()</script></html>", {"Content-Type": "audio/mpeg"}
    )
    items = "".join(
        f"<item><title>Episode {i}</title><guid>ep-{i}</guid>"
        f"<enclosure url='{farm.url(f'/ep{i}.mp3')}' length='1' type='audio/mpeg'/></item>"
        for i in (1, 2, 3)
    )
    farm.routes["/feed"] = Answer(200, channel(farm, "Show", items))
    config = one_feed(
        tmp_path, farm, {"media": "keep_enclosures"}, media_limits={"enclosure": 10_000},
        link="http://pods.example/",
    )  # fmt: skip
    assert run_pass(config, clock=clock).new == 3
    (kept,) = kept_files(config.archive)
    assert kept.read_bytes() == audio and kept.suffix == ".mp3"
    posts = posts_of(config.archive)
    local = "/" + kept.relative_to(config.archive).as_posix()
    assert f'url: "{local}", type: audio/mpeg' in posts["Episode 1"]
    assert farm.url("/ep2.mp3") in posts["Episode 2"]  # over the cap: left where it is
    assert farm.url("/ep3.mp3") in posts["Episode 3"]  # markup: refused
    rss = (config.archive / "feed.xml").read_text()
    assert f'url="http://pods.example{local}"' in rss


def test_reindex_knows_kept_files_and_removes_those_no_post_uses(
    tmp_path: Path, farm: Farm, clock: StepClock
) -> None:
    farm.routes["/img/a.png"] = Answer(200, png(1), {"Content-Type": "image/png"})
    farm.routes["/img/b.png"] = Answer(200, png(2), {"Content-Type": "image/png"})
    items = "".join(
        f"<item><title>Post {x}</title><link>{farm.url(f'/p/{x}')}</link>"
        f"<description><![CDATA[<img src='/img/{x}.png'>]]></description></item>"
        for x in "ab"
    )
    farm.routes["/feed"] = Answer(200, channel(farm, "Two", items))
    config = one_feed(tmp_path, farm, {"media": "keep"})
    path = config.path
    run_pass(config, clock=clock)
    kept = {p.read_bytes(): p for p in kept_files(config.archive)}
    posts = {read_post(p.read_text(), "x").title: p for p in config.archive.rglob("*.md")}
    posts["Post a"].unlink()  # the user deletes a post by hand
    kept[png(2)].unlink()  # and a kept file disappears

    def reindex(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aggregator", "reindex", *args, "-c", str(path)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    broken = config.archive / "_posts" / "broken.md"
    broken.write_text("not a post: no front matter")
    refused = reindex("--media")  # an unreadable post might refer to any kept file
    assert "no kept file removed while a post cannot be read" in refused.stderr
    assert kept[png(1)].exists()
    broken.unlink()
    plain = reindex()
    assert plain.returncode == 0, plain.stderr
    assert "refers to /media/" in plain.stderr and "which is not in the archive" in plain.stderr
    assert kept[png(1)].exists()  # kept until asked
    pruned = reindex("--media")
    assert "removed 1 kept files" in pruned.stdout
    assert not kept[png(1)].exists()


def test_jekyll_shows_the_kept_pictures(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    """The article's picture and the item's thumbnail, both kept, shown from the site."""
    jekyll = debian_program("jekyll", "jekyll")
    farm.routes["/news/0.html"] = page(0)
    farm.routes["/img/river.png"] = Answer(200, png(5), {"Content-Type": "image/png"})
    farm.routes["/img/thumb.png"] = Answer(200, png(6), {"Content-Type": "image/png"})
    thumbnail = f"<media:thumbnail url='{farm.url('/img/thumb.png')}'/>"
    farm.routes["/feed"] = Answer(200, teaser_feed(farm, 1, inside=thumbnail))
    config = one_feed(tmp_path, farm, {"full_text": True, "media": "keep"})
    run_pass(config, clock=clock)
    kept, thumb = sorted(kept_files(config.archive), key=lambda p: p.read_bytes() != png(5))
    out = tmp_path / "site"
    subprocess.run(
        [jekyll, "build", "--source", str(config.archive), "--destination", str(out), "--quiet"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    relative = kept.relative_to(config.archive).as_posix()
    assert (out / relative).read_bytes() == png(5)
    (page_file,) = [p for p in out.rglob("*.html") if "story-0" in p.as_posix()]
    html = page_file.read_text()
    assert f'<img src="/{relative}"' in html and "LEAD-0." in html
    thumb_path = thumb.relative_to(config.archive).as_posix()
    assert (out / thumb_path).read_bytes() == png(6)
    assert f'<img src="/{thumb_path}" alt="">' in html  # the layout's picture, local too


def test_a_public_feed_cannot_make_it_read_a_local_address() -> None:
    """An item of a feed on a public address that links (or shows a picture) on a
    loopback, private or link-local address is not fetched; a feed on such an address
    (a home server) may use them."""
    import asyncio

    from aggregator.enrich import Enricher
    from aggregator.media import Refused
    from aggregator.models import FeedSource

    enricher = Enricher.__new__(Enricher)
    enricher._internal = {}
    public = FeedSource("http://93.184.216.34/feed.xml")
    home = FeedSource("http://192.168.1.10/feed.xml")

    async def check(source: FeedSource, url: str) -> bool:
        try:
            await enricher._check_address(source, url)
        except Refused:
            return False
        return True

    for url in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8080/",
                "http://[::1]/x", "http://10.0.0.5/admin", "http://localhost/x"):  # fmt: skip
        assert not asyncio.run(check(public, url)), url
        assert asyncio.run(check(home, url)), url
    assert asyncio.run(check(public, "http://93.184.216.35/picture.png"))


def test_a_kept_picture_is_not_downloaded_again_and_the_proxy_shows_the_others(
    tmp_path: Path, farm: Farm, clock: StepClock
) -> None:
    """A later post showing a picture kept for an earlier one refers to the same file,
    without asking for it again; a picture that is not kept (an SVG) goes through the
    image proxy."""
    farm.routes["/img/logo.png"] = Answer(200, png(4), {"Content-Type": "image/png"})
    farm.routes["/img/chart.svg"] = Answer(200, SVG, {"Content-Type": "image/svg+xml"})

    def feed(n: int) -> bytes:
        items = "".join(
            f"<item><title>Post {i}</title><link>{farm.url(f'/p/{i}')}</link>"
            "<description><![CDATA[<img src='/img/logo.png'><img src='/img/chart.svg'>]]>"
            "</description></item>"
            for i in range(n)
        )
        return channel(farm, "Logo", items)

    farm.routes["/feed"] = Answer(200, feed(1))
    config = one_feed(
        tmp_path, farm, {"media": "keep"}, image_proxy="https://proxy.example/?url={url}"
    )
    assert run_pass(config, clock=clock).new == 1
    farm.routes["/feed"] = Answer(200, feed(2))
    assert run_pass(config, clock=clock).new == 1
    assert len(farm.requests_to("/img/logo.png")) == 1
    assert len(farm.requests_to("/img/chart.svg")) == 1  # refused once, for good
    (kept,) = kept_files(config.archive)
    local = "/" + kept.relative_to(config.archive).as_posix()
    svg = farm.url("/img/chart.svg").split("://", 1)[1]
    for text in posts_of(config.archive).values():
        assert f'<img src="{local}">' in text
        assert f'<img src="https://proxy.example/?url={svg}">' in text


def test_an_article_page_elsewhere_gets_no_credentials_and_redirects_are_checked(
    tmp_path: Path, farm: Farm, clock: StepClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private feed's article pages on its own origin are fetched with its credentials,
    those on another origin without; every redirect of a page or a file is checked like
    its first URL."""
    import asyncio

    from aggregator.fetch import FetchSettings, fetch_feed, make_client
    from aggregator.media import Refused
    from aggregator.models import Validators

    monkeypatch.setenv("GAZETTE_TOKEN", "token-5d8a2c")
    with Farm().running() as other:
        farm.routes["/news/0.html"] = page(0)
        other.routes["/news/1.html"] = page(1)
        farm.routes["/img/river.png"] = Answer(200, png(1), {"Content-Type": "image/png"})
        other.routes["/img/river.png"] = Answer(200, png(1), {"Content-Type": "image/png"})
        items = (
            f"<item><title>Story 0</title><link>{farm.url('/news/0.html')}</link></item>"
            f"<item><title>Story 1</title><link>{other.url('/news/1.html')}</link></item>"
        )
        farm.routes["/feed"] = Answer(200, channel(farm, "Private", items))
        config = one_feed(
            tmp_path, farm, {"full_text": True, "headers": {"X-Token": {"env": "GAZETTE_TOKEN"}}}
        )
        assert run_pass(config, clock=clock).new == 2
        assert farm.requests_to("/news/0.html")[0].headers["x-token"] == "token-5d8a2c"
        assert "x-token" not in other.requests_to("/news/1.html")[0].headers
        assert all("LEAD-" in text for text in posts_of(config.archive).values())

        # A redirect is checked before it is followed.
        farm.routes["/moved"] = Answer(302, b"", {"Location": other.url("/news/1.html")})
        asked: list[str] = []

        async def hop(target: str) -> None:
            asked.append(target)
            raise Refused("on a private or local address, and the feed is not")

        async def fetch() -> None:
            settings = FetchSettings("agent")
            async with make_client(settings) as client:
                await fetch_feed(client, farm.url("/moved"), Validators(), settings, hop=hop)

        before = len(other.requests_to("/news/1.html"))
        with pytest.raises(Refused):
            asyncio.run(fetch())
        assert asked == [other.url("/news/1.html")]
        assert len(other.requests_to("/news/1.html")) == before  # never asked
