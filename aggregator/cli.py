"""The command line. The only place that configures logging and maps errors to exit codes.

Exit codes: 0 success, 1 a feed or the archive failed (or the archive is in use),
2 invalid configuration or usage.

argparse rather than typer: typer (which imports pydantic) added about 0.2 s to every
start, a third of a warm ``poll``; the commands and options here are few and plain.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregator import __version__
from aggregator.errors import AggregatorError, ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from aggregator.models import Config

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
_SUMMARY = "Poll RSS/Atom/JSON feeds, archive every new item as a post, publish a merged feed."


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _setup_logging(args: argparse.Namespace, console: Console | None = None) -> None:
    from aggregator.logs import Namespace, formatter_for, rich_handler  # noqa: PLC0415
    from aggregator.secrets import ScrubFilter  # noqa: PLC0415

    verbose, quiet, fmt = args.verbose, args.quiet, args.log_format
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    root = logging.getLogger()
    root.handlers.clear()
    handler: logging.Handler
    if console is not None and fmt == "text":
        handler = rich_handler(console)
        level = level if verbose or quiet else logging.WARNING  # the progress bar tells the rest
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter_for(fmt, sys.stderr))
    handler.addFilter(Namespace())  # every line under aggregator.*, libraries' too
    handler.addFilter(ScrubFilter())  # no secret of feeds.yaml in any line, whoever logs it
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's start and stop lines repeat the daemon's own
    for noisy in ("httpcore", "apscheduler", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # httpx's line per request is for -v only (then it shows secret query values masked)
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _load(config_path: Path | None) -> Config:
    """Load the config or exit 2 with every problem on stderr."""
    from aggregator.config import load_config, resolve_config_path  # noqa: PLC0415

    try:
        return load_config(resolve_config_path(config_path))
    except ConfigError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        raise _Exit(EXIT_CONFIG) from None


def _fail(error: AggregatorError) -> _Exit:
    print(f"error: {error}", file=sys.stderr)
    return _Exit(EXIT_FAILED)


def check(args: argparse.Namespace) -> int:
    """Validate feeds.yaml and print every problem with its file, line and key.

    Lists every problem at once (duplicate feeds too). Also warns of secrets written in
    the file and of TLS checks turned off, and names the secrets that cannot be read
    (environment variables not set, files missing), without printing any. Exit status
    0 if valid, 2 if not or if a secret is missing.

    Example: aggregator check -c ~/feeds/feeds.yaml
    """
    from aggregator.config import load_config, resolve_config_path  # noqa: PLC0415

    try:
        cfg = load_config(resolve_config_path(args.config))
    except ConfigError as e:
        problems = [str(p) for p in e.problems]
        missing, warnings = [str(m) for m in e.missing], [str(w) for w in e.warnings]
    else:
        problems, missing, warnings = [], list(cfg.missing), list(cfg.warnings)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    for secret in missing:
        print(f"error: {secret} (the feed will fail until it is)", file=sys.stderr)
    if problems or missing:
        count = len(problems) + len(missing)
        print(f"{count} problem{'s' if count > 1 else ''}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{cfg.path}: OK, {len(cfg.feeds)} feeds, archive in {cfg.archive}")
    return EXIT_OK


def poll(args: argparse.Namespace) -> int:
    """Poll every feed once (or those named), archive new items, publish the merged feed.

    Prints one line per feed (new N / unchanged / error: reason) and a total; with -q,
    nothing unless something failed (cron mails only then). FEED is a feed's URL or
    name, as in feeds.yaml or learned from the feed. While `aggregator run` uses the
    archive, the daemon is asked to poll them now and the results are its own. Ctrl-C
    or SIGTERM stops a pass early (exit 0): what was archived is published.

    Exit status: 0 every feed was fetched or unchanged; 1 a feed failed, or the merged
    feed could not be written (the next pass writes it); 2 invalid feeds.yaml or an
    unknown FEED.

    Examples:
      */30 * * * * cd ~/feeds && aggregator poll -q     (cron, every 30 minutes)
      aggregator poll "BBC World" https://example.org/feed.xml
    """
    early = _spare_cpu() and _start_parsers()  # (first: their imports overlap ours)
    from aggregator.archive import ArchiveLocked, lock_archive  # noqa: PLC0415

    cfg = _load(args.config)
    only = _chosen(cfg, args.feeds)
    progress = _Progress.start(args, len(only) if only is not None else len(cfg.feeds))
    _setup_logging(args, progress.console if progress else None)
    try:
        with lock_archive(cfg.archive):
            _start_parsers_early(cfg, only, early)
            from aggregator.pipeline import run_pass  # noqa: PLC0415 -- not to ask the daemon

            if progress is not None:
                with progress:
                    outcome = run_pass(
                        cfg, on_result=progress.done, on_start=progress.started,
                        handle_signals=True, only=only,
                    )  # fmt: skip
            else:
                outcome = run_pass(cfg, handle_signals=True, only=only)
    except ArchiveLocked as e:
        _stop_parsers()
        return _poll_by_daemon(cfg, only, args.quiet, e)
    except AggregatorError as e:
        raise _fail(e) from None
    published = f"; published {cfg.archive}" if outcome.published else ""
    if outcome.skipped:
        if args.quiet:  # (stopped on purpose: nothing failed)
            return EXIT_OK
        print(
            f"stopped early: {len(outcome.results)} of {len(outcome.results) + outcome.skipped}"
            f" feeds polled, {outcome.new} new items{published}"
        )
        return EXIT_OK
    rows = [(r.name, r.url, str(r.outcome), r.new, r.error) for r in outcome.results]
    failed = _print_polls(rows, args.quiet, published)
    if outcome.publish_error:
        print(
            f"error: the merged feed was not written: {outcome.publish_error} "
            "(the next pass writes it)",
            file=sys.stderr,
        )
    return EXIT_FAILED if failed or outcome.publish_error else EXIT_OK


def _chosen(cfg: Config, wanted: list[str]) -> set[str] | None:
    """The URLs of the feeds named on the command line (None: every feed); exit 2 naming
    those that match none. A feed is named by its URL, or its name in feeds.yaml or as
    learned from the feed (any case)."""
    if not wanted:
        return None
    learned = _learned_names(cfg)
    chosen: set[str] = set()
    unknown = []
    for text in wanted:
        key = text.strip().casefold()
        found = {
            f.url
            for f in cfg.feeds
            if key  # (an empty name names nothing)
            and (
                text in (f.url, f.fetch_url)
                or key in {(f.name or "").casefold(), learned.get(f.url, "").casefold()}
            )
        }
        chosen |= found
        if not found:
            unknown.append(text)
    for text in unknown:
        print(f"error: no feed {text!r} in {cfg.path} (by URL or name)", file=sys.stderr)
    if unknown:
        raise _Exit(EXIT_CONFIG)
    return chosen


def _learned_names(cfg: Config) -> dict[str, str]:
    """Feed URL → the name learned from the feed, as the index says ({} if there is none
    to read yet)."""
    from aggregator.archive import read_index  # noqa: PLC0415

    try:
        state = read_index(cfg.archive)
        try:
            return state.feed_names()
        finally:
            state.close()
    except AggregatorError as e:
        logging.getLogger(__name__).debug("no learned names: %s", e)
        return {}


def _spare_cpu() -> bool:
    """Whether this process may use more than one CPU (then the parser host's imports
    cost a pass that parses nothing no time of its own)."""
    import os  # noqa: PLC0415

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cpus or 1) > 1


def _start_parsers_early(cfg: Config, only: set[str] | None, started: bool) -> None:
    """The parser host for this pass: ended if feeds.yaml says ``workers: 0``; else, if
    not ``started`` already (one CPU), started now if the pass will surely parse."""
    if not cfg.workers:
        if started:
            _stop_parsers()
        return
    if started:
        return
    from aggregator.archive import surely_downloads  # noqa: PLC0415

    urls = [f.url for f in cfg.feeds if only is None or f.url in only]
    if surely_downloads(cfg.archive, urls):
        _start_parsers()


def _start_parsers() -> bool:
    """Start the parser host now; whether it started (if not, the first parse says why)."""
    from aggregator.host import start_host  # noqa: PLC0415

    try:
        start_host()
    except OSError:
        return False
    return True


def _stop_parsers() -> None:
    from aggregator.host import stop_host  # noqa: PLC0415

    stop_host()


def _poll_by_daemon(cfg: Config, only: set[str] | None, quiet: bool, locked: Exception) -> int:
    """Ask the daemon that holds the archive to poll; print its answers as a pass would."""
    from aggregator.control import ask_daemon  # noqa: PLC0415

    answers = ask_daemon(cfg.archive, sorted(only) if only is not None else None)
    if answers is None:  # another `poll`, or a daemon without a control socket
        print(
            f"error: {locked}; it takes no poll requests (another `poll`, a daemon still "
            "starting, or one without a control socket: see its log)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    rows = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C
    try:
        for answer in answers:
            if "refused" in answer:
                print(f"error: the daemon says: {answer['refused']}", file=sys.stderr)
                return EXIT_FAILED
            if "url" in answer:
                row = (answer["name"], answer["url"], answer["outcome"], answer["new"])
                rows.append((*row, answer.get("error")))
    except AggregatorError as e:
        raise _fail(e) from None
    except KeyboardInterrupt:
        if not quiet:
            print(f"stopped waiting after {len(rows)} feeds: the daemon finishes the polls")
        return EXIT_OK
    failed = _print_polls(rows, quiet, "; polled by the running daemon (it publishes them)")
    return EXIT_FAILED if failed else EXIT_OK


def _print_polls(rows: list[tuple[str, str, str, int, str | None]], quiet: bool, end: str) -> int:
    """One line a feed and a total (with ``quiet``, only the failures and the total if
    any); return the number that failed."""
    failed = sum(1 for *_, error in rows if error is not None)
    for name, url, outcome, new, error in rows:
        if error is not None:
            print(f"{name} <{url}>: error: {error}")
        elif not quiet:
            print(f"{name} <{url}>: " + (f"new {new}" if outcome == "new" else "unchanged"))
    if failed or not quiet:
        total = sum(row[3] for row in rows)
        print(f"{len(rows)} feeds: {total} new items, {failed} failed{end}")
    return failed


class _Progress:
    """The progress of a pass on a terminal: feeds done of all, the feed awaited longest,
    items archived, elapsed time and rate. None when stderr is no terminal."""

    @classmethod
    def start(cls, args: argparse.Namespace, total: int) -> Any:
        if args.quiet or args.log_format != "text" or not sys.stderr.isatty():
            return None
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("feeds · {task.fields[new]} new · {task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
            transient=True,
        )
        return cls(progress, total)

    def __init__(self, progress: Any, total: int) -> None:
        self.progress = progress
        self.console = progress.console
        self.task = progress.add_task("", total=total, new=0, rate="")
        self.flying: dict[str, str] = {}
        self.new = 0

    def __enter__(self) -> None:
        self.progress.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def started(self, source: Any) -> None:
        self.flying[source.url] = source.name or source.url
        self._show()

    def done(self, result: Any) -> None:
        self.flying.pop(result.url, None)
        self.new += result.new
        self.progress.advance(self.task)
        self._show()

    def _show(self) -> None:
        task = self.progress.tasks[0]
        rate = f"{task.completed / task.elapsed:.1f} feeds/s" if task.elapsed else ""
        oldest = next(iter(self.flying.values()), "")
        self.progress.update(self.task, description=oldest, new=self.new, rate=rate)


def refresh(args: argparse.Namespace) -> int:
    """Poll these feeds now, whatever their schedule or back-off.

    Asks the running daemon (`aggregator run`) to do it and prints what it found; with
    no daemon running, polls them here, as `aggregator poll FEED...` does. FEED is a
    feed's URL or name. Exit status as for `poll`.

    Example: aggregator refresh "BBC World"
    """
    return poll(args)


def run(args: argparse.Namespace) -> int:
    """Run the daemon: poll each feed on its schedule and serve the merged feed over HTTP.

    Edits of feeds.yaml are applied within seconds (or at once on SIGHUP); an invalid
    edit is logged and ignored. SIGTERM or Ctrl-C stops it cleanly. Serves /atom.xml,
    /feed.xml, /feed.json, /opml.xml, a home page at /, /healthz and /metrics.

    Example: aggregator run -c feeds.yaml --port 8080
    """
    from aggregator.scheduler import Daemon  # noqa: PLC0415

    cfg = _load(args.config)
    _setup_logging(args)
    try:
        code = Daemon(cfg, host=args.host, port=args.port).run()
    except AggregatorError as e:
        raise _fail(e) from None
    return code


def serve(args: argparse.Namespace) -> int:
    """Serve an existing archive's merged feed over HTTP, without polling.

    Example: aggregator serve -c feeds.yaml --host 0.0.0.0 --port 8080
    """
    from aggregator.serve import serve_archive  # noqa: PLC0415

    cfg = _load(args.config)
    _setup_logging(args)
    try:
        serve_archive(cfg, args.host or cfg.host, cfg.port if args.port is None else args.port)
    except AggregatorError as e:
        raise _fail(e) from None
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    """Print each feed's health: last poll, outcome, new items in 24 h, errors, next poll.

    Reads the archive's index only, so it works while `aggregator run` is running, and
    on an archive you may not write. A table on a terminal (problems in colour), plain
    aligned columns when piped, one JSON object with --json. Exit status 1 when a feed
    is failing, overdue or gone (a script or a monitor can act on it), else 0.

    Examples:
      aggregator status -c feeds.yaml
      aggregator status --json | jq '.feeds[] | select(.health != "ok")'
    """
    from aggregator.archive import read_index  # noqa: PLC0415
    from aggregator.health import feed_rows  # noqa: PLC0415
    from aggregator.lifecycle import Health  # noqa: PLC0415

    cfg = _load(args.config)
    now = datetime.now(UTC)
    try:
        state = read_index(cfg.archive)
        try:
            rows = feed_rows(cfg, state.statuses(), now)
            recent = state.new_items_since(now - timedelta(hours=24))
        finally:
            state.close()
    except AggregatorError as e:
        raise _fail(e) from None
    troubled = [r for r in rows if not r.health.ok]  # failing, overdue or gone

    def when(moment: datetime | None) -> str:
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if moment else "-"

    feeds: list[dict[str, object]] = []
    table: list[tuple[str, ...]] = []
    for row in rows:
        s, gone = row.status, row.health.state is Health.GONE
        last, following = (s.last_poll, s.next_poll) if s else (None, None)
        new, errors = recent.get(row.url, 0), s.errors_in_a_row if s else 0
        feeds.append(
            {
                "name": row.name,
                "url": row.url,
                "health": str(row.health.state),
                "outcome": (str(s.outcome) if s and s.outcome else None),
                "error": row.health.reason if not row.health.ok else None,
                "last_poll": last.isoformat() if last else None,
                "next_poll": following.isoformat() if following and not gone else None,
                "http_status": s.http_status if s else None,
                "errors_in_a_row": errors,
                "new_24h": new,
            }
        )
        table.append(
            (row.name, row.url, when(last), row.shown, str(new), str(errors),
             "gone" if gone else when(following))
        )  # fmt: skip
    code = EXIT_FAILED if troubled else EXIT_OK
    if args.json:
        summary = {"status": "degraded" if troubled else "ok", "troubled": len(troubled)}
        summary["checked"] = now.isoformat(timespec="seconds")
        print(json.dumps({**summary, "feeds": feeds}, ensure_ascii=False, indent=2))
        return code
    header = ("name", "url", "last poll (UTC)", "outcome", "new 24h", "errors", "next poll (UTC)")
    if sys.stdout.isatty():
        _print_table(header, table, [r.health.state for r in rows])
    else:  # for grep, awk and mail: no frame, no colour, no cut, no padding at line ends
        widths = [max(len(cell) for cell in column) for column in zip(header, *table, strict=True)]
        for line in (header, *table):
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    if troubled:
        print(f"{len(troubled)} of {len(rows)} feeds need attention", file=sys.stderr)
    return code


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], states: list[Any]) -> None:
    """The status table on a terminal: URLs and reasons wrap rather than being cut;
    failing feeds in red, overdue ones in yellow."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from aggregator.lifecycle import Health  # noqa: PLC0415

    table = Table(*header)
    for column in table.columns:
        column.overflow = "fold"
    styles = {Health.FAILING: "red", Health.GONE: "red", Health.OVERDUE: "yellow"}
    for cells, state in zip(rows, states, strict=True):
        table.add_row(*cells, style=styles.get(state))
    Console(highlight=False).print(table)


