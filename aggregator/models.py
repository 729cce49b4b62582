"""Frozen values passed between the pipeline's steps.

Nothing here does I/O. Datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import contextlib
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aggregator.timing import DEFAULT_INTERVAL

if TYPE_CHECKING:  # (made only when a feed or the config needs them: not on every start)
    from aggregator.access import Access
    from aggregator.media import MediaLimits

DEFAULT_MAX_ITEMS = 100
DEFAULT_MAX_FEED_BYTES = 10 * 1024 * 1024
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080
DEFAULT_LINK = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/"  # where `aggregator run` serves
DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_PER_HOST = 16, 2
DEFAULT_MAX_ENTRIES = 1000


def format_time(moment: datetime) -> str:
    """The project's timestamp text: ``2021-04-15T13:59:02.000Z`` (UTC, milliseconds).

    Fixed width with zero-padded years, so that the text sorts like the time.
    """
    m = moment.astimezone(UTC)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031 -- twice an f-string's speed
        m.year, m.month, m.day, m.hour, m.minute, m.second, m.microsecond // 1000
    )  # fmt: skip


# format_time's shape exactly: ASCII digits where digits go (fromisoformat would also read
# a zone or a sign in the fraction's place, which the strict format refuses).
FORMATTED_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time`."""
    if FORMATTED_TIME.fullmatch(text):  # (its own shape, read several times faster)
        with contextlib.suppress(ValueError):  # (a day or an hour out of range)
            return datetime.fromisoformat(text[:23]).replace(tzinfo=UTC)
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def sort_date(
    published: datetime | None, archived: datetime, placed: datetime | None = None
) -> datetime:
    """An item's place in the merged feed: its own date, unless absent or in the future.

    ``placed``: for an item its source did not date, the newest date its feed gives its
    other items: an undated item is not put above them (nor above the items of other
    feeds dated after them) just because it was archived now.
    """
    if published is None:
        return min(placed, archived) if placed is not None else archived
    return archived if published > archived else published


def newest(dates: list[datetime | None], limit: int) -> list[int]:
    """Indexes of at most ``limit`` entries: the newest dated ones, then undated ones, in
    document order. A feed that dumps 50,000 items must not flood the archive."""
    if len(dates) <= limit:
        return list(range(len(dates)))
    order = sorted(
        range(len(dates)), key=lambda i: (dates[i] is None, -(dates[i] or _EPOCH).timestamp(), i)
    )
    return sorted(order[:limit])


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


KEEP_GLOBAL = "global"  # ItemRules.image_proxy: use the config's image_proxy


T = TypeVar("T")


