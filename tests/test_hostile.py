"""Hostile feeds and faults: nothing crashes, nothing hangs, nothing leaks, nothing is lost."""

from __future__ import annotations

import hashlib
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import frontmatter
import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.posts import EXTRA_KEYS
from tests.farm import Answer, Farm, Request, rss
from tests.feedcheck import assert_inert_html, check_outputs
from tests.hostile import HOSTILE_NAMES, Case, build
from tests.test_daemon import wait_for
from tests.test_scheduler import free_port

SECRET = "TOP-SECRET-LOCAL-FILE-7f3a9c"
DEADLINE = 30  # the per-fetch deadline of fetch.FetchSettings


def hostile_config(tmp_path: Path, cases: list[Case], **top: object) -> Path:
    feeds: list[dict[str, object]] = []
    for case in cases:
        feed: dict[str, object] = {"url": case.url}
        if case.name.startswith("names-"):
            feed["tags"] = [HOSTILE_NAMES[int(case.name.split("-")[1])] or "empty"]
        feeds.append(feed)
    config = {
        "title": "Hostile farm",
        "link": "http://127.0.0.1:8080/",
        "max_in_flight": 64,
        "max_in_flight_per_host": 64,  # every hostile route lives on one loopback host
        **top,
        "feeds": feeds,
    }
    path = tmp_path / "feeds.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def tree(root: Path, skip: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and skip not in p.parents
    }


def assert_archive_is_sound(archive: Path, secret: str) -> int:
    """Every post parses and is inert; every output is valid; the secret is nowhere."""
    posts = sorted((archive / "_posts").rglob("*.md"))
    for post in posts:
        text = post.read_text(encoding="utf-8")
        meta = frontmatter.loads(text).metadata
        keys = list(meta)
        assert keys[:7] == ["layout", "title", "date", "author", "from", "tags", "categories"], post
        # Then only the extra keys of the format, in their order, each when present.
        assert keys[7:] == [k for k in EXTRA_KEYS if k in keys[7:]], post
        assert meta == yaml.safe_load(text.split("---\n")[1])
        body = text.split("\n------\n", 1)[1]
        assert_inert_html(body)
        link = re.search(r"^\[.*\]\((.*)\)$", text, re.M)
        assert link and link.group(1).startswith(("http://", "https://")), post
    for path in archive.rglob("*"):
        if path.is_file() and path.suffix != ".sqlite3":
            assert secret.encode() not in path.read_bytes(), path
    check_outputs(archive)
    return len(posts)


