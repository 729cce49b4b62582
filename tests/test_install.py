"""Installed with pip into a fresh virtual environment, away from the repository, every
command works: init, help, demo, add, run, completion. (The dependencies come from the
test environment through a .pth file: no network is needed.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.farm import Answer, Farm, rss
from tests.test_daemon import items, wait_for
from tests.test_scheduler import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin/ folder of a virtual environment where aggregator was pip-installed from a
    copy of the repository's tracked files (as a wheel would hold them)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # the dependencies, pip and setuptools: those of the test environment
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-index", "--disable-pip-version-check", str(source)],
        check=True, timeout=300,
    )  # fmt: skip
    shutil.rmtree(source)  # nothing of the repository is left to lean on
    yield venv / "bin"


def run(bin_: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [bin_ / "aggregator", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        check=False, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip


@pytest.mark.slow
def test_installed_it_works_without_the_repository(
    installed: Path, tmp_path: Path, farm: Farm
) -> None:
    where = run(installed, "--version", cwd=tmp_path)
    assert where.returncode == 0
    located = subprocess.run(
        [installed / "python", "-c", "import aggregator; print(aggregator.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout  # fmt: skip
    assert str(installed.parent) in located and str(REPO) not in located

    # init: a commented feeds.yaml and the site; check accepts it; help has the reference.
    made = run(installed, "init", "news", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    config = tmp_path / "news" / "feeds.yaml"
    assert "aggregator help feeds.yaml" in config.read_text()
    assert (tmp_path / "news" / "archive" / "_layouts" / "post.html").is_file()
    assert run(installed, "init", "news", cwd=tmp_path).returncode == 2  # never overwritten
    assert run(installed, "check", "-c", str(config), cwd=tmp_path).returncode == 0
    reference = run(installed, "help", "feeds.yaml", cwd=tmp_path)
    assert reference.returncode == 0 and "## Per-feed options" in reference.stdout
    bash = run(installed, "completion", "bash", cwd=tmp_path)
    assert bash.returncode == 0 and "complete -F" in bash.stdout

    # add + run: the shipped feeds are replaced by a loopback one, served as a feed.
    farm.routes["/feed"] = Answer(200, rss(items("local", 2), title="Local"))
    config.write_text(config.read_text().split("\nfeeds:")[0] + "\nfeeds: []\n")
    added = run(installed, "add", farm.url("/feed"), "-c", str(config), cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    (tmp_path / "elsewhere").mkdir()  # add makes a feeds.yaml where there is none
    made = run(installed, "add", "--no-check", farm.url("/feed"), cwd=tmp_path / "elsewhere")
    assert made.returncode == 0, made.stderr
    first_line = (tmp_path / "elsewhere" / "feeds.yaml").read_text().splitlines()[0]
    assert "aggregator help feeds.yaml" in first_line and "README" not in first_line
    served = serving(installed, ["run", "-c", str(config)], tmp_path, b"local story 1")
    assert served.returncode == 0, served.stderr

    # demo: the bundled example feeds, served and merged.
    served = serving(installed, ["demo"], tmp_path, b"<entry>")
    assert served.returncode == 0, served.stderr
    assert b"Subscribe in your feed reader" in served.stdout


def serving(
    bin_: Path, args: list[str], cwd: Path, expected: bytes
) -> subprocess.CompletedProcess[bytes]:
    """Run ``aggregator ARGS --port P -q`` until its /atom.xml holds ``expected``, then
    stop it with SIGTERM; what it said and its exit status."""
    port = free_port()
    process = subprocess.Popen(
        [bin_ / "aggregator", *args, "--port", str(port), "-q"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: expected in _get(port, "/atom.xml"), f"{args[0]}'s merged feed", 60)
    finally:
        process.send_signal(signal.SIGTERM)
        out, errors = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, errors)


def _get(port: int, path: str) -> bytes:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).content
    except httpx.HTTPError:
        time.sleep(0.2)
        return b""
