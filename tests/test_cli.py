from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.farm import Answer, Farm, rss

COMMANDS = [
    "check",
    "poll",
    "run",
    "serve",
    "status",
    "reindex",
    "add",
    "remove",
    "import-opml",
    "export-opml",
    "demo",
    "refresh",
    "init",
    "help",
    "completion",
]


def aggregator(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aggregator", *args],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command: str | None) -> None:
    run = aggregator(*([command] if command else []), "--help")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: aggregator")
    if command is None:
        for name in COMMANDS:
            assert name in run.stdout
    else:
        assert "Example" in run.stdout


def test_version() -> None:
    from aggregator import __version__

    assert aggregator("--version").stdout.strip() == f"aggregator {__version__}"


def test_poll_prints_a_line_per_feed_and_exits_by_outcome(tmp_path: Path, farm: Farm) -> None:
    farm.routes["/ok"] = Answer(
        200, rss([{"title": "t", "link": "https://ex.com/1"}], title="Good"), {"ETag": '"1"'}
    )
    farm.routes["/bad"] = Answer(404, b"gone")
    config = write_config(
        tmp_path, [{"url": farm.url("/ok")}, {"url": farm.url("/bad"), "name": "Bad"}]
    )

    run = aggregator("poll", "-c", str(config))
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"Good <{farm.url('/ok')}>: new 1"
    assert lines[1] == f"Bad <{farm.url('/bad')}>: error: HTTP 404 Not Found"
    assert lines[2].startswith("2 feeds: 1 new items, 1 failed; published")
    assert "url=" + farm.url("/bad") in run.stderr  # logged with fixed fields
    assert "Traceback" not in run.stderr

    farm.routes["/bad"] = Answer(200, rss([], title="Fixed"))
    run = aggregator("poll", env={"AGGREGATOR_CONFIG": str(config)}, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[:2] == [
        f"Good <{farm.url('/ok')}>: unchanged",
        f"Bad <{farm.url('/bad')}>: unchanged",
    ]
    for name in ("feed.xml", "atom.xml", "feed.json"):
        assert (tmp_path / "archive" / name).is_file()


def test_reindex_command(tmp_path: Path, farm: Farm) -> None:
    farm.routes["/ok"] = Answer(
        200, rss([{"title": f"t{i}", "link": f"https://ex.com/{i}"} for i in range(3)])
    )
    config = write_config(tmp_path, [{"url": farm.url("/ok"), "name": "Ok"}])
    assert aggregator("poll", "-c", str(config)).returncode == 0
    state = tmp_path / "archive" / ".aggregator" / "state.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    run = aggregator("reindex", "-c", str(config))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith("indexed 3 posts")
    again = aggregator("poll", "-c", str(config))
    assert "Ok <" in again.stdout and ": unchanged" in again.stdout  # nothing re-archived
    assert len(list((tmp_path / "archive" / "_posts").rglob("*.md"))) == 3
