"""OPML import and export. Tags are the outline's ``category``; this project's per-feed
options ride along as extra outline attributes (OPML allows any, other readers ignore
them), derived from feeds.yaml's declaration, so that export → import loses nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from aggregator.config import FEED_KEYS
from aggregator.errors import SourcesError
from aggregator.models import Config, FeedSource
from aggregator.sanitize import xml_safe
from aggregator.sources.feedsfile import Editable, feed_entry
from aggregator.urls import is_http_url


@dataclass(frozen=True, slots=True)
class Outline:
    """A feed of an OPML file."""

    url: str
    name: str | None
    tags: tuple[str, ...]
    options: dict[str, Any]  # this project's own per-feed options, when it wrote the file
    left_out: bool = False  # its export left its credentials out (see OMITTED)


# The attribute an export puts on a feed whose credentials (auth, headers, cookie, proxy,
# secret query parameters) it left out: an import skips it, saying so.
OMITTED = "credentials"
OMITTED_VALUE = "left out"


def read_opml(data: bytes, name: str) -> list[Outline]:
    """The feeds of an OPML 1.0/2.0 file: folders (outlines without xmlUrl) and the
    ``category`` attribute become tags."""
    from lxml import etree  # noqa: PLC0415

    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as e:
        raise SourcesError(f"{name}: not a valid OPML file: {e}") from None
    if root.tag != "opml" or root.find("body") is None:
        raise SourcesError(f"{name}: not an OPML file (no <opml> with a <body>)")
    found: list[Outline] = []

    def walk(node: Any, folders: tuple[str, ...]) -> None:
        for outline in node.iterchildren("outline"):
            url = (outline.get("xmlUrl") or outline.get("xmlurl") or "").strip()
            label = " ".join((outline.get("title") or outline.get("text") or "").split())
            if url:
                label = "" if label == url else label  # a placeholder, not a name
                tags = folders + tuple(_categories(outline.get("category") or ""))
                found.append(
                    Outline(
                        url, label or None, tuple(dict.fromkeys(tags)), _options(outline),
                        outline.get(OMITTED) == OMITTED_VALUE,
                    )
                )  # fmt: skip
            else:
                walk(outline, folders + ((label,) if label else ()))

    walk(root.find("body"), ())
    return found


def _categories(value: str) -> Iterator[str]:
    """OPML 2.0 categories: comma-separated, each a slash-delimited path."""
    for category in value.split(","):
        for part in category.strip().split("/"):
            if part.strip():
                yield part.strip()


def _options(outline: Any) -> dict[str, Any]:
    """This project's per-feed options the outline carries, as feeds.yaml writes them."""
    return {
        k.key: k.from_text(value)
        for k in FEED_KEYS
        if k.opml and (value := outline.get(k.opml)) is not None
    }


@dataclass
class ImportReport:
    added: list[Outline] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (url, why)


def import_opml(path: Path, opml: Path) -> ImportReport:
    """Append the OPML file's feeds that feeds.yaml does not have yet."""
    try:
        data = opml.read_bytes()
    except OSError as e:
        raise SourcesError(f"{opml}: cannot read: {e.strerror or e}") from None
    outlines = read_opml(data, str(opml))
    editable = Editable.open(path, create=True)
    report = ImportReport()
    for outline in outlines:
        if not is_http_url(outline.url):
            report.skipped.append((outline.url, "not an http:// or https:// URL"))
            continue
        if outline.left_out:
            report.skipped.append(
                (outline.url, "its credentials were left out of the export: add it by hand")
            )
            continue
        if (index := editable.find(outline.url)) is not None:
            report.skipped.append((outline.url, f"already in feeds.yaml (feeds[{index}])"))
            continue
        entry = feed_entry(
            outline.url, name=outline.name, tags=list(outline.tags), **outline.options
        )
        editable.append(entry)
        report.added.append(outline)
    if report.added:
        editable.save()
    return report


def export_opml(config: Config, names: dict[str, str]) -> bytes:
    """The sources as OPML 2.0; tags are the outline's ``category``; this project's
    per-feed options ride along as extra attributes, which other readers ignore."""
    opml = ET.Element("opml", version="2.0")
    head = ET.SubElement(opml, "head")
    ET.SubElement(head, "title").text = xml_safe(config.title)
    ET.SubElement(head, "docs").text = "http://opml.org/spec2.opml"
    body = ET.SubElement(opml, "body")
    for source in config.feeds:
        label = xml_safe(source.name or names.get(source.url) or source.url)
        outline = ET.SubElement(
            body, "outline", type="rss", text=label, title=label, xmlUrl=source.url
        )
        if source.tags:
            outline.set("category", ",".join(_category(t) for t in source.tags))
        if source.access is not None and (source.access.credentials or source.access.proxy):
            outline.set(OMITTED, OMITTED_VALUE)
        for key, value in _option_attributes(source, config).items():
            outline.set(key, xml_safe(value))
    ET.indent(opml)
    data: bytes = ET.tostring(opml, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def _category(tag: str) -> str:
    return re.sub(r"[,/]", " ", xml_safe(tag)).strip()


def _option_attributes(source: FeedSource, config: Config) -> dict[str, str]:
    attributes = {}
    for key in FEED_KEYS:
        if key.opml and (value := key.said(source, config)) is not None:
            attributes[key.opml] = key.to_text(value)
    return attributes
