"""Edits at the source reach the archive and the merged feed, within bounds; what stays
the same item stays one post (an http→https move, a text correction of an item without
link or GUID); junk stays out."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree as ET

import feedparser
import pytest
import yaml

from aggregator.archive import CHURN_LIMIT, Archive
from aggregator.config import load_config
from aggregator.models import Config
from aggregator.pipeline import run_pass
from tests.conftest import DATA, StepClock, write_config
from tests.farm import Answer, Farm
from tests.feedcheck import check_outputs

ATOM = "{http://www.w3.org/2005/Atom}"
RSS = {"Content-Type": "application/rss+xml"}


def atom(*entries: dict[str, str]) -> bytes:
    parts = ['<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
             "<title>Ed</title><id>urn:ed</id><updated>2024-04-01T00:00:00Z</updated>"]  # fmt: skip
    for e in entries:
        parts.append("<entry>")
        for tag in ("title", "id", "published", "updated"):
            if tag in e:
                parts.append(f"<{tag}>{e[tag]}</{tag}>")
        if "link" in e:
            parts.append(f'<link href="{e["link"]}"/>')
        if "content" in e:
            parts.append(f'<content type="html">{e["content"]}</content>')
        parts.append("</entry>")
    return ("".join(parts) + "</feed>").encode()


def rss_items(*items: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Ed</title>'
        "<link>https://ed.example/</link>" + "".join(f"<item>{i}</item>" for i in items)
        + "</channel></rss>"
    ).encode()  # fmt: skip


STORY = {
    "title": "First version",
    "id": "urn:story:1",
    "link": "https://ed.example/story",
    "published": "2024-04-01T10:00:00Z",
    "updated": "2024-04-01T10:00:00Z",
    "content": "&lt;p&gt;Original text.&lt;/p&gt;",
}
OTHER = {"title": "Other", "id": "urn:story:2", "link": "https://ed.example/other",
         "published": "2024-03-01T10:00:00Z", "content": "&lt;p&gt;x&lt;/p&gt;"}  # fmt: skip


def setup(
    tmp_path: Path, farm: Farm, body: bytes, top: dict[str, object] | None = None, **options: object
) -> Config:
    farm.routes["/ed"] = Answer(200, body, {"Content-Type": "application/atom+xml"})
    feeds = [{"url": farm.url("/ed"), **options}]
    return load_config(write_config(tmp_path, feeds, **(top or {})))


def serve(farm: Farm, body: bytes, kind: str = "application/atom+xml") -> None:
    farm.routes["/ed"] = Answer(200, body, {"Content-Type": kind})


def posts(config: Config) -> dict[str, str]:
    """Every post file: path → text."""
    return {
        p.relative_to(config.archive).as_posix(): p.read_text()
        for p in sorted((config.archive / "_posts").rglob("*.md"))
    }


def front(text: str) -> dict[str, object]:
    meta: dict[str, object] = yaml.safe_load(text.split("---\n")[1])
    return meta


def test_an_edit_at_the_source_rewrites_the_post_in_place(
    tmp_path: Path, farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    config = setup(tmp_path, farm, atom(STORY, OTHER))
    clock = StepClock()
    assert run_pass(config, clock=clock).new == 2
    ((path, before),) = [(p, t) for p, t in posts(config).items() if "first-version" in p]
    edited = {**STORY, "title": "Corrected version", "updated": "2024-04-02T08:00:00Z",
              "content": "&lt;p&gt;Corrected text.&lt;/p&gt;"}  # fmt: skip
    serve(farm, atom(edited, OTHER))
    caplog.set_level(logging.INFO)
    result = run_pass(config, clock=clock)
    assert result.new == 0 and [r.updated for r in result.results] == [1]
    assert "updated=1" in caplog.text
    after = posts(config)
    assert len(after) == 2 and path in after  # the same file, nothing new
    text = after[path]
    old, new = front(before), front(text)
    assert new["title"] == "Corrected version" and "Corrected text." in text
    assert "Original text." not in text
    assert new["date"] == old["date"]  # first archived: unchanged
    assert before.split("---\n")[2].splitlines()[0] == text.split("---\n")[2].splitlines()[0]
    assert isinstance(new["updated"], datetime) and new["updated"] > old["date"]  # type: ignore[operator]
    assert list(new)[-1] == "updated"  # after the reference keys
    # The merged feed shows the new version, its `updated` advanced so readers notice.
    check_outputs(config.archive)
    entries = ET.parse(config.archive / "atom.xml").getroot().findall(f"{ATOM}entry")
    story = next(e for e in entries if e.findtext(f"{ATOM}id") == "https://ed.example/story")
    assert story.findtext(f"{ATOM}title") == "Corrected version"
    assert story.findtext(f"{ATOM}updated") > story.findtext(f"{ATOM}published", "")  # type: ignore[operator]
    rss = feedparser.parse((config.archive / "feed.xml").read_bytes())
    assert "Corrected version" in [e.title for e in rss.entries]
    # Unchanged since: nothing more is rewritten.
    third = run_pass(config, clock=clock)
    assert [r.updated for r in third.results] == [0] and posts(config)[path] == text


def test_churn_is_capped_and_said_once(
    tmp_path: Path, farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    """A feed that changes a counter in an item at every poll, without a new date, does
    not rewrite its post for ever; a change it dates is still taken after that."""
    undated = {k: v for k, v in STORY.items() if k != "updated"}
    config = setup(tmp_path, farm, atom({**undated, "content": "views: 0"}))
    clock = StepClock()
    run_pass(config, clock=clock)
    rewrites = []
    for views in range(1, CHURN_LIMIT + 4):
        serve(farm, atom({**undated, "content": f"views: {views}"}))
        rewrites.append(run_pass(config, clock=clock).results[0].updated)
    assert rewrites == [1] * CHURN_LIMIT + [0] * 3
    assert caplog.text.count("without a new date") == 1
    (text,) = posts(config).values()
    assert f"views: {CHURN_LIMIT}" in text  # the last version taken
    serve(farm, atom({**undated, "updated": "2024-05-01T00:00:00Z", "content": "final"}))
    assert run_pass(config, clock=clock).results[0].updated == 1
    (text,) = posts(config).values()
    assert "final" in text


def test_updates_false_keeps_the_first_version(tmp_path: Path, farm: Farm) -> None:
    config = setup(tmp_path, farm, atom(STORY), updates=False)
    clock = StepClock()
    run_pass(config, clock=clock)
    before = posts(config)
    serve(farm, atom({**STORY, "title": "Changed", "updated": "2024-04-05T00:00:00Z"}))
    result = run_pass(config, clock=clock)
    assert result.new == 0 and result.results[0].updated == 0
    assert posts(config) == before


def test_an_item_without_link_or_guid_is_one_post_whatever_its_text(
    tmp_path: Path, farm: Farm
) -> None:
    item = "<title>Bare item</title><pubDate>Mon, 01 Apr 2024 10:00:00 GMT</pubDate>"
    config = setup(tmp_path, farm, b"")
    serve(farm, rss_items(item + "<description>first text</description>"), "application/rss+xml")
    clock = StepClock()
    assert run_pass(config, clock=clock).new == 1
    serve(farm, rss_items(item + "<description>second text</description>"), "application/rss+xml")
    result = run_pass(config, clock=clock)
    assert result.new == 0 and result.results[0].updated == 1
    (text,) = posts(config).values()
    assert "second text" in text and "first text" not in text


def test_a_move_to_https_or_www_is_the_same_item(tmp_path: Path, farm: Farm) -> None:
    def items(base: str) -> bytes:
        return rss_items(*(
            f"<title>Story {i}</title><link>{base}/story/{i}?utm_source=rss</link>"
            for i in range(3)
        ))  # fmt: skip

    config = setup(tmp_path, farm, b"")
    serve(farm, items("http://www.move.example"), "application/rss+xml")
    clock = StepClock()
    assert run_pass(config, clock=clock).new == 3
    for base in ("https://www.move.example", "https://move.example", "http://MOVE.example:80"):
        serve(farm, items(base), "application/rss+xml")
        assert run_pass(config, clock=clock).new == 0, base
    texts = posts(config).values()
    assert len(texts) == 3
    for text in texts:  # the published link has no tracking parameter
        assert "utm_source" not in text and "from: http://www.move.example/story/" in text


def test_an_index_of_an_earlier_version_is_rekeyed_without_duplicates(
    tmp_path: Path, farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    """Keys of schema 2 and before kept the scheme and www.: opening such an index re-keys
    it once; an item archived twice (http, then https) keeps its first post; a poll of
    the https feed then archives nothing again."""
    import sqlite3

    from tests.test_index import schema_1

    db = tmp_path / "archive" / ".aggregator" / "state.sqlite3"
    db.parent.mkdir(parents=True)
    schema_1(db)  # one item, https://ex.com/1, archived 2024-05-01 12:00
    old = sqlite3.connect(db)
    old.execute(
        "INSERT INTO items VALUES ('http://www.ex.com/1', 'https://ex.com/f', 'One again',"
        " NULL, '2024-05-02T12:00:00.000Z', '2024-05-02T12:00:00.000Z', '_posts/y.md', 0)"
    )
    old.commit()
    old.close()
    with Archive(tmp_path / "archive") as archive:
        (record,) = archive.state.items()
    assert (record.key, record.link, record.path) == (
        "//ex.com/1",
        "https://ex.com/1",
        "_posts/x.md",
    )
    assert "http://www.ex.com/1 is a second copy of an item" in caplog.text
    serve(
        farm,
        rss_items("<title>One</title><link>https://www.ex.com/1</link>"),
        "application/rss+xml",
    )
    config = load_config(write_config(tmp_path, [{"url": farm.url("/ed")}]))
    assert run_pass(config, clock=StepClock()).new == 0


def test_an_item_redated_at_every_fetch_stays_one_post(tmp_path: Path, farm: Farm) -> None:
    """Without link or GUID, a feed that stamps its items with the time of the fetch:
    the same title and text is the same item (its title-and-text key is kept)."""
    farm.routes["/ed"] = Answer(200, b"", RSS)
    config = load_config(write_config(tmp_path, [{"url": farm.url("/ed")}]))
    clock = StepClock()
    for day in range(1, 5):
        item = (
            f"<title>Weather</title><pubDate>0{day} Apr 2024 10:00:00 GMT</pubDate>"
            "<description>Sunny all week.</description>"
        )
        serve(farm, rss_items(item), "application/rss+xml")
        run_pass(config, clock=clock)
    assert len(posts(config)) == 1


def test_undated_items_with_one_title_are_told_apart_by_their_text(
    tmp_path: Path, farm: Farm
) -> None:
    notices = [f"<title>Service update</title><description>{t}</description>" for t in "AB"]
    farm.routes["/ed"] = Answer(200, rss_items(*notices), RSS)
    config = load_config(write_config(tmp_path, [{"url": farm.url("/ed")}]))
    clock = StepClock()
    assert run_pass(config, clock=clock).new == 2
    serve(farm, rss_items(notices[1]), "application/rss+xml")  # A leaves the feed
    result = run_pass(config, clock=clock)
    assert (result.new, result.results[0].updated) == (0, 0)
    texts = sorted(t.split("<div>\n")[-1] for t in posts(config).values())
    assert texts == ["A\n</div>\n", "B\n</div>\n"]


def test_changing_a_feeds_options_is_no_edit(tmp_path: Path, farm: Farm) -> None:
    config = setup(tmp_path, farm, atom(STORY, OTHER))
    clock = StepClock()
    run_pass(config, clock=clock)
    before = posts(config)
    feeds = [{"url": farm.url("/ed"), "title": "[{name}] {title}", "strip": ["p.none"]}]
    changed = load_config(write_config(tmp_path, feeds))
    result = run_pass(changed, clock=clock)
    assert (result.new, result.results[0].updated) == (0, 0)
    assert posts(changed) == before


def test_a_much_shorter_version_is_not_taken(
    tmp_path: Path, farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    """A feed that turns to excerpts does not erase the full texts archived from it."""
    long_text = "&lt;p&gt;" + "A full paragraph of the article. " * 40 + "&lt;/p&gt;"
    config = setup(tmp_path, farm, atom({**STORY, "content": long_text}))
    clock = StepClock()
    run_pass(config, clock=clock)
    before = posts(config)
    excerpt = {**STORY, "content": "Read more…", "updated": "2024-04-03T00:00:00Z"}
    serve(farm, atom(excerpt))
    for _ in range(2):
        assert run_pass(config, clock=clock).results[0].updated == 0
    assert posts(config) == before
    assert caplog.text.count("much shorter text") == 1


def test_a_post_removed_by_hand_is_not_brought_back_by_an_edit(
    tmp_path: Path, farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    config = setup(tmp_path, farm, atom(STORY, OTHER))
    clock = StepClock()
    run_pass(config, clock=clock)
    (path,) = [p for p in posts(config) if "first-version" in p]
    (config.archive / path).unlink()
    serve(farm, atom({**STORY, "title": "Changed", "updated": "2024-04-05T00:00:00Z"}, OTHER))
    result = run_pass(config, clock=clock)
    assert [(r.error, r.updated) for r in result.results] == [(None, 0)]
    assert not (config.archive / path).exists() and "is missing" in caplog.text


def test_a_podcast_picture_with_a_query_string_publishes(tmp_path: Path, farm: Farm) -> None:
    """feedgen takes an episode picture only when its URL ends in .jpg or .png: one with a
    query string goes out as media:thumbnail, and publishing goes on."""
    body = (DATA / "media" / "podcast.xml").read_bytes().replace(b"ep042.jpg", b"ep042.jpg?v=2")
    farm.routes["/ed"] = Answer(200, body, RSS)
    config = load_config(write_config(tmp_path, [{"url": farm.url("/ed")}]))
    result = run_pass(config, clock=StepClock())
    assert result.published and result.publish_error is None
    rss = (config.archive / "feed.xml").read_text()
    assert '<media:thumbnail url="http://127.0.0.1:8000/podcast/ep042.jpg?v=2"/>' in rss
    assert '<itunes:image href="http://127.0.0.1:8000/podcast/ep042.jpg?v=2"/>' not in rss
    check_outputs(config.archive)


def test_junk_stays_out_and_undated_items_stay_below_their_feed(tmp_path: Path, farm: Farm) -> None:
    body = rss_items(
        "<title>Dated</title><link>https://j.example/1</link>"
        "<pubDate>Mon, 01 Apr 2024 10:00:00 GMT</pubDate>",
        "<title>Undated</title><link>https://j.example/2</link>",
        "<guid isPermaLink='false'>only-a-guid</guid>",  # nothing to show: not archived
        "<description>   </description>",
    )
    farm.routes["/ed"] = Answer(200, body, RSS)
    other = rss_items(
        "<title>Elsewhere</title><link>https://k.example/1</link>"
        "<pubDate>Tue, 02 Apr 2024 10:00:00 GMT</pubDate>"
    )
    farm.routes["/other"] = Answer(200, other, RSS)
    config = load_config(
        write_config(tmp_path, [{"url": farm.url("/ed")}, {"url": farm.url("/other")}])
    )
    run_pass(config, clock=StepClock())
    assert len(posts(config)) == 3
    titles = [e.title for e in feedparser.parse((config.archive / "feed.xml").read_bytes()).entries]
    # Archived now, but placed at its feed's newest date: below the item dated after it.
    assert titles == ["Elsewhere", "Dated", "Undated"]
    undated = next(t for p, t in posts(config).items() if "undated" in p)
    assert front(undated)["placed"] == datetime(2024, 4, 1, 10, 0, tzinfo=UTC)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from aggregator import archive, state
    from aggregator.config import load_config
    from aggregator.pipeline import run_pass

    where = sys.argv[2]
    if where == "before-rename":
        real = archive.os.replace
        def replace(src, dst):
            if os.path.exists(dst):  # a post being rewritten
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        archive.os.replace = replace
    else:  # the file is renamed into place, the index not yet told
        def revised(self, posts):
            os.kill(os.getpid(), signal.SIGKILL)
        state.State.revised = revised
    run_pass(load_config(Path(sys.argv[1])))
    """
)


