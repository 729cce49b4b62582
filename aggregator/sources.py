"""Managing the sources: ``add``, ``remove``, ``import-opml`` and ``export-opml``.

feeds.yaml is edited as a round trip (ruamel.yaml): every comment, blank line, quote
and key order of the file stays as the user wrote it; only the ``feeds:`` list gains or
loses entries. Each edit is validated like any feeds.yaml before it replaces the file
(atomically), so an edit never leaves an invalid config behind for the daemon.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

from aggregator.archive import write_file_atomic
from aggregator.errors import AggregatorError, ConfigError, FeedError
from aggregator.models import (
    DEFAULT_LINK,
    KEEP_GLOBAL,
    Config,
    FeedSource,
    Fetched,
    NotModified,
    Validators,
)
from aggregator.sanitize import xml_safe
from aggregator.timing import format_duration
from aggregator.urls import is_http_url, normalize_url, resolve_url

if TYPE_CHECKING:
    from aggregator.fetch import FetchSettings

FEED_MEDIA_TYPES = (
    "application/rss+xml",
    "application/atom+xml",
    "application/feed+json",
    "application/json",
    "application/rdf+xml",
    "application/xml",
    "text/xml",
)
NEW_CONFIG = '# feeds.yaml: the feeds to poll. See README.md, "feeds.yaml reference".\nfeeds: []\n'


class SourcesError(AggregatorError):
    """An add, remove or import that cannot be done; the message says why and what to do."""


# Discovery ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    """A feed found at a URL: where it is, its title, and the other feeds a page offered."""

    url: str
    title: str | None
    alternatives: tuple[tuple[str, str | None], ...] = ()  # (url, title) of every feed found


def discover_links(page: bytes, base: str) -> list[tuple[str, str | None]]:
    """The feeds an HTML page announces with ``<link rel="alternate" type=...>``, in order."""
    from bs4 import BeautifulSoup  # noqa: PLC0415

    soup = BeautifulSoup(page, "html.parser")
    found: dict[str, str | None] = {}
    for link in soup.find_all("link", href=True):
        rel: Any = link.get("rel") or []
        rels = {str(r).lower() for r in (rel if isinstance(rel, list) else str(rel).split())}
        kind = str(link.get("type") or "").split(";")[0].strip().lower()
        if "alternate" not in rels or kind not in FEED_MEDIA_TYPES:
            continue
        url = resolve_url(str(link["href"]).strip(), base)
        if url and is_http_url(url) and url not in found:
            title = " ".join(str(link.get("title") or "").split()) or None
            found[url] = title
    return list(found.items())


def _looks_like_html(content: bytes, content_type: str | None) -> bool:
    if content_type and content_type.split(";")[0].strip().lower() in (
        "text/html",
        "application/xhtml+xml",
    ):
        return True
    start = content.lstrip(b"\xef\xbb\xbf \t\r\n")[:200].lower()
    return start.startswith((b"<!doctype html", b"<html"))


async def find_feed(url: str, settings: FetchSettings, transport: Any = None) -> Found:
    """Fetch ``url``; if it is a page, follow its first announced feed; parse the feed once."""
    from aggregator.fetch import fetch_feed, make_client  # noqa: PLC0415
    from aggregator.parsers import parse_feed  # noqa: PLC0415

    async with make_client(settings, transport) as client:

        async def get(url: str) -> Fetched:
            fetched = await fetch_feed(client, url, Validators(), settings)
            if isinstance(fetched, NotModified):  # we sent no validators: a broken server
                raise SourcesError(f"{url}: the server answered 304 to an unconditional request")
            return fetched

        fetched = await get(url)
        alternatives: list[tuple[str, str | None]] = []
        if _looks_like_html(fetched.content, fetched.content_type):
            alternatives = discover_links(fetched.content, fetched.final_url)
            if not alternatives:
                raise SourcesError(
                    f'{url} is a web page that announces no feed (no <link rel="alternate"> '
                    "of an RSS, Atom or JSON Feed type); give the feed's own URL"
                )
            url = alternatives[0][0]
            fetched = await get(url)
    parsed = parse_feed(fetched.content, fetched.final_url, fetched.content_type)
    return Found(url, parsed.title, tuple(alternatives))


# feeds.yaml as a round trip ------------------------------------------------------------


def _yaml() -> Any:
    from ruamel.yaml import YAML  # noqa: PLC0415 -- only the commands that edit need it

    yaml = YAML()  # round-trip mode
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long line the user wrote on one
    return yaml


@dataclass
class Editable:
    """feeds.yaml loaded for editing; :meth:`save` validates and writes it back."""

    path: Path
    yaml: Any
    data: Any
    created: bool = False

    @classmethod
    def open(cls, path: Path, *, create: bool = False) -> Editable:
        from ruamel.yaml.error import YAMLError  # noqa: PLC0415
        from ruamel.yaml.util import load_yaml_guess_indent  # noqa: PLC0415

        created = False
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            if not create:
                raise SourcesError(f"{path}: file not found") from None
            text, created = NEW_CONFIG, True
        except (OSError, UnicodeDecodeError) as e:
            raise SourcesError(f"{path}: cannot read: {e}") from None
        yaml = _yaml()
        try:
            _, indent, dash_offset = load_yaml_guess_indent(text)
            data = yaml.load(text)
        except YAMLError as e:
            raise SourcesError(
                f"{path}: invalid YAML, fix it first (`aggregator check`): {e}"
            ) from None
        # Keep the file's own indentation ("- " sits dash_offset columns in); a file
        # without a block list yet gets the shipped file's layout.
        if dash_offset is None:
            indent, dash_offset = 2, 2
        yaml.indent(mapping=indent or 2, sequence=dash_offset + 2, offset=dash_offset)
        if not isinstance(data, dict):
            raise SourcesError(f"{path}: the top level must be a mapping with a `feeds:` list")
        if data.get("feeds") is None:
            from ruamel.yaml.comments import CommentedSeq  # noqa: PLC0415

            data["feeds"] = CommentedSeq()
        if not isinstance(data["feeds"], list):
            raise SourcesError(f"{path}: `feeds:` must be a list")
        return cls(path, yaml, data, created)

    @property
    def feeds(self) -> Any:
        return self.data["feeds"]

    def find(self, url: str) -> int | None:
        """Index of the entry for ``url`` (compared normalized), if any."""
        key = normalize_url(url) or url
        for i, entry in enumerate(self.feeds):
            other = entry.get("url") if isinstance(entry, dict) else None
            if isinstance(other, str) and (normalize_url(other) or other) == key:
                return i
        return None

    def append(self, entry: dict[str, Any]) -> None:
        from ruamel.yaml.comments import CommentedMap, CommentedSeq  # noqa: PLC0415

        item = CommentedMap()
        for key, value in entry.items():
            item[key] = value
            if isinstance(value, (list, tuple)):
                item[key] = CommentedSeq(value)
                item[key].fa.set_flow_style()  # tags: [a, b], as the shipped file writes them
        if not self.feeds:
            self.feeds.fa.set_block_style()  # `feeds: []` becomes a block list
        self.feeds.append(item)

    def render(self) -> str:
        out = io.StringIO()
        self.yaml.dump(self.data, out)
        return out.getvalue()

    def save(self) -> Config:
        """Validate the edited file, then replace feeds.yaml with it; return the new config."""
        from aggregator.config import load_config  # noqa: PLC0415

        text = self.render()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check = self.path.with_name(f".{self.path.name}.{os.getpid()}.check")
        try:
            check.write_text(text, encoding="utf-8")
            config = load_config(check)
        except ConfigError as e:
            problems = "; ".join(str(p).replace(str(check), str(self.path)) for p in e.problems)
            raise SourcesError(
                f"the edit would make {self.path} invalid, left unchanged: {problems}"
            ) from None
        finally:
            check.unlink(missing_ok=True)
        # A symlinked feeds.yaml stays a symlink, and the file keeps its permissions.
        target = self.path.resolve()
        mode = target.stat().st_mode & 0o7777 if target.exists() else None
        write_file_atomic(target, text.encode(), mode=mode)
        return config


# add / remove -------------------------------------------------------------------------


def feed_entry(
    url: str, name: str | None = None, tags: Iterable[str] = (), interval: str | None = None
) -> dict[str, Any]:
    """A ``feeds:`` entry with only the keys given."""
    entry: dict[str, Any] = {"url": url}
    if name:
        entry["name"] = name
    if tags := list(dict.fromkeys(t for t in tags if t)):
        entry["tags"] = tags
    if interval:
        entry["interval"] = interval
    return entry


def add_feed(
    path: Path,
    url: str,
    *,
    name: str | None = None,
    tags: Iterable[str] = (),
    interval: str | None = None,
    check: bool = True,
    transport: Any = None,
) -> tuple[Found, Config]:
    """Append ``url`` (or the feed its page announces) to feeds.yaml."""
    from aggregator.config import load_config  # noqa: PLC0415
    from aggregator.fetch import FetchSettings, default_user_agent  # noqa: PLC0415
    from aggregator.pipeline import fetch_settings  # noqa: PLC0415

    if not is_http_url(url):
        raise SourcesError(f"{url!r} is not an http:// or https:// URL")
    editable = Editable.open(path, create=True)
    _refuse_duplicate(editable, url)
    if check:
        settings = (
            FetchSettings(user_agent=default_user_agent(DEFAULT_LINK))
            if editable.created
            else fetch_settings(load_config(path))
        )
        try:
            found = asyncio.run(find_feed(url, settings, transport))
        except FeedError as e:
            raise SourcesError(
                f"{e}; not added (check the URL, or add it anyway with --no-check)"
            ) from None
        if found.url != url:
            _refuse_duplicate(editable, found.url)
    else:
        found = Found(url, None)
    editable.append(feed_entry(found.url, name or found.title, tags, interval))
    return found, editable.save()


def _refuse_duplicate(editable: Editable, url: str) -> None:
    index = editable.find(url)
    if index is not None:
        line = editable.feeds[index].lc.line + 1
        raise SourcesError(
            f"{url} is already in {editable.path} (feeds[{index}], line {line}); nothing added"
        )


def remove_feed(path: Path, which: str) -> tuple[dict[str, Any], Config]:
    """Remove the feed whose URL or name is ``which``; return its entry."""
    editable = Editable.open(path)
    index = editable.find(which) if is_http_url(which) else None
    if index is None:
        named = [
            i
            for i, entry in enumerate(editable.feeds)
            if isinstance(entry, dict) and str(entry.get("name", "")).casefold() == which.casefold()
        ]
        if len(named) > 1:
            urls = ", ".join(str(editable.feeds[i]["url"]) for i in named)
            raise SourcesError(f"several feeds are named {which!r} ({urls}); remove one by its URL")
        index = named[0] if named else None
    if index is None:
        raise SourcesError(
            f"no feed with the URL or name {which!r} in {path} (see `aggregator status`)"
        )
    entry = dict(editable.feeds[index])
    del editable.feeds[index]
    return entry, editable.save()


# OPML ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outline:
    """A feed of an OPML file."""

    url: str
    name: str | None
    tags: tuple[str, ...]
    options: dict[str, Any]  # this project's own per-feed options, when it wrote the file


# Per-feed options written as outline attributes, so that export → import loses nothing.
_OPTION_ATTRIBUTES = (
    "interval",
    "title_template",
    "include",
    "exclude",
    "strip",
    "image_proxy",
    "full_content",
)


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
                    Outline(url, label or None, tuple(dict.fromkeys(tags)), _options(outline))
                )
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
    options: dict[str, Any] = {}
    for key in _OPTION_ATTRIBUTES:
        value = outline.get(key)
        if value is None:
            continue
        if key == "full_content" or (key == "image_proxy" and value == "false"):
            options[key] = value == "true"
        elif key == "strip":
            options[key] = [s for s in value.split("\n") if s.strip()]
        else:
            options["title" if key == "title_template" else key] = value
    return options


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
        if (index := editable.find(outline.url)) is not None:
            report.skipped.append((outline.url, f"already in feeds.yaml (feeds[{index}])"))
            continue
        entry = feed_entry(outline.url, outline.name, outline.tags)
        entry.update(outline.options)
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
        for key, value in _option_attributes(source, config.interval).items():
            outline.set(key, xml_safe(value))
    ET.indent(opml)
    data: bytes = ET.tostring(opml, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def _category(tag: str) -> str:
    return re.sub(r"[,/]", " ", xml_safe(tag)).strip()


def _option_attributes(source: FeedSource, default_interval: int) -> dict[str, str]:
    rules, attributes = source.rules, {}
    if source.interval != default_interval:
        attributes["interval"] = format_duration(source.interval)
    if rules.title != "{title}":
        attributes["title_template"] = rules.title
    if rules.include:
        attributes["include"] = rules.include
    if rules.exclude:
        attributes["exclude"] = rules.exclude
    if rules.strip:
        attributes["strip"] = "\n".join(rules.strip)
    if rules.image_proxy != KEEP_GLOBAL:
        attributes["image_proxy"] = rules.image_proxy or "false"
    if not rules.full_content:
        attributes["full_content"] = "false"
    return attributes
