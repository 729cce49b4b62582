"""feeds.yaml → a frozen, validated :class:`~aggregator.models.Config`.

Every problem is reported with the file, the line and the key path (``feeds[3].url``),
and all problems of a file are reported at once.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from aggregator.errors import ConfigError, ConfigProblem, ConfigUnreadable
from aggregator.models import (
    DEFAULT_HOST,
    DEFAULT_LINK,
    DEFAULT_MAX_ENCLOSURE_BYTES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_FEED_BYTES,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_MEDIA_BYTES,
    DEFAULT_MAX_PER_HOST,
    DEFAULT_PORT,
    KEEP_GLOBAL,
    MEDIA_KEEP,
    MEDIA_KEEP_ENCLOSURES,
    MEDIA_OFF,
    Config,
    FeedSource,
    ItemRules,
    Podcast,
)
from aggregator.posts import slugify
from aggregator.secrets import public_url, register
from aggregator.timing import DEFAULT_INTERVAL, MIN_INTERVAL, format_duration, parse_duration
from aggregator.urls import is_http_url, normalize_url

if TYPE_CHECKING:
    from aggregator.access import Access
    from aggregator.media import MediaLimits

ENV_VAR = "AGGREGATOR_CONFIG"
DEFAULT_PATH = "feeds.yaml"
MAX_CONFIG_BYTES = 1024 * 1024

Loc = tuple[str | int, ...]
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: 10× faster
Report = Callable[[Loc, str], None]


# The schema ---------------------------------------------------------------------------
# Hand-written rather than pydantic: the schema is small, and importing and building
# pydantic models cost about 90 ms of every command's start, a third of a warm pass.


class _Bad(ValueError):
    """The value is wrong; the message says how."""


def _got(value: object) -> str:
    if value is None:
        return "an empty value"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {_got(value)}")
    return value


def _text(value: object) -> str:
    text = _string(value).strip()
    if not text:
        raise _Bad("must not be empty")
    return text


def _integer(low: int, high: int | None = None) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"must be an integer, got {_got(value)}")
        if value < low:
            raise _Bad(f"must be at least {low}")
        if high is not None and value > high:
            raise _Bad(f"must be at most {high}")
        return value

    return check


def _http_url(value: object) -> str:
    url = _string(value).strip()
    if not is_http_url(url):
        raise _Bad(f"must be an http:// or https:// URL, not {public_url(url)[0]!r}")
    return url


def _duration(value: object) -> int:
    if not isinstance(value, str):
        raise _Bad(f"must be a duration such as 15m, 2h or 1d, not {value!r}")
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise _Bad(str(e)) from None
    if seconds < MIN_INTERVAL:
        raise _Bad(f"must be at least {format_duration(MIN_INTERVAL)}, not {value}")
    return seconds


def _image_proxy(value: object) -> str:
    template = _string(value)
    if "{url}" not in template:
        raise _Bad("must contain {url}, where the image URL without its scheme goes")
    if not is_http_url(template.replace("{url}", "example.com/image.png")):
        raise _Bad("must be an http:// or https:// URL template")
    return template


def _user_agent(value: object) -> str:
    agent = _text(value)
    if not all(" " <= c <= "~" for c in agent):
        raise _Bad("must be printable ASCII on one line")
    return agent


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {_got(value)}")
    return value


def _regex(value: object) -> str:
    pattern = _text(value)
    try:
        re.compile(pattern)
    except re.error as e:
        raise _Bad(f"is not a valid regular expression: {e}") from None
    return pattern


def _title_template(value: object) -> str:
    template = _text(value)
    if "{title}" not in template:
        raise _Bad("must contain {title}, where the item's own title goes (and may use {name})")
    return template


def _css_selector(value: object) -> str:
    selector = _text(value)
    import soupsieve  # noqa: PLC0415 -- beautifulsoup4's selector engine, only needed here

    try:
        soupsieve.compile(selector)
    except soupsieve.SelectorSyntaxError as e:
        raise _Bad(f"is not a valid CSS selector: {' '.join(str(e).split())}") from None
    return selector


def _feed_image_proxy(value: object) -> str | None:
    if value is False:
        return None
    if value is True:
        raise _Bad("must be a URL template with {url}, or false for no proxy")
    return _image_proxy(value)


def _cover_image(value: object) -> str:
    url = _http_url(value)
    if not url.endswith((".jpg", ".png")):  # (feedgen drops any other, query or not)
        raise _Bad(
            f"must be the URL of a .jpg or .png picture (what podcast apps show), not {url!r}"
        )
    return url


def _itunes_text(value: object) -> str:
    text = _text(value)
    if '"' in text or "\\" in text:
        raise _Bad("must not contain quotes or backslashes")
    return text


def _email(value: object) -> str:
    address = _text(value)
    if not re.fullmatch(r"[^@\s]+@[^@\s]+", address):
        raise _Bad(f"must be an e-mail address, not {address!r}")
    return address


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SecretRef:
    """Where a secret is: given in feeds.yaml, in an environment variable, or in a file.
    (A plain class: a dataclass costs its definition at every start.)"""

    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value: str) -> None:
        self.kind = kind  # "literal", "env" or "file"
        self.value = value  # the secret itself, the variable's name, or the file's path

    def __repr__(self) -> str:
        return f"SecretRef({self.kind})"


def _sendable(text: str) -> bool:
    """Printable ASCII on one line: what an HTTP header may carry."""
    return all(" " <= c <= "~" or c == "\t" for c in text)


def _header_value(value: object) -> str:
    text = _string(value)
    if not _sendable(text):
        raise _Bad("must be printable ASCII on one line")
    return text


def _secret(value: object) -> SecretRef:
    """A secret: a string, or ``{env: NAME}``, or ``{file: PATH}``."""
    if isinstance(value, str):
        return SecretRef("literal", _header_value(value))
    if isinstance(value, dict) and len(value) == 1:
        ((kind, where),) = value.items()
        if kind == "env" and isinstance(where, str) and _ENV_NAME.fullmatch(where):
            return SecretRef("env", where)
        if kind == "file" and isinstance(where, str) and where.strip():
            return SecretRef("file", where.strip())
    raise _Bad("must be a string, {env: VARIABLE} or {file: PATH}")


def _auth(data: object, loc: Loc, report: Report) -> dict[str, Any] | None:
    """``auth: {username: ..., password | password_env | password_file: ...}``."""
    fields = _mapping(
        {
            "username": (_simple(_header_value), _REQUIRED),
            "password": (_simple(_header_value), None),
            "password_env": (_simple(_env_name), None),
            "password_file": (_simple(_text), None),
        }
    )(data, loc, report)
    if not fields:
        return None
    given = [k for k in ("password", "password_env", "password_file") if fields.get(k) is not None]
    if len(given) != 1:
        report(loc, "needs exactly one of password, password_env or password_file")
        return None
    if ":" in (fields.get("username") or ""):
        report((*loc, "username"), "must not contain ':' (basic auth cannot carry it)")
        return None
    kind = {"password": "literal", "password_env": "env", "password_file": "file"}[given[0]]
    return {"username": fields["username"], "password": SecretRef(kind, fields[given[0]])}


def _env_name(value: object) -> str:
    name = _text(value)
    if not _ENV_NAME.fullmatch(name):
        raise _Bad(f"must be the name of an environment variable, not {name!r}")
    return name


def _headers(data: object, loc: Loc, report: Report) -> tuple[tuple[str, SecretRef], ...]:
    if not isinstance(data, dict):
        report(loc, f"must be a mapping of header names to values, got {_got(data)}")
        return ()
    out = []
    for name, value in data.items():
        where = (*loc, str(name))
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            report(where, "is not a valid HTTP header name")
        elif name.lower() in _HOP_HEADERS:
            report(where, "is set by the HTTP client itself, not by feeds.yaml")
        else:
            out.append((name, _simple(_secret)(value, where, report)))
    return tuple(out)


def _secret_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in ("authorization", "cookie", "proxy-authorization") or any(
        word in lowered for word in ("key", "token", "secret", "auth", "pass", "session", "sig")
    )


def _proxy(value: object) -> str:
    url = _text(value)
    scheme = url.partition("://")[0].lower()
    if scheme not in ("http", "https", "socks5", "socks5h") or "://" not in url:
        raise _Bad("must be an http://, https://, socks5:// or socks5h:// URL")
    if scheme.startswith("socks") and importlib.util.find_spec("socksio") is None:
        raise _Bad("a SOCKS proxy needs the socksio package: pip install 'aggregator[socks]'")
    return url


def _full_text(value: object) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _css_selector(value)
    raise _Bad(f"must be true, false or a CSS selector, got {_got(value)}")


def _media(value: object) -> str:
    if value is False:
        return MEDIA_OFF
    if value in (MEDIA_KEEP, MEDIA_KEEP_ENCLOSURES):
        return str(value)
    raise _Bad(f"must be keep, keep_enclosures or false, got {_got(value)}")


def default_workers() -> int:
    """One parse worker per CPU this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


