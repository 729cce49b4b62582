"""The daemon as a user runs it: a real `aggregator run` process against a loopback farm,
with a real feed reader (lemon24/reader) as the subscriber."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import feedparser
import httpx
import pytest

from tests.conftest import debian_program
from tests.farm import Answer, Farm, rss
from tests.test_scheduler import free_port

ATOM = "{http://www.w3.org/2005/Atom}"


def items(prefix: str, n: int) -> list[dict[str, str]]:
    return [
        {
            "title": f"{prefix} story {i}",
            "link": f"https://{prefix}.example/{i}",
            "pubDate": f"Wed, 0{i + 1} May 2024 10:00:00 GMT",
        }
        for i in range(n)
    ]


def config_text(farm: Farm, port: int, feeds: list[str]) -> str:
    lines = [
        "title: Daemon test",
        f"link: http://127.0.0.1:{port}/",
        f"serve: {{host: 127.0.0.1, port: {port}}}",
        "feeds:",
    ]
    for name in feeds:
        lines += [f"  - url: {farm.url('/' + name)}", f"    name: Source {name.upper()}"]
    return "\n".join(lines) + "\n"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(self.base + path, timeout=5)
        except httpx.HTTPError:
            return None

    def atom_titles(self) -> set[str]:
        response = self.get("/atom.xml")
        if response is None or response.status_code != 200:
            return set()
        root = ET.fromstring(response.content)
        return {e.findtext(f"{ATOM}title") or "" for e in root.iter(f"{ATOM}entry")}

    def logged(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def daemon(tmp_path: Path, farm: Farm) -> Iterator[Running]:
    for name, n in (("a", 2), ("b", 2), ("c", 1)):
        farm.routes[f"/{name}"] = Answer(
            200, rss(items(name, n), title=f"Feed {name}"), {"ETag": f'"{name}"'}
        )
    port = free_port()
    config = tmp_path / "feeds.yaml"
    config.write_text(config_text(farm, port, ["a"]))
    running = Running(config, port, tmp_path / "daemon.log")
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()


def aggregator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aggregator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_daemon_lifecycle(daemon: Running, farm: Farm, tmp_path: Path) -> None:
    a = {"a story 0", "a story 1"}
    wait_for(lambda: daemon.atom_titles() == a, "the first feed in /atom.xml")

    # One process per archive: a second daemon is refused, naming the pid.
    refused = aggregator("run", "--port", str(free_port()), "-c", str(daemon.config))
    assert refused.returncode == 1, refused.stderr
    assert f"another aggregator (pid {daemon.proc.pid}) is using the archive" in refused.stderr
    status = aggregator("status", "-c", str(daemon.config))
    assert status.returncode == 0, status.stderr
    assert (
        "Source A" in status.stdout and farm.url("/a") in status.stdout and "new" in status.stdout
    )

    # A feed added to feeds.yaml is polled at once.
    daemon.config.write_text(config_text(farm, daemon.port, ["a", "b"]))
    wait_for(lambda: daemon.atom_titles() == a | {"b story 0", "b story 1"}, "the added feed", 15)

    # A broken edit is logged with its line and changes nothing; the feed keeps being served.
    daemon.config.write_text(config_text(farm, daemon.port, ["a", "b"]) + "  - url: [broken\n")
    wait_for(
        lambda: "is invalid; still running on its last valid version" in daemon.logged(),
        "the error",
        15,
    )
    assert f"{daemon.config}:10: invalid YAML" in daemon.logged()
    served = daemon.get("/atom.xml")
    assert served is not None and served.status_code == 200
    assert len(daemon.atom_titles()) == 4

    # The next valid edit is applied: b removed (its posts stay), c added.
    daemon.config.write_text(config_text(farm, daemon.port, ["a", "c"]))
    wait_for(lambda: "c story 0" in daemon.atom_titles(), "the fixed config", 15)
    assert len(daemon.atom_titles()) == 5
    assert "feed removed: url=" + farm.url("/b") in daemon.logged()

    # SIGHUP reloads at once, even when the file did not change.
    reloads = daemon.logged().count("reloaded ")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.logged().count("reloaded ") == reloads + 1, "the SIGHUP reload", 10)

    # A tag added to feeds.yaml gets its feed at once, with no new item to wait for.
    assert daemon.get("/tags/birds/atom.xml").status_code == 404  # type: ignore[union-attr]
    daemon.config.write_text(
        config_text(farm, daemon.port, ["a", "c"]).replace(
            "Source A\n", "Source A\n    tags: [birds]\n"
        )
    )
    wait_for(
        lambda: (r := daemon.get("/tags/birds/atom.xml")) is not None and r.status_code == 200,
        "the tag feed",
        15,
    )
    birds = ET.fromstring(daemon.get("/tags/birds/atom.xml").content)  # type: ignore[union-attr]
    assert {e.findtext(f"{ATOM}title") for e in birds.iter(f"{ATOM}entry")} == a

    health = daemon.get("/healthz")
    assert health is not None and health.json()["status"] == "ok"
    metrics = daemon.get("/metrics")
    assert metrics is not None and 'aggregator_polls_total{outcome="new"} 3.0' in metrics.text

    # SIGTERM: a clean exit.
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=30) == 0
    assert "stopped" in daemon.logged()
    assert "Traceback" not in daemon.logged()


@pytest.mark.slow
def test_a_feed_reader_subscribes_to_the_merged_feed(
    daemon: Running, farm: Farm, tmp_path: Path
) -> None:
    from reader import make_reader

    wait_for(lambda: len(daemon.atom_titles()) == 2, "the first feed")
    daemon.config.write_text(config_text(farm, daemon.port, ["a", "b", "c"]))  # b, c polled at once
    expected = {
        f"{p} story {i}": (f"https://{p}.example/{i}", f"Source {p.upper()}")
        for p, n in (("a", 2), ("b", 2), ("c", 1))
        for i in range(n)
    }
    wait_for(lambda: daemon.atom_titles() == set(expected), "all items in /atom.xml", 30)

    reader = make_reader(str(tmp_path / "reader.sqlite"))
    feeds = [daemon.base + "/atom.xml", daemon.base + "/feed.xml"]
    for url in feeds:
        reader.add_feed(url)
    first = dict(reader.update_feeds_iter())
    assert all(not isinstance(v, Exception) and v is not None for v in first.values()), first
    for url in feeds:
        entries = list(reader.get_entries(feed=url))
        seen = {e.title: (e.link, e.authors_str) for e in entries}
        assert seen == expected, url
    second = dict(reader.update_feeds_iter(scheduled=False))
    assert second == dict.fromkeys(feeds), second  # None: the server said 304 Not Modified
    log = daemon.logged()
    assert '"GET /atom.xml HTTP/1.1" 304' in log and '"GET /feed.xml HTTP/1.1" 304' in log
    reader.close()
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(timeout=30) == 0


def test_status_before_any_poll(tmp_path: Path) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text("feeds:\n  - url: https://ex.com/feed\n")
    result = aggregator("status", "-c", str(config))
    assert result.returncode == 1
    assert "run `aggregator poll` first" in result.stderr


def test_json_logs(tmp_path: Path, farm: Farm) -> None:
    import json

    farm.routes["/a"] = Answer(200, rss(items("a", 1)))
    config = tmp_path / "feeds.yaml"
    config.write_text(f"feeds:\n  - url: {farm.url('/a')}\n")
    result = aggregator("poll", "-c", str(config), "--log-format", "json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    polls = [entry for entry in lines if entry["message"].startswith("poll feed=")]
    assert len(polls) == 1 and polls[0]["level"] == "info" and "new=1" in polls[0]["message"]
    assert {"time", "level", "logger", "message"} <= set(polls[0])


def test_stale_lock_does_not_block(tmp_path: Path, farm: Farm) -> None:
    farm.routes["/a"] = Answer(200, rss(items("a", 1)))
    config = tmp_path / "feeds.yaml"
    config.write_text(f"feeds:\n  - url: {farm.url('/a')}\n")
    lock = tmp_path / "archive" / ".aggregator" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("999999\n")  # left behind by a process that was killed
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    result = aggregator("poll", "-c", str(config))
    assert result.returncode == 0, result.stderr


def test_serve_command_serves_an_archive_without_polling(tmp_path: Path, farm: Farm) -> None:
    farm.routes["/a"] = Answer(200, rss(items("a", 2)))
    port = free_port()
    config = tmp_path / "feeds.yaml"
    config.write_text(f"link: http://127.0.0.1:{port}/\nfeeds:\n  - url: {farm.url('/a')}\n")
    assert aggregator("poll", "-c", str(config)).returncode == 0
    polled = len(farm.requests)
    proc = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "serve", "-c", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def fetched() -> httpx.Response | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/feed.xml", timeout=5)
            except httpx.HTTPError:
                return None

        wait_for(lambda: fetched() is not None, "the server")
        response = fetched()
        assert response is not None and response.status_code == 200
        assert b"a story 1" in response.content
        home = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert "a story 0" in home.text
        assert len(farm.requests) == polled  # serving never polls
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_a_podcast_client_downloads_an_episode_from_a_tag_feed(tmp_path: Path, farm: Farm) -> None:
    """gPodder subscribes to the daemon's per-tag feed of a podcast and downloads the
    episode's audio, byte for byte, from where the source published it."""
    gpo = debian_program("gpo", "gpodder")
    audio = bytes(range(256)) * 40 + b"ID3-end"
    farm.routes["/media/ep1.mp3"] = Answer(200, audio, {"Content-Type": "audio/mpeg"})
    enclosure = farm.url("/media/ep1.mp3")
    show = (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0" '
        'xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"><channel>'
        "<title>Loopback Show</title><link>http://127.0.0.1/</link><description>d</description>"
        '<item><title>Episode One</title><guid isPermaLink="false">loop-ep-1</guid>'
        "<pubDate>Wed, 01 May 2024 10:00:00 GMT</pubDate><description>Notes</description>"
        f'<enclosure url="{enclosure}" length="{len(audio)}" type="audio/mpeg"/>'
        "<itunes:duration>00:01:05</itunes:duration></item></channel></rss>"
    ).encode()
    farm.routes["/show"] = Answer(200, show, {"Content-Type": "application/rss+xml"})
    port = free_port()
    config = tmp_path / "feeds.yaml"
    config.write_text(
        f"title: Pods\nlink: http://127.0.0.1:{port}/\n"
        f"serve: {{host: 127.0.0.1, port: {port}}}\n"
        "tags:\n  podcasts:\n    podcast: {author: Me, email: me@example.org, "
        "image: 'http://127.0.0.1/cover.png', category: Technology, explicit: false, "
        "language: en}\n"
        f"feeds:\n  - url: {farm.url('/show')}\n    tags: [podcasts]\n"
    )
    running = Running(config, port, tmp_path / "daemon.log")
    home, downloads = tmp_path / "gpodder", tmp_path / "downloads"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env |= {"GPODDER_HOME": str(home), "GPODDER_DOWNLOAD_DIR": str(downloads),
            "GPODDER_WRITE_LOGS": "no", "GPODDER_DISABLE_EXTENSIONS": "1",
            "HOME": str(tmp_path), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}  # fmt: skip

    def client(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [gpo, "-q", *args], env=env, capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr  # (gpo says 0 for most failures: see below)
        assert "not found" not in done.stderr and "ERROR" not in done.stderr, done.stderr
        return done

    try:
        tagged = "/tags/podcasts/feed.xml"
        wait_for(lambda: (r := running.get(tagged)) is not None and b"loop-ep-1" in r.content,
                 "the tag's podcast feed")  # fmt: skip
        subscribed = client("subscribe", running.base + tagged)
        assert "Successfully added" in subscribed.stdout
        assert "1 episodes downloaded." in client("download").stdout
        files = [p for p in downloads.rglob("*") if p.is_file()]
        assert [p.name for p in files] == ["ep1.mp3"], files  # no .partial left
        assert files[0].read_bytes() == audio
        assert farm.requests_to("/media/ep1.mp3"), "fetched from where the source put it"
        assert "▉" in client("episodes").stdout  # gPodder counts it downloaded
    finally:
        running.proc.send_signal(signal.SIGINT)
        assert running.proc.wait(timeout=30) == 0


def test_media_feeds_come_out_complete_in_a_feed_reader(tmp_path: Path, farm: Farm) -> None:
    """A podcast, a YouTube channel and a news feed with pictures go through
    `aggregator run`; a feed reader subscribed to the merged feed gets every episode's
    audio, the item's own people, and (in the feed) each picture."""
    from reader import make_reader

    data = Path(__file__).resolve().parent / "data" / "media"
    names = ("podcast.xml", "youtube.xml", "news-media.xml")
    for name in names:
        farm.routes["/" + name] = Answer(200, (data / name).read_bytes())
    port = free_port()
    config = tmp_path / "feeds.yaml"

    def write(feeds: tuple[str, ...]) -> None:
        config.write_text(
            f"title: Media\nlink: http://127.0.0.1:{port}/\n"
            f"serve: {{host: 127.0.0.1, port: {port}}}\n"
            "feeds:\n" + "".join(f"  - url: {farm.url('/' + n)}\n" for n in feeds)
        )

    write(names[:1])
    running = Running(config, port, tmp_path / "daemon.log")
    try:
        wait_for(lambda: len(running.atom_titles()) == 3, "the podcast in /atom.xml")
        write(names)  # feeds added to a running daemon are polled at once
        wait_for(lambda: len(running.atom_titles()) == 8, "the 8 items in /atom.xml", 30)
        reader = make_reader(str(tmp_path / "reader.sqlite"))
        for path in ("/atom.xml", "/feed.xml"):
            reader.add_feed(running.base + path)
        updated = dict(reader.update_feeds_iter())
        assert all(not isinstance(v, Exception) for v in updated.values()), updated
        for path in ("/atom.xml", "/feed.xml"):
            entries = {e.title: e for e in reader.get_entries(feed=running.base + path)}
            assert len(entries) == 8, path
            episode = entries["Ep. 42: Worms Are Underrated"]
            assert [(x.href, x.type, x.length) for x in episode.enclosures] == [
                ("http://127.0.0.1:8000/podcast/media/ep042.mp3", "audio/mpeg", 48213760)
            ], path
            assert "Maya Okonkwo" in (episode.authors_str or ""), path
            news = entries["Council approves library extension"]
            # The item's own people, not its source's name (reader shows one of two).
            assert news.authors_str in ("Ravi Shah", "Ellen Moore"), (path, news.authors_str)
        reader.close()
        parsed = feedparser.parse(httpx.get(running.base + "/feed.xml", timeout=10).content)
        pictures = {e.title: e.get("media_thumbnail", [{}])[0].get("url") for e in parsed.entries}
        assert pictures["Restoring a 1950s Bench Vise (Full Process)"] == (
            "https://i3.ytimg.com/vi/dQ9aB3xYz01/hqdefault.jpg"
        )
        assert pictures["New footbridge opens after two-year delay"] == (
            "http://news.example.org/img/2024/03/footbridge-240.jpg"
        )
    finally:
        running.proc.send_signal(signal.SIGINT)
        assert running.proc.wait(timeout=30) == 0