def reindex(args: argparse.Namespace) -> int:
    """Rebuild the item index (archive/.aggregator/state.sqlite3) from the posts.

    Use it after deleting or editing posts by hand, or if the index was lost or damaged
    (a damaged one is moved aside, not deleted): the posts are the truth. HTTP
    validators are kept when they can be read. Republishes the merged feed. Says which
    posts refer to kept files (media/) that are missing; with --media, removes the kept
    files no post refers to any more (after posts were deleted).

    Example: aggregator reindex -c feeds.yaml
    """
    from aggregator.archive import Archive, lock_archive  # noqa: PLC0415
    from aggregator.errors import IndexDamaged  # noqa: PLC0415
    from aggregator.pipeline import utc_now  # noqa: PLC0415
    from aggregator.publish import publish  # noqa: PLC0415

    cfg = _load(args.config)
    _setup_logging(args)
    try:
        with lock_archive(cfg.archive), Archive(cfg.archive) as archive:
            try:
                archive.state.check()
                archive.recover()
                names = archive.names_of(cfg.feeds)
            except IndexDamaged as e:
                archive.replace_damaged_index(e)
                names = archive.names_of(cfg.feeds)
            count, problems = archive.reindex(names)
            if args.media and not archive.media_known:  # an unreadable post may use some
                problems.append("--media: no kept file removed while a post cannot be read")
            elif args.media:
                from aggregator.media import MediaStore  # noqa: PLC0415

                files, size = MediaStore(cfg.archive).prune(archive.media_used)
                print(f"removed {files} kept files ({size:,} bytes) that no post refers to")
            publish(cfg, archive, utc_now())
            if archive.damaged:
                problems.insert(0, f"the index {archive.state.path} {archive.damaged}")
    except AggregatorError as e:
        raise _fail(e) from None
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"indexed {count} posts from {cfg.archive}")
    return EXIT_OK