@pytest.mark.parametrize("where", ["before-rename", "after-rename"])
def test_a_kill_during_a_rewrite_loses_nothing(tmp_path: Path, farm: Farm, where: str) -> None:
    config = setup(tmp_path, farm, atom(STORY, OTHER), top={"workers": 0})
    run_pass(config, clock=StepClock())
    before = posts(config)
    edited = {**STORY, "title": "Corrected", "updated": "2024-04-02T08:00:00Z",
              "content": "&lt;p&gt;Corrected text.&lt;/p&gt;"}  # fmt: skip
    serve(farm, atom(edited, OTHER))
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(config.path), where],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    during = posts(config)
    assert set(during) == set(before)  # each post whole: the old version or the new one
    for path, text in during.items():
        assert text in (before[path],) or "Corrected text." in text
        assert text.endswith("</div>\n")
    # The next pass finishes the job: one post per item, the new version, published.
    result = run_pass(config, clock=StepClock())
    assert result.new == 0
    after = posts(config)
    assert set(after) == set(before)
    assert sum("Corrected text." in t for t in after.values()) == 1
    assert not list((config.archive / "_posts").rglob(".*.tmp"))
    check_outputs(config.archive)
    titles = [e.title for e in feedparser.parse((config.archive / "feed.xml").read_bytes()).entries]
    assert "Corrected" in titles and "First version" not in titles


