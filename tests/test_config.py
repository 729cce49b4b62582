from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.config import ENV_VAR, load_config, resolve_config_path
from aggregator.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def test_valid_config_with_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "feeds:\n  - url: https://example.com/feed.xml\n  - url: http://b.example/rss\n"
        "    name: B\n    tags: [x, y, x]\n",
    )
    config = load_config(path)
    assert config.archive == tmp_path / "archive"
    assert config.max_items == 100
    assert config.max_feed_bytes == 10 * 1024 * 1024
    assert config.image_proxy is None and config.user_agent is None
    assert [f.url for f in config.feeds] == ["https://example.com/feed.xml", "http://b.example/rss"]
    assert config.feeds[0].name is None and config.feeds[0].tags == ()
    assert config.feeds[1].name == "B" and config.feeds[1].tags == ("x", "y")
    assert config.feeds[1].line == 3
    assert config.interval == 3600 and config.feeds[0].interval == 3600
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert (config.max_in_flight, config.max_in_flight_per_host) == (16, 2)
    with pytest.raises(AttributeError):
        config.title = "changed"  # type: ignore[misc]


def test_intervals_and_serve(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "interval: 2h\nserve: {host: 0.0.0.0, port: 9000}\nmax_in_flight: 4\n"
        "feeds:\n  - url: https://a.example/\n    interval: 1h30m\n  - url: https://b.example/\n",
    )
    config = load_config(path)
    assert [f.interval for f in config.feeds] == [5400, 7200]
    assert (config.host, config.port, config.max_in_flight) == ("0.0.0.0", 9000, 4)


def test_archive_is_relative_to_the_config_file(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    path = write(sub, "archive: ../site\nfeeds: []\n")
    assert load_config(path).archive.resolve() == (tmp_path / "site").resolve()


def test_shipped_feeds_yaml_is_valid() -> None:
    config = load_config(ROOT / "feeds.yaml")
    assert len(config.feeds) >= 3
    assert all(f.url.startswith("https://") for f in config.feeds)


def test_config_path_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_config_path(None) == Path("feeds.yaml")
    monkeypatch.setenv(ENV_VAR, "/etc/agg.yaml")
    assert resolve_config_path(None) == Path("/etc/agg.yaml")
    assert resolve_config_path("mine.yaml") == Path("mine.yaml")


def test_every_problem_is_reported_with_file_line_and_key_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "title: ok\n"  # 1
        "colour: blue\n"  # 2
        "max_items: lots\n"  # 3
        "feeds:\n"  # 4
        "  - url: https://a.example/feed\n"  # 5
        "  - url: ftp://b.example/feed\n"  # 6
        "  - url: https://c.example/feed\n"  # 7
        "    name: 42\n"  # 8
        "    tgas: [x]\n"  # 9
        "  - name: no url\n",  # 10
    )
    found = problems(path)
    assert found == [
        f"{path}:2: colour: unknown key (allowed: title, link, description, archive, max_items,"
        " image_proxy, media, media_limits, user_agent, max_feed_bytes, max_entries, workers, interval, serve, max_in_flight,"
        " max_in_flight_per_host, podcast, tags, feeds)",
        f"{path}:3: max_items: must be an integer, got str 'lots'",
        f"{path}:6: feeds[1].url: must be an http:// or https:// URL, not 'ftp://b.example/feed'",
        f"{path}:8: feeds[2].name: must be a string, got int 42",
        f"{path}:9: feeds[2].tgas: unknown key (allowed: url, name, tags, interval, title, include, exclude, strip, image_proxy, full_content, updates, full_text, media, auth, headers, cookie, proxy, user_agent, verify_tls)",
        f"{path}:10: feeds[3].url: is required",
    ]


