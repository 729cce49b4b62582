"""The archive as a site: per-tag feeds (published, served), site files, the Jekyll build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bs4 import BeautifulSoup

from aggregator.archive import Archive
from aggregator.config import load_config
from aggregator.models import Config, FeedSource
from aggregator.pipeline import run_pass
from aggregator.publish import publish
from aggregator.serve import Site
from tests.conftest import DATA, StepClock, debian_program, write_config
from tests.farm import Answer, Farm, rss
from tests.feedcheck import check_outputs
from tests.test_serve import Client

RSS = {"Content-Type": "application/rss+xml"}
ROOT = Path(__file__).resolve().parents[1]


def three_feeds(tmp_path: Path, farm: Farm, clock: StepClock, **top: object) -> Config:
    for name, count in (("a", 3), ("b", 2), ("c", 1)):
        items = [
            {"title": f"{name.upper()} story {i}", "link": f"https://{name}.example/{i}",
             "description": f"<p>Text {name}{i}</p>", "pubDate": f"Mon, 0{i + 1} Jan 2024 10:00:00 GMT"}
            for i in range(count)
        ]  # fmt: skip
        farm.routes[f"/{name}"] = Answer(200, rss(items, title=f"Feed {name.upper()}"), RSS)
    feeds = [
        {"url": farm.url("/a"), "name": "Feed A", "tags": ["world", "UK news"]},
        {"url": farm.url("/b"), "name": "Feed B", "tags": ["world"]},
        {"url": farm.url("/c"), "name": "Feed C"},
    ]
    config = load_config(write_config(tmp_path, feeds, link="https://news.example/site", **top))
    run_pass(config, clock=clock)
    return config


def test_per_tag_feeds_hold_their_feeds_items(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    config = three_feeds(tmp_path, farm, clock)
    root = config.archive
    assert check_outputs(root) == 6
    assert check_outputs(root / "tags" / "world") == 5
    assert check_outputs(root / "tags" / "uk-news") == 3
    world = json.loads((root / "tags" / "world" / "feed.json").read_text())
    assert world["title"] == "Test merged feed: world"
    assert world["feed_url"] == "https://news.example/site/tags/world/feed.json"
    assert world["home_page_url"] == "https://news.example/site/tags/world/"
    assert {i["authors"][0]["name"] for i in world["items"]} == {"Feed A", "Feed B"}
    assert not (root / "tags" / "c").exists()


def test_tag_feeds_are_served_and_linked(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    config = three_feeds(tmp_path, farm, clock)
    with Archive(config.archive) as archive:
        http = Client(Site(config, archive.state))
        for name in ("feed.xml", "atom.xml", "feed.json"):
            response = http.get(f"/tags/world/{name}", headers={"Accept-Encoding": "identity"})
            assert response.status_code == 200, name
            assert response.content == (config.archive / "tags" / "world" / name).read_bytes()
        assert http.get("/tags/sport/atom.xml").status_code == 404
        assert http.get("/tags/../feeds.yaml").status_code == 404
        home = BeautifulSoup(http.get("/").text, "html.parser")
        hrefs = {a["href"] for a in home.find_all("a")}
        assert {"/tags/world/", "/tags/world/atom.xml", "/tags/uk-news/feed.json"} <= hrefs
        page = http.get("/tags/uk-news/")
        assert page.status_code == 200
        soup = BeautifulSoup(page.text, "html.parser")
        assert soup.title and soup.title.text == "Test merged feed: UK news"
        alternates = [link["href"] for link in soup.find_all("link", rel="alternate")]
        assert "/tags/uk-news/atom.xml" in alternates
        listed = [li.a.text for li in soup.find_all("li") if li.a]
        assert sorted(listed) == ["A story 0", "A story 1", "A story 2"]


def test_a_tag_that_leaves_feeds_yaml_takes_its_files(
    tmp_path: Path, farm: Farm, clock: StepClock
) -> None:
    config = three_feeds(tmp_path, farm, clock)
    (config.archive / "tags" / "world" / "notes.txt").write_text("mine")
    text = config.path.read_text().replace("- world\n", "- globe\n")
    config.path.write_text(text)
    farm.routes["/c"] = Answer(200, rss([{"title": "new", "link": "https://c.example/new"}]), RSS)
    run_pass(load_config(config.path), clock=clock)
    tags = config.archive / "tags"
    assert sorted(p.name for p in tags.iterdir()) == ["globe", "uk-news", "world"]
    assert [p.name for p in (tags / "world").iterdir()] == ["notes.txt"]  # the user's file stays
    assert check_outputs(tags / "globe") == 5


def test_site_files_are_written_once_and_data_follows_the_config(
    tmp_path: Path, farm: Farm, clock: StepClock
) -> None:
    config = three_feeds(tmp_path, farm, clock)
    root = config.archive
    for name in (
        "_config.yml",
        "_layouts/default.html",
        "_layouts/post.html",
        "_layouts/tag.html",
        "index.html",
    ):
        assert (root / name).is_file(), name
    (root / "_layouts" / "post.html").write_text("my own layout {{ content }}")
    data = (root / "_data" / "aggregator.yml").read_text()
    assert "title: Test merged feed\n" in data and "- name: UK news\n  slug: uk-news\n" in data
    tag_page = (root / "tags" / "world" / "index.html").read_text()
    assert tag_page == '---\nlayout: tag\ntitle: "world"\ntag: "world"\ntag_slug: world\n---\n'
    farm.routes["/c"] = Answer(200, rss([{"title": "new", "link": "https://c.example/new"}]), RSS)
    run_pass(config, clock=clock)
    assert (root / "_layouts" / "post.html").read_text() == "my own layout {{ content }}"


def test_site_files_an_earlier_version_shipped_unchanged_are_brought_up_to_date(
    tmp_path: Path,
) -> None:
    from aggregator.site import install_site

    shipped = ROOT / "aggregator" / "site"
    old_layout = (DATA / "site-before" / "post.html").read_bytes()
    old_config = (DATA / "site-before" / "_config.yml").read_bytes()
    (tmp_path / "_layouts").mkdir()
    (tmp_path / "_layouts" / "post.html").write_bytes(old_layout)
    (tmp_path / "_config.yml").write_bytes(old_config + b"# my note\n")  # edited: kept
    assert b'page.from contains "://"' in old_layout  # the version that linked any scheme
    written = install_site(tmp_path)
    assert "_layouts/post.html" in written and "_config.yml" not in written
    assert (tmp_path / "_layouts" / "post.html").read_bytes() == (
        shipped / "_layouts" / "post.html"
    ).read_bytes()
    assert (tmp_path / "_config.yml").read_bytes() == old_config + b"# my note\n"
    (tmp_path / "_config.yml").write_bytes(old_config)
    assert install_site(tmp_path) == ["_config.yml"]
    assert b"future: true" in (tmp_path / "_config.yml").read_bytes()


def test_the_site_files_have_one_home(tmp_path: Path) -> None:
    """The package holds the site's files; the repository's archive/ does not carry a
    second copy: the first publish writes them (as into any new archive)."""
    from aggregator.site import SITE_FILES, install_site

    if (ROOT / ".git").exists() and shutil.which("git"):
        tracked = subprocess.run(
            ["git", "ls-files", "archive"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        assert tracked == ["archive/.gitkeep"]
    assert install_site(tmp_path) == list(SITE_FILES)
    package = ROOT / "aggregator" / "site"
    for name in SITE_FILES:
        assert (tmp_path / name).read_bytes() == (package / name).read_bytes(), name
    assert install_site(tmp_path) == []  # written once; edits are the user's


def test_jekyll_builds_the_archive(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    jekyll = debian_program("jekyll", "jekyll")
    farm.routes["/seed"] = Answer(200, (DATA / "seed-source.xml").read_bytes(), RSS)
    hostile = rss([
        {"title": "Liquid {{ site.title }} {% raw %} and <b>tags</b>", "link": "https://h.example/1",
         "description": "<p>{% include nothing.html %} {{ page.x }}</p>"},
        {"title": "---", "link": "https://h.example/2", "description": "<p>dashes</p>"},
    ])  # fmt: skip
    farm.routes["/hostile"] = Answer(200, hostile, RSS)
    script = rss([{"title": "Known by a script GUID", "guid": "javascript://%0Aalert(1)"}])
    farm.routes["/script"] = Answer(200, script, RSS)
    farm.routes["/ahead"] = Answer(200, rss([{"title": "Ahead", "link": "https://a.example/"}]))
    for name in ("podcast.xml", "youtube.xml"):
        farm.routes["/" + name] = Answer(200, (DATA / "media" / name).read_bytes())
    feeds = [
        {"url": farm.url("/seed"), "name": "美国之音", "tags": ["中文", "world"]},
        {"url": farm.url("/hostile"), "name": "Odd: names"},
        {"url": farm.url("/script"), "name": "Script"},
        {"url": farm.url("/podcast.xml")},
        {"url": farm.url("/youtube.xml")},
    ]
    config = load_config(write_config(tmp_path, feeds))
    run_pass(config, clock=clock)
    # A post archived while the clock ran 400 days ahead: dated after the build.
    ahead = replace(config, feeds=(FeedSource(farm.url("/ahead"), name="Ahead"),))
    run_pass(ahead, clock=StepClock(datetime.now(UTC) + timedelta(days=400)))
    with Archive(config.archive) as archive:
        publish(config, archive, datetime.now(UTC))  # the site's tags, from the whole config
    with Archive(config.archive) as archive:
        records = list(archive.state.items())
        posts = {r.path: archive.read_post(r.path) for r in records}
    assert len(posts) >= 3
    out = tmp_path / "_site"
    build = subprocess.run(
        [jekyll, "build", "--source", str(config.archive), "--destination", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    pages = {p for p in out.rglob("index.html") if len(p.relative_to(out).parts) == 5}
    assert len(pages) == len(posts)  # one /YYYY/MM/DD/<slug>/index.html per post
    for path, post in posts.items():
        slug = Path(path).stem[len("YYYY-MM-DD-") :]
        day = post.archived.strftime("%Y/%m/%d")
        page = BeautifulSoup((out / day / slug / "index.html").read_text(), "html.parser")
        assert page.h1 is not None and page.h1.text == post.title
        assert (
            page.find("hr") is not None and "——" not in page.get_text()
        )  # the rule under the link
        source = page.find("a", class_="source")
        if post.source.startswith(("http://", "https://")):
            assert source is not None and source["href"] == post.source
        else:  # only http(s) is linked
            assert source is None
        # What the item carries: a player for its audio, its picture, its people.
        for enclosure in post.enclosures:
            assert page.find("audio", src=enclosure.url) is not None, path
            assert page.find("a", href=enclosure.url) is not None, path
        if post.image and not post.enclosures:
            assert page.find("img", src=post.image) is not None, path
        for person in post.item_authors:
            assert person in page.get_text()
        text = page.get_text()
        first_words = BeautifulSoup(post.content, "html.parser").get_text().split()[:3]
        assert " ".join(first_words) in " ".join(text.split())
    assert any(p.archived > datetime.now(UTC) for p in posts.values())  # and it is built
    assert sum(len(p.enclosures) for p in posts.values()) == 3  # the podcast's episodes
    assert sum(1 for p in posts.values() if p.image and not p.enclosures) == 2  # the videos
    for html in out.rglob("*.html"):
        for element in BeautifulSoup(html.read_text(), "html.parser").find_all(href=True):
            assert element["href"].split(":")[0].lower() not in ("javascript", "data"), html
    shown = [BeautifulSoup(p.read_text(), "html.parser").get_text() for p in pages]
    assert any("{% include nothing.html %} {{ page.x }}" in text for text in shown)  # not run
    home = BeautifulSoup((out / "index.html").read_text(), "html.parser")
    assert len(home.select("ul.posts li")) == len(posts)
    tag = BeautifulSoup((out / "tags" / "zhongwen" / "index.html").read_text(), "html.parser")
    assert len(tag.select("ul.posts li")) == sum(1 for p in posts.values() if "中文" in p.tags)
    assert (out / "tags" / "world" / "atom.xml").is_file() and (out / "feed.json").is_file()


def test_a_site_built_in_the_second_its_newest_posts_came_lists_them_first(
    tmp_path: Path, farm: Farm
) -> None:
    """Jekyll takes a post dated in the second its build started for one without a date
    (and dates it midnight): a build right after a poll must still show the newest first."""
    jekyll = debian_program("jekyll", "jekyll")
    faketime = debian_program("faketime", "faketime")
    days = (3, 2, 1)
    items = [{"title": f"Item {d}", "link": f"https://d.example/{d}",
              "pubDate": f"0{d} May 2024 08:00:00 GMT"} for d in days]  # fmt: skip
    farm.routes["/feed"] = Answer(200, rss(items), RSS)
    config = load_config(write_config(tmp_path, [{"url": farm.url("/feed")}]))
    polled = datetime(2026, 3, 1, 9, 30, 0, 400_000, tzinfo=UTC)
    run_pass(config, clock=lambda: polled)  # Item 3 archived at 09:30:00.4, the others before
    out = tmp_path / "_site"
    build = subprocess.run(
        [faketime, "-f", "2026-03-01 09:30:00", jekyll, "build", "--source", str(config.archive),
         "--destination", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "TZ": "UTC"},
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    home = BeautifulSoup((out / "index.html").read_text(), "html.parser")
    assert [li.h2.get_text() for li in home.select("ul.posts li")] == [f"Item {d}" for d in days]


def test_the_rivers_later_pages_follow_the_count(tmp_path: Path) -> None:
    from aggregator.site import PER_PAGE, _write_pages, page_count

    assert [page_count(n) for n in (0, 1, PER_PAGE, PER_PAGE + 1)] == [1, 1, 1, 2]
    front = "---\nlayout: river\ntag: x\n---\n"
    _write_pages(tmp_path, front, 3 * PER_PAGE)
    pages = sorted(p.parent.name for p in (tmp_path / "page").glob("*/index.html"))
    assert pages == ["2", "3"]
    assert (tmp_path / "page/3/index.html").read_text() == (
        "---\nlayout: river\ntag: x\nnumber: 3\n---\n"
    )
    (tmp_path / "page" / "²").mkdir()  # (not a page number: left alone, and no error)
    (tmp_path / "page" / "2" / "notes.txt").write_text("mine")  # a file of the user's
    _write_pages(tmp_path, front, PER_PAGE)  # posts were removed: one page now
    assert not (tmp_path / "page" / "3").exists()
    assert not (tmp_path / "page/2/index.html").exists()
    assert (tmp_path / "page/2/notes.txt").read_text() == "mine"  # kept, with its folder
    assert (tmp_path / "page" / "²").is_dir()
