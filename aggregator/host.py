"""The parser host: the process that the parse workers are forked from.

The main process starts it (:func:`start_host`) with one socket to it; the host imports
the parsing modules once, then forks a worker for each socket the main process hands it
down that one (``SCM_RIGHTS``) and answers with the worker's pid. A fork of a process
that has imported everything is ready in milliseconds, and the main process, whose
threads make forking it unsafe, never forks.

It replaces multiprocessing's forkserver, which did the same but also started a
resource tracker and cost the main process its imports (about 40 ms of a pass's start,
and a pass that parsed nothing paid it too): this host costs a ``posix_spawn`` and one
socket, so a poll can start it before it knows whether it will parse.

Neither the host nor a worker outlives the main process, whatever kills it: the host
dies with the main process and each worker with the host (see :mod:`aggregator.lifeline`).
They run in a process group of their own, so that a terminal's Ctrl-C (or a signal to the
group) reaches the main process only: it decides when the workers stop, by closing their
sockets, and no worker prints a traceback. They keep SIGTERM's default action, which stops
a worker still busy a second after that.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess
    from multiprocessing.connection import Connection

# What the host imports before it forks anything, so that no worker has to.
PRELOAD = ("aggregator.parsers", "aggregator.process", "aggregator.posts")

_PID = struct.Struct("!q")


class Forked:
    """A worker the host forked. It is the host's child, not this process's: it is waited
    for and signalled through a pidfd where Linux has them (no pid reused meanwhile can
    be hit), else by its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = None
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:  # (it has ended already)
            self._gone = True
        except (AttributeError, OSError):
            self._gone = False
        else:
            self._gone = False

    def is_alive(self) -> bool:
        if self._gone:
            return False
        if self._fd is not None:
            self._gone = bool(select.select([self._fd], [], [], 0)[0])
        else:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self._gone = True
            except PermissionError:  # (someone else's now)
                self._gone = True
        if self._gone:
            self._close()
        return not self._gone

    def join(self, timeout: float | None = None) -> None:
        """Wait until it has ended, or ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            if self._fd is not None:
                select.select([self._fd], [], [], left)
            else:
                time.sleep(0.01 if left is None else min(0.01, left))

    def terminate(self) -> None:
        """SIGTERM, unless it has ended."""
        if not self.is_alive():
            return
        with contextlib.suppress(ProcessLookupError):
            if self._fd is not None:
                signal.pidfd_send_signal(self._fd, signal.SIGTERM)
            else:
                os.kill(self.pid, signal.SIGTERM)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # (at the interpreter's end, say)
            self._close()


class _Host:
    def __init__(self, process: subprocess.Popen[bytes], control: socket.socket) -> None:
        self.process = process
        self.control = control

    def fork(self) -> tuple[Forked, socket.socket]:
        """A new worker and this process's end of its socket. Waits, the first time, for
        the host's imports."""
        here, there = socket.socketpair()
        try:
            socket.send_fds(self.control, [b"w"], [there.fileno()])
            answer = b""
            while len(answer) < _PID.size:
                got = self.control.recv(_PID.size - len(answer))
                if not got:
                    raise ConnectionResetError("the parser host ended")
                answer += got
        except BaseException:
            here.close()
            raise
        finally:
            there.close()
        return Forked(_PID.unpack(answer)[0]), here

    def close(self) -> None:
        """End the host now (its workers with it), even in the middle of its imports."""
        self.control.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


_host: _Host | None = None
_lock = threading.Lock()


def start_host(*, blocking: bool = True) -> None:
    """Start the host now, without waiting for its imports (about 0.2 s): they then
    overlap this process's own. ``blocking=False``: unless a thread is busy with it.

    Linux ends the host when the *thread* that started it ends: call this from a thread
    that lasts (the main thread, an event loop's)."""
    if _lock.acquire(blocking=blocking):
        try:
            _running()
        finally:
            _lock.release()


def fork_worker() -> tuple[Forked, socket.socket]:
    """A new worker, forked by the host (started, or started again if it has ended).
    Blocks: the first one waits for the host's imports."""
    global _host  # noqa: PLW0603 -- one host a process
    with _lock:
        try:
            return _running().fork()
        except OSError:  # the host was killed: another one, once
            if _host is not None:
                _host.close()
                _host = None
            return _running().fork()


def stop_host() -> None:
    """End the host, if one is running (and so every worker it forked)."""
    global _host  # noqa: PLW0603
    with _lock:
        if _host is not None:
            _host.close()
            _host = None


def _running() -> _Host:
    global _host  # noqa: PLW0603
    if _host is not None and _host.process.poll() is not None:  # it ended: reaped
        _host.control.close()
        _host = None
    if _host is None:
        _host = _spawn()
    return _host


def _spawn() -> _Host:
    import subprocess  # noqa: PLC0415

    here, there = socket.socketpair()
    with there:
        start = "from aggregator.host import serve_forks; serve_forks"
        start += f"({there.fileno()}, {os.getpid()})"
        # (the interpreter's flags, -X and -W included, as multiprocessing passes them on)
        flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
        command = [sys.executable, *flags, "-c", start]
        try:
            process = subprocess.Popen(
                command,
                pass_fds=[there.fileno()],
                stdin=subprocess.DEVNULL,
                process_group=0,  # (Ctrl-C in a terminal reaches the main process only)
            )
        except BaseException:
            here.close()
            raise
    return _Host(process, here)


# The host's side ------------------------------------------------------------------------


def serve_forks(fd: int, parent: int) -> None:
    """The host's life: bound to the main process ``parent``, import the parsing modules,
    then fork a worker for each socket that arrives on ``fd``, until it is closed."""
    from aggregator.lifeline import bind_to_parent  # noqa: PLC0415

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (the workers inherit it too)
    bind_to_parent(parent)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # a worker that ends is reaped at once
    control = socket.socket(fileno=fd)
    import importlib  # noqa: PLC0415
    from multiprocessing.connection import Connection  # noqa: PLC0415

    for name in PRELOAD:
        importlib.import_module(name)
    host = os.getpid()
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 4)
        except OSError:
            return
        if not message:  # the main process hung up (or ended)
            return
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            continue
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                control.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                bind_to_parent(host)
                serve(Connection(fds[0]))
            except BaseException:  # (nothing to send it to: the end of its socket)
                status = 1
            finally:
                os._exit(status)
        os.close(fds[0])
        try:
            control.sendall(_PID.pack(pid))
        except OSError:
            return


def serve(connection: Connection) -> None:
    """A worker's life: run each job that arrives and send its result back, until the
    main process closes its end."""
    while True:
        try:
            work, job = connection.recv()
        except (EOFError, OSError):
            return
        try:
            answer: tuple[bool, object, str] = (True, work(job), "")
        except Exception as e:  # (the job's failure, a ParseError most often: sent back)
            answer = (False, e, "".join(traceback.format_exception(e)))
        try:
            connection.send(answer)
        except (EOFError, OSError):  # the main process is gone or done: so are we
            return
        except Exception as e:  # (it could not be pickled): say so instead
            failure = RuntimeError(f"a worker could not send its answer: {e}")
            with contextlib.suppress(EOFError, OSError):
                connection.send((False, failure, ""))