def add(args: argparse.Namespace) -> int:
    """Add a feed to feeds.yaml, keeping the file's comments and layout.

    URL may be the feed itself or a web page that announces feeds with
    <link rel="alternate">: the first one announced is added and the others are listed.
    The feed is fetched and parsed once first, so that a typo is caught now; a running
    daemon picks the change up by itself. Creates feeds.yaml if there is none.

    Examples:
      aggregator add https://blog.example.org/ --tags tech,python
      aggregator add https://example.org/feed.xml --name "Example" --interval 2h
    """
    from aggregator.config import resolve_config_path  # noqa: PLC0415
    from aggregator.secrets import public_url  # noqa: PLC0415
    from aggregator.sources.feedsfile import add_feed  # noqa: PLC0415
    from aggregator.timing import parse_duration  # noqa: PLC0415

    path = resolve_config_path(args.config)
    if path.exists():
        _load(args.config)  # refuse to edit an invalid file: `check` says what is wrong
    if args.interval:
        try:
            parse_duration(args.interval)
        except ValueError as e:
            print(f"error: --interval: {e}", file=sys.stderr)
            return EXIT_CONFIG
    tags = [t.strip() for t in (args.tags or "").split(",") if t.strip()]
    try:
        found, _ = add_feed(
            path, args.url, name=args.name, tags=tags, interval=args.interval,
            check=not args.no_check,
        )  # fmt: skip
    except AggregatorError as e:
        raise _fail(e) from None
    if len(found.alternatives) > 1:
        print(f"{args.url} announces {len(found.alternatives)} feeds:")
        for url, title in found.alternatives:
            mark = "*" if url == found.url else " "
            print(f"  {mark} {url}" + (f"  ({title})" if title else ""))
        print("the first (*) was added; to use another: aggregator remove URL, aggregator add URL")
    name = args.name or found.title
    shown = public_url(found.url)[0]  # (its secrets stay in feeds.yaml)
    print(f"added {shown}" + (f" as {name!r}" if name else "") + f" to {path}")
    return EXIT_OK


