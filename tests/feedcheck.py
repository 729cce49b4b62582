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
}
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
            if name in {"href", "src", "cite"}:
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
    return list(feed["items"])


def check_outputs(root: Path) -> int:
    """Validate feed.xml, atom.xml and feed.json of ``root``; return the item count."""
    rss = check_rss(root / "feed.xml")
    atom = check_atom(root / "atom.xml")
    items = check_json(root / "feed.json")
    assert len(rss) == len(atom) == len(items)
    for name in ("feed.xml", "atom.xml"):
        parsed = feedparser.parse((root / name).read_bytes())
        assert not parsed.bozo, (name, parsed.get("bozo_exception"))
        assert len(parsed.entries) == len(rss)
    return len(rss)
