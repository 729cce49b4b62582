"""The parser host, with real processes: it forks workers that run jobs until their
socket closes; a worker is waited for and stopped by this process though it is the
host's child; they are in a process group of their own; a host that was killed is
replaced at the next fork, one that cannot fork says why and goes on; a stopped host
takes its workers with it, and so does the death of the process that started it, even
with a worker busy."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from aggregator import cli
from aggregator import host as host_module
from aggregator.host import Forked, fork_workers, start_host, stop_host


@pytest.fixture(autouse=True)
def own_host() -> Iterator[None]:
    """Each test starts from no host and leaves none behind."""
    stop_host()
    yield
    stop_host()


def _ask(end: socket.socket, work: Callable[[object], object], job: object) -> object:
    connection = Connection(os.dup(end.fileno()))
    try:
        connection.send((work, job))
        ok, value, trace = connection.recv()
    finally:
        connection.close()
    assert ok, trace
    return value


def fork_worker() -> tuple[Forked, socket.socket]:
    """One new worker and this process's end of its socket."""
    return fork_workers(1)[0]


def _send(end: socket.socket, work: Callable[[object], object], job: object) -> None:
    """Hand a worker a job without waiting for its answer."""
    connection = Connection(os.dup(end.fileno()))
    try:
        connection.send((work, job))
    finally:
        connection.close()


def _pid(_: object) -> int:
    """A job: the pid of the worker that runs it."""
    return os.getpid()


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def _host_pid() -> int:
    running = host_module._host
    assert running is not None
    return running.process.pid


def test_a_forked_worker_runs_jobs_until_its_socket_closes() -> None:
    worker, end = fork_worker()
    try:
        assert worker.is_alive()
        assert _ask(end, abs, -3) == 3
        assert _ask(end, len, b"four") == 4
        assert os.getpgid(worker.pid) != os.getpgid(0)  # (Ctrl-C is not for it)
        assert os.getpgid(_host_pid()) != os.getpgid(0)
    finally:
        end.close()
    worker.join(timeout=10)
    assert not worker.is_alive()


def test_a_busy_worker_is_stopped_by_sigterm() -> None:
    worker, end = fork_worker()
    with end:
        _send(end, time.sleep, 60)
        worker.join(timeout=0.2)
        assert worker.is_alive()  # (still asleep)
        worker.terminate()
        worker.join(timeout=10)
        assert not worker.is_alive()


def test_a_worker_that_ends_at_once_is_seen_to_end() -> None:
    """It ends (and the host reaps it) before anyone looks: its pidfd still says so."""
    worker, end = fork_worker()
    with end:
        _send(end, os._exit, 3)
        worker.join(timeout=10)
        assert not worker.is_alive()
        worker.terminate()  # (nothing to stop, and nothing else is hit)


def test_a_killed_host_takes_its_workers_and_is_replaced() -> None:
    worker, end = fork_worker()
    first = _host_pid()
    os.kill(first, signal.SIGKILL)
    with end:
        worker.join(timeout=10)
        assert not worker.is_alive()  # it died with the host
    another, end2 = fork_worker()  # a new host forks it
    with end2:
        assert _host_pid() != first
        assert _ask(end2, abs, -5) == 5
    another.join(timeout=10)


def test_a_host_that_cannot_fork_says_why_and_goes_on() -> None:
    """A request it cannot serve (here, one that came without its socket) is answered
    with the reason; the host serves the next one."""
    start_host()
    running = host_module._host
    assert running is not None
    socket.send_fds(running.control, [b"w"], [])
    answer, fds, _, _ = socket.recv_fds(running.control, 8, 1)
    assert (int.from_bytes(answer, "big", signed=True), fds) == (-errno.EBADF, [])
    worker, end = fork_worker()
    with end:
        assert _host_pid() == running.process.pid
        assert _ask(end, abs, -7) == 7
    worker.join(timeout=10)


def test_stopping_the_host_ends_its_workers() -> None:
    start_host()
    worker, end = fork_worker()
    host = _host_pid()
    with end:
        stop_host()
        assert _gone(host)
        worker.join(timeout=10)
        assert not worker.is_alive()


def test_workers_asked_for_together_each_serve_their_own_socket() -> None:
    """Each worker comes with its own socket: closing one ends that worker only."""
    forked = fork_workers(3)
    try:
        assert len({worker.pid for worker, _ in forked}) == 3
        for worker, end in forked:
            assert _ask(end, _pid, None) == worker.pid
        for n, (worker, end) in enumerate(forked):
            end.close()
            worker.join(timeout=10)
            assert not worker.is_alive()
            assert all(other.is_alive() for other, _ in forked[n + 1 :])
    finally:
        for _, end in forked:
            end.close()


def test_one_worker_refused_ends_those_asked_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The answers come in the order asked; one refusal among them is the start's error,
    and the workers forked with it are let go (their sockets closed)."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)  # (an answer waited for that never comes fails, not hangs)
    answers = [4242, -errno.EAGAIN, 4343]
    host = host_module._Host(subprocess.Popen(["true"]), ours)
    host.process.wait()
    monkeypatch.setattr(host_module, "_running", lambda: host)
    try:
        for pid in answers:  # (answered ahead: the requests are read below)
            theirs.sendall(pid.to_bytes(8, "big", signed=True))
        with pytest.raises(OSError, match="could not fork") as refused:
            fork_workers(3)
        assert refused.value.errno == errno.EAGAIN
        ours.setblocking(False)
        with pytest.raises(BlockingIOError):  # every answer was read: the next is ours
            ours.recv(1)
        ends = []
        for _ in answers:
            message, fds, _, _ = socket.recv_fds(theirs, 1, 1)
            assert message == b"w" and len(fds) == 1
            ends.append(socket.socket(fileno=fds[0]))
        for end in ends:  # each worker's socket: closed on our side
            with end:
                end.settimeout(5)
                assert end.recv(1) == b""
    finally:
        theirs.close()
        ours.close()


def test_jobs_that_fail_come_back_as_errors() -> None:
    worker, end = fork_worker()
    with end:
        connection = Connection(os.dup(end.fileno()))
        connection.send((int, "not a number"))
        ok, value, trace = connection.recv()
        connection.close()
    assert not ok and isinstance(value, ValueError) and "Traceback" in trace
    worker.join(timeout=10)
    assert not worker.is_alive()


def test_nothing_outlives_the_process_that_started_the_host(tmp_path: Path) -> None:
    """Killed with a worker busy for a minute (which would not notice a closed socket
    until then), the host and the worker go within seconds."""
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            from multiprocessing.connection import Connection
            import aggregator.host as h
            from aggregator.host import fork_workers
            [(worker, end)] = fork_workers(1)
            Connection(os.dup(end.fileno())).send((time.sleep, 60))
            print(h._host.process.pid, worker.pid, flush=True)
            time.sleep(60)
            """
        )
    )
    main = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert main.stdout is not None
        host, worker = map(int, main.stdout.readline().split())
        time.sleep(0.3)  # (the worker is asleep in its job)
        os.kill(main.pid, signal.SIGKILL)
        main.wait()
        assert _gone(host, timeout=5) and _gone(worker, timeout=5)
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()


def test_a_poll_goes_on_when_the_early_start_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting the host early is a head start only: if it fails, the first parse
    tries again (and its feed says why if that fails too)."""

    def refuse() -> None:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(host_module, "start_host", refuse)
    assert cli._start_parsers() is False
