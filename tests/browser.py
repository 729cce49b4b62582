"""A minimal Chrome DevTools Protocol client for tests (standard library only).

Chromium runs headless with ``--remote-debugging-pipe``: it reads commands on its fd 3
and writes replies and events on its fd 4, each a JSON text ended by a NUL byte.
A thread reads the replies into a queue; every wait has a deadline.

    with Browser() as browser:
        page = browser.load("http://127.0.0.1:8000/feed.xml")
        assert not page.errors, page.errors
        assert "Some title" in page.text()
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import json
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

Message = dict[str, Any]
FLAGS = (
    "--headless=new",
    "--remote-debugging-pipe",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--no-zygote",  # its renderers are its own children: it reaps them when it closes
    "--disable-features=GenerateXSLTWarningBanner",  # (Chromium 156 adds it to XSLT pages)
)


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise FileNotFoundError(
        "no browser found: install chromium (or chromium-browser, google-chrome)"
    )


def _mentioning(text: str) -> list[int]:
    """The processes whose command line mentions text."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def _where(url: str, line: int) -> str:
    return f" ({url}:{line + 1})" if url else ""


def _gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


def _above_4(fd: int) -> int:
    """The fd as a number above 4 (closing it), so that moving it to 3 or 4 clobbers nothing."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return high


class Browser:
    """A headless Chromium of its own (temporary profile), for one ``with`` block."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_chromium()
        self.flags = FLAGS
        self._ids = itertools.count(1)
        self._inbox: queue.Queue[Message | None] = queue.Queue()
        self._pages: dict[str, Page] = {}
        self._pid = 0
        self._reader = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> Self:
        self._profile = tempfile.mkdtemp(prefix="cdp-profile-")
        commands, self._to_browser = map(_above_4, os.pipe())
        self._from_browser, replies = map(_above_4, os.pipe())
        try:
            try:  # (posix_spawn rather than Popen: nothing runs between fork and exec)
                self._pid = os.posix_spawn(
                    self.binary,
                    [self.binary, *self.flags, f"--user-data-dir={self._profile}", "about:blank"],
                    # (its crash handler keeps its files under XDG_CONFIG_HOME, not the profile)
                    os.environ
                    | {"XDG_CONFIG_HOME": self._profile, "XDG_CACHE_HOME": self._profile},
                    file_actions=[
                        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                        (os.POSIX_SPAWN_DUP2, 1, 2),
                        (os.POSIX_SPAWN_DUP2, commands, 3),  # it reads commands
                        (os.POSIX_SPAWN_DUP2, replies, 4),  # it writes replies
                    ],
                    setsid=True,  # its own process group, killed as a whole
                )
            finally:  # (only the browser has them now: the replies end when it exits)
                os.close(commands)
                os.close(replies)
            self._reader.start()
            self.call("Browser.getVersion")  # ready
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pid:
            with contextlib.suppress(Exception):  # a clean exit reaps its own children
                self.call("Browser.close", timeout=5)
                self._reader.join(timeout=5)
            # Whatever is left: its process group, and its crash handlers (in sessions of
            # their own, found by the profile in their command line).
            strays = _mentioning(self._profile)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._pid, signal.SIGKILL)
            for pid in strays:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
            deadline = time.monotonic() + 5  # until init has reaped the group's orphans
            while not _gone(self._pid) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):  # (ours if we are init)
                    os.waitpid(-self._pid, os.WNOHANG)
                time.sleep(0.02)
            self._pid = 0
            self._reader.join(timeout=5)
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            *messages, buffer = (buffer + chunk).split(b"\0")
            for message in messages:
                self._inbox.put(json.loads(message))
        self._inbox.put(None)  # the browser has exited

    def _next(self, deadline: float, awaited: str) -> Message:
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                raise queue.Empty
            message = self._inbox.get(timeout=left)
        except queue.Empty:
            raise TimeoutError(f"timed out waiting for {awaited}") from None
        if message is None:
            self._inbox.put(None)
            raise RuntimeError(f"the browser exited while waiting for {awaited}")
        if "method" in message and (page := self._pages.get(message.get("sessionId", ""))):
            page._event(message["method"], message["params"])
        return message

    def call(
        self, method: str, params: Message | None = None, session: str = "", timeout: float = 30
    ) -> Message:
        """Send a command and return its result (raise RuntimeError on a CDP error)."""
        ident = next(self._ids)
        command: Message = {"id": ident, "method": method, "params": params or {}}
        os.write(
            self._to_browser,
            json.dumps(command | ({"sessionId": session} if session else {})).encode() + b"\0",
        )
        deadline = time.monotonic() + timeout
        while (reply := self._next(deadline, f"the reply to {method}")).get("id") != ident:
            pass
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        result: Message = reply["result"]
        return result

    def load(self, url: str, timeout: float = 30, timezone: str | None = None) -> Page:
        """Open ``url`` in a new tab (as a reader in ``timezone``, if given) and wait for
        its load event."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = self._pages[session["sessionId"]] = Page(self, session["sessionId"])
        for domain in ("Runtime", "Log", "Page"):
            page.call(f"{domain}.enable")
        if timezone:
            page.call("Emulation.setTimezoneOverride", {"timezoneId": timezone})
        navigated = page.call("Page.navigate", {"url": url})
        if "errorText" in navigated:
            raise RuntimeError(f"cannot load {url}: {navigated['errorText']}")
        deadline = time.monotonic() + timeout
        while not page.loaded:
            self._next(deadline, f"the load event of {url}")
        return page


class Page:
    """A tab. ``errors`` holds what has been seen so far: console errors, uncaught
    exceptions, and error log entries (failed loads, CSP violations); events are read
    while waiting for replies, so each call (such as ``text()``) takes in the latest."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.errors: list[str] = []
        self.loaded = False
        self._browser = browser
        self._session = session

    def call(self, method: str, params: Message | None = None, timeout: float = 30) -> Message:
        return self._browser.call(method, params, self._session, timeout)

    def _event(self, method: str, params: Message) -> None:
        if method == "Page.loadEventFired":
            self.loaded = True
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            frames = params.get("stackTrace", {}).get("callFrames", [])
            where = _where(frames[0]["url"], frames[0]["lineNumber"]) if frames else ""
            self.errors.append(f"console.error: {text}{where}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details["text"]
            where = _where(details.get("url", ""), details["lineNumber"])
            self.errors.append(f"uncaught: {text}{where}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            if entry.get("url", "").endswith("/favicon.ico"):
                return  # (the browser's own request, when the page names no icon)
            where = f" ({entry['url']})" if entry.get("url") else ""
            self.errors.append(f"{entry['source']}: {entry['text']}{where}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited if it is a promise)."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        reply = self.call("Runtime.evaluate", params)
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            raise RuntimeError(details.get("exception", {}).get("description") or details["text"])
        return reply["result"].get("value")

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''"))

    def screenshot(
        self, path: str | os.PathLike[str], width: int = 1200, height: int = 900
    ) -> None:
        """A PNG of the page at that size (how README's picture of the home page is made:
        ``aggregator demo``, then this on its ``/``)."""
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics)
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        Path(path).write_bytes(base64.b64decode(data))
