"""feedparser's own test corpus (2,100 feeds: well-formed, ill-formed, odd encodings,
entities), served from loopback and run through the whole pipeline."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import frontmatter
import pytest
import yaml

from aggregator.archive import Archive
from aggregator.config import load_config
from aggregator.errors import ParseError
from aggregator.parsers import parse_feed
from aggregator.pipeline import ERROR, run_pass
from aggregator.posts import EXTRA_KEYS, item_identity, key_for
from aggregator.process import is_junk
from tests.conftest import DATA, StepClock, write_config
from tests.farm import Answer, Farm
from tests.feedcheck import check_outputs

CORPUS = DATA / "feedparser" / "corpus.tar.gz"
HEADER = re.compile(rb"^Header:\s*([A-Za-z-]+):\s*(.*?)\s*$", re.M)


def corpus_files(into: Path) -> list[Path]:
    with tarfile.open(CORPUS) as tar:
        tar.extractall(into, filter="data")
    return sorted(p for p in into.rglob("*") if p.is_file())


def answer_for(path: Path) -> Answer:
    """Serve the file with the headers its test description asks for."""
    body = path.read_bytes()
    headers = {"Content-Type": "application/json" if path.suffix == ".json" else "application/xml"}
    for name, value in HEADER.findall(body[:2000]):
        key = name.decode("latin-1").title()
        headers[key] = value.decode("latin-1")
    return Answer(200, body, headers)


@pytest.mark.slow
def test_every_corpus_feed_goes_through_the_pipeline(tmp_path: Path, farm: Farm) -> None:
    files = corpus_files(tmp_path / "corpus")
    assert len(files) > 2000
    for i, path in enumerate(files):
        farm.routes[f"/{i}/{path.name}"] = answer_for(path)
    config = load_config(
        write_config(
            tmp_path,
            [{"url": farm.url(route)} for route in farm.routes],
            max_items=10_000,
            max_in_flight_per_host=16,  # the whole corpus is served by one loopback host
        )
    )

    result = run_pass(config, clock=StepClock())

    assert len(result.results) == len(files)
    errors = [r for r in result.results if r.outcome == ERROR]
    assert not [r for r in errors if r.error is None or "internal error" in r.error]
    assert all("\n" not in (r.error or "") for r in errors)
    ok = len(result.results) - len(errors)
    assert ok > 1500, f"only {ok} of {len(files)} corpus feeds were read"

    posts = sorted((config.archive / "_posts").rglob("*.md"))
    # Every item worth a post is archived once: not the ones with nothing to show (most
    # of the corpus's items test one element alone: a guid, a date, an author), and one
    # post per key (many link to the same example.org pages).
    expected = set()
    for path in files:
        body = path.read_bytes()
        try:
            parsed = parse_feed(
                body, "http://127.0.0.1/" + path.name, answer_for(path).headers["Content-Type"]
            )
        except ParseError:
            continue
        expected |= {key_for(item_identity(e)[0]) for e in parsed.entries if not is_junk(e)}
    assert len(posts) == len(expected) > 200
    for post in posts:
        text = post.read_text(encoding="utf-8")
        head = yaml.safe_load(text.split("---\n")[1])
        meta = frontmatter.loads(text).metadata
        assert meta == head
        keys = list(head)
        assert keys[:7] == ["layout", "title", "date", "author", "from", "tags", "categories"]
        assert keys[7:] == [k for k in EXTRA_KEYS if k in keys[7:]]
        assert isinstance(head["title"], str) and head["title"]
        assert head["categories"] == [head["author"]] and head["tags"][0] == head["author"]
    with Archive(config.archive) as arc:
        assert arc.state.count() == len(posts)
        assert arc.state.pending() == []
    assert check_outputs(config.archive) == len(posts)
    print(f"corpus: {len(files)} feeds, {ok} read, {len(errors)} refused, {len(posts)} posts")
