"""Private and difficult sources: basic auth, headers, cookies, secret query parameters,
proxies, TLS without checks; and the promise that no secret leaks anywhere."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aggregator.access import Access
from aggregator.config import load_config
from aggregator.errors import FetchError
from aggregator.fetch import FetchSettings, fetch_feed, make_client
from aggregator.models import Validators
from aggregator.secrets import ScrubFilter, public_url, register, scrub
from aggregator.sources.opml import export_opml, import_opml
from tests.farm import Answer, Farm, Request, rss
from tests.test_daemon import wait_for
from tests.test_scheduler import free_port

PASSWORD = "pw-7f3a9c2e5b1d4"  # (each secret is long and unique, so a search is exact)
URL_PASSWORD = "urlpw-91d2e6b0a7c3"
API_KEY = "key-4c8e1a6f0b9d2"
COOKIE = "session=ck-2b7d9f4a1e6c3"
TOKEN = "tok-8a1f5c3e9b7d0"
PROXY_PASSWORD = "proxypw-3e9c1a7b5d2f"
SECRETS = (PASSWORD, URL_PASSWORD, API_KEY, COOKIE.split("=")[1], TOKEN, PROXY_PASSWORD)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def guarded(check: str, items: list[dict[str, str]], title: str):  # type: ignore[no-untyped-def]
    """A route that answers the feed only to a request carrying what ``check`` says."""

    def answer(request: Request) -> Answer:
        headers, path = request.headers, request.path
        allowed = {
            "basic": headers.get("authorization") == basic("alice", PASSWORD),
            "url-basic": headers.get("authorization") == basic("carol", URL_PASSWORD),
            "header": headers.get("x-api-key") == API_KEY,
            "cookie": headers.get("cookie") == COOKIE,
            "token": path.endswith(f"?token={TOKEN}&lang=en"),
        }[check]
        if not allowed:
            return Answer(401, b"who are you?", {"WWW-Authenticate": 'Basic realm="x"'})
        return Answer(200, rss(items, title=title), {"Content-Type": "application/rss+xml"})

    return answer


def stories(prefix: str) -> list[dict[str, str]]:
    return [
        {
            "title": f"{prefix} story {i}",
            "link": f"https://{prefix}.example/{i}",
            "pubDate": f"Wed, 0{i + 1} May 2024 10:00:00 GMT",
            "description": f"<p>{prefix} text {i}</p>",
        }
        for i in range(2)
    ]


@pytest.fixture
def private(tmp_path: Path, farm: Farm) -> tuple[Path, dict[str, str], int]:
    """A farm of four private feeds and the feeds.yaml (with a daemon port) for them."""
    for check in ("basic", "url-basic", "header", "cookie", "token"):
        farm.routes[f"/{check}"] = guarded(check, stories(check), f"Private {check}")
    (tmp_path / "cookie.txt").write_text(COOKIE + "\n")
    netloc = farm.base.removeprefix("http://")
    port = free_port()
    config = tmp_path / "feeds.yaml"
    config.write_text(
        f"title: Private\nlink: http://127.0.0.1:{port}/\n"
        f"serve: {{host: 127.0.0.1, port: {port}}}\nfeeds:\n"
        f"  - url: {farm.url('/basic')}\n"
        "    tags: [work]\n"
        "    auth: {username: alice, password_env: FEED_PASSWORD}\n"
        f"  - url: http://carol:{URL_PASSWORD}@{netloc}/url-basic\n"
        f"  - url: {farm.url('/header')}\n"
        "    headers: {X-Api-Key: {env: FEED_API_KEY}}\n"
        f"  - url: {farm.url('/cookie')}\n"
        "    cookie: {file: cookie.txt}\n"
        f"  - url: {farm.url('/token')}?token={TOKEN}&lang=en\n"
    )
    env = {**os.environ, "FEED_PASSWORD": PASSWORD, "FEED_API_KEY": API_KEY}
    return config, env, port


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aggregator", *args],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in SECRETS if s.encode() in data]


@pytest.mark.slow
def test_private_feeds_are_read_and_their_secrets_appear_nowhere(
    private: tuple[Path, dict[str, str], int], farm: Farm, tmp_path: Path
) -> None:
    """A full pass, status, check, an export and a daemon run, all at debug level: every
    private feed is read with its credentials, and no secret is in any output, log, file
    of the archive (posts, merged feeds, the index) or page the daemon serves."""
    config, env, port = private
    outputs: dict[str, str | bytes] = {}
    passed = run(env, "poll", "-v", "-c", str(config))
    assert passed.returncode == 0, passed.stderr
    outputs |= {"poll stdout": passed.stdout, "poll log": passed.stderr}
    # The debug log has every request line, the secret query value masked:
    assert f"HTTP Request: GET {farm.url('/token')}?token=***&lang=en" in passed.stderr
    for name in ("status", "check", "export-opml"):
        done = run(env, name, "-c", str(config))
        assert done.returncode == 0, done.stderr
        outputs |= {f"{name} stdout": done.stdout, f"{name} log": done.stderr}
    assert 'credentials="left out"' in outputs["export-opml stdout"]

    log = tmp_path / "daemon.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "run", "-v", "-c", str(config)],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def served(path: str) -> bytes | None:
            try:
                response = httpx.get(base + path, timeout=5)
            except httpx.HTTPError:
                return None
            return response.content if response.status_code == 200 else None

        wait_for(lambda: served("/healthz") is not None, "the daemon")
        for path in ("/", "/feed.xml", "/atom.xml", "/feed.json", "/opml.xml", "/healthz",
                     "/metrics", "/tags/work/", "/tags/work/feed.xml"):  # fmt: skip
            page = served(path)
            assert page is not None, path
            outputs[f"GET {path}"] = page
    finally:
        daemon.send_signal(signal.SIGINT)
        assert daemon.wait(timeout=30) == 0
    outputs["daemon log"] = log.read_bytes()
    archive = tmp_path / "archive"
    files = [p for p in archive.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite3" for p in files) and len(files) > 10
    outputs |= {str(p.relative_to(tmp_path)): p.read_bytes() for p in files}

    found = {where: leaks(text) for where, text in outputs.items() if leaks(text)}
    assert found == {}
    # ... and every feed was read with its credentials:
    posts = [p.read_text() for p in archive.rglob("*.md")]
    for check in ("basic", "url-basic", "header", "cookie", "token"):
        assert sum(f'title: "{check} story' in p for p in posts) == 2, check
    atom = outputs["GET /atom.xml"]
    assert isinstance(atom, bytes)
    assert f"{farm.url('/token')}?lang=en".encode() in atom  # its public URL, as its source


def test_credentials_go_to_their_origin_only(farm: Farm) -> None:
    """A redirect within the origin keeps the credentials; one to another origin (another
    port of the same host) does not get them."""
    with Farm().running() as other:
        feed = rss(stories("moved"))
        other.routes["/elsewhere"] = Answer(200, feed)
        farm.routes["/private"] = Answer(302, b"", {"Location": farm.url("/same")})
        farm.routes["/same"] = Answer(302, b"", {"Location": other.url("/elsewhere")})
        access = Access(
            url=farm.url("/private"), username="alice", password=PASSWORD,
            headers=(("X-Api-Key", API_KEY),), cookie=COOKIE, user_agent="private-agent/1",
        )  # fmt: skip

        async def fetch() -> object:
            async with make_client(FetchSettings("agent")) as client:
                return await fetch_feed(
                    client, access.url, Validators(), FetchSettings("agent"), access
                )

        fetched = asyncio.run(fetch())
        assert getattr(fetched, "content", None) == feed
        for path in ("/private", "/same"):
            (request,) = farm.requests_to(path)
            assert request.headers["authorization"] == basic("alice", PASSWORD)
            assert request.headers["x-api-key"] == API_KEY
            assert request.headers["cookie"] == COOKIE
        (away,) = other.requests_to("/elsewhere")
        assert not {"authorization", "x-api-key", "cookie"} & set(away.headers)
        assert away.headers["user-agent"] == "private-agent/1"  # not a secret


def test_a_permanent_move_to_another_origin_takes_no_credentials_there(
    tmp_path: Path, farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed moved (301) to another origin: neither the poll that learns it nor the
    polls that then go straight to the new URL send the credentials there."""
    from aggregator.pipeline import run_pass
    from tests.conftest import StepClock

    monkeypatch.setenv("FEED_PASSWORD", PASSWORD)
    with Farm().running() as other:
        other.routes["/new"] = Answer(200, rss(stories("moved")))
        farm.routes["/old"] = Answer(301, b"", {"Location": other.url("/new")})
        (tmp_path / "feeds.yaml").write_text(
            f"feeds:\n  - url: {farm.url('/old')}\n"
            "    auth: {username: alice, password_env: FEED_PASSWORD}\n"
            "    cookie: {env: FEED_PASSWORD}\n"
        )
        config = load_config(tmp_path / "feeds.yaml")
        clock = StepClock()
        for _ in range(2):
            run_pass(config, clock=clock)
        assert farm.requests_to("/old")[0].headers["authorization"] == basic("alice", PASSWORD)
        moved = other.requests_to("/new")
        assert len(moved) == 2 and len(farm.requests_to("/old")) == 1  # the move was kept
        for request in moved:
            assert "authorization" not in request.headers and "cookie" not in request.headers


