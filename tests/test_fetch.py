from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from aggregator import __version__
from aggregator.errors import FetchError
from aggregator.fetch import FetchSettings, default_user_agent, fetch_feed, make_client
from aggregator.models import Fetched, NotModified, Validators
from tests.farm import Answer, Farm, Request, rss
from tests.hostile import closed_port

FEED = rss([{"title": "a", "link": "http://ex.com/a"}])
NO_VALIDATORS = Validators()
UA = default_user_agent("https://mine.example/")


def fetch(
    url: str,
    validators: Validators = NO_VALIDATORS,
    transport: httpx.AsyncBaseTransport | None = None,
    **kw: object,
) -> Fetched | NotModified:
    settings = FetchSettings(user_agent=UA, **kw)  # type: ignore[arg-type]

    async def go() -> Fetched | NotModified:
        async with make_client(settings, transport) as client:
            return await fetch_feed(client, url, validators, settings)

    return asyncio.run(go())


def conditional(request: Request) -> Answer:
    """Answers 304 only to the exact validators it hands out."""
    etag, modified = '"v1-abc"', "Wed, 01 May 2024 10:00:00 GMT"
    if (
        request.headers.get("if-none-match") == etag
        or request.headers.get("if-modified-since") == modified
    ):
        return Answer(304, headers={"ETag": etag})
    return Answer(
        200, FEED, {"Content-Type": "application/rss+xml", "ETag": etag, "Last-Modified": modified}
    )


def test_user_agent_and_accept(farm: Farm) -> None:
    farm.routes["/f"] = Answer(200, FEED, {"Content-Type": "application/rss+xml"})
    got = fetch(farm.url("/f"))
    assert isinstance(got, Fetched) and got.content == FEED and got.status == 200
    (request,) = farm.requests_to("/f")
    assert request.headers["user-agent"] == f"aggregator/{__version__} (+https://mine.example/)"
    assert "application/rss+xml" in request.headers["accept"]
    assert "if-none-match" not in request.headers


def test_conditional_get_against_a_real_server(farm: Farm) -> None:
    farm.routes["/c"] = conditional
    first = fetch(farm.url("/c"))
    assert isinstance(first, Fetched)
    assert first.validators == Validators('"v1-abc"', "Wed, 01 May 2024 10:00:00 GMT")
    second = fetch(farm.url("/c"), first.validators)
    assert isinstance(second, NotModified)
    assert second.validators == first.validators
    sent = farm.requests_to("/c")[1].headers
    assert sent["if-none-match"] == '"v1-abc"'  # verbatim, quotes included
    assert sent["if-modified-since"] == "Wed, 01 May 2024 10:00:00 GMT"
    # Wrong validators get the full body again.
    third = fetch(farm.url("/c"), Validators('"stale"', "Mon, 01 Jan 2024 00:00:00 GMT"))
    assert isinstance(third, Fetched)


def test_connections_are_kept_alive_and_idle_pools_closed(
    farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass of 304s reuses one connection a host (httpcore closes a connection whose
    answer was never read to its end); a pool left idle is closed, in the daemon too."""
    farm.routes["/c"] = conditional
    settings = FetchSettings(user_agent=UA)
    clock = [1000.0]
    monkeypatch.setattr("aggregator.fetch.time.monotonic", lambda: clock[0])

    async def go() -> list[Fetched | NotModified]:
        async with make_client(settings) as client:
            first = await fetch_feed(client, farm.url("/c"), NO_VALIDATORS, settings)
            answers = [first]
            for _ in range(3):
                answers.append(await fetch_feed(client, farm.url("/c"), first.validators, settings))
            pools = client._transport._pools  # type: ignore[attr-defined]
            assert len(pools) == 1 and not next(iter(pools.values())).open
            clock[0] += 61  # a minute idle: the next request closes the pool first
            other = farm.url("/c").replace("127.0.0.1", "localhost")
            answers.append(await fetch_feed(client, other, first.validators, settings))
            assert [k[3] for k in pools] == ["localhost"]
        return answers

    answers = asyncio.run(go())
    assert [type(a) for a in answers] == [Fetched] + [NotModified] * 4
    ports = [r.port for r in farm.requests_to("/c")]
    assert len(set(ports[:4])) == 1 and ports[4] != ports[0]


def test_tls_settings_are_made_once_and_idle_pools_are_few(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each origin has its own pool, but the trust store is loaded once for all of them
    (~40 ms each time), and at most MAX_IDLE pools stay open: a pass over thousands of
    hosts does not keep thousands of sockets."""

    import aggregator.fetch as fetch_module

    made: list[object] = []
    real = httpx.create_ssl_context
    monkeypatch.setattr(
        fetch_module.httpx, "create_ssl_context", lambda **kw: made.append(kw) or real(**kw)
    )
    ports = [closed_port() for _ in range(fetch_module._Transports.MAX_IDLE + 6)]
    settings = FetchSettings(user_agent=UA)

    async def go() -> int:
        async with make_client(settings) as client:
            for i, port in enumerate(ports):
                scheme = "https" if i < 2 else "http"
                with pytest.raises(FetchError, match="connection refused"):
                    await fetch_feed(
                        client, f"{scheme}://127.0.0.1:{port}/f", NO_VALIDATORS, settings
                    )
            return len(client._transport._pools)  # type: ignore[attr-defined]

    pools = asyncio.run(go())
    assert made == [{"verify": True}, {"verify": False}]  # (https checked; plain http)
    assert pools == fetch_module._Transports.MAX_IDLE


def test_304_without_a_conditional_request_is_an_error(farm: Farm) -> None:
    farm.routes["/x"] = Answer(304)
    with pytest.raises(FetchError, match="304 Not Modified to a request without validators"):
        fetch(farm.url("/x"))


@pytest.mark.parametrize("status", [404, 410, 500, 503])
def test_http_errors(farm: Farm, status: int) -> None:
    farm.routes["/e"] = Answer(status, b"nope")
    with pytest.raises(FetchError) as info:
        fetch(farm.url("/e"))
    assert info.value.status == status
    assert info.value.reason.startswith(f"HTTP {status}")
    assert info.value.url == farm.url("/e")


def test_redirects_are_followed_up_to_five(farm: Farm) -> None:
    for i in range(6):
        farm.routes[f"/r{i}"] = Answer(301 if i % 2 else 302, headers={"Location": f"/r{i + 1}"})
    farm.routes["/r6"] = Answer(200, FEED)
    got = fetch(farm.url("/r1"))  # five hops
    assert (
        isinstance(got, Fetched) and got.final_url == farm.url("/r6") and got.url == farm.url("/r1")
    )
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch(farm.url("/r0"))  # six hops


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("file:///etc/passwd", "redirect to a non-http URL 'file:///etc/passwd'"),
        ("ftp://ex.com/feed", "redirect to a non-http URL 'ftp://ex.com/feed'"),
        ("javascript:alert(1)", "invalid URL"),
    ],
)
def test_redirects_to_other_schemes_are_refused(farm: Farm, target: str, reason: str) -> None:
    farm.routes["/r"] = Answer(302, headers={"Location": target})
    with pytest.raises(FetchError) as info:
        fetch(farm.url("/r"))
    assert info.value.reason.startswith(reason)