def remove(args: argparse.Namespace) -> int:
    """Remove a feed from feeds.yaml by its URL or its name; its posts stay archived.

    Example: aggregator remove "BBC World"
    """
    from aggregator.config import resolve_config_path  # noqa: PLC0415
    from aggregator.sources.feedsfile import remove_feed  # noqa: PLC0415

    _load(args.config)
    path = resolve_config_path(args.config)
    try:
        entry, _ = remove_feed(path, args.feed)
    except AggregatorError as e:
        raise _fail(e) from None
    print(f"removed {entry['url']} from {path} (its archived posts are kept)")
    return EXIT_OK


def import_opml(args: argparse.Namespace) -> int:
    """Add the feeds of an OPML file (as exported by feed readers) to feeds.yaml.

    Folders become tags, as do the outlines' categories; feeds already in feeds.yaml
    are skipped. Nothing is fetched: run `aggregator poll` to see how each one does.

    Example: aggregator import-opml ~/Downloads/subscriptions.opml
    """
    from aggregator.config import resolve_config_path  # noqa: PLC0415
    from aggregator.sources.opml import import_opml as do_import  # noqa: PLC0415

    path = resolve_config_path(args.config)
    if path.exists():
        _load(args.config)
    try:
        report = do_import(path, args.file)
    except AggregatorError as e:
        raise _fail(e) from None
    for url, why in report.skipped:
        print(f"skipped {url}: {why}")
    print(f"imported {len(report.added)} feeds into {path}, skipped {len(report.skipped)}")
    return EXIT_OK