def test_a_secret_http_cannot_send_is_missing_and_never_said(
    private: tuple[Path, dict[str, str], int], farm: Farm
) -> None:
    config, env, _ = private
    (config.parent / "cookie.txt").write_text("session=line-one-secret\nline-two-secret\n")
    checked = run(env, "check", "-c", str(config))
    assert checked.returncode == 2
    assert "holds a line break or a character HTTP cannot send" in checked.stderr
    passed = run(env, "poll", "-v", "-c", str(config))
    assert passed.returncode == 1 and farm.requests_to("/cookie") == []
    said = checked.stdout + checked.stderr + passed.stdout + passed.stderr
    assert "line-one-secret" not in said and "line-two-secret" not in said


def test_check_names_missing_secrets_and_warns_without_printing_them(
    private: tuple[Path, dict[str, str], int], farm: Farm
) -> None:
    config, env, _ = private
    del env["FEED_API_KEY"]
    (config.parent / "cookie.txt").unlink()
    checked = run(env, "check", "-c", str(config))
    assert checked.returncode == 2
    said = checked.stderr
    assert "feeds[2].headers.X-Api-Key: environment variable FEED_API_KEY is not set" in said
    assert "feeds[3].cookie: cannot read" in said and "cookie.txt" in said
    assert "feeds[1].url: a password written in feeds.yaml" in said  # a warning only
    assert leaks(checked.stdout + checked.stderr) == []
    # A pass reads the feeds it can, and says why the others were not fetched.
    passed = run(env, "poll", "-c", str(config))
    assert passed.returncode == 1
    assert "not fetched: environment variable FEED_API_KEY is not set" in passed.stdout
    assert farm.requests_to("/header") == [] and len(farm.requests_to("/basic")) == 1
    assert leaks(passed.stdout + passed.stderr) == []


