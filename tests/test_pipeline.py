from __future__ import annotations

from pathlib import Path

from aggregator.archive import Archive
from aggregator.config import load_config
from aggregator.models import Config
from aggregator.pipeline import ERROR, NEW, UNCHANGED, run_pass
from tests.conftest import StepClock, write_config
from tests.farm import Answer, Farm, Request, rss
from tests.feedcheck import check_outputs

RSS = {"Content-Type": "application/rss+xml"}


def items(*names: str, host: str = "news.example") -> list[dict[str, str]]:
    return [
        {"title": f"Story {n}", "link": f"https://{host}/{n}", "description": f"<p>{n}</p>"}
        for n in names
    ]


def setup(tmp_path: Path, farm: Farm, feeds: dict[str, object], **top: object) -> Config:
    """Serve each path → body (or Answer/handler) and write a config polling them."""
    for path, body in feeds.items():
        farm.routes[path] = Answer(200, body, RSS) if isinstance(body, bytes) else body  # type: ignore[assignment]
    return load_config(write_config(tmp_path, [{"url": farm.url(p)} for p in feeds], **top))


def archived_keys(config: Config) -> list[str]:
    with Archive(config.archive) as arc:
        return sorted(i.key for i in arc.state.items())


def post_files(config: Config) -> list[Path]:
    return sorted((config.archive / "_posts").rglob("*.md"))