def export_opml(args: argparse.Namespace) -> int:
    """Print the feeds of feeds.yaml as OPML 2.0, for another feed reader.

    Tags become each outline's category. Example: aggregator export-opml > feeds.opml
    """
    from aggregator.sources.opml import export_opml as do_export  # noqa: PLC0415

    cfg = _load(args.config)
    sys.stdout.buffer.write(do_export(cfg, _learned_names(cfg)))
    return EXIT_OK


def demo(args: argparse.Namespace) -> int:
    """Try it without internet: the daemon over a few bundled example feeds.

    Serves the example feeds that come with it on 127.0.0.1, runs the daemon on them with a
    temporary feeds.yaml and archive, and prints the URL to subscribe to and the
    site's URL. Ctrl-C stops it and removes the temporary folder (unless --keep).

    Example: aggregator demo --port 8080
    """
    from aggregator.demo import run_demo  # noqa: PLC0415

    _setup_logging(args)
    try:
        return run_demo(args.host or "127.0.0.1", args.port or 8080, args.feeds, args.keep)
    except AggregatorError as e:
        raise _fail(e) from None


def init(args: argparse.Namespace) -> int:
    """Start a new aggregator in a folder: a commented feeds.yaml and the archive's site.

    Writes DIR/feeds.yaml (a few public news feeds, the common options explained in
    comments; `aggregator help feeds.yaml` has them all) and DIR/archive/ with the Jekyll
    site's files; refuses when DIR already has a
    feeds.yaml. Then: `aggregator add URL` for your feeds, `aggregator run` to start.

    Example: aggregator init ~/news && cd ~/news && aggregator run
    """
    from importlib import resources  # noqa: PLC0415

    from aggregator.archive import write_file_atomic  # noqa: PLC0415
    from aggregator.site import install_site  # noqa: PLC0415

    folder: Path = args.folder
    config = folder / "feeds.yaml"
    if config.exists():
        print(f"error: {config} exists already: `aggregator check -c {config}`", file=sys.stderr)
        return EXIT_CONFIG
    try:
        template = (resources.files("aggregator") / "help" / "feeds.yaml").read_bytes()
        write_file_atomic(config, template)
        install_site(folder / "archive")
    except OSError as e:
        print(f"error: cannot write into {folder}: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"wrote {config} and the site's files in {folder / 'archive'}\n"
        f"next: cd {folder} && aggregator add URL (your feeds), then aggregator run"
    )
    return EXIT_OK