def test_a_feed_through_an_http_proxy_with_credentials(tmp_path: Path) -> None:
    """The proxy gets the request (absolute URL) and its credentials; the proxy's
    password is in no message."""
    with Farm().running() as proxy:
        proxy.routes["http://feeds.invalid/news"] = Answer(200, rss(stories("proxied")))
        config = tmp_path / "feeds.yaml"
        netloc = proxy.base.removeprefix("http://")
        config.write_text(
            "feeds:\n  - url: http://feeds.invalid/news\n"
            f"    proxy: http://me:{PROXY_PASSWORD}@{netloc}\n"
        )
        done = run(dict(os.environ), "poll", "-v", "-c", str(config))
        assert done.returncode == 0, done.stderr
        (request,) = proxy.requests_to("http://feeds.invalid/news")
        assert request.headers["proxy-authorization"] == basic("me", PROXY_PASSWORD)
        assert leaks(done.stdout + done.stderr) == []
        assert len(list((tmp_path / "archive").rglob("*.md"))) == 2


@pytest.fixture
def tls_farm() -> Iterator[str]:
    """An HTTPS server with a certificate no one trusts, serving /feed."""
    trustme = pytest.importorskip("trustme")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    with Farm(tls=context).running() as farm:
        farm.routes["/feed"] = Answer(200, rss(stories("tls")))
        yield farm.url("/feed")


def test_verify_tls_false_reads_a_self_signed_feed_and_check_warns(
    tls_farm: str, tmp_path: Path
) -> None:
    checked = tmp_path / "checked"
    checked.mkdir()
    (checked / "feeds.yaml").write_text(f"feeds:\n  - url: {tls_farm}\n")
    refused = run(dict(os.environ), "poll", "-c", str(checked / "feeds.yaml"))
    assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stdout
    (tmp_path / "feeds.yaml").write_text(f"feeds:\n  - url: {tls_farm}\n    verify_tls: false\n")
    accepted = run(dict(os.environ), "poll", "-c", str(tmp_path / "feeds.yaml"))
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert len(list((tmp_path / "archive").rglob("*.md"))) == 2
    warned = run(dict(os.environ), "check", "-c", str(tmp_path / "feeds.yaml"))
    assert warned.returncode == 0
    assert "feeds[0].verify_tls: is false" in warned.stderr


