"""feeds.yaml → a frozen, validated :class:`~aggregator.models.Config`.

Every problem is reported with the file, the line and the key path (``feeds[3].url``),
and all problems of a file are reported at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from aggregator.errors import ConfigError, ConfigProblem
from aggregator.models import (
    DEFAULT_HOST,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_FEED_BYTES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_PER_HOST,
    DEFAULT_PORT,
    Config,
    FeedSource,
)
from aggregator.timing import DEFAULT_INTERVAL, MIN_INTERVAL, format_duration, parse_duration
from aggregator.urls import is_http_url, normalize_url

ENV_VAR = "AGGREGATOR_CONFIG"
DEFAULT_PATH = "feeds.yaml"
MAX_CONFIG_BYTES = 1024 * 1024

Loc = tuple[str | int, ...]


def _check_http_url(value: str) -> str:
    value = value.strip()
    if not is_http_url(value):
        raise ValueError(f"must be an http:// or https:// URL, not {value!r}")
    return value


def _check_text(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _duration(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError(f"must be a duration such as 15m, 2h or 1d, not {value!r}")
    seconds = parse_duration(value)
    if seconds < MIN_INTERVAL:
        raise ValueError(f"must be at least {format_duration(MIN_INTERVAL)}, not {value}")
    return seconds


Duration = Annotated[int, BeforeValidator(_duration)]


class _ServeSchema(BaseModel):
    """Where the daemon serves the merged feed."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)


