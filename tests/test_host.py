"""The parser host, with real processes: it forks workers that run jobs until their
socket closes; a worker is waited for and stopped by this process though it is the
host's child; the host is in a process group of its own; a host that was killed is
replaced at the next fork; a stopped host takes its workers with it."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

import pytest

from aggregator import host as host_module
from aggregator.host import Forked, fork_worker, start_host, stop_host


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
    finally:
        end.close()
    worker.join(timeout=10)
    assert not worker.is_alive()


def test_a_busy_worker_is_stopped_by_sigterm() -> None:
    worker, end = fork_worker()
    with end:
        connection = Connection(os.dup(end.fileno()))
        connection.send((time.sleep, 60))
        connection.close()
        worker.join(timeout=0.2)
        assert worker.is_alive()  # (still asleep)
        worker.terminate()
        worker.join(timeout=10)
        assert not worker.is_alive()


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


def test_stopping_the_host_ends_its_workers() -> None:
    start_host()
    worker, end = fork_worker()
    host = _host_pid()
    with end:
        stop_host()
        assert _gone(host)
        worker.join(timeout=10)
        assert not worker.is_alive()


def test_a_worker_that_ended_long_ago_is_not_mistaken_for_another_process() -> None:
    worker, end = fork_worker()
    end.close()
    worker.join(timeout=10)
    assert not worker.is_alive()
    worker.terminate()  # (nothing to stop: no signal to whatever has its pid now)
    assert not Forked(worker.pid).is_alive()


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
