"""The parser host: the process that the parse workers are forked from.

The main process starts it (:func:`start_host`) with one socket to it; the host imports
the parsing modules once, then forks a worker for each socket the main process hands it
down that one (``SCM_RIGHTS``) and answers with the worker's pid and a pidfd of it. A
fork of a process that has imported the parsing modules is ready in milliseconds, and
the main process, whose threads make forking it unsafe, never forks.

It replaces multiprocessing's forkserver, which did the same but also started a
resource tracker and cost the main process its imports (about 40 ms of a pass's start,
and a pass that parsed nothing paid it too): this host costs the main process one fork
and exec and one socket, so a poll can start it before it knows whether it will parse.

Neither the host nor a worker outlives the main process, whatever kills it: the host
ends when the main process's end of its socket closes, as it does when the main process
dies, and each worker dies with the host (see :mod:`aggregator.lifeline`). They run in a
process group of their own, so that a terminal's Ctrl-C (or a signal to the group)
reaches the main process only: it decides when the workers stop, by closing their
sockets, and no worker prints a traceback. They keep SIGTERM's default action, which
stops a worker still busy a second after that.
"""

from __future__ import annotations

import contextlib
import errno
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

# What the host imports before it forks anything, so that no worker has to: the parsing
# modules, and what a worker needs to take its jobs (its connection, the jobs' module).
PRELOAD = (
    "aggregator.parsers",
    "aggregator.process",
    "aggregator.posts",
    "aggregator.lifeline",
    "aggregator.workers",
    "multiprocessing.connection",
)

_ANSWER = struct.Struct("!q")  # a worker's pid, or minus the errno of a fork that failed
_ANSWER_WITHIN = 60.0  # seconds the host may take to answer (the first waits its imports)
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)  # (a pidfd received is not inherited)


class Forked:
    """A worker the host forked. It is the host's child, not this process's: it is waited
    for and signalled through the pidfd the host opened before the worker could be
    reaped (so no pid reused meanwhile is ever hit); by its pid where there are none."""

    def __init__(self, pid: int, pidfd: int | None) -> None:
        self.pid = pid
        self._fd = pidfd
        self._gone = False

    def is_alive(self) -> bool:
        if not self._gone:
            if self._fd is not None:
                self._gone = self._ended(0)
            else:
                try:
                    os.kill(self.pid, 0)
                except (ProcessLookupError, PermissionError):  # (gone, or someone else's)
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
                self._ended(left)
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

    def _ended(self, timeout: float | None) -> bool:
        """Whether it has ended, waiting up to ``timeout`` seconds (None: until it has).
        (``poll`` rather than ``select``: a daemon's descriptors go past 1024.)"""
        assert self._fd is not None
        waiting = select.poll()
        waiting.register(self._fd, select.POLLIN)
        return bool(waiting.poll(None if timeout is None else max(0.0, timeout * 1000)))

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # (at the interpreter's end, say)
            self._close()


# A worker's socket: this process's end, and the end the host hands down to the worker.
_Pair = tuple[socket.socket, socket.socket]


class _Host:
    def __init__(self, process: subprocess.Popen[bytes], control: socket.socket) -> None:
        self.process = process
        self.control = control

    def fork(self, pairs: list[_Pair]) -> tuple[list[tuple[Forked, socket.socket]], int]:
        """A new worker for each socket pair (its end handed down, this process's kept),
        and the errno of the first that could not be forked (0: none). All are asked for
        at once, then the answers read (the host answers in order), so that the last is
        not kept waiting for the first. Waits, the first time, for the host's imports.
        :class:`ConnectionError` if the host has ended."""
        forked: list[tuple[Forked, socket.socket]] = []
        refused = 0
        try:
            for _, there in pairs:
                socket.send_fds(self.control, [b"w"], [there.fileno()])
                there.close()
            for here, _ in pairs:
                pid, pidfd = self._answer()
                if pid < 0:  # it could not fork, and said why; it goes on
                    refused = refused or -pid
                    here.close()
                else:
                    forked.append((Forked(pid, pidfd), here))
        except BaseException:
            _close_pairs(pairs)
            _let_go(forked)
            raise
        return forked, refused

    def _answer(self) -> tuple[int, int | None]:
        """The next answer: a worker's pid and its pidfd (None where there are none), or
        minus the errno of a fork that failed."""
        fds: list[int] = []
        try:
            answer, fds, _, _ = socket.recv_fds(self.control, _ANSWER.size, 1, _CLOEXEC)
            while 0 < len(answer) < _ANSWER.size:  # (a message cut short)
                rest = self.control.recv(_ANSWER.size - len(answer))
                if not rest:
                    break
                answer += rest
            if len(answer) < _ANSWER.size:
                raise ConnectionResetError(errno.ECONNRESET, "the parser host ended")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        (pid,) = _ANSWER.unpack(answer)
        return pid, fds[0] if fds else None

    def close(self) -> None:
        """End the host now (its workers with it), even in the middle of its imports."""
        self.control.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


_host: _Host | None = None
_lock = threading.Lock()


