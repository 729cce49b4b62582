"""add / remove / import-opml / export-opml: feeds.yaml edited in place, comments kept."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from aggregator.config import load_config
from aggregator.errors import SourcesError
from aggregator.sources.discover import discover_links
from aggregator.sources.feedsfile import add_feed, remove_feed
from aggregator.sources.opml import export_opml, import_opml, read_opml
from tests.farm import Answer, Farm, rss
from tests.test_cli import aggregator

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"

PAGE = b"""<!doctype html><html><head><title>A blog</title>
<link rel="stylesheet" href="/style.css">
<link rel="alternate" type="application/rss+xml" title="Posts (RSS)" href="/feed.xml">
<link rel="alternate" type="application/atom+xml" title="Posts (Atom)" href="https://other.example/atom">
<link rel="alternate" hreflang="fr" href="/fr/">
</head><body><p>hello</p></body></html>"""


def shipped_config(tmp_path: Path) -> Path:
    path = tmp_path / "feeds.yaml"
    shutil.copy(ROOT / "feeds.yaml", path)
    return path


def test_discovery_keeps_feed_links_in_page_order() -> None:
    assert discover_links(PAGE, "http://blog.example/index.html") == [
        ("http://blog.example/feed.xml", "Posts (RSS)"),
        ("https://other.example/atom", "Posts (Atom)"),
    ]
    assert discover_links(b"<html><link rel=alternate href=/fr/></html>", "http://x/") == []


def test_add_from_a_page_appends_its_first_feed_and_keeps_the_file(
    tmp_path: Path, farm: Farm
) -> None:
    farm.routes["/"] = Answer(
        200,
        PAGE.replace(b'href="/feed.xml"', f'href="{farm.url("/feed.xml")}"'.encode()),
        {"Content-Type": "text/html; charset=utf-8"},
    )
    farm.routes["/feed.xml"] = Answer(
        200, rss([{"title": "a", "link": "https://ex.com/a"}], title="A: blog"),
        {"Content-Type": "application/rss+xml"},
    )  # fmt: skip
    path = shipped_config(tmp_path)
    before = path.read_text()
    run = aggregator("add", farm.url("/"), "--tags", "tech, python", "-c", str(path))
    assert run.returncode == 0, run.stderr
    assert path.read_text() == before + (
        f"  - url: {farm.url('/feed.xml')}\n    name: 'A: blog'\n    tags: [tech, python]\n"
    )
    assert "announces 2 feeds" in run.stdout
    assert f"* {farm.url('/feed.xml')}" in run.stdout and "https://other.example/atom" in run.stdout
    assert [r.path for r in farm.requests] == ["/", "/feed.xml"]
    config = load_config(path)
    assert config.feeds[-1].name == "A: blog" and config.feeds[-1].tags == ("tech", "python")

    again = aggregator("add", farm.url("/feed.xml"), "-c", str(path))
    assert again.returncode == 1
    assert "already in" in again.stderr and "feeds[5]" in again.stderr
    assert path.read_text().count("url:") == 6


def test_add_a_plain_feed_with_name_and_interval(tmp_path: Path, farm: Farm) -> None:
    farm.routes["/rss"] = Answer(200, rss([{"title": "a", "link": "https://ex.com/a"}]))
    path = shipped_config(tmp_path)
    before = path.read_text()
    found, config = add_feed(path, farm.url("/rss"), name="Mine", interval="2h")
    assert found.url == farm.url("/rss") and found.alternatives == ()
    assert path.read_text() == before + (
        f"  - url: {farm.url('/rss')}\n    name: Mine\n    interval: 2h\n"
    )
    assert config.feeds[-1].interval == 7200


def test_add_refuses_what_does_not_work(tmp_path: Path, farm: Farm) -> None:
    farm.routes["/page"] = Answer(
        200, b"<html><body>no feeds</body></html>", {"Content-Type": "text/html"}
    )
    farm.routes["/broken"] = Answer(200, b"this is not a feed", {"Content-Type": "text/plain"})
    path = shipped_config(tmp_path)
    before = path.read_text()
    with pytest.raises(SourcesError, match="announces no feed"):
        add_feed(path, farm.url("/page"))
    with pytest.raises(SourcesError, match=r"not added .*--no-check"):
        add_feed(path, farm.url("/broken"))
    with pytest.raises(SourcesError, match="HTTP 404"):
        add_feed(path, farm.url("/missing"))
    with pytest.raises(SourcesError, match="already in"):
        add_feed(path, "https://FEEDS.bbci.co.uk/news/world/rss.xml?utm_source=x", check=False)
    with pytest.raises(SourcesError, match="not an http"):
        add_feed(path, "ftp://example.com/feed")
    assert path.read_text() == before


def test_add_creates_a_missing_feeds_yaml(tmp_path: Path) -> None:
    path = tmp_path / "feeds.yaml"
    add_feed(path, "https://example.com/feed.xml", check=False)
    assert path.read_text().endswith("feeds:\n  - url: https://example.com/feed.xml\n")
    assert load_config(path).feeds[0].url == "https://example.com/feed.xml"


def test_remove_by_name_or_url_keeps_the_rest(tmp_path: Path) -> None:
    path = shipped_config(tmp_path)
    before = path.read_text()
    entry, config = remove_feed(path, "nyt world")
    assert entry["url"] == "https://rss.nytimes.com/services/xml/rss/nyt/World.xml"
    expected = before.replace(
        "  - url: https://rss.nytimes.com/services/xml/rss/nyt/World.xml\n"
        "    name: NYT World\n    tags: [world, us]\n", ""
    )  # fmt: skip
    assert path.read_text() == expected
    assert len(config.feeds) == 4
    run = aggregator("remove", "https://feeds.npr.org/1001/rss.xml", "-c", str(path))
    assert run.returncode == 0, run.stderr
    assert "npr" not in path.read_text() and "# no name" not in path.read_text()
    gone = aggregator("remove", "Nobody", "-c", str(path))
    assert gone.returncode == 1 and "no feed with the URL or name 'Nobody'" in gone.stderr


# OPML -----------------------------------------------------------------------------------

# Shapes that readers export: folders of feeds (Feedly, Inoreader, NetNewsWire, Miniflux),
# OPML 1.0 with only `text`, categories (OPML 2.0), a feed at the top level.
OPML_FOLDERS = b"""<?xml version="1.0" encoding="UTF-8"?>
<opml version="1.0"><head><title>Feedly subscriptions</title></head><body>
  <outline text="Tech" title="Tech">
    <outline type="rss" text="Blog A" title="Blog A" xmlUrl="https://a.example/feed" htmlUrl="https://a.example/"/>
    <outline text="Python">
      <outline type="rss" text="Planet Python" xmlUrl="https://planetpython.org/rss20.xml"/>
    </outline>
  </outline>
  <outline type="rss" text="Top level" xmlUrl="http://top.example/rss"/>
  <outline type="rss" text="Gopher" xmlUrl="gopher://old.example/feed"/>
