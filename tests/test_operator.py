"""What an operator relies on: cron stays silent when all is well, exit codes and JSON a
script can act on, logs a machine (or journald) can read, one feed polled on demand,
also through a running daemon."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.farm import Answer, Farm, rss
from tests.test_cli import aggregator
from tests.test_daemon import Running, items, wait_for
from tests.test_scheduler import free_port


def two_feeds(tmp_path: Path, farm: Farm) -> Path:
    farm.routes["/ok"] = Answer(200, rss(items("ok", 2), title="Good"), {"ETag": '"1"'})
    farm.routes["/bad"] = Answer(500, b"oops")
    return write_config(
        tmp_path, [{"url": farm.url("/ok")}, {"url": farm.url("/bad"), "name": "Flaky"}]
    )


def test_cron_is_silent_unless_something_failed(tmp_path: Path, farm: Farm) -> None:
    config = two_feeds(tmp_path, farm)
    run = aggregator("poll", "-q", "-c", str(config))
    assert run.returncode == 1
    # only the failure and the total: cron mails them
    assert run.stdout.splitlines() == [
        f"Flaky <{farm.url('/bad')}>: error: HTTP 500 Internal Server Error",
        "2 feeds: 2 new items, 1 failed; published " + str(tmp_path / "archive"),
    ]
    farm.routes["/bad"] = Answer(200, rss(items("bad", 1), title="Flaky"))
    run = aggregator("poll", "-q", "-c", str(config))
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


def test_poll_names_feeds_by_url_or_name_and_refuses_unknown_ones(
    tmp_path: Path, farm: Farm
) -> None:
    config = two_feeds(tmp_path, farm)
    run = aggregator("poll", "good", "-c", str(config))  # the name learned... not yet: none
    assert run.returncode == 2 and "no feed 'good'" in run.stderr
    run = aggregator("poll", farm.url("/ok"), "-c", str(config))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == f"Good <{farm.url('/ok')}>: new 2"
    assert len(farm.requests_to("/bad")) == 0
    run = aggregator("poll", "FLAKY", "good", "-c", str(config))  # any case; learned name
    assert run.returncode == 1
    assert [line.split(" <")[0] for line in run.stdout.splitlines()[:2]] == ["Good", "Flaky"]
    assert len(farm.requests_to("/bad")) == 1


def test_status_is_json_or_plain_and_exits_1_while_a_feed_fails(tmp_path: Path, farm: Farm) -> None:
    config = two_feeds(tmp_path, farm)
    aggregator("poll", "-c", str(config))
    run = aggregator("status", "--json", "-c", str(config))
    assert run.returncode == 1
    report = json.loads(run.stdout)
    assert report["status"] == "degraded" and report["troubled"] == 1
    good, flaky = report["feeds"]
    assert (good["name"], good["health"], good["new_24h"], good["error"]) == ("Good", "ok", 2, None)
    assert flaky["health"] == "failing" and flaky["http_status"] == 500
    assert flaky["error"] == "HTTP 500 Internal Server Error" and flaky["errors_in_a_row"] == 1
    # Piped, it is plain columns: whole URLs, no frame, no padding at line ends.
    run = aggregator("status", "-c", str(config))
    lines = run.stdout.splitlines()
    assert run.returncode == 1 and len(lines) == 3
    assert lines[0].split() == ["name", "url", "last", "poll", "(UTC)", "outcome", "new", "24h",
                                "errors", "next", "poll", "(UTC)"]  # fmt: skip
    assert farm.url("/bad") in lines[2] and "error: HTTP 500" in lines[2]
    assert all(line == line.rstrip() and "│" not in line for line in lines)
    assert "1 of 2 feeds need attention" in run.stderr
    farm.routes["/bad"] = Answer(200, rss([], title="Flaky"))
    aggregator("poll", "-c", str(config))
    run = aggregator("status", "--json", "-c", str(config))
    assert run.returncode == 0 and json.loads(run.stdout)["status"] == "ok"
    farm.routes["/bad"] = Answer(410, b"gone for good")  # gone: it needs the user too
    aggregator("poll", "-c", str(config))
    run = aggregator("status", "--json", "-c", str(config))
    assert run.returncode == 1 and json.loads(run.stdout)["feeds"][1]["health"] == "gone"


def test_check_lists_every_problem_at_once(tmp_path: Path) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text(
        "title: T\nlink: http://x/\ninterval: banana\nfeeds:\n"
        "  - url: https://a.example/feed\n"
        "    auth: {username: u, password_env: AGGREGATOR_TEST_UNSET}\n"
        "  - url: https://a.example/feed\n"
        "  - url: ftp://b.example/\n"
    )
    run = aggregator("check", "-c", str(config))  # (AGGREGATOR_TEST_UNSET is not set)
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4, run.stderr
    assert "interval" in errors[0] and "banana" in errors[0]
    assert "feeds[1].url: duplicate feed URL, already at feeds[0]" in errors[1]
    assert "feeds[2].url" in errors[2] and "ftp://" in errors[2]
    assert "AGGREGATOR_TEST_UNSET" in errors[3]
    assert run.stderr.splitlines()[-1] == "4 problems"


def test_json_logs_carry_fields_under_one_namespace(tmp_path: Path, farm: Farm) -> None:
    config = two_feeds(tmp_path, farm)
    run = aggregator("poll", "-v", "--log-format", "json", "-c", str(config))
    lines = [json.loads(line) for line in run.stderr.splitlines()]
    assert lines and all(line["logger"].startswith("aggregator") for line in lines)
    assert any(line["logger"] == "aggregator.fetch" for line in lines)  # httpx's, renamed
    polls = {line["url"]: line for line in lines if "outcome" in line}
    ok, bad = polls[farm.url("/ok")], polls[farm.url("/bad")]
    assert (ok["feed"], ok["status"], ok["outcome"], ok["new"]) == ("Good", 200, "new", 2)
    assert ok["level"] == "info" and isinstance(ok["elapsed"], float)
    assert (bad["feed"], bad["status"], bad["outcome"], bad["new"]) == ("Flaky", 500, "error", 0)
    assert bad["level"] == "warning" and bad["reason"] == "HTTP 500 Internal Server Error"


def under_journald(tmp_path: Path, *args: str) -> list[str]:
    """The lines ``aggregator ARGS`` writes to a stderr that systemd's JOURNAL_STREAM
    names, as journald would get them."""
    import subprocess
    import sys

    log = tmp_path / "journal"
    with log.open("w") as stream:
        st = os.fstat(stream.fileno())
        subprocess.run(
            [sys.executable, "-m", "aggregator", *args],
            stdout=subprocess.DEVNULL, stderr=stream, timeout=120, check=False,
            env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
        )  # fmt: skip
    return log.read_text().splitlines()


def test_under_systemd_lines_carry_journald_priorities(tmp_path: Path, farm: Farm) -> None:
    config = two_feeds(tmp_path, farm)
    lines = under_journald(tmp_path, "poll", "-c", str(config))
    assert any(line.startswith("<4>aggregator.pipeline: poll feed=Flaky") for line in lines)
    assert any(line.startswith("<6>aggregator.pipeline: poll feed=Good") for line in lines)
    assert all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    # JSON lines too (the shipped systemd unit asks for JSON): journald takes the prefix off.
    lines = under_journald(tmp_path, "poll", "--log-format", "json", "-c", str(config))
    flaky = [line for line in lines if '"feed": "Flaky"' in line]
    assert flaky and flaky[0].startswith("<4>{")
    assert json.loads(flaky[0][3:])["outcome"] == "error"
    # Another stream (a terminal, a file, a pipe) keeps times and level names.
    run = aggregator("poll", "-c", str(config), env={"JOURNAL_STREAM": "1:2"})
    assert " WARNING aggregator.pipeline: poll feed=Flaky" in run.stderr


ARCHIVE = "archive-of-a-user-who-likes-long-and-descriptive-folder-names-for-everything"


@pytest.mark.slow
def test_poll_and_refresh_ask_the_running_daemon(tmp_path: Path, farm: Farm) -> None:
    farm.routes["/a"] = Answer(200, rss(items("a", 1), title="Feed a"), {"ETag": '"a"'})
    farm.routes["/b"] = Answer(503, b"down for now")
    port = free_port()
    config = write_config(
        tmp_path,
        [{"url": farm.url("/a"), "name": "Source A"}, {"url": farm.url("/b"), "name": "Late"}],
        serve={"host": "127.0.0.1", "port": port},
        link=f"http://127.0.0.1:{port}/",
        archive=ARCHIVE,  # too long a path for a Unix socket's address, as it happens
    )
    assert len(str(tmp_path / ARCHIVE / ".aggregator" / "control.sock")) > 108
    daemon = Running(config, port, tmp_path / "daemon.log")
    try:
        wait_for(lambda: daemon.atom_titles() == {"a story 0"}, "the first feed in /atom.xml")
        # The second is planned later in the start-up spread: asked now, it fails...
        run = aggregator("refresh", "late", "-c", str(config))
        assert run.returncode == 1
        assert (
            run.stdout.splitlines()[0]
            == f"Late <{farm.url('/b')}>: error: HTTP 503 Service Unavailable"
        )
        # ... it is fixed: its next poll would be minutes away; asked again, it is read now.
        farm.routes["/b"] = Answer(200, rss(items("b", 2), title="Feed b"))
        run = aggregator("refresh", "late", "-c", str(config))
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == [
            f"Late <{farm.url('/b')}>: new 2",
            "1 feeds: 2 new items, 0 failed; polled by the running daemon (it publishes them)",
        ]
        wait_for(lambda: len(daemon.atom_titles()) == 3, "the refreshed feed in /atom.xml")
        # Only the daemon's user may ask: the socket is private.
        socket_file = tmp_path / ARCHIVE / ".aggregator" / "control.sock"
        assert socket_file.is_socket() and socket_file.stat().st_mode & 0o777 == 0o600
        # `poll` of every feed goes through the daemon too (cron beside a daemon), -q quiet.
        hits = len(farm.requests_to("/a"))
        run = aggregator("poll", "-q", "-c", str(config))
        assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
        assert len(farm.requests_to("/a")) == hits + 1
        farm.routes["/a"] = Answer(500, b"broken")
        run = aggregator("poll", "-c", str(config))
        assert run.returncode == 1
        assert f"Source A <{farm.url('/a')}>: error: HTTP 500" in run.stdout
        for nobody in ("nobody", "", " "):  # (an empty name, as from an unset variable)
            run = aggregator("refresh", nobody, "-c", str(config))
            assert run.returncode == 2 and f"no feed {nobody!r}" in run.stderr
        assert "polling 1 feeds now, as asked on the control socket" in daemon.logged()
        # The daemon itself refuses what is not a request, and feeds it does not poll.
        from aggregator import control

        stranger = "http://127.0.0.1:9/not-in-feeds.xml"
        answers = control.ask_daemon(tmp_path / ARCHIVE, [stranger])
        assert answers is not None
        assert list(answers) == [{"refused": f"not in feeds.yaml: {stranger}"}]
        with socket.socket(socket.AF_UNIX) as raw, control._address(socket_file) as where:
            raw.connect(where)
            raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert b'"refused": "not a request' in raw.recv(4096)
    finally:
        daemon.proc.terminate()
        daemon.proc.wait(timeout=30)
    assert daemon.proc.returncode == 0
    # Stopped, it leaves no socket; refresh then polls by itself.
    assert not (tmp_path / ARCHIVE / ".aggregator" / "control.sock").exists()
    farm.routes["/a"] = Answer(200, rss(items("a", 2), title="Feed a"))
    run = aggregator("refresh", "Source A", "-c", str(config))
    assert run.returncode == 0 and "Source A" in run.stdout and "new 1" in run.stdout

    # A daemon that cannot make its socket still runs; `poll` then says what is going on.
    socket_file.mkdir()
    daemon = Running(config, port, tmp_path / "daemon-2.log")
    try:
        wait_for(lambda: "running pid=" in daemon.logged(), "the second daemon")
        assert "no control socket at" in daemon.logged()
        run = aggregator("poll", "-c", str(config))
        assert run.returncode == 1 and f"(pid {daemon.proc.pid})" in run.stderr
        assert "it takes no poll requests" in run.stderr
    finally:
        daemon.proc.terminate()
        daemon.proc.wait(timeout=30)


def on_a_terminal(args: list[str], stream: str) -> tuple[int, str, str]:
    """Run aggregator with its ``stream`` (stdout or stderr) on a pseudo-terminal: its
    status, what the terminal showed, and what the other stream said."""
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "aggregator", *args],
            stdout=follower if stream == "stdout" else subprocess.PIPE,
            stderr=follower if stream == "stderr" else subprocess.PIPE,
            timeout=120, check=False,
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"},
        )  # fmt: skip
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # (EIO: the terminal's other end is closed and drained)
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    other = run.stdout if stream == "stderr" else run.stderr
    return run.returncode, shown.decode(errors="replace"), other.decode(errors="replace")


def test_on_a_terminal_a_progress_bar_and_coloured_problems(tmp_path: Path, farm: Farm) -> None:
    import time

    config = two_feeds(tmp_path, farm)

    def slow(request: object) -> Answer:
        time.sleep(1.0)  # (the bar is drawn ten times a second)
        return Answer(500, b"oops")

    farm.routes["/bad"] = slow
    code, screen, results = on_a_terminal(["poll", "-c", str(config)], "stderr")
    assert code == 1
    # the bar: feeds done of all, items archived so far, the rate, the time so far, and
    # the feed waited for
    assert "2/2" in screen and "2 new" in screen and "feeds/s" in screen, screen
    assert "1/2" in screen and "0:00:0" in screen and "Flaky" in screen.split("1/2")[1]
    # the failing feed's warning, in yellow, and only the level's colour on it
    assert "\x1b[33mpoll feed=Flaky" in screen, screen
    message = screen.split("\x1b[33mpoll feed=Flaky")[1].split("\x1b[0m")[0]
    assert "HTTP 500" in message and "\x1b[" not in message  # no value coloured apart
    assert "\x1b[" not in results  # the results themselves are plain text
    # status: a table, the failing feed in red, its URL whole
    code, screen, _ = on_a_terminal(["status", "-c", str(config)], "stdout")
    assert code == 1
    red = [line for line in screen.splitlines() if "\x1b[31m" in line]
    assert red and "Flaky" in red[0] and farm.url("/bad") in red[0], screen
    assert "│" in screen  # (a table's frame on a terminal only)


def test_log_lines_one_namespace_and_colours_only_where_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io
    import logging

    from aggregator.logs import Namespace, TextFormatter, wants_colour

    renamed = {}
    for name in ("uvicorn.error", "uvicorn.access", "httpx", "apscheduler.scheduler", "ssl"):
        record = logging.LogRecord(name, logging.ERROR, __file__, 1, "m", (), None)
        Namespace().filter(record)
        renamed[name] = record.name
    assert renamed == {
        "uvicorn.error": "aggregator.http",
        "uvicorn.access": "aggregator.http.access",
        "httpx": "aggregator.fetch",
        "apscheduler.scheduler": "aggregator.scheduler",
        "ssl": "aggregator.ssl",
    }
    error = logging.LogRecord("aggregator.x", logging.ERROR, __file__, 1, "Not a feed", (), None)
    info = logging.LogRecord("aggregator.x", logging.INFO, __file__, 1, "Not a feed", (), None)
    line = TextFormatter(colour=True).format(error)
    assert line.startswith("\x1b[31m") and line.endswith("\x1b[0m") and line.count("\x1b[") == 2
    assert "\x1b[" not in TextFormatter(colour=True).format(info)
    assert "\x1b[" not in TextFormatter(colour=False).format(error)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert wants_colour(Terminal()) and not wants_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_colour(Terminal())


def test_feeds_names_for_completion(tmp_path: Path, farm: Farm) -> None:
    config = two_feeds(tmp_path, farm)
    aggregator("poll", "-c", str(config))  # Good's name is learned from its feed
    run = aggregator("feeds", "--names", "-c", str(config))
    assert run.stdout.splitlines() == ["Good", "Flaky", farm.url("/ok"), farm.url("/bad")]
    run = aggregator("feeds", "-c", str(config))
    assert run.stdout.splitlines() == [f"Good\t{farm.url('/ok')}", f"Flaky\t{farm.url('/bad')}"]
    listed = [line.split()[0] for line in aggregator("--help").stdout.splitlines()
              if line.startswith("    ") and not line.startswith("     ")]  # fmt: skip
    assert "poll" in listed and "feeds" not in listed  # (for completion: not listed)
