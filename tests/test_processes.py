"""No process outlives the aggregator: after `kill -9` of `poll` or `run`, every process
it started (the parser host and the parse workers it forked) is gone; Ctrl-C and
SIGTERM, sent to the whole process group as a terminal or a service manager does, stop
everything with exit status 0 and no traceback. A pass that ends by itself leaves
nothing behind, and its output arrives whole."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.farm import Answer, Farm, Request, rss
from tests.test_scheduler import free_port


def session(sid: int) -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command line) of the live processes of session ``sid``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z" and int(fields[3]) == sid:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found[int(entry.name)] = (int(fields[1]), cmd.strip())
        except (OSError, ValueError, IndexError):
            continue
    return found


def wait_for(condition: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def slow_feeds(farm: Farm, count: int) -> list[str]:
    """Feeds that take a while to answer, each some 60 ms of a worker's CPU to parse (long
    texts to sanitize): once a round of them has come, the workers are busy for a while
    and each holds jobs."""
    text = "<p>" + "Some words <b>to clean</b> and <a href='/x'>a link</a>. " * 200 + "</p>"

    def answer(request: Request) -> Answer:
        time.sleep(0.4)
        n = request.path.strip("/")
        items = [
            {"title": f"{n} {i}", "link": f"https://{n}.example/{i}", "description": text}
            for i in range(40)
        ]
        return Answer(200, rss(items))

    paths = [f"/f{i}" for i in range(count)]
    for path in paths:
        farm.routes[path] = answer
    return paths


def config(tmp_path: Path, farm: Farm, paths: list[str], port: int) -> Path:
    lines = [f"link: http://127.0.0.1:{port}/", f"serve: {{port: {port}}}", "workers: 2"]
    lines += ["max_in_flight_per_host: 4", "feeds:"]
    lines += [f"  - url: {farm.url(p)}" for p in paths]
    path = tmp_path / "feeds.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, each in a session of its own; all killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        for pid in session(proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start(command: str, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aggregator", command, "-c", str(cfg)],
        stdout=log.with_suffix(".out").open("wb"),
        stderr=log.open("wb"),
        start_new_session=True,  # a session and a group of its own, like a command in a shell
    )


def workers(proc: subprocess.Popen[bytes]) -> list[int]:
    """The parse workers of ``proc``: the processes its parser host forked."""
    return [
        pid
        for pid, (parent, cmd) in session(proc.pid).items()
        if "serve_forks" in cmd and parent != proc.pid
    ]


def hosts(proc: subprocess.Popen[bytes]) -> list[int]:
    """The parser host of ``proc`` (a list: none, or one)."""
    return [
        pid
        for pid, (parent, cmd) in session(proc.pid).items()
        if "serve_forks" in cmd and parent == proc.pid
    ]


def workers_up(proc: subprocess.Popen[bytes]) -> bool:
    return len(workers(proc)) >= 1


def _cpu(pid: int) -> tuple[str, int]:
    """The state of process ``pid`` and its CPU time so far, in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[11]) + int(fields[12])


def running_worker(proc: subprocess.Popen[bytes]) -> int | None:
    """A parse worker of ``proc`` on a job: running now and 50 ms later, and busy
    meanwhile (an idle one sleeps; one just started or answering runs only briefly)."""
    for pid in workers(proc):
        with contextlib.suppress(OSError, ValueError, IndexError):
            state, before = _cpu(pid)
            if state != "R":
                continue
            time.sleep(0.05)
            state, after = _cpu(pid)
            if state == "R" and after - before >= 2:  # (of 5 at 100 ticks a second)
                return pid
    return None