def start_host() -> None:
    """Start the host now, without waiting for its imports (about 0.2 s): they then
    overlap this process's own."""
    with _lock:
        _running()


def fork_workers(count: int) -> list[tuple[Forked, socket.socket]]:
    """``count`` new workers, forked by the host (started, or started again if it has
    ended). Blocks: the first call waits for the host's imports. If one could not be
    forked, those that were end and :class:`OSError` says why."""
    with _lock:
        for attempt in range(2):
            host = _running()
            pairs = _socket_pairs(count)  # (first: failing to make them asks nothing)
            try:
                forked, refused = host.fork(pairs)
                break
            except ConnectionError:  # the host was killed: another one, once
                _discard()
                if attempt:
                    raise
            except BaseException:  # (stuck: its answers would be out of step with ours)
                _discard()
                raise
    if refused:
        _let_go(forked)
        raise OSError(refused, f"the parser host could not fork: {os.strerror(refused)}")
    return forked


def _socket_pairs(count: int) -> list[_Pair]:
    pairs: list[_Pair] = []
    try:
        for _ in range(count):
            pairs.append(socket.socketpair())
    except BaseException:
        _close_pairs(pairs)
        raise
    return pairs


def _close_pairs(pairs: list[_Pair]) -> None:
    for pair in pairs:
        for end in pair:
            end.close()


def _let_go(forked: list[tuple[Forked, socket.socket]]) -> None:
    """Workers not wanted after all: each ends as its socket closes."""
    for worker, here in forked:
        here.close()
        worker._close()


def stop_host() -> None:
    """End the host, if one is running (and so every worker it forked)."""
    with _lock:
        _discard()


def _discard() -> None:
    global _host  # noqa: PLW0603 -- one host a process
    if _host is not None:
        _host.close()
        _host = None


def _running() -> _Host:
    global _host  # noqa: PLW0603
    if _host is not None and _host.process.poll() is not None:  # it ended: reaped
        _discard()
    if _host is None:
        _host = _spawn()
    return _host


def _spawn() -> _Host:
    import subprocess  # noqa: PLC0415

    here, there = socket.socketpair()
    with there:
        # This process's module path (a zipapp's or a wrapper's included), as
        # multiprocessing gives its workers; its interpreter's flags, -X and -W included.
        # Without `site` (-S: 9 ms to start rather than 26), whose work the path holds,
        # but for an editable install's finder: this package's folder comes last.
        path = [*sys.path, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
        start = f"import sys; sys.path[:] = {path!r}"
        start += f"; from aggregator.host import serve_forks; serve_forks({there.fileno()})"
        flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
        try:
            process = subprocess.Popen(
                [sys.executable, *flags, "-S", "-c", start],
                pass_fds=[there.fileno()],
                stdin=subprocess.DEVNULL,
                process_group=0,  # (Ctrl-C in a terminal reaches the main process only)
            )
        except BaseException:
            here.close()
            raise
    here.settimeout(_ANSWER_WITHIN)
    return _Host(process, here)


# The host's side ------------------------------------------------------------------------


def serve_forks(fd: int) -> None:
    """The host's life: import the parsing modules, then fork a worker for each socket
    that arrives on ``fd``, until the main process's end of it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (the workers inherit it too)
    signal.signal(signal.SIGCHLD, _reap)
    control = socket.socket(fileno=fd)
    import importlib  # noqa: PLC0415

    for name in PRELOAD:
        importlib.import_module(name)
    host = os.getpid()
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 1)
        except OSError:
            message = b""
        if not message:  # the main process hung up, or ended: at once (it may be waiting
            os._exit(0)  # for the output it shares with us to close)
        pidfd = None
        try:
            if not fds:
                raise OSError(errno.EBADF, "no socket came with the request")
            # (a worker that ends at once is not reaped before its pidfd is open)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
            try:
                pid = os.fork()
                if pid == 0:
                    _work(control, fds[0], host)
                with contextlib.suppress(AttributeError, OSError):  # (no pidfds here)
                    pidfd = os.pidfd_open(pid)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            answer = _ANSWER.pack(pid)
        except OSError as e:  # (out of processes or memory, say: the host goes on)
            answer = _ANSWER.pack(-(e.errno or errno.EIO))
        finally:
            for got in fds:
                os.close(got)
        try:
            socket.send_fds(control, [answer], [pidfd] if pidfd is not None else [])
        except OSError:
            os._exit(0)
        finally:
            if pidfd is not None:
                os.close(pidfd)


def _work(control: socket.socket, fd: int, host: int) -> None:
    """A worker, just forked: bound to the host, it serves the jobs of ``fd``, then ends."""
    status = 0
    try:
        control.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        from multiprocessing.connection import Connection  # noqa: PLC0415

        from aggregator.lifeline import bind_to_parent  # noqa: PLC0415

        bind_to_parent(host)
        serve(Connection(fd))
    except BaseException:  # (its socket is its only way out: the reason goes to stderr)
        traceback.print_exc()
        status = 1
    finally:
        os._exit(status)


def _reap(signum: int, frame: object) -> None:
    """Collect the workers that have ended (their pidfds still say so)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


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