Check = Callable[[object, Loc, Report], Any]
_REQUIRED = object()


def _simple(rule: Callable[[object], Any]) -> Check:
    def check(value: object, loc: Loc, report: Report) -> Any:
        try:
            return rule(value)
        except _Bad as e:
            report(loc, str(e))
            return None

    return check


def _list_of(item: Check) -> Check:
    def check(value: object, loc: Loc, report: Report) -> list[Any]:
        if not isinstance(value, list):
            report(loc, f"must be a list, got {_got(value)}")
            return []
        return [item(v, (*loc, i), report) for i, v in enumerate(value)]

    return check


def _mapping(fields: dict[str, tuple[Check, Any]]) -> Check:
    def check(data: object, loc: Loc, report: Report) -> dict[str, Any]:
        """Unknown keys, missing keys, then each value (a null counts as absent)."""
        if not isinstance(data, dict):
            report(loc, f"must be a mapping of keys, got {_got(data)}")
            return {}
        for key in data:
            if key not in fields:
                report((*loc, str(key)), f"unknown key (allowed: {', '.join(fields)})")
        out: dict[str, Any] = {}
        for key, (rule, default) in fields.items():
            if default is not _REQUIRED and data.get(key) is None:
                out[key] = default() if callable(default) else default
            elif key not in data:
                report((*loc, key), "is required")
            else:
                out[key] = rule(data[key], (*loc, key), report)
        return out

    return check


