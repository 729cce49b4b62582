"""The running daemon's control socket: ``aggregator poll`` and ``refresh`` ask it to poll.

While ``aggregator run`` holds the archive, a one-off ``poll`` cannot write it; instead it
connects to a Unix socket the daemon listens on and asks it to poll feeds now (whatever
their schedule or back-off), then prints each result as the daemon reports it.

- Where: ``archive/.aggregator/control.sock``; when that path is too long for a Unix
  socket (about 100 bytes), ``$XDG_RUNTIME_DIR`` (else the temp folder) under a folder
  of our own, mode 0700, named after the archive's path.
- Who: the socket is mode 0600, so only the daemon's user (and root) can ask.
- What: one JSON line ``{"poll": [feed URLs] | null}`` (null: every feed); the answer is
  one JSON line a feed as it finishes (``url``, ``name``, ``outcome``, ``new``,
  ``updated``, ``error``), then ``{"done": true}``; or ``{"refused": "why"}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aggregator.archive import STATE_DIR
from aggregator.errors import AggregatorError

SOCKET_NAME = "control.sock"
MAX_SOCKET_PATH = 100  # bytes; sun_path holds 108 on Linux, 104 on the BSDs
MAX_REQUEST = 1 << 20
ANSWER_TIMEOUT = 600.0  # seconds without a line from the daemon before giving up


def socket_path(root: Path) -> Path:
    """Where the daemon of the archive ``root`` listens."""
    path = Path(os.path.abspath(root)) / STATE_DIR / SOCKET_NAME
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    digest = hashlib.sha256(os.fsencode(os.path.abspath(root))).hexdigest()[:24]
    return base / f"aggregator-{os.getuid()}" / f"{digest}.sock"


def prepare_socket_path(root: Path) -> Path:
    """The socket's path, its folder made (private when it is not the archive's), and a
    stale socket of an earlier daemon removed (the caller holds the archive's lock)."""
    path = socket_path(root)
    if path.parent.name != STATE_DIR:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        st = path.parent.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise AggregatorError(f"{path.parent} is not a private folder of this user")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return path


def ask_daemon(root: Path, urls: list[str] | None) -> Iterator[dict[str, Any]] | None:
    """Ask the daemon of ``root`` to poll ``urls`` (None: all) and yield its answers; None
    if no daemon listens there."""
    path = socket_path(root)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(os.fspath(path))
    except OSError:
        conn.close()
        return None
    conn.settimeout(ANSWER_TIMEOUT)
    conn.sendall(json.dumps({"poll": urls}).encode() + b"\n")
    return _answers(conn, path)


def _answers(conn: socket.socket, path: Path) -> Iterator[dict[str, Any]]:
    with conn, conn.makefile("rb") as lines:
        try:
            for line in lines:
                answer = json.loads(line)
                yield answer
                if answer.get("done") or "refused" in answer:
                    return
        except (OSError, ValueError) as e:
            raise AggregatorError(f"the daemon's answer on {path} broke off: {e}") from e
    raise AggregatorError(f"the daemon on {path} stopped answering (did it stop?)")
