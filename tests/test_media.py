"""What a source publishes reaches the subscriber: enclosures, media, pictures, iTunes
fields, the item's own people and categories.

Golden pairs: each feed of ``tests/data/media/`` goes through a pass on its own; its posts
must equal ``<feed>.posts.md`` byte for byte, and the merged feeds must carry the
fragments listed below. ``UPDATE_GOLDEN=1`` rewrites the posts files (then read the diff).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import feedparser
import pytest

from aggregator.archive import Archive
from aggregator.config import load_config
from aggregator.models import Config
from aggregator.pipeline import run_pass
from tests.conftest import DATA, StepClock, write_config
from tests.farm import Answer, Farm
from tests.feedcheck import check_itunes, check_outputs

MEDIA = DATA / "media"
TYPES = {
    "xml": "application/rss+xml",
    "atom": "application/atom+xml",
    "json": "application/feed+json",
}
PODCAST = {
    "author": "Test Aggregator",
    "email": "owner@example.org",
    "image": "http://127.0.0.1:8080/cover.png",
    "category": "Leisure",
    "subcategory": "Home & Garden",
    "explicit": False,
    "language": "en",
}


def publish_one(tmp_path: Path, farm: Farm, name: str, **top: object) -> Config:
    """One pass over the fixture ``name`` alone, tagged ``t``; its config."""
    kind = TYPES[
        "json"
        if name.endswith(".json")
        else "atom"
        if "atom" in name or "youtube" in name
        else "xml"
    ]
    farm.routes["/" + name] = Answer(200, (MEDIA / name).read_bytes(), {"Content-Type": kind})
    path = write_config(tmp_path, [{"url": farm.url("/" + name), "tags": ["t"]}], **top)
    config = load_config(path)
    run_pass(config, clock=StepClock())
    return config


def posts_text(config: Config) -> str:
    with Archive(config.archive) as archive:
        paths = sorted(r.path for r in archive.state.items())
    return "".join(f"=== {p}\n{(config.archive / p).read_text()}" for p in paths)


FRAGMENTS = {
    "podcast.xml": {
        "feed.xml": [
            '<enclosure url="http://127.0.0.1:8000/podcast/media/ep042.mp3" length="48213760"'
            ' type="audio/mpeg"/>',
            "<itunes:duration>3753</itunes:duration>",
            "<itunes:episode>42</itunes:episode>",
            "<itunes:season>3</itunes:season>",
            "<itunes:episodeType>bonus</itunes:episodeType>",
            '<itunes:image href="http://127.0.0.1:8000/podcast/ep042.jpg"/>',
            "<dc:creator>Maya Okonkwo</dc:creator>",
            "<dc:creator>Jonas Reyes</dc:creator>",
            '<media:thumbnail url="http://127.0.0.1:8000/podcast/ep042.jpg"/>',
            '<source url="{feed}">The Compost Heap</source>',
        ],
        "atom.xml": [
            '<link rel="enclosure" href="http://127.0.0.1:8000/podcast/media/ep042.mp3"'
            ' type="audio/mpeg" length="48213760"/>',
            "<name>Maya Okonkwo</name>",
        ],
    },
    "youtube.xml": {
        "feed.xml": [
            '<media:thumbnail url="https://i3.ytimg.com/vi/dQ9aB3xYz01/hqdefault.jpg"/>',
            "<dc:creator>Bench &amp; Bolt Workshop</dc:creator>",
        ],
        "atom.xml": ['<media:thumbnail url="https://i3.ytimg.com/vi/dQ9aB3xYz01/hqdefault.jpg"/>'],
    },
    "atom-enclosures.xml": {
        "feed.xml": [
            '<enclosure url="http://127.0.0.1:8000/journal/media/harbour-5am.ogg" length="7340032"'
            ' type="audio/ogg"/>',
            '<media:content url="http://127.0.0.1:8000/journal/media/harbour-5am.mp3"'
            ' fileSize="9437184" type="audio/mpeg"/>',
            "<category>Audio recordings</category>",
            "<dc:creator>Ines Varga</dc:creator>",
        ],
        "atom.xml": [
            '<link rel="enclosure" href="http://127.0.0.1:8000/journal/media/harbour-5am.ogg"'
            ' type="audio/ogg" length="7340032"/>',
            '<link rel="enclosure" href="http://127.0.0.1:8000/journal/media/harbour-5am.mp3"'
            ' type="audio/mpeg" length="9437184"/>',
            '<category term="Audio recordings"/>',
            "<name>Kofi Mensah</name>",
        ],
    },
    "news-media.xml": {
        "feed.xml": [
            '<media:content url="http://news.example.org/img/2024/03/footbridge-1200.jpg"'
            ' type="image/jpeg" medium="image" height="675" width="1200"/>',
            "<dc:creator>Hannah Ortiz</dc:creator>",
            "<category>Transport</category>",
        ],
        "atom.xml": ["<name>Ravi Shah</name>", "<name>Ellen Moore</name>"],
    },
}


@pytest.mark.parametrize(
    "name",
    ["podcast.xml", "youtube.xml", "atom-enclosures.xml", "jsonfeed.json", "news-media.xml"],
)
def test_golden_media_feeds(tmp_path: Path, farm: Farm, name: str) -> None:
    config = publish_one(tmp_path, farm, name)
    golden = MEDIA / (name.rsplit(".", 1)[0] + ".posts.md")
    text = posts_text(config).replace(farm.url("/"), "http://FARM/")
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()
    check_outputs(config.archive)
    feed = farm.url("/" + name)
    for output, fragments in FRAGMENTS.get(name, {}).items():
        published = (config.archive / output).read_text()
        for fragment in fragments:
            assert fragment.replace("{feed}", feed) in published, (output, fragment)


def test_json_feed_attachments_go_out_as_they_came(tmp_path: Path, farm: Farm) -> None:
    config = publish_one(tmp_path, farm, "jsonfeed.json")
    source = json.loads((MEDIA / "jsonfeed.json").read_text())
    out = json.loads((config.archive / "feed.json").read_text())
    by_url = {item["url"]: item for item in out["items"]}
    for item in source["items"]:
        published = by_url[item["url"]]
        assert [
            (a["url"], a["mime_type"], a.get("size_in_bytes")) for a in published["attachments"]
        ] == [(a["url"], a["mime_type"], a.get("size_in_bytes")) for a in item["attachments"]]
        assert [a["name"] for a in published["authors"]] == [a["name"] for a in item["authors"]]
        assert published["tags"][: len(item["tags"])] == item["tags"]
        assert published["_source"]["feed_url"] == farm.url("/jsonfeed.json")
    # A feed reader sees the same files in the RSS and Atom feeds.
    rss = feedparser.parse((config.archive / "feed.xml").read_bytes())
    atom = feedparser.parse((config.archive / "atom.xml").read_bytes())
    for parsed in (rss, atom):
        for entry in parsed.entries:
            assert entry.enclosures, entry.link
            assert entry.enclosures[0].href.startswith("http://127.0.0.1:8000/nightshift/media/")


def test_a_podcast_tag_feed_is_a_podcast_feed(tmp_path: Path, farm: Farm) -> None:
    """The tag's feed carries the channel-level iTunes fields of feeds.yaml (global, then
    the tag's own over them), and every episode its enclosure and iTunes fields."""
    config = publish_one(
        tmp_path, farm, "podcast.xml",
        podcast={"author": "Global Name", "explicit": True},
        tags={"t": {"podcast": PODCAST}},
    )  # fmt: skip
    tagged = config.archive / "tags" / "t" / "feed.xml"
    check_itunes(tagged, require_channel=True)
    text = tagged.read_text()
    assert "<itunes:author>Test Aggregator</itunes:author>" in text  # the tag's own
    assert '<itunes:image href="http://127.0.0.1:8080/cover.png"/>' in text
    assert '<itunes:category text="Leisure">' in text
    assert '<itunes:category text="Home &amp; Garden"/>' in text
    assert "<itunes:explicit>no</itunes:explicit>" in text
    assert "<language>en</language>" in text
    main = (config.archive / "feed.xml").read_text()
    assert "<itunes:author>Global Name</itunes:author>" in main
    assert "<itunes:explicit>yes</itunes:explicit>" in main
    parsed = feedparser.parse(tagged.read_bytes())
    assert len(parsed.entries) == 3
    for entry in parsed.entries:
        (enclosure,) = entry.enclosures
        assert enclosure.type.startswith("audio/") and enclosure.href.startswith("http://")


def test_podcast_settings_are_checked(tmp_path: Path) -> None:
    from aggregator.errors import ConfigError

    path = write_config(
        tmp_path, [{"url": "https://ex.com/f", "tags": ["p"]}],
        podcast={"image": "https://ex.com/cover.webp", "explicit": "maybe"},
        tags={"p": {"podcast": {"subcategory": "Podcasting", "email": "nobody"}}, "q": {}},
    )  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert "podcast.image: must be the URL of a .jpg or .png picture" in text
    assert "podcast.explicit: must be true or false" in text
    assert "tags.p.podcast.subcategory: needs a category" in text
    assert "tags.p.podcast.email: must be an e-mail address" in text
    assert "tags.q: no feed has this tag (a typo?)" in text