def completion(args: argparse.Namespace) -> int:
    """Print the shell completion script for bash, zsh or fish.

    Commands, options and their values complete with no Python started; feed names (for
    poll, refresh, remove) are asked of `aggregator feeds --names`, with the -c given.

    Examples:
      aggregator completion bash > ~/.local/share/bash-completion/completions/aggregator
      aggregator completion zsh > "${fpath[1]}/_aggregator"
      aggregator completion fish > ~/.config/fish/completions/aggregator.fish
    """
    from aggregator.completion import script  # noqa: PLC0415

    sys.stdout.write(script(build_parser(), args.shell))
    return EXIT_OK


def feeds(args: argparse.Namespace) -> int:
    """Each feed's name and URL, a line each; with --names, the names and then the URLs,
    one a line (what shell completion offers)."""
    cfg = _load(args.config)
    learned = _learned_names(cfg)
    names = [f.name or learned.get(f.url) or "" for f in cfg.feeds]
    if args.names:
        print("\n".join([*dict.fromkeys(n for n in names if n), *(f.url for f in cfg.feeds)]))
    else:
        for name, source in zip(names, cfg.feeds, strict=True):
            print(f"{name}\t{source.url}")
    return EXIT_OK


HELP_TOPICS = {
    "feeds.yaml": "every key of feeds.yaml, with its default and an example",
    "exit-codes": "what each exit status means, for cron and scripts",
    "logging": "log formats: text, JSON with fields, journald",
}


