"""The command line. The only place that configures logging and maps errors to exit codes.

Exit codes: 0 success, 1 a feed or the archive failed, 2 invalid configuration.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from aggregator import __version__
from aggregator.errors import AggregatorError, ConfigError
from aggregator.models import Config

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

app = typer.Typer(
    name="aggregator",
    help="Poll RSS/Atom/JSON feeds, archive every new item as a post, publish a merged feed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c",
        help="feeds.yaml to use [default: $AGGREGATOR_CONFIG, else ./feeds.yaml]",
        show_default=False,
    ),
]  # fmt: skip
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Log only errors.")]


def _setup_logging(verbose: bool, quiet: bool, rich_console: object | None = None) -> None:
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    root = logging.getLogger()
    root.handlers.clear()
    if rich_console is not None:
        from rich.logging import RichHandler  # noqa: PLC0415

        handler: logging.Handler = RichHandler(console=rich_console, show_path=False)  # type: ignore[arg-type]
        level = level if verbose or quiet else logging.WARNING  # the progress bar tells the rest
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _load(config_path: Path | None) -> Config:
    """Load the config or exit 2 with every problem on stderr."""
    from aggregator.config import load_config, resolve_config_path  # noqa: PLC0415

    try:
        return load_config(resolve_config_path(config_path))
    except ConfigError as e:
        for problem in e.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None


def _fail(error: AggregatorError) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(EXIT_FAILED)


@app.command()
def check(config: ConfigOption = None) -> None:
    """Validate feeds.yaml and print every problem with its file, line and key.

    Exit status 0 if valid, 2 if not.

    Example: aggregator check -c ~/feeds/feeds.yaml
    """
    cfg = _load(config)
    typer.echo(f"{cfg.path}: OK, {len(cfg.feeds)} feeds, archive in {cfg.archive}")


@app.command()
def poll(
    config: ConfigOption = None, verbose: VerboseOption = False, quiet: QuietOption = False
) -> None:
    """Poll every feed once, archive new items, republish the merged feed, exit.

    Prints one line per feed (new N / unchanged / error: reason). Exit status 0 when
    every feed was fetched or unchanged, 1 when any failed, 2 on an invalid config.

    Example (cron, every 30 minutes): */30 * * * * cd ~/feeds && aggregator poll -q
    """
    cfg = _load(config)
    raise typer.Exit(_poll_once(cfg, verbose, quiet))


@app.command()
def run(
    config: ConfigOption = None, verbose: VerboseOption = False, quiet: QuietOption = False
) -> None:
    """Run the aggregator (for now: one complete pass, as `poll`).

    Example: aggregator run -c feeds.yaml
    """
    cfg = _load(config)
    raise typer.Exit(_poll_once(cfg, verbose, quiet))


def _poll_once(cfg: Config, verbose: bool, quiet: bool) -> int:
    from aggregator.pipeline import ERROR, NEW, FeedResult, run_pass  # noqa: PLC0415

    interactive = sys.stderr.isatty() and not quiet
    progress = None
    if interactive:
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import Progress  # noqa: PLC0415

        progress = Progress(console=Console(stderr=True), transient=True)
    _setup_logging(verbose, quiet, progress.console if progress else None)

    def advance(_: FeedResult) -> None:
        if progress is not None:
            progress.advance(task)

    try:
        if progress is not None:
            with progress:
                task = progress.add_task("polling", total=len(cfg.feeds))
                outcome = run_pass(cfg, on_result=advance)
        else:
            outcome = run_pass(cfg)
    except AggregatorError as e:
        raise _fail(e) from None
    for r in outcome.results:
        if r.outcome == ERROR:
            status = f"error: {r.error}"
        else:
            status = f"new {r.new}" if r.outcome == NEW else "unchanged"
        typer.echo(f"{r.name} <{r.url}>: {status}")
    typer.echo(
        f"{len(outcome.results)} feeds: {outcome.new} new items, {len(outcome.failed)} failed"
        + (f"; published {cfg.archive}" if outcome.published else "")
    )
    return EXIT_FAILED if outcome.failed else EXIT_OK


@app.command()
def reindex(
    config: ConfigOption = None, verbose: VerboseOption = False, quiet: QuietOption = False
) -> None:
    """Rebuild the item index (archive/.aggregator/state.sqlite3) from the posts.

    Use it after deleting or editing posts by hand, or if the index was lost: the
    posts are the truth. HTTP validators are kept. Republishes the merged feed.

    Example: aggregator reindex -c feeds.yaml
    """
    from aggregator.archive import Archive  # noqa: PLC0415
    from aggregator.pipeline import utc_now  # noqa: PLC0415
    from aggregator.publish import publish  # noqa: PLC0415

    cfg = _load(config)
    _setup_logging(verbose, quiet)
    try:
        with Archive(cfg.archive) as archive:
            archive.recover()
            names = {name: url for url, name in archive.state.feed_names().items()}
            names.update({f.name: f.url for f in cfg.feeds if f.name})
            count, problems = archive.reindex(names)
            publish(cfg, archive, utc_now())
    except AggregatorError as e:
        raise _fail(e) from None
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)
    typer.echo(f"indexed {count} posts from {cfg.archive}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aggregator {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Poll RSS/Atom/JSON feeds, archive every new item as a post, publish a merged feed."""


def main() -> None:
    app(prog_name="aggregator")