def test_an_item_listed_twice_or_by_two_feeds_is_no_edit(tmp_path: Path, farm: Farm) -> None:
    """The first entry of a link is the item: a second one in the same feed, or another
    feed's version of it, does not rewrite its post (nor make the poll fail)."""
    twice = rss_items(
        "<title>One</title><link>https://dup.example/a</link><description>first</description>",
        "<title>One again</title><link>https://dup.example/a</link><description>2nd</description>",
    )
    other = rss_items(
        "<title>Theirs</title><link>https://dup.example/a</link><description>other</description>"
    )
    farm.routes["/ed"] = Answer(200, twice, RSS)
    farm.routes["/other"] = Answer(200, other, RSS)
    feeds = [{"url": farm.url("/ed")}, {"url": farm.url("/other")}]
    clock = StepClock()
    run_pass(load_config(write_config(tmp_path, feeds[:1])), clock=clock)  # /ed's first
    config = load_config(write_config(tmp_path, feeds))
    archived = None
    for _ in range(3):
        result = run_pass(config, clock=clock)
        assert [r.error for r in result.results] == [None, None]
        assert [r.updated for r in result.results] == [0, 0]
        (text,) = posts(config).values()
        assert archived in (None, text)  # never rewritten
        archived = text
    assert ("first" in text) != ("2nd" in text) and "other" not in text