def help_topic(args: argparse.Namespace) -> int:
    """Print a help topic: the feeds.yaml reference, exit codes, logging.

    With no TOPIC, lists them. Commands have their own: `aggregator COMMAND --help`.

    Example: aggregator help feeds.yaml | less
    """
    from importlib import resources  # noqa: PLC0415

    if args.topic is None:
        print("Topics (aggregator help TOPIC):")
        for name, summary in HELP_TOPICS.items():
            print(f"  {name:<12} {summary}")
        print("Commands: aggregator --help, aggregator COMMAND --help")
        return EXIT_OK
    page = resources.files("aggregator") / "help" / f"{args.topic}.md"
    sys.stdout.write(page.read_text(encoding="utf-8"))
    return EXIT_OK


# The parser ---------------------------------------------------------------------------

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run,
    "poll": poll,
    "refresh": refresh,
    "serve": serve,
    "status": status,
    "check": check,
    "reindex": reindex,
    "add": add,
    "remove": remove,
    "import-opml": import_opml,
    "export-opml": export_opml,
    "demo": demo,
    "init": init,
    "help": help_topic,
    "completion": completion,
    "feeds": feeds,
}
_HIDDEN = {"feeds"}
_LOGGING = {"run", "poll", "refresh", "serve", "reindex", "demo"}
_SERVING = {"run", "serve", "demo"}


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="aggregator",
        description=_SUMMARY,
        epilog="Run `aggregator COMMAND --help` for a command's options and an example.",
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"aggregator {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, handler in COMMANDS.items():
        doc = (handler.__doc__ or "").strip()
        summary, _, details = doc.partition("\n\n")
        listed = {} if name in _HIDDEN else {"help": summary.rstrip(".")}
        sub = commands.add_parser(
            name,
            description=summary + "\n\n" + _dedent(details),
            formatter_class=raw,
            **listed,  # type: ignore[arg-type]
        )
        if name not in ("demo", "init", "help", "completion"):
            sub.add_argument(
                "-c", "--config", type=Path, metavar="FILE",
                help="feeds.yaml to use (default: $AGGREGATOR_CONFIG, else ./feeds.yaml)",
            )  # fmt: skip
        if name in _SERVING:
            where = "127.0.0.1" if name == "demo" else "serve.host in feeds.yaml, 127.0.0.1"
            sub.add_argument("--host", help=f"address to serve on (default: {where})")
            where = "8080" if name == "demo" else "serve.port in feeds.yaml, 8080"
            sub.add_argument("--port", type=int, help=f"port to serve on (default: {where})")
        if name in _LOGGING:
            sub.add_argument("-v", "--verbose", action="store_true", help="log debug details")
            sub.add_argument("-q", "--quiet", action="store_true", help="log only errors")
            sub.add_argument(
                "--log-format", choices=["text", "json"], default="text",
                help="text lines, or one JSON object per line (default: text)",
            )  # fmt: skip
        if name == "add":
            sub.add_argument("url", metavar="URL", help="the feed, or a page that links to it")
            sub.add_argument("--name", help="name shown on its posts (default: the feed's title)")
            sub.add_argument("--tags", metavar="A,B", help="comma-separated tags for its posts")
            sub.add_argument("--interval", metavar="2h", help="time between polls (15m, 2h, 1d)")
            sub.add_argument(
                "--no-check", action="store_true", help="add without fetching it first"
            )
        elif name in ("poll", "refresh"):
            sub.add_argument(
                "feeds", metavar="FEED", nargs="+" if name == "refresh" else "*",
                help="a feed's URL or name" + ("" if name == "refresh" else " (default: all)"),
            )  # fmt: skip
        elif name == "status":
            sub.add_argument(
                "--json", action="store_true", help="one JSON object: the feeds and a summary"
            )
        elif name == "remove":
            sub.add_argument("feed", metavar="URL|NAME", help="the feed's URL or its name")
        elif name == "reindex":
            sub.add_argument(
                "--media", action="store_true",
                help="also remove the kept files (media/) that no post refers to",
            )  # fmt: skip
        elif name == "import-opml":
            sub.add_argument("file", type=Path, metavar="FILE", help="the OPML file")
        elif name == "init":
            sub.add_argument(
                "folder", metavar="DIR", type=Path, nargs="?", default=Path(),
                help="the folder to start in (default: the current one)",
            )  # fmt: skip
        elif name == "completion":
            sub.add_argument("shell", choices=["bash", "zsh", "fish"])
        elif name == "feeds":
            sub.add_argument("--names", action="store_true", help="names, then URLs")
        elif name == "help":
            sub.add_argument("topic", metavar="TOPIC", nargs="?", choices=list(HELP_TOPICS))
        elif name == "demo":
            sub.add_argument(
                "--feeds", type=Path, metavar="DIR",
                help="folder of example feeds (default: those that come with aggregator)",
            )  # fmt: skip
            sub.add_argument(
                "--keep", action="store_true", help="keep the temporary feeds.yaml and archive"
            )
        sub.set_defaults(handler=handler)
    return parser


