from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.farm import Farm

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def farm() -> Iterator[Farm]:
    with Farm().running() as f:
        yield f


class StepClock:
    """A clock that starts at ``start`` and moves one second per call."""

    def __init__(self, start: datetime = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


def debian_program(command: str, package: str) -> str:
    """The path of ``command``, which a test drives; skipped when it is missing, except
    in CI, where ``.ci/run`` installs its Debian ``package``."""
    path = shutil.which(command)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{command} is not installed, but .ci/run installs it ({package})")
        pytest.skip(f"{command} is not installed (Debian: apt-get install {package})")
    return path


def write_config(tmp_path: Path, feeds: list[dict[str, object]], **top: object) -> Path:
    """Write a feeds.yaml into ``tmp_path`` and return its path."""
    import yaml

    data = {"title": "Test merged feed", "link": "http://127.0.0.1:8080/", **top, "feeds": feeds}
    path = tmp_path / "feeds.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


# No process left behind ------------------------------------------------------------------
# Every process a test starts inherits this marker in its environment; when the session
# ends, none may be left (this process's parser host, which ends with it, is stopped
# first). Orphans re-parented to PID 1 are found too: they keep their environment.

_MARK = "AGGREGATOR_TEST_SESSION"


def marked_processes(mark: str) -> dict[int, str]:
    """pid → command line of every process (but this one) whose environment has ``mark``."""
    found = {}
    needle = f"{_MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found[int(entry.name)] = cmd.strip()
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


# The temporary files of the processes the tests start. Killed on purpose, a process
# leaves its own behind (a killed demo's folder, for one): they are kept here, short of
# path (a socket's path is limited), and removed with it at the end.
_TMPDIR = "AGGREGATOR_TEST_TMPDIR"


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ[_MARK] = uuid.uuid4().hex
    tempfile.tempdir = tempfile.gettempdir()  # (this process's own stay where they were)
    os.environ[_TMPDIR] = os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="aggregator-test-")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    try:
        _no_process_left(session)
    finally:
        shutil.rmtree(os.environ[_TMPDIR], ignore_errors=True)


def _no_process_left(session: pytest.Session) -> None:
    from aggregator.host import stop_host

    stop_host()  # (this process's own, which would end with it)
    mark = os.environ.get(_MARK, "")
    if not mark or not Path("/proc/self/environ").exists():
        return
    deadline = time.monotonic() + 10
    while (left := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        lines = "\n".join(f"  {pid}: {cmd[:200]}" for pid, cmd in sorted(left.items()))
        print(f"\nprocesses left behind by the test suite (now killed):\n{lines}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