def test_duplicate_feed_urls(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "feeds:\n  - url: https://a.example/feed\n  - url: https://b.example/\n"
        "  - url: HTTPS://A.example:443/feed#x\n",
    )
    assert problems(path) == [
        f"{path}:4: feeds[2].url: duplicate feed URL, already at feeds[0] (line 2)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("feeds:\n  - url: [unclosed\n", ":3: invalid YAML: while parsing a flow sequence"),
        ("title: a\ntitle: b\nfeeds: []\n", ":2: title: duplicate key (first at line 1)"),
        ("", ": file is empty"),
        ("# only a comment\n", ": file is empty"),
        ("- a\n- b\n", ":1: the top level must be a mapping"),
        ("title: x\n", ":1: feeds: is required"),
        ("feeds:\n", ":1: feeds: must be a list, got an empty value"),
        ("feeds: []\nlink: ftp://x/\n", ":2: link: must be an http:// or https:// URL"),
        ("feeds: []\nimage_proxy: https://p.example/\n", ":2: image_proxy: must contain {url}"),
        ('feeds: []\nuser_agent: "a\\nb"\n', ":2: user_agent: must be printable ASCII"),
        ("feeds: []\nmax_items: 0\n", ":2: max_items: must be at least 1"),
        ("feeds: []\nmax_items: true\n", ":2: max_items: must be an integer, got bool True"),
        (
            "feeds:\n  - url: https://a.example/\n    tags: [ok, '']\n",
            ":3: feeds[0].tags[1]: must not be empty",
        ),
        ("feeds: []\ninterval: 1m\n", ":2: interval: must be at least 5m, not 1m"),
        (
            "feeds: []\ninterval: 3600\n",
            ":2: interval: must be a duration such as 15m, 2h or 1d, not 3600",
        ),
        (
            "feeds:\n  - url: https://a.example/\n    interval: soon\n",
            ":3: feeds[0].interval: 'soon' is not a duration",
        ),
        (
            "feeds: []\nserve:\n  port: 70000\n",
            ":3: serve.port: must be at most 65535",
        ),
        ("feeds: []\nserve:\n  hots: x\n", ":3: serve.hots: unknown key (allowed: host, port)"),
    ],
)
def test_invalid_files(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(write(tmp_path, text))
    assert any(p.startswith(str(tmp_path / "feeds.yaml") + expected) for p in found), found


def test_yaml_errors_say_where_the_construct_began(tmp_path: Path) -> None:
    (found,) = problems(write(tmp_path, "feeds:\n  - url: [unclosed\n"))
    assert found.startswith(
        f"{tmp_path / 'feeds.yaml'}:3: invalid YAML: while parsing a flow sequence"
    )
    assert found.endswith("(the construct opened at line 2)")


def test_unreadable_files(tmp_path: Path) -> None:
    assert problems(tmp_path / "absent.yaml")[0].endswith(
        "file not found (point -c/--config or $AGGREGATOR_CONFIG at feeds.yaml)"
    )
    big = tmp_path / "feeds.yaml"
    big.write_text("feeds: []\n" + "#" * (2 * 1024 * 1024))
    assert "must be under" in problems(big)[0]
    big.write_bytes(b"title: ok\nfeeds: []\ndescription: caf\xe9\n")
    assert problems(big) == [f"{big}:3: not UTF-8 text"]


def test_check_command_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, "feeds:\n  - url: https://a.example/feed\n")
    run = subprocess.run(
        [sys.executable, "-m", "aggregator", "check", "-c", str(good)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "OK, 1 feeds" in run.stdout

    good.write_text("feeds:\n  - url: gopher://a.example/\n")
    for command in ("check", "poll", "run", "serve", "status", "reindex"):
        run = subprocess.run(
            [sys.executable, "-m", "aggregator", command, "-c", str(good)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert run.returncode == 2, (command, run.stdout, run.stderr)
        assert f"{good}:2: feeds[0].url: must be an http:// or https:// URL" in run.stderr
    assert not (tmp_path / "archive").exists(), "nothing may be written on an invalid config"