@dataclass(frozen=True, slots=True)
class FeedKey:
    """One key of a feed's entry in feeds.yaml, declared once: its check and default, how
    a :class:`FeedSource` says it, and how an OPML outline carries it (``add``,
    ``import-opml`` and ``export-opml`` all go through this declaration)."""

    key: str
    check: Check
    default: Any
    # The value feeds.yaml would give it for this source, None when it is the default.
    said: Callable[[FeedSource, Config], Any]
    opml: str | None = None  # the outline attribute that carries it (None: OPML's own)
    to_text: Callable[[Any], str] = str
    from_text: Callable[[str], Any] = str


def _flag_text(value: Any) -> str:
    return "true" if value else "false"


def _flag_value(text: str) -> bool:
    return text.strip() == "true"


def _full_text_text(value: Any) -> str:
    return "true" if value is True else str(value)


def _full_text_value(text: str) -> bool | str:
    return {"true": True, "false": False}.get(text.strip(), text)


def _proxy_said(source: FeedSource, _: Config) -> Any:
    proxy = source.rules.image_proxy
    return None if proxy == KEEP_GLOBAL else (proxy or False)


FEED_KEYS = (
    FeedKey("url", _simple(_http_url), _REQUIRED, lambda s, _: s.url),
    FeedKey("name", _simple(_text), None, lambda s, _: s.name),
    FeedKey("tags", _list_of(_simple(_text)), (), lambda s, _: list(s.tags) or None),
    FeedKey(
        "interval", _simple(_duration), None,
        lambda s, c: format_duration(s.interval) if s.interval != c.interval else None,
        opml="interval",
    ),
    FeedKey(
        "title", _simple(_title_template), "{title}",
        lambda s, _: s.rules.title if s.rules.title != "{title}" else None,
        opml="title_template",
    ),
    FeedKey("include", _simple(_regex), None, lambda s, _: s.rules.include, opml="include"),
    FeedKey("exclude", _simple(_regex), None, lambda s, _: s.rules.exclude, opml="exclude"),
    FeedKey(
        "strip", _list_of(_simple(_css_selector)), (),
        lambda s, _: list(s.rules.strip) or None, opml="strip",
        to_text="\n".join, from_text=lambda text: [p for p in text.split("\n") if p.strip()],
    ),
    FeedKey(
        "image_proxy", _simple(_feed_image_proxy), KEEP_GLOBAL, _proxy_said, opml="image_proxy",
        to_text=lambda v: v or "false", from_text=lambda text: False if text == "false" else text,
    ),
    FeedKey(
        "full_content", _simple(_boolean), True,
        lambda s, _: False if not s.rules.full_content else None,
        "full_content", _flag_text, _flag_value,
    ),
    FeedKey(
        "updates", _simple(_boolean), True, lambda s, _: False if not s.updates else None,
        "updates", _flag_text, _flag_value,
    ),
    FeedKey(
        "full_text", _simple(_full_text), False, lambda s, _: s.full_text or None,
        "full_text", _full_text_text, _full_text_value,
    ),
    FeedKey(
        "media", _simple(_media), None, lambda s, c: s.media if s.media != c.media else None,
        "media", lambda v: "false" if v == MEDIA_OFF else v,
        lambda text: MEDIA_OFF if text == "false" else text,
    ),
    # How to fetch it. Credentials are never exported (an export says it left them out).
    FeedKey("auth", _auth, None, lambda s, _: None),
    FeedKey("headers", _headers, (), lambda s, _: None),
    FeedKey("cookie", _simple(_secret), None, lambda s, _: None),
    FeedKey("proxy", _simple(_proxy), None, lambda s, _: None),
    FeedKey(
        "user_agent", _simple(_user_agent), None,
        lambda s, _: s.access.user_agent if s.access else None, "user_agent",
    ),
    FeedKey(
        "verify_tls", _simple(_boolean), True,
        lambda s, _: False if s.access and not s.access.verify_tls else None,
        "verify_tls", _flag_text, _flag_value,
    ),
)  # fmt: skip
FEED_KEY_NAMES = tuple(k.key for k in FEED_KEYS)
_FEED = _mapping({k.key: (k.check, k.default) for k in FEED_KEYS})