def test_one_pass_end_to_end(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    cfg = setup(tmp_path, farm, {"/a": rss(items("1", "2"), title="Feed A")})
    result = run_pass(cfg, clock=clock)
    assert [(r.name, r.outcome, r.new) for r in result.results] == [("Feed A", NEW, 2)]
    assert result.published
    assert len(post_files(cfg)) == 2
    assert check_outputs(cfg.archive) == 2


def test_dedupe_within_a_feed(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    body = rss(
        [
            {"title": "First", "link": "https://news.example/x?utm_source=rss"},
            {"title": "Again", "link": "https://NEWS.example:443/x#comments"},
            {"title": "Other", "link": "https://news.example/y?id=1&fbclid=abc"},
        ]
    )
    cfg = setup(tmp_path, farm, {"/a": body})
    assert run_pass(cfg, clock=clock).new == 2
    assert archived_keys(cfg) == ["//news.example/x", "//news.example/y?id=1"]


def test_dedupe_across_two_feeds(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    a = rss(items("shared", "a-only"))
    b = rss(
        [
            {
                "title": "Same story, other feed",
                "link": "https://News.Example/shared?utm_medium=feed&utm_source=b",
            },
            {"title": "B only", "link": "https://news.example/b-only"},
        ]
    )
    cfg = setup(tmp_path, farm, {"/a": a, "/b": b})
    result = run_pass(cfg, clock=clock)
    assert result.new == 3
    assert archived_keys(cfg) == [f"//news.example/{k}" for k in ("a-only", "b-only", "shared")]
    assert len(post_files(cfg)) == 3


def test_dedupe_across_runs_without_conditional_get(
    tmp_path: Path, farm: Farm, clock: StepClock
) -> None:
    bodies = iter([rss(items("1", "2")), rss(items("3", "2", "1"))])
    cfg = setup(tmp_path, farm, {"/a": lambda r: Answer(200, next(bodies), RSS)})
    assert run_pass(cfg, clock=clock).new == 2
    second = run_pass(cfg, clock=clock)
    assert (second.new, second.results[0].outcome) == (1, NEW)
    assert len(post_files(cfg)) == 3
    assert check_outputs(cfg.archive) == 3


def test_not_modified_ends_the_feed_pass(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    def handler(request: Request) -> Answer:
        if request.headers.get("if-none-match") == '"e1"':
            return Answer(304, headers={"ETag": '"e2"'})  # a 304 may carry new validators
        return Answer(200, rss(items("1")), {**RSS, "ETag": '"e1"'})

    cfg = setup(tmp_path, farm, {"/a": handler})
    run_pass(cfg, clock=clock)
    before = (cfg.archive / "feed.xml").stat().st_mtime_ns
    second = run_pass(cfg, clock=clock)
    assert [(r.outcome, r.new) for r in second.results] == [(UNCHANGED, 0)]
    assert not second.published
    assert (cfg.archive / "feed.xml").stat().st_mtime_ns == before
    with Archive(cfg.archive) as arc:
        assert (status := arc.state.status(cfg.feeds[0].url)) and status.validators.etag == '"e2"'
    # A missing output is rebuilt even when nothing changed.
    (cfg.archive / "atom.xml").unlink()
    assert run_pass(cfg, clock=clock).published
    assert check_outputs(cfg.archive) == 1


def test_validators_are_stored_only_after_a_successful_parse(
    tmp_path: Path, farm: Farm, clock: StepClock
) -> None:
    bodies = iter([b"<html><body>maintenance</body></html>", rss(items("1"))])

    def handler(request: Request) -> Answer:
        return Answer(200, next(bodies), {"Content-Type": "text/html", "ETag": '"same"'})

    cfg = setup(tmp_path, farm, {"/a": handler})
    first = run_pass(cfg, clock=clock)
    assert first.results[0].outcome == ERROR
    assert first.results[0].error and first.results[0].error.startswith("not a feed")
    second = run_pass(cfg, clock=clock)
    assert "if-none-match" not in farm.requests_to("/a")[1].headers
    assert second.new == 1


def test_one_bad_feed_never_stops_the_others(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    cfg = setup(
        tmp_path,
        farm,
        {
            "/good1": rss(items("1")),
            "/missing": Answer(404, b"no"),
            "/garbage": Answer(
                200, b"\x00\xff" * 500, {"Content-Type": "application/octet-stream"}
            ),
            "/error": Answer(500, b"oops"),
            "/good2": rss(items("2", host="other.example")),
        },
    )
    result = run_pass(cfg, clock=clock)
    outcomes = {r.url.rsplit("/", 1)[1]: (r.outcome, r.error) for r in result.results}
    assert outcomes["good1"] == (NEW, None) and outcomes["good2"] == (NEW, None)
    assert outcomes["missing"] == (ERROR, "HTTP 404 Not Found")
    assert outcomes["error"] == (ERROR, "HTTP 500 Internal Server Error")
    assert outcomes["garbage"][0] == ERROR and outcomes["garbage"][1].startswith("not a feed")
    assert check_outputs(cfg.archive) == 2
    with Archive(cfg.archive) as arc:
        record = arc.state.status(farm.url("/missing"))
        assert record and record.outcome == ERROR and record.http_status == 404


def test_a_huge_feed_is_cut_to_its_newest_max_entries(
    tmp_path: Path, farm: Farm, clock: StepClock
) -> None:
    entries = [
        {
            "title": f"n{i}",
            "link": f"https://ex.com/{i}",
            "pubDate": f"{1 + i % 28:02d} Jan 20{10 + i // 28:02d} 00:00:00 GMT",
        }
        for i in range(100)
    ]
    entries.insert(50, {"title": "undated", "link": "https://ex.com/undated"})
    cfg = setup(tmp_path, farm, {"/big": rss(entries)}, max_entries=10)
    result = run_pass(cfg, clock=clock)
    assert result.new == 10
    assert archived_keys(cfg) == sorted(f"//ex.com/{i}" for i in range(90, 100))


def test_feed_names_and_tags_reach_the_posts(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    farm.routes["/a"] = Answer(200, rss(items("1"), title="Own Title"), RSS)
    farm.routes["/b"] = Answer(200, rss(items("2"), title="Ignored"), RSS)
    cfg = load_config(
        write_config(
            tmp_path,
            [
                {"url": farm.url("/a"), "tags": ["t1"]},
                {"url": farm.url("/b"), "name": "Chosen", "tags": ["x", "y"]},
            ],
        )
    )
    run_pass(cfg, clock=clock)
    texts = {p.read_text() for p in post_files(cfg)}
    assert any("author: Own Title\n" in t and "tags: [ Own Title, t1 ]\n" in t for t in texts)
    assert any(
        "author: Chosen\n" in t and "tags: [ Chosen, x, y ]\ncategories: [ Chosen ]\n" in t
        for t in texts
    )
