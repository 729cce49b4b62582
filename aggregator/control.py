"""The running daemon's control socket: ``aggregator poll`` and ``refresh`` ask it to poll.

While ``aggregator run`` holds the archive, a one-off ``poll`` cannot write it; instead it
connects to a Unix socket the daemon listens on and asks it to poll feeds now (whatever
their schedule or back-off), then prints each result as the daemon reports it.

- Where: ``archive/.aggregator/control.sock``. A Unix socket's address holds about 100
  bytes: a longer path is reached through the folder's descriptor
  (``/proc/self/fd/N/control.sock``, on Linux), so client and daemon always agree.
- Who: the socket is mode 0600, so only the daemon's user (and root) can ask.
- What: one JSON line ``{"poll": [feed URLs] | null}`` (null: every feed); the answer is
  one JSON line a feed as it finishes (``url``, ``name``, ``outcome``, ``new``,
  ``updated``, ``error``), then ``{"done": true}``; or ``{"refused": "why"}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
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
    """The daemon's control socket for the archive ``root``."""
    return Path(os.path.abspath(root)) / STATE_DIR / SOCKET_NAME


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """An address for ``path`` that fits a Unix socket: itself, or the same file through
    a descriptor of its folder."""
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield os.fspath(path)
        return
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def listen(root: Path) -> socket.socket:
    """The daemon's listening socket (mode 0600); a socket left by an earlier daemon is
    replaced (the caller holds the archive's lock). OSError if it cannot be made."""
    path = socket_path(root)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _address(path) as address:
            private = os.umask(0o177)  # 0600 from its creation on (no await in between)
            try:
                server.bind(address)
            finally:
                os.umask(private)
        server.listen(16)
    except OSError:
        server.close()
        raise
    return server


def ask_daemon(root: Path, urls: list[str] | None) -> Iterator[dict[str, Any]] | None:
    """Ask the daemon of ``root`` to poll ``urls`` (None: all) and yield its answers; None
    if no daemon listens there."""
    path = socket_path(root)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _address(path) as address:
            conn.connect(address)
    except OSError:
        conn.close()
        return None
    conn.settimeout(ANSWER_TIMEOUT)
    try:
        conn.sendall(json.dumps({"poll": urls}).encode() + b"\n")
    except OSError as e:
        conn.close()
        raise AggregatorError(f"the daemon on {path} hung up: {e.strerror or e}") from e
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