def pickled_by_fields(cls: type[T]) -> type[T]:
    """Pickle a frozen dataclass as its constructor's arguments. The generic way (3.11's
    ``__getstate__``/``__setstate__`` of slotted dataclasses) lists the class's fields
    for every object: a third of the cost of sending a feed's posts from a worker."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    get = operator.attrgetter(*names)
    values = get if len(names) > 1 else lambda self: (get(self),)  # (a tuple, of one)

    def __reduce__(self: Any) -> tuple[type[T], tuple[Any, ...]]:
        return cls, values(self)

    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return cls


@dataclass(frozen=True, slots=True)
class ItemRules:
    """Per-feed options of feeds.yaml that shape its posts (``aggregator help feeds.yaml``,
    "Per-feed options")."""

    title: str = "{title}"  # template of the post title: {title}, {name}
    include: str | None = None  # regex on title and text: keep only matching items
    exclude: str | None = None  # regex on title and text: drop matching items
    strip: tuple[str, ...] = ()  # CSS selectors removed from the content
    image_proxy: str | None = KEEP_GLOBAL  # a template, None (no proxy) or KEEP_GLOBAL
    full_content: bool = True  # False: the feed's summary only


MEDIA_OFF, MEDIA_KEEP, MEDIA_KEEP_ENCLOSURES = "off", "keep", "keep_enclosures"


@dataclass(frozen=True, slots=True)
class FeedSource:
    """One entry of ``feeds:`` in feeds.yaml."""

    url: str  # public: without user:pass@ nor secret query parameters (see ``access``)
    name: str | None = None  # None: use the feed's own title
    tags: tuple[str, ...] = ()
    interval: int = DEFAULT_INTERVAL  # seconds between polls
    line: int | None = None  # where feeds.yaml declares it, for messages
    rules: ItemRules = ItemRules()
    updates: bool = True  # rewrite a post when the source edits its item
    access: Access | None = None  # credentials, headers, proxy, TLS: None for a plain GET
    full_text: bool | str = False  # fetch each item's page: True (extract) or a CSS selector
    media: str = MEDIA_OFF  # MEDIA_KEEP: download pictures into the archive; or with files

    @property
    def settings(self) -> str:
        """What the user wrote for this feed; a change means "poll it again" (after 410)."""
        said: tuple[object, ...] = (self.url, self.name, self.tags, self.interval, self.rules)
        if not self.updates:
            said += ("updates: false",)
        if self.access is not None:
            said += (self.access.fingerprint,)
        if self.enriched:
            said += (self.full_text, self.media)
        return repr(said)

    @property
    def enriched(self) -> bool:
        """Its posts need more than its feed: article pages, or files kept."""
        return bool(self.full_text) or self.media != MEDIA_OFF

    @property
    def fetch_url(self) -> str:
        return self.access.url if self.access is not None else self.url


@dataclass(frozen=True, slots=True)
class Podcast:
    """The iTunes fields a published feed says of itself (feeds.yaml ``podcast:``, global
    or per tag): what podcast directories and clients ask of a podcast feed."""

    author: str | None = None
    email: str | None = None  # the owner's, with ``author`` as the owner's name
    image: str | None = None  # http(s) URL of a JPEG or PNG picture
    category: str | None = None  # Apple's category, e.g. "Technology"
    subcategory: str | None = None  # e.g. "Podcasting"
    explicit: bool | None = None
    language: str | None = None  # e.g. "en"

    def over(self, base: Podcast) -> Podcast:
        """These fields, and those of ``base`` where these are not set."""
        changes = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(base, **{k: v for k, v in changes.items() if v is not None})

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


# What ``media: keep`` may download (feeds.yaml ``media_limits``), in bytes.
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024  # one picture
DEFAULT_MAX_ENCLOSURE_BYTES = 200 * 1024 * 1024  # one enclosure (``keep_enclosures``)
DEFAULT_MAX_MEDIA_BYTES = 5 * 1024 * 1024 * 1024  # the whole media folder


@dataclass(frozen=True, slots=True)
class Config:
    """A validated feeds.yaml."""

    path: Path  # the config file itself
    title: str
    link: str
    description: str
    archive: Path  # absolute
    max_items: int = DEFAULT_MAX_ITEMS
    image_proxy: str | None = None
    user_agent: str | None = None
    max_feed_bytes: int = DEFAULT_MAX_FEED_BYTES
    max_entries: int = DEFAULT_MAX_ENTRIES  # entries of one feed considered per poll
    workers: int = 1  # processes that parse; 0: parse in the main process
    interval: int = DEFAULT_INTERVAL
    host: str = DEFAULT_HOST  # where the daemon serves the merged feed
    port: int = DEFAULT_PORT
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT  # requests at once, in total
    max_in_flight_per_host: int = DEFAULT_MAX_PER_HOST
    feeds: tuple[FeedSource, ...] = ()
    podcast: Podcast = Podcast()  # of every published feed
    tag_podcasts: tuple[tuple[str, Podcast], ...] = ()  # per tag, over ``podcast``
    media: str = MEDIA_OFF  # the feeds' default ``media:``
    media_limits: MediaLimits | None = None  # None: the defaults
    warnings: tuple[str, ...] = ()  # allowed, but worth a word (a password in the file)
    missing: tuple[str, ...] = ()  # secrets named but unreadable: those feeds will fail


@dataclass(frozen=True, slots=True)
class Validators:
    """HTTP cache validators exactly as the server sent them."""

    etag: str | None = None
    last_modified: str | None = None

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)


class Outcome(StrEnum):
    """How a feed's poll ended."""

    NEW = "new"  # new items were archived
    UNCHANGED = "unchanged"  # fetched (or 304), nothing new
    ERROR = "error"  # see FeedStatus.error


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """Everything remembered of one feed's polls: one row of the index, decided after each
    poll by :func:`aggregator.lifecycle.after_poll` and read by the scheduler, ``status``,
    the home page and ``/healthz``."""

    url: str  # as feeds.yaml names it
    name: str | None = None  # the feed's own title, learned at its last good poll
    validators: Validators = Validators()
    last_poll: datetime | None = None
    outcome: Outcome | None = None  # of the last poll; None: never polled
    error: str | None = None  # why the last poll failed
    http_status: int | None = None
    errors_in_a_row: int = 0  # failed polls in a row, whoever's fault
    local_errors: int = 0  # how many of those failed on this side (disk, index)
    next_poll: datetime | None = None  # None: not planned (gone, or never polled)
    moved_to: str | None = None  # the new URL after a permanent redirect
    gone_settings: str | None = None  # its FeedSource.settings when it answered 410 Gone
    icon: str | None = None  # the feed's own icon (an http(s) URL), learned like its name


