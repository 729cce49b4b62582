"""The index is an index: lost, emptied or damaged, it is rebuilt from the posts and never
a reason to archive an item twice; a read-only archive serves every read-only command and
endpoint. Run through the real command line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import frontmatter
import httpx
import pytest

from aggregator.archive import state_path
from tests.farm import Answer, Farm, rss
from tests.test_daemon import aggregator
from tests.test_scheduler import free_port


def items(prefix: str, n: int) -> list[dict[str, str]]:
    return [
        {"title": f"{prefix} story {i}", "link": f"https://{prefix}.example/{i}"} for i in range(n)
    ]


def setup(tmp_path: Path, farm: Farm) -> Path:
    farm.routes["/a"] = Answer(200, rss(items("a", 3)))
    farm.routes["/b"] = Answer(200, rss(items("b", 2), title="Feed B"))
    config = tmp_path / "feeds.yaml"
    config.write_text(
        f"feeds:\n  - url: {farm.url('/a')}\n    name: Feed A\n    tags: [x]\n"
        f"  - url: {farm.url('/b')}\n    tags: [y]\n"
    )
    result = aggregator("poll", "-c", str(config))
    assert result.returncode == 0, result.stderr
    return config


def sources(archive: Path) -> list[str]:
    posts = sorted((archive / "_posts").rglob("*.md"))
    return sorted(str(frontmatter.loads(p.read_text()).metadata["from"]) for p in posts)


def published(archive: Path) -> bytes:
    return json.dumps(
        [(i["id"], i["title"]) for i in json.loads((archive / "feed.json").read_text())["items"]]
    ).encode()


def damage_header(db: Path) -> None:
    with db.open("r+b") as f:
        f.write(b"this is not a database at all!!")


def damage_pages(db: Path) -> None:
    """Garbage over the pages after the first: the header still reads as SQLite."""
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(4096)
        f.write(os.urandom(size - 4096))


def lose(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def empty(db: Path) -> None:
    lose(db)
    db.write_bytes(b"")


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (lose, "lists no posts"),
        (empty, "lists no posts"),
        (damage_header, "was damaged"),
    ],
)
def test_a_lost_or_damaged_index_never_duplicates_a_post(
    tmp_path: Path, farm: Farm, fault: Callable[[Path], None], said: str
) -> None:
    config = setup(tmp_path, farm)
    archive = tmp_path / "archive"
    before, feed_before = sources(archive), published(archive)
    assert len(before) == 5
    fault(state_path(archive))
    farm.routes["/a"] = Answer(200, rss(items("a", 4)))  # one new item meanwhile
    result = aggregator("poll", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert said in result.stderr and "rebuil" in result.stderr
    after = sources(archive)
    assert len(after) == len(set(after)) == 6  # the new item, and nothing twice
    assert set(before) < set(after)
    assert published(archive) != feed_before and "a story 3" in published(archive).decode()
    # b is named by its own title, which the lost index knew: its tag feed keeps its items.
    tagged = json.loads((archive / "tags" / "y" / "feed.json").read_text())["items"]
    assert sorted(i["title"] for i in tagged) == ["b story 0", "b story 1"]
    if fault is damage_header:
        kept = list((archive / ".aggregator").glob("state.sqlite3.damaged-*"))
        assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not a database")
    # The rebuilt index knows every post: one more pass archives nothing.
    again = aggregator("poll", "-c", str(config))
    assert again.returncode == 0 and "0 new items" in again.stdout
    assert sources(archive) == after


def test_poll_rebuilds_an_index_damaged_inside(tmp_path: Path, farm: Farm) -> None:
    """Damage past the file's header is found by the first query that reads it: the pass
    stops using the index, and it is rebuilt before the pass ends."""
    config = setup(tmp_path, farm)
    archive = tmp_path / "archive"
    damage_pages(state_path(archive))
    farm.routes["/a"] = Answer(200, rss(items("a", 4)))
    result = aggregator("poll", "-c", str(config))
    assert "Traceback" not in result.stderr
    assert "was damaged" in result.stderr and "rebuilt it from the posts" in result.stderr
    again = aggregator("poll", "-c", str(config))
    assert again.returncode == 0, again.stderr
    after = sources(archive)
    assert len(after) == len(set(after)) == 6


def test_reindex_rebuilds_an_index_damaged_inside(tmp_path: Path, farm: Farm) -> None:
    config = setup(tmp_path, farm)
    archive = tmp_path / "archive"
    feed_before = published(archive)
    damage_pages(state_path(archive))
    result = aggregator("reindex", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "was damaged" in result.stderr and "indexed 5 posts" in result.stdout
    assert published(archive) == feed_before
    again = aggregator("poll", "-c", str(config))
    assert again.returncode == 0 and "0 new items" in again.stdout, again.stderr


def test_commands_that_only_read_say_how_to_rebuild_a_lost_index(
    tmp_path: Path, farm: Farm
) -> None:
    config = setup(tmp_path, farm)
    lose(state_path(tmp_path / "archive"))
    status = aggregator("status", "-c", str(config))
    assert status.returncode == 1 and "Traceback" not in status.stderr
    assert "`aggregator reindex` rebuilds it" in status.stderr
    assert "run `aggregator poll` first" not in status.stderr


def read_only(folder: Path) -> list[str]:
    """A command prefix under which ``folder`` cannot be written. Root ignores file
    permissions, so for root it is a read-only bind mount in a mount namespace of the
    command's own; anyone else gets the folder's write permissions taken away."""
    if os.geteuid() != 0:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        return []
    prefix = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"']
    probe = subprocess.run([*prefix, str(folder), "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.decode().strip()}")
    return [*prefix, str(folder)]


def test_a_read_only_archive_serves_every_reading_command_and_endpoint(
    tmp_path: Path, farm: Farm
) -> None:
    config = setup(tmp_path, farm)
    archive = tmp_path / "archive"
    # The daemon was killed: its last changes are still in the -wal file, beside a -shm.
    killed = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA wal_autocheckpoint=0')\n"
        "db.execute(\"UPDATE feeds SET name = 'Feed B, renamed' WHERE name = 'Feed B'\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", killed, str(state_path(archive))], check=True)
    assert state_path(archive).with_name("state.sqlite3-wal").stat().st_size > 0
    ro = read_only(archive)

    def command(*args: str) -> list[str]:
        return [*ro, sys.executable, "-m", "aggregator", *args]

    try:
        writable = subprocess.run(
            [*ro, "sh", "-c", f"touch {archive}/probe"], capture_output=True, check=False
        )
        assert writable.returncode != 0  # the fault is real
        status = subprocess.run(
            command("status", "-c", str(config)), capture_output=True, text=True, check=False
        )
        assert status.returncode == 0, status.stderr
        assert "Feed A" in status.stdout and "Feed B, renamed" in status.stdout
        opml = subprocess.run(
            command("export-opml", "-c", str(config)), capture_output=True, text=True, check=False
        )
        assert opml.returncode == 0 and "Feed B" in opml.stdout, opml.stderr
        port = free_port()
        server = subprocess.Popen(
            command("serve", "-c", str(config), "--port", str(port)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    health = httpx.get(base + "/healthz", timeout=5)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline and server.poll() is None
                    time.sleep(0.1)
            assert health.status_code == 200 and health.json()["feeds"] == 2
            home = httpx.get(base + "/", timeout=5)
            assert home.status_code == 200 and "a story 2" in home.text
            assert httpx.get(base + "/opml.xml", timeout=5).status_code == 200
            assert httpx.get(base + "/atom.xml", timeout=5).status_code == 200
        finally:
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=30) == 0
            assert server.stderr is not None
            assert b"Traceback" not in server.stderr.read()
    finally:
        for path in [archive, *archive.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def schema_1(db: Path) -> None:
    old = sqlite3.connect(db)
    old.executescript(
        """
        CREATE TABLE feeds (url TEXT PRIMARY KEY, name TEXT, etag TEXT, last_modified TEXT,
            last_poll TEXT, last_outcome TEXT, last_error TEXT, http_status INTEGER,
            error_count INTEGER NOT NULL DEFAULT 0, next_poll TEXT, moved_to TEXT,
            gone_settings TEXT);
        CREATE TABLE items (key TEXT PRIMARY KEY, feed_url TEXT, title TEXT NOT NULL,
            published TEXT, archived TEXT NOT NULL, sort_date TEXT NOT NULL,
            path TEXT NOT NULL UNIQUE, pending INTEGER NOT NULL DEFAULT 0);
        INSERT INTO feeds (url, name, etag, last_outcome) VALUES ('https://ex.com/f', 'Ex', '"e"', 'new');
        INSERT INTO items VALUES ('https://ex.com/1', 'https://ex.com/f', 'One', NULL,
            '2024-05-01T12:00:00.000Z', '2024-05-01T12:00:00.000Z', '_posts/x.md', 0);
        PRAGMA user_version = 1;
        """
    )
    old.close()


def test_an_index_of_the_previous_schema_is_upgraded_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aggregator.state
    from aggregator.errors import ArchiveError
    from aggregator.state import State

    db = tmp_path / "state.sqlite3"
    schema_1(db)
    reader = State(db, readonly=True)  # `status` before any upgrade
    try:
        statuses = reader.statuses()
        assert statuses["https://ex.com/f"].name == "Ex" and not reader.publish_needed()
        assert [r.link for r in reader.newest(10)] == ["https://ex.com/1"]  # keys were links
    finally:
        reader.close()
    # An upgrade that fails half way changes nothing.
    broken = (*aggregator.state._SCHEMA, "CREATE TABLE feeds (oops)")
    monkeypatch.setattr(aggregator.state, "_SCHEMA", broken)
    with pytest.raises(ArchiveError):
        State(db)
    monkeypatch.undo()
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA user_version").fetchone() == (1,)
    assert "author" not in {r[1] for r in check.execute("PRAGMA table_info(items)")}
    check.close()
    state = State(db)
    try:
        assert [(r.title, r.key, r.link) for r in state.newest(10)] == [
            ("One", "//ex.com/1", "https://ex.com/1")  # re-keyed; the link kept
        ]
        status = state.status("https://ex.com/f")
        assert status is not None and status.validators.etag == '"e"' and status.name == "Ex"
        assert not state.publish_needed()
        assert state._read("PRAGMA user_version") == [(aggregator.state.SCHEMA_VERSION,)]
    finally:
        state.close()


def test_the_page_counts_follow_every_change_of_the_index(tmp_path: Path, farm: Farm) -> None:
    """The river's page counts come from per-feed counters kept by triggers: they must
    equal a count of the items after archiving, a rebuild, and on an older index."""
    from aggregator.archive import Archive

    config = setup(tmp_path, farm)
    assert aggregator("poll", "-c", str(config)).returncode == 0
    a, b = farm.url("/a"), farm.url("/b")

    def counts() -> tuple[int, int, int, int]:
        with Archive(tmp_path / "archive") as archive:
            state = archive.state
            truth = dict(state._read("SELECT feed_url, count(*) FROM items GROUP BY feed_url"))
            assert state.count() == sum(truth.values())
            return state.count(), state.count([a]), state.count([b]), truth[a] + truth[b]

    assert counts() == (5, 3, 2, 5)
    farm.routes["/a"] = Answer(200, rss(items("a", 5)))
    assert aggregator("poll", "-c", str(config)).returncode == 0
    assert counts() == (7, 5, 2, 7)
    assert aggregator("reindex", "-c", str(config)).returncode == 0  # rows deleted, made again
    assert counts() == (7, 5, 2, 7)
    # An index from before the counters: counted once when it is opened.
    db = sqlite3.connect(state_path(tmp_path / "archive"))
    db.executescript(
        "DROP TRIGGER feed_posts_insert; DROP TRIGGER feed_posts_delete;"
        " DROP TRIGGER feed_posts_update; DROP TABLE feed_posts;"
        " DELETE FROM items WHERE title = 'a story 4';"
    )
    db.close()
    assert counts() == (6, 4, 2, 6)
