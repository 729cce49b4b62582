"""How log lines look: text (coloured on a terminal), JSON with fields, or journald's.

- One namespace: every line is logged under ``aggregator.*``; the libraries' own loggers
  are renamed (``uvicorn.error`` → ``aggregator.http``, ``httpx`` → ``aggregator.fetch``).
- Fields: a line about a feed passes them with ``extra=fields(feed=..., url=...)``; the
  JSON format writes them as keys of their own beside ``message``.
- Under systemd (``JOURNAL_STREAM`` names our stderr) each line starts with its syslog
  priority (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug) and carries no
  time: journald adds it, and ``journalctl -p warning`` shows the warnings and errors.
- Colours only on a terminal (and not with ``NO_COLOR``): errors red, warnings yellow;
  values are never coloured by guesswork.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import IO, Any

from aggregator.secrets import scrub

FIELDS = "fields"  # the attribute of a record that holds its fields
_RENAMED = (  # library loggers → ours (first match, by prefix)
    ("uvicorn.access", "aggregator.http.access"),
    ("uvicorn", "aggregator.http"),
    ("httpx", "aggregator.fetch"),
    ("httpcore", "aggregator.fetch"),
    ("apscheduler", "aggregator.scheduler"),
    ("trafilatura", "aggregator.fulltext"),
)
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_COLOUR = {logging.WARNING: "\x1b[33m", logging.ERROR: "\x1b[31m"}
_RESET = "\x1b[0m"


def fields(**values: object) -> dict[str, Any]:
    """``extra=`` for a log call: values the JSON format writes as keys of their own."""
    return {FIELDS: {k: v for k, v in values.items() if v is not None}}


class Namespace(logging.Filter):
    """Renames the libraries' records into the ``aggregator`` namespace."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if not name.startswith("aggregator"):
            for prefix, ours in _RENAMED:
                if name == prefix or name.startswith(prefix + "."):
                    record.name = ours
                    break
            else:
                record.name = "aggregator." + name.partition(".")[0]
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the record's fields; under
    journald, preceded by the line's priority (which journald takes off)."""

    def __init__(self, priority: bool = False) -> None:
        super().__init__()
        self.priority = priority

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in getattr(record, FIELDS, {}).items():
            plain = isinstance(value, int | float | bool)
            entry.setdefault(key, value if plain else scrub(str(value)))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:  # (formatted, and scrubbed, already)
            entry["traceback"] = record.exc_text
        line = json.dumps(entry, ensure_ascii=False)
        return f"<{_priority(record.levelno)}>{line}" if self.priority else line


def _priority(level: int) -> int:
    found = _PRIORITY.get(level)
    if found is None:
        return 2 if level > logging.ERROR else 7
    return found


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``, as journald reads a service's stderr."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _priority(record.levelno)
        # every line of a traceback carries the priority, or journald shows them as info
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``; warnings yellow and errors red when ``colour``."""

    def __init__(self, colour: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if not self.colour or record.levelno < logging.WARNING:
            return line
        start = _COLOUR[logging.ERROR if record.levelno >= logging.ERROR else logging.WARNING]
        return f"{start}{line}{_RESET}"


def under_journald(stream: IO[str]) -> bool:
    """Whether ``stream`` is the journal connection systemd gave this service."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def wants_colour(stream: IO[str]) -> bool:
    """A terminal that has not asked for no colour (https://no-color.org)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


def formatter_for(fmt: str, stream: IO[str] = sys.stderr) -> logging.Formatter:
    """The formatter of ``--log-format`` ``fmt`` for lines written to ``stream``."""
    journal = under_journald(stream)
    if fmt == "json":
        return JsonFormatter(priority=journal)
    if journal:
        return JournalFormatter()
    return TextFormatter(colour=wants_colour(stream))


def rich_handler(console: Any) -> logging.Handler:
    """Lines printed above a progress bar on a terminal: the level's colour on the whole
    message (errors red, warnings yellow) and nothing else coloured."""
    from rich.highlighter import NullHighlighter  # noqa: PLC0415
    from rich.logging import RichHandler  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    class Handler(RichHandler):
        def render_message(self, record: logging.LogRecord, message: str) -> Text:
            style = "red" if record.levelno >= logging.ERROR else "yellow"
            return Text(message, style=style if record.levelno >= logging.WARNING else "")

    return Handler(console=console, show_path=False, highlighter=NullHighlighter())