_PODCAST = _mapping(
    {
        "author": (_simple(_text), None),
        "email": (_simple(_email), None),
        "image": (_simple(_cover_image), None),
        "category": (_simple(_itunes_text), None),
        "subcategory": (_simple(_itunes_text), None),
        "explicit": (_simple(_boolean), None),
        "language": (_simple(_text), None),
    }
)
_TAG = _mapping({"podcast": (_PODCAST, dict)})


def _tag_settings(data: object, loc: Loc, report: Report) -> dict[str, Any]:
    """``tags:``: tag name → its settings."""
    if not isinstance(data, dict):
        report(loc, f"must be a mapping of tag names to settings, got {_got(data)}")
        return {}
    return {str(tag): _TAG(value, (*loc, str(tag)), report) for tag, value in data.items()}


_TOP = _mapping(
    {
        "title": (_simple(_text), "Aggregator"),
        "link": (_simple(_http_url), DEFAULT_LINK),
        "description": (_simple(_string), "The newest items of all my feeds."),
        "archive": (_simple(_text), "archive"),
        "max_items": (_simple(_integer(1, 10_000)), DEFAULT_MAX_ITEMS),
        "image_proxy": (_simple(_image_proxy), None),
        "media": (_simple(_media), MEDIA_OFF),
        "media_limits": (
            _mapping(
                {
                    "image": (_simple(_integer(1024)), DEFAULT_MAX_IMAGE_BYTES),
                    "enclosure": (_simple(_integer(1024)), DEFAULT_MAX_ENCLOSURE_BYTES),
                    "total": (_simple(_integer(1024)), DEFAULT_MAX_MEDIA_BYTES),
                }
            ),
            dict,
        ),
        "user_agent": (_simple(_user_agent), None),
        "max_feed_bytes": (_simple(_integer(1024)), DEFAULT_MAX_FEED_BYTES),
        "max_entries": (_simple(_integer(1)), DEFAULT_MAX_ENTRIES),
        "workers": (_simple(_integer(0, 64)), default_workers),
        "interval": (_simple(_duration), DEFAULT_INTERVAL),
        "serve": (
            _mapping(
                {
                    "host": (_simple(_text), DEFAULT_HOST),
                    "port": (_simple(_integer(0, 65535)), DEFAULT_PORT),
                }
            ),
            {"host": DEFAULT_HOST, "port": DEFAULT_PORT},
        ),
        "max_in_flight": (_simple(_integer(1, 256)), DEFAULT_MAX_IN_FLIGHT),
        "max_in_flight_per_host": (_simple(_integer(1, 64)), DEFAULT_MAX_PER_HOST),
        "podcast": (_PODCAST, dict),
        "tags": (_tag_settings, dict),
        "feeds": (_list_of(_FEED), _REQUIRED),
    }
)


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
    notes = _Notes(name, lines)
    problems = notes.problems

    def report(loc: Loc, message: str) -> None:
        notes.say(problems, loc, message)

    top = _TOP(data, (), report)
    if top:
        _check_settings(top, report)
    base = path.resolve().parent
    accesses = [
        _access(feed, ("feeds", i), base, notes, report)
        for i, feed in enumerate(top.get("feeds") or ())
        if isinstance(feed, dict) and feed.get("url")
    ]
    _check_duplicates(top.get("feeds") or (), report, lines)
    if problems:
        raise ConfigError(
            sorted(problems, key=lambda p: p.line or 0), notes.missing, notes.warnings
        )
    archive = Path(os.path.expanduser(top["archive"]))
    register(secret for a in accesses if a is not None for secret in a.secrets)
    return Config(
        path=path,
        title=top["title"],
        link=top["link"],
        description=top["description"],
        archive=archive if archive.is_absolute() else base / archive,
        max_items=top["max_items"],
        image_proxy=top["image_proxy"],
        user_agent=top["user_agent"],
        max_feed_bytes=top["max_feed_bytes"],
        max_entries=top["max_entries"],
        workers=top["workers"],
        interval=top["interval"],
        host=top["serve"]["host"],
        port=top["serve"]["port"],
        max_in_flight=top["max_in_flight"],
        max_in_flight_per_host=top["max_in_flight_per_host"],
        media=top["media"],
        media_limits=_media_limits(top["media_limits"]),
        warnings=tuple(str(w) for w in notes.warnings),
        missing=tuple(str(m) for m in notes.missing),
        feeds=tuple(
            FeedSource(
                url=public_url(feed["url"])[0],
                name=feed["name"],
                tags=tuple(dict.fromkeys(feed["tags"])),
                interval=feed["interval"] or top["interval"],
                line=lines.get(("feeds", i)),
                rules=ItemRules(
                    title=feed["title"],
                    include=feed["include"],
                    exclude=feed["exclude"],
                    strip=tuple(feed["strip"]),
                    image_proxy=feed["image_proxy"],
                    full_content=feed["full_content"],
                ),
                updates=feed["updates"],
                access=access,
                full_text=feed["full_text"],
                media=feed["media"] or top["media"],
            )
            for i, (feed, access) in enumerate(zip(top["feeds"], accesses, strict=True))
        ),
        podcast=_podcast(top["podcast"]),
        tag_podcasts=tuple(
            (tag, _podcast(settings.get("podcast") or {}))
            for tag, settings in top["tags"].items()
            if settings.get("podcast")
        ),
    )


