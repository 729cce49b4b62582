from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import pytest

from aggregator.archive import Archive
from aggregator.config import load_config
from aggregator.models import Config, Entry
from aggregator.process import make_post
from aggregator.publish import publish
from tests.conftest import write_config
from tests.feedcheck import check_outputs

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def config(tmp_path: Path, **top: object) -> Config:
    return load_config(write_config(tmp_path, [{"url": "https://ex.com/feed"}], **top))


def fill(arc: Archive, n: int, *, published: list[datetime | None] | None = None) -> None:
    posts = []
    for i in range(n):
        pub = published[i] if published else NOW - timedelta(days=n - i)
        posts.append(
            make_post(
                Entry(
                    title=f'Item {i} <&> "quoted"',
                    link=f"https://ex.com/{i}",
                    guid=None,
                    content=f'<p>{i}</p><script>alert({i})</script><img src="/i{i}.png" onerror="x()">',
                    base="https://ex.com/",
                    published=pub,
                ),
                feed_url="https://ex.com/feed",
                name="Ex: the feed",
                tags=("news", "tech"),
                archived=NOW - timedelta(hours=1) + timedelta(seconds=i),
                site_link="https://ex.com/",
            )
        )
    arc.store(posts)


def test_outputs_are_valid_and_carry_every_field(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with Archive(cfg.archive) as arc:
        fill(arc, 5)
        publish(cfg, arc, NOW)
    assert check_outputs(cfg.archive) == 5
    rss = feedparser.parse((cfg.archive / "feed.xml").read_bytes())
    first = rss.entries[0]
    assert first.title == 'Item 4 <&> "quoted"'
    assert first.link == "https://ex.com/4"
    assert first.id == "https://ex.com/4"
    assert first.author == "Ex: the feed"  # the item names nobody: its source
    assert [t.term for t in first.tags] == ["news", "tech"]  # the source is named apart
    assert first.source.href == "https://ex.com/feed" and first.source.title == "Ex: the feed"
    raw = (cfg.archive / "feed.xml").read_text()
    assert '&lt;p&gt;4&lt;/p&gt;&lt;img src="https://ex.com/i4.png"&gt;' in raw  # as archived
    assert "alert(" not in raw and "onerror" not in raw
    atom = feedparser.parse((cfg.archive / "atom.xml").read_bytes())
    assert atom.entries[0].author == "Ex: the feed"
    assert atom.entries[0].content[0].type == "text/html"
    assert atom.feed.links[0].rel == "self"


def test_posts_archived_while_a_publish_runs_leave_it_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon publishes while a batch may be written in another thread: a post
    confirmed after the publish read the index is not in the merged feed, so a publish
    stays due (even across a restart) until one that includes it."""
    from aggregator.archive import publish_due

    cfg = config(tmp_path)
    with Archive(cfg.archive) as arc:
        fill(arc, 2)
        real_newest = arc.state.newest
        late: list[int] = []

        def newest_then_a_batch(*args: object, **kwargs: object) -> object:
            records = real_newest(*args, **kwargs)  # type: ignore[arg-type]
            if not late:  # the writer thread confirms a post just after this read
                late.append(1)
                fill(arc, 3)  # (its third item is new)
            return records

        monkeypatch.setattr(arc.state, "newest", newest_then_a_batch)
        publish(cfg, arc, NOW)
        monkeypatch.undo()
        assert check_outputs(cfg.archive) == 2
        assert publish_due(arc)
    with Archive(cfg.archive) as arc:  # (the next start knows it too)
        assert publish_due(arc)
        publish(cfg, arc, NOW)
        assert not publish_due(arc)
    assert check_outputs(cfg.archive) == 3


def test_newest_first_by_published_date_else_archive_date(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_items=3)
    dates = [NOW - timedelta(days=3), None, NOW + timedelta(days=365), NOW - timedelta(days=9)]
    with Archive(cfg.archive) as arc:
        fill(arc, 4, published=dates)
        publish(cfg, arc, NOW)
    titles = [
        e.title.split(" <")[0]
        for e in feedparser.parse((cfg.archive / "atom.xml").read_bytes()).entries
    ]
    # Item 2 claims a future date and Item 1 has none: both sort at their archive time
    # (an hour ago), ahead of Item 0 (three days ago); Item 3 (nine days) is cut by max_items.
    assert titles == ["Item 2", "Item 1", "Item 0"]


def test_publish_reads_only_the_posts_it_publishes(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_items=10)
    with Archive(cfg.archive) as arc:
        fill(arc, 60)
        opened: list[str] = []
        posts_dir = str(cfg.archive / "_posts")

        def audit(event: str, args: tuple[object, ...]) -> None:
            if event == "open" and isinstance(args[0], str) and args[0].startswith(posts_dir):
                opened.append(args[0])

        sys.addaudithook(audit)
        try:
            publish(cfg, arc, NOW)
        finally:
            posts_dir = "\0"  # audit hooks cannot be removed; make this one inert
    assert len(opened) == 10
    assert len(set(opened)) == 10


def test_a_missing_post_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path)
    with Archive(cfg.archive) as arc:
        fill(arc, 3)
        victim = arc.state.newest(1)[0].path
        (cfg.archive / victim).unlink()
        publish(cfg, arc, NOW)
    assert check_outputs(cfg.archive) == 2
    assert "run `aggregator reindex`" in caplog.text


def test_only_http_urls_are_linked_whatever_field_they_came_from(tmp_path: Path) -> None:
    """An item known only by a script GUID, and a post whose link line was edited to a
    script: the merged feeds link neither, and identify them without the scheme."""
    import json

    cfg = config(tmp_path)
    entries = [
        Entry("By GUID", None, "javascript://%0Aalert(1)", "<p>a</p>", "https://ex.com/", NOW),
        Entry("Edited", "https://ex.com/edited", None, "<p>b</p>", "https://ex.com/", NOW),
    ]
    where = {"feed_url": "https://ex.com/feed", "name": "Ex", "site_link": "https://ex.com/"}
    posts = [make_post(e, tags=(), archived=NOW, **where) for e in entries]
    with Archive(cfg.archive) as arc:
        arc.store(posts)
        edited = cfg.archive / posts[1].path
        text = edited.read_text().replace("(https://ex.com/edited)", "(javascript:alert(2))")
        edited.write_text(text.replace("from: https://ex.com/edited", "from: data:text/html,x"))
        publish(cfg, arc, NOW)
    http = ("http://", "https://")
    for name in ("feed.xml", "atom.xml"):
        parsed = feedparser.parse((cfg.archive / name).read_bytes())
        assert len(parsed.entries) == 2
        for entry in parsed.entries:
            links = [entry.get("link", "")] + [x.get("href", "") for x in entry.get("links", [])]
            assert all(link.startswith(http) for link in links), (name, links)
            if name == "atom.xml":  # (an RSS guid that is no permalink is no link)
                assert entry.id.startswith(("https://", "urn:")), entry.id
    items = json.loads((cfg.archive / "feed.json").read_text())["items"]
    assert sorted(i["url"] for i in items) == sorted(["https://ex.com/", cfg.link])
    assert all(i["id"].startswith(("https://", "urn:")) for i in items)


@pytest.mark.parametrize(
    ("link", "href"),
    [
        ("http://127.0.0.1:8080/", "/assets/feed.xsl"),
        ("https://example.org/news", "/news/assets/feed.xsl"),
        ("https://example.org/tags/world/", "/tags/world/assets/feed.xsl"),  # (a site there)
    ],
)
def test_the_feeds_name_the_sites_stylesheet(tmp_path: Path, link: str, href: str) -> None:
    cfg = load_config(
        write_config(tmp_path, [{"url": "https://ex.com/feed", "tags": ["news"]}], link=link)
    )
    with Archive(cfg.archive) as arc:
        fill(arc, 2)
        publish(cfg, arc, NOW)
    instruction = f'<?xml-stylesheet type="text/xsl" href="{href}"?>'.encode()
    for name in ("feed.xml", "atom.xml", "tags/news/feed.xml", "tags/news/atom.xml"):
        lines = (cfg.archive / name).read_bytes().splitlines()
        assert lines[0].startswith(b"<?xml ") and lines[1] == instruction, name
    assert feedparser.parse((cfg.archive / "tags/news/atom.xml").read_bytes()).entries
