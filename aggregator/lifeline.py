"""Parse workers never outlive the process they work for.

The workers are forked by a forkserver, which the main process starts. Without help, a
``kill -9`` of the main process leaves both running for ever: each worker holds the
forkserver's "alive" pipe open, so neither ever sees that its parent is gone. So:

- the forkserver imports this module first (it is in its preload list) and from then on
  dies with the main process (imported anywhere else, the module does nothing);
- every process the forkserver forks dies with the forkserver;
- the forkserver and its workers leave the main process's process group, so that a
  terminal's Ctrl-C (or a signal to the group) reaches the main process only: it decides
  when they stop, by closing their sockets, and no worker prints a traceback. They keep
  SIGTERM's default action, which stops a worker still busy a second after that.

Linux's ``PR_SET_PDEATHSIG`` delivers the death; elsewhere a thread watches the parent.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def bind_to_parent(expected: int | None = None) -> None:
    """Make this process die as soon as its parent does.

    ``expected``: the parent's pid, when known; if the parent is already another process
    (it died before we asked), exit now.
    """
    parent = os.getppid() if expected is None else expected
    if not _deathsig():
        threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


def _deathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # noqa: PLC0415

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _install() -> None:
    """In the forkserver: bound to the main process, in a process group of its own, and
    each worker it forks bound to it."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # and so in the workers (should one come)
    bind_to_parent()
    forkserver = os.getpid()
    forking = [forkserver]  # the pid of the process that forks (workers inherit the hooks)

    def before() -> None:
        forking[0] = os.getpid()

    def in_child() -> None:
        if forking[0] == forkserver:  # a worker; not a process a worker forks
            bind_to_parent(forkserver)

    os.register_at_fork(before=before, after_in_child=in_child)


def _imported_by_forkserver() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if (
            frame.f_code.co_name == "main"
            and frame.f_globals.get("__name__") == "multiprocessing.forkserver"
        ):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


if _imported_by_forkserver():  # anywhere else, importing this module changes nothing
    _install()