class _Notes:
    """What loading says: problems, warnings, and secrets it could not read, each with
    the line of its key (or of the nearest enclosing one)."""

    def __init__(self, file: str, lines: dict[Loc, int]) -> None:
        self.file, self.lines = file, lines
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []
        self.missing: list[ConfigProblem] = []

    def say(self, into: list[ConfigProblem], loc: Loc, message: str) -> None:
        found = (self.lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in self.lines)
        into.append(ConfigProblem(self.file, next(found, None), format_loc(loc), message))


def _access(
    feed: dict[str, Any], loc: Loc, base: Path, notes: _Notes, report: Report
) -> Access | None:
    """What fetching the feed at ``loc`` needs besides its public URL, its secrets read
    from the environment or their files (what cannot be read is noted as missing)."""
    url = feed["url"]
    public, _, userinfo = public_url(url)
    auth, headers, cookie = feed.get("auth"), feed.get("headers") or (), feed.get("cookie")
    proxy, agent, verify = feed.get("proxy"), feed.get("user_agent"), feed.get("verify_tls")
    plain = not (auth or headers or cookie or proxy or agent) and verify is not False
    if public == url and plain:
        return None
    reasons: list[str] = []

    def read(ref: SecretRef | None, where: Loc) -> str | None:
        if ref is None:
            return None
        if ref.kind == "literal":
            return ref.value
        value: str | None = None
        if ref.kind == "env":
            value = os.environ.get(ref.value)
            what = f"environment variable {ref.value}"
            reason = None if value is not None else f"{what} is not set"
        else:
            file = Path(os.path.expanduser(ref.value))
            file = file if file.is_absolute() else base / file
            what, reason = str(file), None
            try:
                value = file.read_text(encoding="utf-8").strip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                reason = f"cannot read {file}: {getattr(e, 'strerror', None) or e}"
        if value is not None and not _sendable(value):  # (the value itself is never said)
            value, reason = None, f"{what} holds a line break or a character HTTP cannot send"
        if reason is not None:
            notes.say(notes.missing, where, reason)
            reasons.append(reason)
        return value

    username = password = None
    if userinfo is not None:
        if auth:
            report((*loc, "url"), "has user:password@ and the feed has auth: keep only auth")
        username, password = userinfo
        notes.say(notes.warnings, (*loc, "url"), _IN_THE_FILE)
    elif auth:
        username = auth["username"]
        password = read(auth["password"], (*loc, "auth"))
        if auth["password"].kind == "literal":
            notes.say(notes.warnings, (*loc, "auth", "password"), _IN_THE_FILE)
    from aggregator.access import Access  # noqa: PLC0415 -- only for feeds that need it

    if verify is False:
        notes.say(
            notes.warnings,
            (*loc, "verify_tls"),
            "is false: anyone on the way can read and change it",
        )
    return Access(
        url=url,
        username=username,
        password=password,
        headers=tuple((h, v) for h, ref in headers if (v := read(ref, (*loc, "headers", h)))),
        # A value written in the file under a name that says nothing secret (Accept: ...)
        # is not masked in messages; one from the environment or a file always is.
        plain_headers=tuple(
            h for h, ref in headers if ref and ref.kind == "literal" and not _secret_header(h)
        ),
        cookie=read(cookie, (*loc, "cookie")),
        user_agent=agent,
        proxy=proxy,
        verify_tls=verify is not False,
        missing="; ".join(reasons) or None,
    )