@pytest.mark.slow
@pytest.mark.parametrize("command", ["poll", "run"])
def test_no_process_survives_kill_9(
    command: str, tmp_path: Path, farm: Farm, started: list[subprocess.Popen[bytes]]
) -> None:
    cfg = config(tmp_path, farm, slow_feeds(farm, 12), free_port())
    proc = start(command, cfg, tmp_path / "log")
    started.append(proc)
    wait_for(lambda: workers_up(proc), "the parse workers")
    assert len(hosts(proc)) == 1, session(proc.pid)  # (and the workers it forked)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not session(proc.pid), f"the processes of {command} to end", timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "sig"),
    [(c, s) for c in ("poll", "run") for s in (signal.SIGINT, signal.SIGTERM)],
)
def test_ctrl_c_and_sigterm_stop_everything_quietly(
    command: str,
    sig: signal.Signals,
    tmp_path: Path,
    farm: Farm,
    started: list[subprocess.Popen[bytes]],
) -> None:
    cfg = config(tmp_path, farm, slow_feeds(farm, 12), free_port())
    log = tmp_path / "log"
    proc = start(command, cfg, log)
    started.append(proc)
    wait_for(lambda: workers_up(proc), "the parse workers")
    os.killpg(proc.pid, sig)  # to the foreground process group, as a terminal does
    assert proc.wait(timeout=30) == 0
    wait_for(lambda: not session(proc.pid), "every process it started to end", timeout=10)
    stderr = log.read_text()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    if command == "poll":
        out = log.with_suffix(".out").read_text().splitlines()
        assert len(out) == 1 and out[0].startswith("stopped early: "), out
        assert not any("error" in line.lower() for line in stderr.splitlines()), stderr
    else:
        assert "stopped" in stderr


@pytest.mark.slow
def test_a_killed_worker_costs_its_feeds_only_and_the_pass_still_ends(
    tmp_path: Path, farm: Farm, started: list[subprocess.Popen[bytes]]
) -> None:
    """A worker killed mid-pass fails the feeds it held; the others go on, another takes
    its place, and the pass ends with every process it started."""
    cfg = config(tmp_path, farm, slow_feeds(farm, 40), free_port())
    log = tmp_path / "log"
    proc = start("poll", cfg, log)
    started.append(proc)
    wait_for(lambda: len(workers(proc)) >= 2, "two parse workers")
    deadline = time.monotonic() + 20
    while (busy := running_worker(proc)) is None:
        assert time.monotonic() < deadline, "no worker was seen on a job"
        time.sleep(0.01)
    os.kill(busy, signal.SIGKILL)  # the out-of-memory killer, say
    assert proc.wait(timeout=60) == 1  # the feeds it held failed; the others did not
    wait_for(lambda: not session(proc.pid), "every process it started to end", timeout=10)
    out = log.with_suffix(".out").read_text()
    assert "the parser process died on this document" in out
    summary = re.search(r"40 feeds: \d+ new items, (\d+) failed", out)
    assert summary is not None, out
    failed = int(summary[1])  # (the jobs it held: one parsed, one waiting)
    assert 1 <= failed <= 2, out + log.read_text()
    assert "Traceback" not in log.read_text()


def test_a_pass_that_ends_leaves_nothing_and_its_output_arrives_whole(
    tmp_path: Path, farm: Farm
) -> None:
    """The program ends without tearing its interpreter down (a tenth of a warm poll):
    its output through a pipe must still be flushed, its exit status kept, and the exit
    handlers run (nothing is left in the temporary folder)."""
    farm.routes["/a"] = Answer(
        200, rss([{"title": f"story {i}", "link": f"https://a.example/{i}"} for i in range(30)])
    )
    farm.routes["/bad"] = Answer(500)
    cfg = tmp_path / "feeds.yaml"
    cfg.write_text(f"workers: 1\nfeeds:\n  - url: {farm.url('/a')}\n  - url: {farm.url('/bad')}\n")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # (buffered)
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", "poll", "-c", str(cfg)],
        capture_output=True, text=True, timeout=60, env={**env, "TMPDIR": str(temporary)},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr  # (one feed failed)
    assert done.stdout.splitlines()[-1].startswith("2 feeds: 30 new items, 1 failed"), done.stdout
    assert "HTTP 500" in done.stdout
    assert list(temporary.iterdir()) == []


def test_the_quick_exit_keeps_a_closed_output_and_a_profilers_report(tmp_path: Path) -> None:
    """Started without a standard output (a supervisor's choice), a command ends with its
    own status; run under a profiler, the profiler still writes its report."""
    closed = subprocess.run(
        ["sh", "-c", 'exec "$0" -m aggregator help >&-', sys.executable],
        stderr=subprocess.PIPE, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (closed.returncode, closed.stderr) == (0, "")
    report = tmp_path / "poll.prof"
    profiled = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(report), "-m", "aggregator", "help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert profiled.returncode == 0, profiled.stderr
    assert report.stat().st_size > 0