def test_an_export_leaves_credentials_out_and_its_import_says_so(
    private: tuple[Path, dict[str, str], int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, env, _ = private
    for name in ("FEED_PASSWORD", "FEED_API_KEY"):
        monkeypatch.setenv(name, env[name])
    exported = export_opml(load_config(config), {})
    assert leaks(exported) == []
    assert exported.count(b'credentials="left out"') == 5
    assert b"token=" not in exported and b"carol" not in exported  # public URLs only
    opml = tmp_path / "feeds.opml"
    opml.write_bytes(exported)
    report = import_opml(tmp_path / "new.yaml", opml)
    assert report.added == []
    assert [why for _, why in report.skipped] == [
        "its credentials were left out of the export: add it by hand"
    ] * 5


def test_public_url_and_scrub() -> None:
    assert public_url("https://u:p%40ss@h.example/f?a=1&token=T0K&b=2") == (
        "https://h.example/f?a=1&b=2", ("T0K",), ("u", "p@ss"),
    )  # fmt: skip
    assert public_url("https://h.example/f?api_key=K&x=y") == (
        "https://h.example/f?x=y",
        ("K",),
        None,
    )
    assert public_url("https://h.example/f?q=1") == ("https://h.example/f?q=1", (), None)
    tracker = (
        "https://t.example/rss?passkey=P1111&authkey=A1111&torrent_pass=T1111&api-key=K1111&cat=4"
    )
    assert public_url(tracker) == (
        "https://t.example/rss?cat=4", ("P1111", "A1111", "T1111", "K1111"), None,
    )  # fmt: skip
    register(["tok/with+plus"])  # a log line shows it as a URL carries it
    assert scrub("GET /f?token=tok%2Fwith%2Bplus") == "GET /f?token=***"
    register(["scrub-me-7d1c"])
    assert scrub("a scrub-me-7d1c b") == "a *** b"
    error = FetchError("https://h.example/", "proxy said scrub-me-7d1c")
    assert "scrub-me-7d1c" not in str(error) and "scrub-me-7d1c" not in error.reason
    record = logging.LogRecord(
        "x", logging.DEBUG, __file__, 1, "GET %s", ("/?t=scrub-me-7d1c",), None
    )
    assert ScrubFilter().filter(record) and record.getMessage() == "GET /?t=***"
    assert (
        repr(Access("https://h.example/?token=T0K", "u", "pw-long")) == "Access(username, password)"
    )
    # A traceback in the JSON log survives the scrubbing, scrubbed.
    from aggregator.logs import JsonFormatter as _JsonFormatter

    try:
        raise RuntimeError("failed with scrub-me-7d1c")
    except RuntimeError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "oops", (), sys.exc_info())
    assert ScrubFilter().filter(failed)
    line = _JsonFormatter().format(failed)
    assert "RuntimeError: failed with ***" in line and "scrub-me-7d1c" not in line


def test_invalid_credential_settings_are_reported(tmp_path: Path) -> None:
    from aggregator.errors import ConfigError

    (tmp_path / "feeds.yaml").write_text(
        "feeds:\n"
        "  - url: https://a.example/f\n"
        "    auth: {username: bob}\n"
        "  - url: https://u:p@b.example/f\n"
        "    auth: {username: bob, password: x}\n"
        "  - url: https://c.example/f\n"
        "    headers: {Content-Length: '3', 'Bad Name': x, X-Ok: {env: 1BAD}}\n"
        "    proxy: ftp://proxy.example\n"
        "    full_text: 'div['\n"
        "    media: sometimes\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "feeds.yaml")
    said = [p.path + ": " + p.message for p in caught.value.problems]
    assert said == [
        "feeds[0].auth: needs exactly one of password, password_env or password_file",
        "feeds[1].url: has user:password@ and the feed has auth: keep only auth",
        "feeds[2].headers.Content-Length: is set by the HTTP client itself, not by feeds.yaml",
        "feeds[2].headers.Bad Name: is not a valid HTTP header name",
        "feeds[2].headers.X-Ok: must be a string, {env: VARIABLE} or {file: PATH}",
        "feeds[2].proxy: must be an http://, https://, socks5:// or socks5h:// URL",
        said[6],
        "feeds[2].media: must be keep, keep_enclosures or false, got str 'sometimes'",
    ]
    assert said[6].startswith("feeds[2].full_text: is not a valid CSS selector: ")
    assert "p@b" not in str(caught.value)