_IN_THE_FILE = (
    "a password written in feeds.yaml: prefer password_env or password_file, and keep "
    "the file private"
)


def _media_limits(given: dict[str, Any]) -> MediaLimits | None:
    if not given:
        return None
    from aggregator.media import MediaLimits  # noqa: PLC0415 -- only when said

    return MediaLimits(**given)


def _podcast(fields: dict[str, Any]) -> Podcast:
    return Podcast(**{k: v for k, v in fields.items() if v is not None})


def _check_settings(top: dict[str, Any], report: Report) -> None:
    """What each key cannot check alone: a subcategory needs a category; a tag's settings
    need a feed with that tag."""
    tags: dict[str, Any] = top.get("tags") or {}
    places: list[tuple[Loc, dict[str, Any]]] = [(("podcast",), top.get("podcast") or {})]
    places += [(("tags", t, "podcast"), s.get("podcast") or {}) for t, s in tags.items()]
    for loc, fields in places:
        if fields.get("subcategory") and not fields.get("category"):
            report((*loc, "subcategory"), "needs a category")
    if "feeds" in top:  # (a missing list is reported already)
        feeds = [f for f in top["feeds"] if isinstance(f, dict)]
        carried = {slugify(t) for feed in feeds for t in feed.get("tags") or () if t}
        for tag in tags:
            if slugify(tag) not in carried:
                report(("tags", tag), "no feed has this tag (a typo?)")


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
    except OSError as e:  # permissions, too many open files, ...: may pass
        problem = ConfigProblem(name, None, "", f"cannot read: {e.strerror or e}")
        raise ConfigUnreadable([problem]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise fail("not UTF-8 text", raw[: e.start].count(b"\n") + 1) from None

    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            raise fail("file is empty; it needs at least a `feeds:` list")
        lines, problems = _index_lines(node, name)
        if problems:
            raise ConfigError(problems)
        data = loader.construct_document(node)
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        line = text[: e.position].count("\n") + 1
        raise fail(f"invalid YAML: {e.reason} (character {e.character!r})", line) from None
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
        if loader is not None:
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


def _check_duplicates(feeds: Iterable[object], report: Report, lines: dict[Loc, int]) -> None:
    """Report every feed URL listed twice (by its normalized public form), whatever else
    is wrong with the file."""
    first: dict[str, int] = {}
    for i, feed in enumerate(feeds):
        if not isinstance(feed, dict) or not isinstance(feed.get("url"), str):
            continue
        public = public_url(feed["url"])[0]
        key = normalize_url(public) or public
        if key in first:
            j = first[key]
            where = lines.get(("feeds", j, "url"))
            report(("feeds", i, "url"), f"duplicate feed URL, already at feeds[{j}] (line {where})")
        else:
            first[key] = i
