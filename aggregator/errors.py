"""The project's exceptions: one root, one branch per kind of culprit."""

from __future__ import annotations

from dataclasses import dataclass

from aggregator.secrets import scrub


def one_line(value: object, limit: int = 200) -> str:
    """``value`` as text on one line, cut at ``limit`` characters (for reasons and logs)."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class AggregatorError(Exception):
    """Root of every error the project raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config file, located as precisely as we can."""

    file: str
    line: int | None
    path: str  # key path such as ``feeds[3].url``; empty for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(AggregatorError):
    """``feeds.yaml`` is missing, unreadable or invalid; holds every problem found."""

    def __init__(
        self,
        problems: list[ConfigProblem],
        missing: list[ConfigProblem] | None = None,
        warnings: list[ConfigProblem] | None = None,
    ) -> None:
        self.problems = problems
        self.missing = missing or []  # secrets that cannot be read (for `check`)
        self.warnings = warnings or []
        super().__init__("\n".join(str(p) for p in problems))


class FeedError(AggregatorError):
    """Something went wrong with one feed; ``reason`` is a one-line explanation."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = scrub(reason)  # (a reason may quote a secret)
        super().__init__(f"{url}: {self.reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Rebuilt from (url, reason) when it crosses a process boundary."""
        return type(self), (self.url, self.reason)


class FetchError(FeedError):
    """The feed could not be downloaded (network, HTTP status, size, redirects)."""

    def __init__(
        self, url: str, reason: str, status: int | None = None, retry_after: str | None = None
    ) -> None:
        super().__init__(url, reason)
        self.status = status
        self.retry_after = retry_after  # the raw Retry-After header of a 429/503


class TooLarge(FetchError):
    """The body is larger than the cap (asking again will not make it smaller)."""


class ParseError(FeedError):
    """The downloaded body is not a feed we can read."""


class ArchiveError(AggregatorError):
    """A post or a published file could not be written, or the archive is inconsistent."""


class IndexDamaged(ArchiveError):
    """The index file is not a sound SQLite database; the posts can rebuild it."""


class ConfigUnreadable(ConfigError):
    """feeds.yaml exists (or may) but could not be read right now: worth reading again."""


class SourcesError(AggregatorError):
    """An add, remove or import that cannot be done; the message says why and what to do."""