@dataclass(frozen=True, slots=True)
class Fetched:
    """A 2xx answer with its (decoded) body."""

    url: str  # the URL asked for
    final_url: str  # after redirects
    status: int
    content: bytes
    content_type: str | None
    validators: Validators
    headers: Mapping[str, str] = field(default_factory=dict)  # caching hints
    moved_to: str | None = None  # set when every redirect was permanent (301/308)


@dataclass(frozen=True, slots=True)
class NotModified:
    """A 304 answer to our conditional request."""

    url: str
    validators: Validators
    headers: Mapping[str, str] = field(default_factory=dict)  # caching hints


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Media:
    """A file an item carries: an enclosure (RSS ``<enclosure>``, Atom
    ``link rel="enclosure"``, JSON Feed attachment) or a ``media:content``."""

    url: str  # absolute http(s)
    type: str | None = None  # MIME type, as the feed says
    length: int | None = None  # bytes
    medium: str | None = None  # image, audio, video, document (Media RSS)
    duration: int | None = None  # seconds
    width: int | None = None
    height: int | None = None


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Episode:
    """The item-level iTunes fields of a podcast episode (all optional)."""

    duration: int | None = None  # seconds
    number: int | None = None  # itunes:episode
    season: int | None = None
    kind: str | None = None  # itunes:episodeType: full, trailer, bonus
    explicit: bool | None = None

    def __bool__(self) -> bool:
        return not (
            self.duration is None and self.number is None and self.season is None
            and self.kind is None and self.explicit is None
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of a feed, as the parser understood it."""

    title: str
    link: str | None  # absolute http(s) URL, or None
    guid: str | None
    content: str  # HTML, not yet sanitized
    base: str  # URL that relative references in ``content`` resolve against
    published: datetime | None
    summary: str = ""  # HTML: the feed's own summary, when it gives one besides ``content``
    updated: datetime | None = None  # the source's own date of its last change
    authors: tuple[str, ...] = ()  # the item's own people (author, dc:creator, Atom author)
    categories: tuple[str, ...] = ()  # the item's own categories
    enclosures: tuple[Media, ...] = ()
    media: tuple[Media, ...] = ()  # media:content (pictures, videos) besides enclosures
    image: str | None = None  # the item's picture: media:thumbnail, itunes:image, JSON image
    episode: Episode = Episode()


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """A parsed feed: its own metadata and its entries, in document order."""

    url: str
    title: str | None
    link: str | None
    entries: tuple[Entry, ...]
    warning: str | None = None  # set when the feed was ill-formed but usable
    ttl: int | None = None  # RSS <ttl>, minutes
    total_entries: int = 0  # in the document; ``entries`` may keep only the newest
    icon: str | None = None  # its small picture (Atom icon/logo, RSS image, JSON favicon)


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Post:
    """A post ready to be written to ``archive/<path>``: what its file says, and where."""

    key: str  # dedupe key (normalized source URL, GUID, or a hash of title and date)
    path: str  # relative to the archive root, POSIX separators
    feed_url: str
    title: str
    link: str
    source: str  # the front matter's ``from``: what identifies the item at its source
    published: datetime | None
    archived: datetime
    content: str  # sanitized HTML ("" in a post a worker sent: its text holds it)
    author: str = ""  # the source's name, as the post says
    tags: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    updated: datetime | None = None  # when the post was last rewritten for a source edit
    item_authors: tuple[str, ...] = ()  # the item's own people
    item_categories: tuple[str, ...] = ()  # the item's own categories
    enclosures: tuple[Media, ...] = ()
    media: tuple[Media, ...] = ()
    image: str | None = None
    episode: Episode = Episode()
    digest: str = ""  # of what the source said; a change is an edit
    source_updated: datetime | None = None  # the source's own date of its last change
    aliases: tuple[str, ...] = ()  # earlier keys of the same item (a key scheme changed)
    placed: datetime | None = None  # undated: the newest date of its feed's other items
    text_from: str | None = None  # the page its text was taken from (``full_text``)
    unfinished: bool = False  # its page or a picture could not be fetched: retried later
    text: str = ""  # the whole file (aggregator.posts.render_post), rendered by the worker

    @property
    def sort_date(self) -> datetime:
        return sort_date(self.published, self.archived, self.placed)
