"""Checks a published archive the way a validator and a feed reader would."""

from __future__ import annotations

import json
import re
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import feedparser
from bs4 import BeautifulSoup

NS = {
    "atom": "http://www.w3.org/2005/Atom",
    "content": "http://purl.org/rss/1.0/modules/content/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "itunes": "http://www.itunes.com/dtds/podcast-1.0.dtd",
    "media": "http://search.yahoo.com/mrss/",
}
HTTP = ("http://", "https://")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
FORBIDDEN_TAGS = {
    "script",
    "iframe",
    "object",
    "embed",
    "form",
    "input",
    "meta",
    "style",
    "svg",
    "base",
    "link",
    "frame",
}


def assert_inert_html(html: str) -> None:
    """No element or attribute of ``html`` can run code or load a non-http resource."""
    for tag in BeautifulSoup(html, "html.parser").find_all(True):
        assert tag.name not in FORBIDDEN_TAGS, html[:300]
        for name, value in tag.attrs.items():
            assert not name.lower().startswith("on"), (name, html[:300])
            text = " ".join(value) if isinstance(value, list) else str(value)
            if name in {"href", "src", "cite", "poster"}:
                assert text.startswith(("http://", "https://", "mailto:")), (name, text)
            if name == "style":
                assert "(" not in text and "\\" not in text, text


def check_rss(path: Path) -> list[dict[str, Any]]:
    channel = ET.parse(path).getroot().find("channel")
    assert channel is not None
    self_links = [a for a in channel.findall("atom:link", NS) if a.get("rel") == "self"]
    assert len(self_links) == 1 and self_links[0].get("href", "").endswith("/feed.xml")
    assert (
        channel.findtext("title")
        and channel.findtext("link")
        and channel.findtext("description") is not None
    )
    items = []
    for item in channel.findall("item"):
        assert item.findtext("title"), "every item has a title"
        assert item.findtext("link", "").startswith(("http://", "https://"))
        guid = item.find("guid")
        assert guid is not None and guid.text
        if guid.get("isPermaLink", "true") == "true":
            assert guid.text.startswith(("http://", "https://"))
        date = parsedate_to_datetime(item.findtext("pubDate", ""))
        assert date.tzinfo is not None, "RFC 822 date with a zone"
        assert item.findtext("dc:creator", namespaces=NS), "every item names its source"
        content = item.findtext("content:encoded", namespaces=NS)
        assert content is not None
        assert_inert_html(content)
        enclosures = item.findall("enclosure")
        assert len(enclosures) <= 1, "RSS allows one enclosure per item"
        for enclosure in enclosures:
            assert enclosure.get("url", "").startswith(HTTP)
            assert enclosure.get("length", "").isdigit() and "/" in enclosure.get("type", "")
        for media in item.findall("media:content", NS) + item.findall("media:thumbnail", NS):
            assert media.get("url", "").startswith(HTTP)
        source = item.find("source")
        if source is not None:
            assert source.get("url", "").startswith(("http://", "https://")) and source.text
        items.append(
            {"title": item.findtext("title"), "link": item.findtext("link"), "guid": guid.text}
        )
    return items


def check_atom(path: Path) -> list[dict[str, Any]]:
    feed = ET.parse(path).getroot()
    assert feed.tag == f"{{{NS['atom']}}}feed"
    assert feed.findtext("atom:id", namespaces=NS) and feed.findtext("atom:title", namespaces=NS)
    assert RFC3339.fullmatch(feed.findtext("atom:updated", "", NS))
    rels = {a.get("rel"): a.get("href") for a in feed.findall("atom:link", NS)}
    assert rels.get("self", "").endswith("/atom.xml") and rels.get("alternate")
    entries = []
    for entry in feed.findall("atom:entry", NS):
        entry_id = entry.findtext("atom:id", "", NS)
        assert re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", entry_id), f"id must be an IRI: {entry_id!r}"
        assert entry.findtext("atom:title", namespaces=NS)
        for tag in ("updated", "published"):
            assert RFC3339.fullmatch(entry.findtext(f"atom:{tag}", "", NS)), tag
        assert entry.findtext("atom:author/atom:name", namespaces=NS), "author on every entry"
        content = entry.find("atom:content", NS)
        assert content is not None and content.get("type") == "html"
        assert_inert_html(content.text or "")
        link = entry.find("atom:link", NS)
        assert link is not None and link.get("href", "").startswith(("http://", "https://"))
        for enclosure in entry.findall("atom:link[@rel='enclosure']", NS):
            assert enclosure.get("href", "").startswith(HTTP) and "/" in enclosure.get("type", "")
            assert enclosure.get("length", "0").isdigit()
        entries.append({"id": entry_id, "title": entry.findtext("atom:title", namespaces=NS)})
    return entries


def check_json(path: Path) -> list[dict[str, Any]]:
    feed = json.loads(path.read_text(encoding="utf-8"))
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert feed["title"] and feed["feed_url"].endswith("/feed.json")
    for item in feed["items"]:
        assert item["id"] and item["url"].startswith(("http://", "https://"))
        assert RFC3339.fullmatch(item["date_published"])
        assert item["authors"][0]["name"]
        assert_inert_html(item["content_html"])
        for attachment in item.get("attachments", []):
            assert attachment["url"].startswith(HTTP) and "/" in attachment["mime_type"]
    return list(feed["items"])


_DURATION = re.compile(r"\d+|(\d+:)?[0-5]?\d:[0-5]\d")


def check_itunes(path: Path, *, require_channel: bool = False) -> None:
    """The iTunes fields of an RSS feed are what podcast directories accept; with
    ``require_channel``, the feed has what they require of a podcast."""
    channel = ET.parse(path).getroot().find("channel")
    assert channel is not None

    def it(node: ET.Element, name: str) -> ET.Element | None:
        return node.find(f"itunes:{name}", NS)

    image = it(channel, "image")
    if image is not None:
        assert image.get("href", "").startswith(HTTP)
        assert image.get("href", "").endswith((".jpg", ".png"))
    for category in channel.findall("itunes:category", NS):
        assert category.get("text")
    explicit = it(channel, "explicit")
    if explicit is not None:
        assert explicit.text in ("yes", "no", "clean", "true", "false")
    if require_channel:
        assert image is not None and explicit is not None and channel.findtext("language")
        assert channel.findall("itunes:category", NS) and it(channel, "author") is not None
    for item in channel.findall("item"):
        if require_channel:
            assert item.find("enclosure") is not None and item.findtext("guid")
        duration = item.findtext("itunes:duration", namespaces=NS)
        assert duration is None or _DURATION.fullmatch(duration), duration
        for name in ("episode", "season"):
            value = item.findtext(f"itunes:{name}", namespaces=NS)
            assert value is None or (value.isdigit() and int(value) > 0), (name, value)
        kind = item.findtext("itunes:episodeType", namespaces=NS)
        assert kind in (None, "full", "trailer", "bonus")


def check_outputs(root: Path) -> int:
    """Validate feed.xml, atom.xml and feed.json of ``root``; return the item count."""
    rss = check_rss(root / "feed.xml")
    check_itunes(root / "feed.xml")
    atom = check_atom(root / "atom.xml")
    items = check_json(root / "feed.json")
    assert len(rss) == len(atom) == len(items)
    for name in ("feed.xml", "atom.xml"):
        parsed = feedparser.parse((root / name).read_bytes())
        assert not parsed.bozo, (name, parsed.get("bozo_exception"))
        assert len(parsed.entries) == len(rss)
    return len(rss)
