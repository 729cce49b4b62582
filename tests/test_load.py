"""The daemon's server under hostile load, on loopback only: idle and incomplete
connections are dropped, a flood of connections cannot lock out a health probe or
exhaust the daemon's file descriptors, accept() errors are logged once per burst, and a
big merged feed is compressed once per publish, not per request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

import aggregator.serve
from aggregator.archive import Archive
from aggregator.publish import publish
from aggregator.serve import Site, make_server, quiet_accept_errors
from tests.farm import Answer, Farm, rss
from tests.test_daemon import config_text, wait_for
from tests.test_scheduler import free_port
from tests.test_serve import served  # noqa: F401 -- a fixture


@asynccontextmanager
async def serving(site: Site, **options: object) -> AsyncIterator[tuple[int, object]]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    server = make_server(site, **options)  # type: ignore[arg-type]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1], server
    finally:
        server.should_exit = True
        await task


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """The server closes the connection within ``within`` seconds (EOF or reset)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def test_silent_and_slow_clients_are_dropped(served: tuple[Site, Archive]) -> None:  # noqa: F811
    site, _ = served

    async def scenario() -> None:
        async with serving(site, request_timeout=0.5) as (port, _):
            silent = await asyncio.open_connection("127.0.0.1", port)
            trickle = await asyncio.open_connection("127.0.0.1", port)
            trickle[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes
            await trickle[1].drain()
            kept = await asyncio.open_connection("127.0.0.1", port)
            kept[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await kept[1].drain()
            status = await kept[0].readline()
            assert status.startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            for reader, _writer in (silent, trickle):
                assert await closed_by_server(reader, 5)
            assert time.monotonic() - started < 3
            # The answered connection is kept alive a while (uvicorn: 5 s), then closed too.
            assert await closed_by_server(kept[0], 10)
            for _, writer in (silent, trickle, kept):
                writer.close()

    asyncio.run(scenario())


def test_a_flood_of_idle_connections_cannot_lock_out_a_probe(
    served: tuple[Site, Archive],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    site, _ = served

    async def scenario() -> None:
        async with serving(site, connections=20) as (port, server):
            idle = []
            for _ in range(4):  # bursts: connections the server accepts all at once
                idle += await asyncio.gather(
                    *(asyncio.open_connection("127.0.0.1", port) for _ in range(40))
                )
                await asyncio.sleep(0.2)
                assert len(server.server_state.connections) <= 20  # type: ignore[attr-defined]
            async with httpx.AsyncClient() as http:
                started = time.monotonic()
                response = await http.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                assert response.status_code == 200
                assert time.monotonic() - started < 2
            for _, writer in idle:
                writer.close()

    with caplog.at_level(logging.INFO, logger="aggregator.serve"):
        asyncio.run(scenario())
    evictions = [r for r in caplog.records if "the most allowed" in r.getMessage()]
    assert len(evictions) == 1  # once per burst, not once per connection


def test_a_client_that_never_takes_its_answer_is_dropped(
    served: tuple[Site, Archive],  # noqa: F811
) -> None:
    site, archive = served
    archive.root.joinpath("atom.xml").write_bytes(b"<feed>" + b"x" * (16 << 20) + b"</feed>")

    async def scenario() -> None:
        async with serving(site, response_timeout=1.0) as (port, server):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /atom.xml HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
            await writer.drain()
            connections = server.server_state.connections  # type: ignore[attr-defined]
            await asyncio.sleep(0.5)
            assert len(connections) == 1  # being answered
            deadline = time.monotonic() + 5
            while connections and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not connections  # dropped, 16 MiB unread
            writer.close()
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 5  # and nothing holds the server's stop

    asyncio.run(scenario())


def test_accept_errors_are_logged_once_per_burst(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    error = OSError(24, "Too many open files")
    try:
        with caplog.at_level(logging.ERROR):
            for _ in range(500):
                quiet_accept_errors(
                    loop,
                    {"message": "socket.accept() out of system resource", "exception": error},
                )
    finally:
        loop.close()
    assert len(caplog.records) == 1
    assert "cannot accept connections: Too many open files" in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info is None


def test_a_big_feed_is_compressed_once_per_publish(
    served: tuple[Site, Archive],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site, archive = served
    publish(site.config, archive, datetime.now(UTC))
    calls: list[int] = []
    real = aggregator.serve.gzip_compress

    def counted(data: bytes, **kwargs: int) -> bytes:
        calls.append(len(data))
        return real(data, **kwargs)

    monkeypatch.setattr(aggregator.serve, "gzip_compress", counted)

    async def fetch(n: int) -> list[bytes]:
        transport = httpx.ASGITransport(app=aggregator.serve.make_app(site))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            bodies = []
            for _ in range(n):
                response = await http.get("/atom.xml", headers={"Accept-Encoding": "gzip"})
                assert response.headers["content-encoding"] == "gzip"
                bodies.append(response.content)
            return bodies

    first = asyncio.run(fetch(5))
    assert len(calls) == 1 and len(set(first)) == 1
    publish(site.config, archive, datetime(2030, 1, 1, tzinfo=UTC))  # a new version
    second = asyncio.run(fetch(5))
    assert len(calls) == 2 and second[0] != first[0]


@contextlib.contextmanager
def open_file_limit(limit: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < limit:
        pytest.skip(f"needs {limit} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _systemd_default_limits() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


@pytest.mark.slow
def test_a_flood_of_idle_connections_does_not_starve_the_daemon(tmp_path: Path, farm: Farm) -> None:
    farm.routes["/a"] = Answer(200, rss([{"title": "a0", "link": "https://a.example/0"}]))
    farm.routes["/b"] = Answer(200, rss([{"title": "b0", "link": "https://b.example/0"}]))
    port = free_port()
    config = tmp_path / "feeds.yaml"
    config.write_text(config_text(farm, port, ["a"]))
    log = tmp_path / "daemon.log"
    base = f"http://127.0.0.1:{port}"
    with open_file_limit(4096), log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=_systemd_default_limits,  # soft and hard: 1024, as under systemd
        )
        sockets: list[socket.socket] = []
        try:

            def healthy() -> bool:
                try:
                    return httpx.get(base + "/healthz", timeout=5).json()["status"] == "ok"
                except (httpx.HTTPError, ValueError):
                    return False

            wait_for(healthy, "the daemon", 30)
            for _ in range(1200):  # more than the daemon may open files
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            started = time.monotonic()
            probe = httpx.get(base + "/healthz", timeout=10)
            assert probe.status_code == 200 and time.monotonic() - started < 5
            # The daemon can still open files: an edit of feeds.yaml is read and applied.
            config.write_text(config_text(farm, port, ["a", "b"]))
            wait_for(lambda: len(farm.requests_to("/b")) == 1, "the added feed", 20)
            time.sleep(12)  # past the request timeout: the idle connections are dropped
            dropped = 0
            for sock in sockets:
                sock.settimeout(0.05)
                try:
                    dropped += sock.recv(1) == b""
                except ConnectionError:
                    dropped += 1
                except TimeoutError:
                    pass
            assert dropped == len(sockets)
            assert healthy()
        finally:
            for sock in sockets:
                sock.close()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    text = log.read_text(errors="replace")
    assert "Traceback" not in text
    assert log.stat().st_size < 64 * 1024, f"{log.stat().st_size} bytes of log"
