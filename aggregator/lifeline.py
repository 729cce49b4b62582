"""Parse workers never outlive the process they work for.

The workers are forked by the parser host (:mod:`aggregator.host`), which ends when the
main process's end of its socket closes, as it does when the main process dies. A worker
busy with a document would not notice that for a while, so each worker asks to die as
soon as the host does.

Linux's ``PR_SET_PDEATHSIG`` delivers the death; elsewhere a thread watches the parent.
(Linux sends it when the parent *thread* ends: the host forks from its only one.)
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
