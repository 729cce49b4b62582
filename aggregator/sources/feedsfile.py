"""feeds.yaml edited as a round trip: ``add`` and ``remove`` (and ``import-opml``, which
uses :class:`Editable`).

Every comment, blank line, quote and key order of the file stays as the user wrote it
(ruamel.yaml); only the ``feeds:`` list gains or loses entries. Each edit is validated
like any feeds.yaml before it replaces the file (atomically), so an edit never leaves an
invalid config behind for the daemon.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.archive import write_file_atomic
from aggregator.config import FEED_KEY_NAMES
from aggregator.errors import ConfigError, FeedError, SourcesError
from aggregator.models import DEFAULT_LINK, Config
from aggregator.secrets import public_url
from aggregator.sources.discover import Found, find_feed
from aggregator.urls import is_http_url, normalize_url

NEW_CONFIG = "# feeds.yaml: the feeds to poll. Every key: `aggregator help feeds.yaml`\nfeeds: []\n"


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
        """Index of the entry for ``url`` (compared normalized and public: the URL that
        `status` shows finds its entry), if any."""

        def key(text: str) -> str:
            public = public_url(text)[0]
            return normalize_url(public) or public

        wanted = key(url)
        for i, entry in enumerate(self.feeds):
            other = entry.get("url") if isinstance(entry, dict) else None
            if isinstance(other, str) and key(other) == wanted:
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


def feed_entry(url: str, **values: Any) -> dict[str, Any]:
    """A ``feeds:`` entry with the keys given (empty ones left out), in the order
    feeds.yaml declares them (:data:`aggregator.config.FEED_KEYS`)."""
    unknown = set(values) - set(FEED_KEY_NAMES)
    if unknown:
        raise ValueError(f"not keys of a feed: {', '.join(sorted(unknown))}")
    if "tags" in values:
        values["tags"] = list(dict.fromkeys(t for t in values["tags"] if t))
    given = {"url": url, **values}
    return {k: given[k] for k in FEED_KEY_NAMES if given.get(k) not in (None, "", [], ())}


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
    editable.append(
        feed_entry(found.url, name=name or found.title, tags=list(tags), interval=interval)
    )
    return found, editable.save()


def _refuse_duplicate(editable: Editable, url: str) -> None:
    index = editable.find(url)
    if index is not None:
        line = editable.feeds[index].lc.line + 1
        raise SourcesError(
            f"{public_url(url)[0]} is already in {editable.path} (feeds[{index}], line {line});"
            " nothing added"
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