@pytest.mark.slow
def test_hostile_farm_through_poll(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    with Farm().running() as farm:
        cases = build(farm, secret)
        config = hostile_config(tmp_path, cases)
        before = tree(tmp_path, tmp_path / "archive")
        started = time.monotonic()
        run, memory = run_measured(["poll", "-c", str(config)], timeout=240)
        elapsed = time.monotonic() - started
        out, err = run.stdout, run.stderr
    print(
        f"\nhostile pass: {len(cases)} feeds, {elapsed:.1f}s, peak memory {memory.peak:.0f} MiB"
        f" (PSS of all {len(memory.processes)} processes; their own peaks {memory.processes} MiB"
        f" add up to {memory.bound:.0f})"
    )

    assert run.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert elapsed < DEADLINE + 60, "every feed ends within its deadline"
    assert memory.peak < 300

    lines = {
        line.split(" <", 1)[1].split(">: ", 1)[0]: line for line in out.splitlines() if " <" in line
    }
    for case in cases:
        line = lines[case.url]
        status_text = line.split(">: ", 1)[1]
        assert "\n" not in status_text
        if case.expect == "error":
            assert status_text.startswith("error: "), line
            assert case.reason in status_text, (case.name, line)
            assert f"url={case.url}" in err, case.name  # the log line names it too
        elif case.expect == "ok":
            assert status_text.startswith(("new", "unchanged")), line

    assert tree(tmp_path, tmp_path / "archive") == before, "nothing written outside archive/"
    assert not Path("/tmp/escape-attempt").exists()
    assert SECRET not in out and SECRET not in err
    count = assert_archive_is_sound(tmp_path / "archive", SECRET)
    assert count > 1000

    status = subprocess.run(
        [sys.executable, "-m", "aggregator", "status", "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.returncode == 1  # feeds are failing, and status says so
    for case in cases:
        if case.expect == "error":
            assert case.url in status.stdout


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants (the parser host and its workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _memory_kib(pid: int, field: str, source: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Memory:
    """Memory of a process tree (the aggregator, its parser host and workers), MiB."""

    peak: float  # the largest total seen, counting shared pages once (PSS), sampled every 20 ms
    bound: float  # the sum of every process's own peak RSS: an upper bound, never reached at once
    processes: list[int]


def run_measured(
    args: list[str], timeout: float
) -> tuple[subprocess.CompletedProcess[str], Memory]:
    """Run the CLI and measure the memory of its whole process tree while it runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aggregator", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    output: dict[str, str] = {}

    def drain(name: str, stream: Any) -> None:
        output[name] = stream.read()

    readers = [
        threading.Thread(target=drain, args=("out", proc.stdout), daemon=True),
        threading.Thread(target=drain, args=("err", proc.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    peaks: dict[int, int] = {}
    together = 0
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        now = 0
        for pid in _tree(proc.pid):
            peaks[pid] = max(peaks.get(pid, 0), _memory_kib(pid, "VmHWM"))
            now += _memory_kib(pid, "Pss", "smaps_rollup")
        together = max(together, now)
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        raise AssertionError(f"aggregator {' '.join(args)} did not finish within {timeout} s")
    for reader in readers:
        reader.join()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, output["out"], output["err"])
    memory = Memory(
        together / 1024, sum(peaks.values()) / 1024, sorted(v // 1024 for v in peaks.values())
    )
    return result, memory


@pytest.mark.slow
def test_the_daemon_stays_responsive_and_reports_hostile_feeds(tmp_path: Path) -> None:
    """The timing cases under the daemon: stalled fetches never stall the daemon."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    slow = {
        "never-answers",
        "trickle-headers",
        "drip-body",
        "endless-body",
        "gzip-bomb",
        "good-1",
        "status-500",
    }
    with Farm().running() as farm:
        cases = [c for c in build(farm, secret) if c.name in slow]
        port = free_port()
        config = hostile_config(tmp_path, cases, serve={"host": "127.0.0.1", "port": port})
        log = tmp_path / "daemon.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL, stderr=log.open("wb"),
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"

            def health() -> dict[str, object] | None:
                try:
                    return httpx.get(base + "/healthz", timeout=2).json()  # type: ignore[no-any-return]
                except httpx.HTTPError:
                    return None

            wait_for(lambda: health() is not None, "the daemon to serve", 20)
            # While the slow feeds stall, the daemon answers at once, every time.
            started = time.monotonic()
            while time.monotonic() - started < 12:
                t0 = time.monotonic()
                page = httpx.get(base + "/", timeout=2)
                assert page.status_code == 200 and time.monotonic() - t0 < 1.0
                time.sleep(0.5)
            failing = {c.url for c in cases if c.expect == "error"}

            def reported() -> bool:
                report = health()
                urls = {f["url"] for f in report["feeds_in_error"]} if report else set()  # type: ignore[index, union-attr]
                return urls == failing

            wait_for(reported, "every hostile feed in /healthz", DEADLINE + 30)
            report = health()
            assert report is not None and report["status"] == "degraded"
            for entry in report["feeds_in_error"]:  # type: ignore[union-attr]
                reason = entry["error"]
                case = next(c for c in cases if c.url == entry["url"])
                assert case.reason in reason and "\n" not in reason, entry
            assert "Traceback" not in log.read_text()
            # The good feed (last of seven, so polled about 51 s after start) gets through.
            wait_for(
                lambda: "Good 1.0" in httpx.get(base + "/feed.xml", timeout=5).text,
                "the good feed",
                40,
            )
            assert proc.poll() is None, "the daemon is still running"
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
    assert code == 0
    assert_archive_is_sound(tmp_path / "archive", SECRET)


# Crash safety ---------------------------------------------------------------------------


class GrowingFarm:
    """``feeds`` feeds whose item lists only grow; ETag support, so unchanged means 304."""

    def __init__(self, farm: Farm, feeds: int, rng: random.Random) -> None:
        self.farm, self.rng = farm, rng
        self.counts = [rng.randint(5, 15) for _ in range(feeds)]
        for i in range(feeds):
            farm.routes[f"/feed/{i}"] = self._handler(i)

    def items(self, i: int) -> list[dict[str, str]]:
        out = []
        for j in range(self.counts[i]):
            # Every 7th item is a syndicated copy of the neighbour feed's item j (same
            # story, tracking noise on the link), and every 11th repeats itself.
            origin = i - 1 if j % 7 == 0 and i > 0 else i
            link = f"https://news{origin}.example/{j}" + ("?utm_source=x" if origin != i else "")
            day = 1 + (origin * 31 + j) % 27
            story = {
                "title": f"Feed {origin} item {j}",
                "description": f"<p>body {origin}/{j}</p>",
                "pubDate": f"{day:02d} Mar 2024 {j % 24:02d}:{origin % 60:02d}:00 GMT",
            }
            out.append({**story, "link": link})
            if j % 11 == 0:
                out.append({**story, "link": link + "#again"})
        return out

    def _handler(self, i: int):  # type: ignore[no-untyped-def]
        def answer(request: Request) -> Answer:
            body = rss(self.items(i), title=f"Source {i}")
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            if request.headers.get("if-none-match") == etag:
                return Answer(304, headers={"ETag": etag})
            return Answer(200, body, {"Content-Type": "application/rss+xml", "ETag": etag})

        return answer

    def grow(self, feeds: int) -> None:
        for i in self.rng.sample(range(len(self.counts)), feeds):
            self.counts[i] += self.rng.randint(1, 3)

    def config(self, root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        feeds = [{"url": self.farm.url(f"/feed/{i}")} for i in range(len(self.counts))]
        config = {
            "title": "Crash farm",
            "link": "http://127.0.0.1:8080/",
            "max_items": 500,
            "max_in_flight": 32,
            "max_in_flight_per_host": 32,
            "feeds": feeds,
        }
        path = root / "feeds.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


def index(archive: Path) -> dict[str, str]:
    """key → post path, as the state database says."""
    from aggregator.archive import Archive

    with Archive(archive) as arc:
        assert arc.state.pending() == []
        return {item.key: item.path for item in arc.state.items()}


def pending_rows(archive: Path) -> int:
    """Posts a killed run had recorded as being written (read without recovering them)."""
    import sqlite3

    db = archive / ".aggregator" / "state.sqlite3"
    if not db.exists():
        return 0
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM items WHERE pending = 1").fetchone()[0])


def published_items(archive: Path) -> dict[str, list[tuple[object, ...]]]:
    """What each published feed says of each story, in order (build times left out).

    Which feed a syndicated story is credited to depends on which feed delivered it
    first, which a kill can change; so the credit (author, source, the link's tracking
    noise) is left out and the story is named by its dedupe key.
    """
    import json
    from xml.etree import ElementTree as ET

    from aggregator.posts import key_for
    from tests.feedcheck import NS

    a = "{http://www.w3.org/2005/Atom}"
    return {
        "rss": [
            (
                key_for(i.findtext("guid") or ""),
                i.findtext("title"),
                i.findtext("pubDate"),
                i.findtext("content:encoded", namespaces=NS),
            )
            for i in ET.parse(archive / "feed.xml").getroot().iter("item")
        ],
        "atom": [
            (
                key_for(e.findtext(f"{a}id") or ""),
                e.findtext(f"{a}title"),
                e.findtext(f"{a}published"),
                e.findtext(f"{a}content"),
            )
            for e in ET.parse(archive / "atom.xml").getroot().iter(f"{a}entry")
        ],
        "json": [
            (key_for(i["id"]), i["title"], i["date_published"], i["content_html"])
            for i in json.loads((archive / "feed.json").read_text())["items"]
        ],
    }


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    from aggregator.posts import key_for

    rng = random.Random(20261124)
    kills = runs = mid_write = 0
    with Farm().running() as farm:
        growing = GrowingFarm(farm, 220, rng)
        crashed = growing.config(tmp_path / "crashed")
        while kills < 24:
            proc = subprocess.Popen(
                [sys.executable, "-m", "aggregator", "poll", "-q", "-c", str(crashed)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(rng.uniform(0.5, 4.5))
            runs += 1
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            mid_write += pending_rows(tmp_path / "crashed" / "archive") > 0
            growing.grow(150)  # new items keep arriving between runs
        final = subprocess.run(
            [sys.executable, "-m", "aggregator", "poll", "-q", "-c", str(crashed)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert final.returncode == 0, final.stderr
        clean = growing.config(tmp_path / "clean")
        single = subprocess.run(
            [sys.executable, "-m", "aggregator", "poll", "-q", "-c", str(clean)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert single.returncode == 0, single.stderr
        expected = {
            key_for(item["link"]) for i in range(len(growing.counts)) for item in growing.items(i)
        }

    archive = tmp_path / "crashed" / "archive"
    posts = sorted((archive / "_posts").rglob("*.md"))
    sources = [frontmatter.loads(p.read_text()).metadata["from"] for p in posts]
    keys = [key_for(str(s)) for s in sources]
    lost = expected - set(keys)
    duplicates = len(keys) - len(set(keys))
    leftovers = [p for p in archive.rglob("*.tmp")] + [p for p in archive.rglob(".*.md*")]
    print(
        f"\ncrash test: {runs} runs, {kills} kills ({mid_write} between recording and finishing a write),"
        f" {len(expected)} items, lost {len(lost)}, duplicates {duplicates}"
    )
    assert kills >= 20
    assert not lost and duplicates == 0 and set(keys) == expected
    assert not leftovers, leftovers
    state = index(archive)
    assert state == {
        key_for(str(s)): p.relative_to(archive).as_posix()
        for s, p in zip(sources, posts, strict=True)
    }
    assert published_items(archive) == published_items(tmp_path / "clean" / "archive")

    # Losing the index: reindex rebuilds the same dedupe decisions.
    for suffix in ("", "-wal", "-shm"):
        Path(f"{archive}/.aggregator/state.sqlite3{suffix}").unlink(missing_ok=True)
    rebuilt = subprocess.run(
        [sys.executable, "-m", "aggregator", "reindex", "-c", str(tmp_path / "crashed" / "feeds.yaml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert index(archive) == state


# Hostile config --------------------------------------------------------------------------

HOSTILE_CONFIGS = {
    "invalid YAML": (
        "feeds:\n  - url: https://a.example/\n    tags: [unclosed\n",
        ":4: invalid YAML",
    ),
    "tab indentation": ("feeds:\n\t- url: https://a.example/\n", ":2: invalid YAML"),
    "wrong type": (
        "max_items: many\nfeeds: []\n",
        ":1: max_items: must be an integer, got str 'many'",
    ),
    "wrong nested type": (
        "feeds:\n  - url: https://a.example/\n    tags: news\n",
        ":3: feeds[0].tags: must be a list, got str 'news'",
    ),
    "unknown key": ("feeds: []\nfeed_list: []\n", ":2: feed_list: unknown key"),
    "unknown feed key": (
        "feeds:\n  - url: https://a.example/\n    nmae: A\n",
        ":3: feeds[0].nmae: unknown key",
    ),
    "duplicate URLs": (
        "feeds:\n  - url: https://a.example/f\n  - url: https://A.EXAMPLE/f\n",
        ":3: feeds[1].url: duplicate feed URL",
    ),
    "non-http URL": (
        "feeds:\n  - url: file:///etc/passwd\n",
        ":2: feeds[0].url: must be an http:// or https:// URL",
    ),
    "empty file": ("", ": file is empty"),
    "10 MB file": ("feeds: []\n# " + "x" * (10 * 1024 * 1024) + "\n", ": file is 10,485,773 bytes"),
    "alias bomb": (
        "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n"
        "d: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d]\nfeeds: []\n",
        ":1: a: unknown key",
    ),
    "binary": (
        "feeds: []\n\x00\x01\x02feeds",
        ":2: invalid YAML: ",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_CONFIGS))
def test_hostile_config_is_refused_with_file_and_line(tmp_path: Path, case: str) -> None:
    text, expected = HOSTILE_CONFIGS[case]
    config = tmp_path / "feeds.yaml"
    config.write_text(text, encoding="utf-8")
    for command in ("check", "poll"):
        result = subprocess.run(
            [sys.executable, "-m", "aggregator", command, "-c", str(config)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2, (case, result.stderr)
        assert f"error: {config}{expected}" in result.stderr, (case, result.stderr)
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feeds.yaml"], "nothing written"


# Fuzzing parse + process -----------------------------------------------------------------


def _corpus_seeds() -> list[bytes]:
    import tarfile

    from tests.conftest import DATA

    seeds = []
    with tarfile.open(DATA / "feedparser" / "corpus.tar.gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and (f := tar.extractfile(member)):
                seeds.append(f.read())
    return seeds


SEEDS = _corpus_seeds()


@st.composite
def mutated_feeds(draw: st.DrawFn) -> bytes:
    """A corpus feed, then a few mutations: cut, splice, flip, insert markup."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["cut", "splice", "flip", "insert"]))
        at = draw(st.integers(0, len(data)))
        if kind == "cut":
            del data[at : at + draw(st.integers(1, 200))]
        elif kind == "splice":
            other = draw(st.sampled_from(SEEDS))
            start = draw(st.integers(0, len(other)))
            data[at:at] = other[start : start + draw(st.integers(1, 300))]
        elif kind == "flip" and data:
            data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        else:
            data[at:at] = draw(st.sampled_from(FUZZ_SNIPPETS))
    return bytes(data)


FUZZ_SNIPPETS = [
    b"<script>alert(1)</script>",
    b"&lt;img src=x onerror=alert(1)&gt;",
    b"<![CDATA[<iframe src=x>]]>",
    b"<item><title>t</title><link>javascript:alert(1)</link></item>",
    b"\x00",
    b"\xff\xfe",
    b"&#0;",
    b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
    b"&e;",
    b"<entry>",
    b"</channel>",
    b"<title>---\n: # *&!%@</title>",
    b'<a href="data:text/html,x">',
    b"\xe2\x80\xae",
    b"{{ x }}{% y %}",
]


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=mutated_feeds())
def test_fuzz_parse_and_process(body: bytes) -> None:
    from datetime import UTC, datetime

    from aggregator.errors import ParseError
    from aggregator.parsers import parse_feed
    from aggregator.process import make_post

    try:
        feed = parse_feed(body, "http://fuzz.example/feed.xml", "application/xml")
    except ParseError as e:
        assert "\n" not in e.reason
        return
    for entry in feed.entries[:50]:
        post = make_post(
            entry, feed_url=feed.url, name=feed.title or "fuzz", tags=("t",),
            archived=datetime(2024, 1, 1, tzinfo=UTC), site_link="http://fuzz.example/",
        )  # fmt: skip
        meta = frontmatter.loads(post.text).metadata
        assert meta["title"] == post.title and meta["from"]
        assert re.fullmatch(r"_posts/2024/01/2024-01-01-[a-z0-9-]{1,60}-[0-9a-f]{8}\.md", post.path)
        assert_inert_html(post.text.split("\n------\n", 1)[1])
        assert "root:x:0:0" not in post.text
