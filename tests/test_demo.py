"""`aggregator demo`: starts, serves the example feeds merged, stops cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.feedcheck import check_outputs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: object, timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()  # type: ignore[operator]
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            result = None
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_demo_starts_serves_and_stops(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "demo", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(5)]
        site = f"http://127.0.0.1:{port}/"
        assert f"Subscribe in your feed reader: {site}atom.xml" in lines[1]
        assert lines[2].startswith(f"Site: {site}")
        folder = Path(re.search(r"Config and archive: (\S+)", lines[3]).group(1))  # type: ignore[union-attr]

        def all_items() -> object:
            feed = json.loads(httpx.get(site + "feed.json").text)
            return feed if len(feed["items"]) == 7 else None

        feed = wait_for(all_items)
        titles = {item["title"] for item in feed["items"]}  # type: ignore[index]
        assert "Recipe: Harbour fish stew" in titles  # the demo's title option
        assert "Counting turnstones" in titles
        gazette = next(i for i in feed["items"] if i["title"].startswith("Ferry"))  # type: ignore[index]
        assert "Subscribe to the Gazette" not in gazette["content_html"]  # strip: [p.promo]
        town = json.loads(httpx.get(site + "tags/town/feed.json").text)
        assert len(town["items"]) == 5  # the gazette's 3 and the kitchen's 2
        assert "Harbor Town Gazette" in httpx.get(site).text
        check_outputs(folder / "archive")
        check_outputs(folder / "archive" / "tags" / "nature")
        assert len(list((folder / "archive" / "_posts").rglob("*.md"))) == 7
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert not folder.exists()  # the temporary folder is removed