class _FeedSchema(BaseModel):
    """What a feed entry of feeds.yaml may say."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    url: str
    name: str | None = None
    tags: list[Annotated[str, AfterValidator(_check_text)]] = Field(default_factory=list)
    interval: Duration | None = None

    _url = field_validator("url")(_check_http_url)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _check_text(value)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class _ConfigSchema(BaseModel):
    """What the top level of feeds.yaml may say."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    title: str = "Aggregator"
    link: str = "http://127.0.0.1:8080/"
    description: str = "The newest items of all my feeds."
    archive: str = "archive"
    max_items: int = Field(DEFAULT_MAX_ITEMS, ge=1, le=10_000)
    image_proxy: str | None = None
    user_agent: str | None = None
    max_feed_bytes: int = Field(DEFAULT_MAX_FEED_BYTES, ge=1024)
    max_entries: int = Field(DEFAULT_MAX_ENTRIES, ge=1)
    interval: Duration = DEFAULT_INTERVAL
    serve: _ServeSchema = _ServeSchema()
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1, le=256)
    max_in_flight_per_host: int = Field(DEFAULT_MAX_PER_HOST, ge=1, le=64)
    feeds: list[_FeedSchema]

    _link = field_validator("link")(_check_http_url)
    _title = field_validator("title", "archive")(_check_text)

    @field_validator("image_proxy")
    @classmethod
    def _image_proxy(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "{url}" not in value:
            raise ValueError("must contain {url}, where the image URL without its scheme goes")
        if not is_http_url(value.replace("{url}", "example.com/image.png")):
            raise ValueError("must be an http:// or https:// URL template")
        return value

    @field_validator("user_agent")
    @classmethod
    def _user_agent(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = _check_text(value)
        if not all(" " <= c <= "~" for c in value):
            raise ValueError("must be printable ASCII on one line")
        return value


def resolve_config_path(option: str | os.PathLike[str] | None) -> Path:
    """The config file to use: the option, else ``$AGGREGATOR_CONFIG``, else ./feeds.yaml."""
    return Path(option or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def format_loc(loc: Loc) -> str:
    """``('feeds', 3, 'url')`` → ``feeds[3].url``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_config(path: Path) -> Config:
    """Read and validate ``path``; raise :class:`ConfigError` listing every problem."""
    name = str(path)
    data, lines = _read_yaml(path)
    try:
        schema = _ConfigSchema.model_validate(data)
    except ValidationError as e:
        problems = [_problem(name, lines, err) for err in e.errors()]
        raise ConfigError(sorted(problems, key=lambda p: p.line or 0)) from None
    _check_duplicates(name, lines, schema)
    base = path.resolve().parent
    archive = Path(os.path.expanduser(schema.archive))
    return Config(
        path=path,
        title=schema.title,
        link=schema.link,
        description=schema.description,
        archive=archive if archive.is_absolute() else base / archive,
        max_items=schema.max_items,
        image_proxy=schema.image_proxy,
        user_agent=schema.user_agent,
        max_feed_bytes=schema.max_feed_bytes,
        max_entries=schema.max_entries,
        interval=schema.interval,
        host=schema.serve.host,
        port=schema.serve.port,
        max_in_flight=schema.max_in_flight,
        max_in_flight_per_host=schema.max_in_flight_per_host,
        feeds=tuple(
            FeedSource(
                url=f.url,
                name=f.name,
                tags=tuple(f.tags),
                interval=f.interval or schema.interval,
                line=lines.get(("feeds", i)),
            )
            for i, f in enumerate(schema.feeds)
        ),
    )


def _read_yaml(path: Path) -> tuple[Any, dict[Loc, int]]:
    """Parse the file; return the data and the line of every key path."""
    name = str(path)

    def fail(message: str, line: int | None = None) -> ConfigError:
        return ConfigError([ConfigProblem(name, line, "", message)])

    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise fail(f"file is {size:,} bytes; a feeds.yaml must be under {MAX_CONFIG_BYTES:,}")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise fail(
            "file not found (point -c/--config or $AGGREGATOR_CONFIG at feeds.yaml)"
        ) from None
    except OSError as e:
        raise fail(f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise fail("not UTF-8 text", raw[: e.start].count(b"\n") + 1) from None

    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        line = text[: e.position].count("\n") + 1
        raise fail(f"invalid YAML: {e.reason} (character {e.character!r})", line) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise fail("file is empty; it needs at least a `feeds:` list")
        lines, problems = _index_lines(node, name)
        if problems:
            raise ConfigError(problems)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = " ".join(str(s) for s in (e.context, e.problem) if s)
        if e.context_mark and mark and e.context_mark.line != mark.line:
            what += f" (the construct opened at line {e.context_mark.line + 1})"
        raise fail(f"invalid YAML: {what}", mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise fail(f"invalid YAML: {e}") from None
    except RecursionError:
        raise fail("invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise fail("the top level must be a mapping of keys such as `title:` and `feeds:`", 1)
    return data, lines


def _index_lines(root: yaml.Node, name: str) -> tuple[dict[Loc, int], list[ConfigProblem]]:
    """The line of every key path under ``root``, and any duplicate keys."""
    lines: dict[Loc, int] = {}
    problems: list[ConfigProblem] = []
    seen: set[int] = set()

    def visit(node: yaml.Node, loc: Loc) -> None:
        lines.setdefault(loc, node.start_mark.line + 1)
        if id(node) in seen:  # an alias: already indexed, and may be a cycle
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in node.value:
                key, line = str(key_node.value), key_node.start_mark.line + 1
                if key in first:
                    where = format_loc((*loc, key))
                    problems.append(
                        ConfigProblem(
                            name, line, where, f"duplicate key (first at line {first[key]})"
                        )
                    )
                    continue
                first[key] = line
                lines[(*loc, key)] = line
                visit(value_node, (*loc, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                visit(item, (*loc, i))

    visit(root, ())
    return lines, problems


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown key",
}


def _problem(name: str, lines: dict[Loc, int], err: Any) -> ConfigProblem:
    loc: Loc = tuple(err["loc"])
    line = None
    for n in range(len(loc), -1, -1):
        if (line := lines.get(loc[:n])) is not None:
            break
    message = _MESSAGES.get(err["type"]) or str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed: type[BaseModel] = _ConfigSchema
        if loc[:1] == ("feeds",) and len(loc) == 3:
            allowed = _FeedSchema
        elif loc[:1] == ("serve",):
            allowed = _ServeSchema
        message += f" (allowed: {', '.join(allowed.model_fields)})"
    elif err["type"].endswith("_type"):
        message += f", got {type(err['input']).__name__} {_short(err['input'])}"
    return ConfigProblem(name, line, format_loc(loc), message)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_duplicates(name: str, lines: dict[Loc, int], schema: _ConfigSchema) -> None:
    first: dict[str, int] = {}
    problems = []
    for i, feed in enumerate(schema.feeds):
        key = normalize_url(feed.url) or feed.url
        if key in first:
            j = first[key]
            message = (
                f"duplicate feed URL, already at feeds[{j}] (line {lines[('feeds', j, 'url')]})"
            )
            problems.append(
                ConfigProblem(name, lines[("feeds", i, "url")], f"feeds[{i}].url", message)
            )
        else:
            first[key] = i
    if problems:
        raise ConfigError(problems)