def _dedent(text: str) -> str:
    return "\n".join(line.removeprefix("    ") for line in text.splitlines())


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        code = args.handler(args)
    except _Exit as e:
        code = e.code
    if argv is None:  # (the program itself, not a caller)
        _exit_at_once(code)
    sys.exit(code)


def _exit_at_once(code: int) -> None:
    """End the program without tearing the interpreter down, which frees every object of
    every module one by one: about 0.05 s, a tenth of a warm ``poll``. Output is flushed
    and exit handlers (logging's, multiprocessing's clean-up) run first. Not while another
    thread has work to finish, nor under a profiler or a tracer (which write their report
    after the program returns)."""
    import atexit  # noqa: PLC0415
    import os  # noqa: PLC0415

    if not _may_exit_at_once():
        return
    streams = [s for s in (sys.stdout, sys.stderr) if s is not None]  # (None: closed)
    try:
        for stream in streams:
            stream.flush()
    except OSError:  # (a closed pipe: the ordinary exit reports it)
        return
    atexit._run_exitfuncs()  # (what the ordinary exit runs)
    with contextlib.suppress(OSError):
        for stream in streams:
            stream.flush()
    os._exit(code)


def _may_exit_at_once() -> bool:
    import threading  # noqa: PLC0415

    return threading.active_count() == 1 and sys.gettrace() is None and sys.getprofile() is None