</body></opml>"""
OPML_CATEGORIES = b"""<?xml version="1.0"?>
<opml version="2.0"><head><title>x</title></head><body>
<outline type="rss" text="Weather" xmlUrl="https://w.example/rss" category="/Boston/Weather,news"/>
</body></opml>"""


def test_read_opml_shapes() -> None:
    outlines = read_opml(OPML_FOLDERS, "subs.opml")
    assert [(o.url, o.name, o.tags) for o in outlines] == [
        ("https://a.example/feed", "Blog A", ("Tech",)),
        ("https://planetpython.org/rss20.xml", "Planet Python", ("Tech", "Python")),
        ("http://top.example/rss", "Top level", ()),
        ("gopher://old.example/feed", "Gopher", ()),
    ]
    (weather,) = read_opml(OPML_CATEGORIES, "c.opml")
    assert weather.tags == ("Boston", "Weather", "news")
    with pytest.raises(SourcesError, match=r"bad\.opml: not a valid OPML"):
        read_opml(b"<opml><body>", "bad.opml")
    with pytest.raises(SourcesError, match="not an OPML file"):
        read_opml(b"<rss/>", "rss.xml")
    entity = b'<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY x SYSTEM "file:///etc/passwd">]><opml><body><outline text="&x;" xmlUrl="https://e.example/"/></body></opml>'
    with pytest.raises(SourcesError) as refused:  # an external entity is never read
        read_opml(entity, "e.opml")
    assert "root:" not in str(refused.value)


def test_import_opml_appends_new_feeds_and_skips_the_rest(tmp_path: Path) -> None:
    path = shipped_config(tmp_path)
    before = path.read_text()
    opml = tmp_path / "subs.opml"
    opml.write_bytes(
        OPML_FOLDERS.replace(
            b"https://a.example/feed", b"https://feeds.bbci.co.uk/news/world/rss.xml"
        )
    )
    run = aggregator("import-opml", str(opml), "-c", str(path))
    assert run.returncode == 0, run.stderr
    assert "imported 2 feeds" in run.stdout and "skipped 2" in run.stdout
    assert "gopher://old.example/feed: not an http" in run.stdout
    assert path.read_text() == before + (
        "  - url: https://planetpython.org/rss20.xml\n"
        "    name: Planet Python\n"
        "    tags: [Tech, Python]\n"
        "  - url: http://top.example/rss\n"
        "    name: Top level\n"
    )


def test_opml_round_trip_loses_nothing(tmp_path: Path) -> None:
    source = tmp_path / "a" / "feeds.yaml"
    source.parent.mkdir()
    source.write_text(
        "title: Mine\ninterval: 1h\nfeeds:\n"
        '  - url: https://a.example/feed\n    name: "A: first"\n    tags: [tech, 新闻]\n'
        '  - url: https://b.example/rss\n    interval: 2h\n    title: "[B] {title}"\n'
        '    include: python|rust\n    exclude: (?i)sponsored\n    strip: [div.ad, "p > .promo, footer"]\n'
        "    image_proxy: false\n    full_content: false\n    updates: false\n"
        '  - url: https://c.example/atom\n    image_proxy: "https://img.example/?u={url}"\n'
    )
    config = load_config(source)
    exported = export_opml(config, {"https://b.example/rss": "Feed B"})
    ET.fromstring(exported)  # well-formed
    assert exported.startswith(b"<?xml version='1.0' encoding='utf-8'?>\n<opml version=\"2.0\">")
    target = tmp_path / "b" / "feeds.yaml"
    target.parent.mkdir()
    target.write_text("title: Mine\ninterval: 1h\nfeeds: []\n")
    opml = tmp_path / "feeds.opml"
    opml.write_bytes(exported)
    report = import_opml(target, opml)
    assert len(report.added) == 3 and not report.skipped
    again = load_config(target)
    # The name learned from feed B becomes its name; everything else is identical.
    assert again.feeds[1].name == "Feed B"
    learned = {"https://b.example/rss": "Feed B"}
    assert [replace(f, line=None) for f in again.feeds] == [
        replace(f, line=None, name=f.name or learned.get(f.url)) for f in config.feeds
    ]
    assert export_opml(again, {}) == exported


def test_export_opml_command(tmp_path: Path) -> None:
    path = shipped_config(tmp_path)
    run = aggregator("export-opml", "-c", str(path))
    assert run.returncode == 0, run.stderr
    root = ET.fromstring(run.stdout.encode())
    outlines = root.findall("./body/outline")
    assert [o.get("xmlUrl") for o in outlines] == [f.url for f in load_config(path).feeds]
    assert outlines[0].get("category") == "world,uk" and outlines[0].get("text") == "BBC World"
    assert outlines[4].get("text") == "https://feeds.npr.org/1001/rss.xml"  # not polled yet


def test_edits_keep_a_symlinked_feeds_yaml_and_its_permissions(tmp_path: Path) -> None:
    real = shipped_config(tmp_path)
    real.chmod(0o600)
    (tmp_path / "conf").mkdir()
    link = tmp_path / "conf" / "feeds.yaml"
    link.symlink_to(real)
    add_feed(link, "https://example.com/feed.xml", check=False)
    assert link.is_symlink() and "https://example.com/feed.xml" in real.read_text()
    assert real.stat().st_mode & 0o777 == 0o600