def test_size_cap_counts_decompressed_bytes(farm: Farm) -> None:
    big = b"<rss>" + b"x" * 200_000 + b"</rss>"
    farm.routes["/plain"] = Answer(200, big)
    farm.routes["/gzip"] = Answer(200, gzip.compress(big), {"Content-Encoding": "gzip"})
    farm.routes["/deflate"] = Answer(200, zlib.compress(big), {"Content-Encoding": "deflate"})
    raw = zlib.compressobj(wbits=-15)
    farm.routes["/raw-deflate"] = Answer(
        200, raw.compress(big) + raw.flush(), {"Content-Encoding": "deflate"}
    )
    for path in ("/plain", "/gzip", "/deflate", "/raw-deflate"):
        with pytest.raises(FetchError, match="larger than the 100,000-byte limit"):
            fetch(farm.url(path), max_bytes=100_000)
        got = fetch(farm.url(path), max_bytes=300_000)
        assert isinstance(got, Fetched) and got.content == big, path


def test_gzip_with_several_members(farm: Farm) -> None:
    farm.routes["/multi"] = Answer(
        200, gzip.compress(b"<rss>") + gzip.compress(b"</rss>"), {"Content-Encoding": "gzip"}
    )
    got = fetch(farm.url("/multi"))
    assert isinstance(got, Fetched) and got.content == b"<rss></rss>"


def test_corrupt_gzip(farm: Farm) -> None:
    farm.routes["/bad"] = Answer(200, b"not gzip at all", {"Content-Encoding": "gzip"})
    with pytest.raises(FetchError, match="corrupt gzip body"):
        fetch(farm.url("/bad"))


def test_gzip_bomb_is_abandoned_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB inside ~64 KiB
    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            for i in range(0, len(bomb), 1024):
                sent.append(i)
                yield bomb[i : i + 1024]

        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=body())

    started = time.monotonic()
    with pytest.raises(FetchError, match="larger than"):
        fetch("http://bomb.test/", transport=httpx.MockTransport(handler), max_bytes=1024 * 1024)
    assert time.monotonic() - started < 5
    assert len(bomb) // 1024 > 50
    assert len(sent) <= 3, "stopped reading after the first chunks"


def test_total_deadline(farm: Farm) -> None:
    def slow(request: Request) -> Answer:
        time.sleep(1.5)
        return Answer(200, FEED)

    farm.routes["/slow"] = slow
    with pytest.raises(FetchError, match=r"no complete answer within 0\.5 s"):
        fetch(farm.url("/slow"), deadline=0.5)


def test_connection_refused() -> None:
    with pytest.raises(FetchError, match="cannot connect"):
        fetch("http://127.0.0.1:9/feed")


def test_unsupported_content_encoding(farm: Farm) -> None:
    farm.routes["/br"] = Answer(200, b"xx", {"Content-Encoding": "br"})
    with pytest.raises(FetchError, match="unsupported Content-Encoding 'br'"):
        fetch(farm.url("/br"))
