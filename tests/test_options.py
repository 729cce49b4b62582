"""Per-feed options: title, include, exclude, strip, image_proxy, full_content."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.archive import Archive
from aggregator.config import load_config
from aggregator.errors import ConfigError
from aggregator.models import Config, Post
from aggregator.pipeline import run_pass
from tests.conftest import StepClock, write_config
from tests.farm import Answer, Farm

RSS = {"Content-Type": "application/rss+xml"}


def feed(*items: tuple[str, str, str]) -> bytes:
    """RSS 2.0 whose items are (title, description, content:encoded); empty parts omitted."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">'
        "<channel><title>Source</title><link>https://src.example/</link>"
    ]
    for i, (title, summary, content) in enumerate(items):
        parts.append(f"<item><title>{title}</title><link>https://src.example/{i}</link>")
        if summary:
            parts.append(f"<description><![CDATA[{summary}]]></description>")
        if content:
            parts.append(f"<content:encoded><![CDATA[{content}]]></content:encoded>")
        parts.append("</item>")
    return "".join([*parts, "</channel></rss>"]).encode()


def poll(
    tmp_path: Path, farm: Farm, body: bytes, clock: StepClock, **options: object
) -> list[Post]:
    """Archive ``body`` served as one feed with ``options``; the posts, oldest first."""
    farm.routes["/f"] = Answer(200, body, RSS)
    top = {"image_proxy": "https://proxy.example/?u={url}"}
    path = write_config(tmp_path, [{"url": farm.url("/f"), "name": "Src", **options}], **top)
    config = load_config(path)
    run_pass(config, clock=clock)
    return posts(config)


def posts(config: Config) -> list[Post]:
    with Archive(config.archive) as archive:
        records = sorted(archive.state.items(), key=lambda r: r.path)
        return [archive.read_post(r.path) for r in records]


STORIES = feed(
    ("Python 3.14 released", "<p>short</p>", "<p>Long text about snakes.</p><div class='promo'>Buy!</div>"),
    ("Sponsored: a new phone", "<p>ad</p>", "<p>Phones.</p>"),
    ("Rust news", "", "<p>All about PYTHON bindings.</p><footer>mirror footer</footer>"),
)  # fmt: skip


def test_defaults_keep_everything(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    got = poll(tmp_path, farm, STORIES, clock)
    assert sorted(p.title for p in got) == [
        "Python 3.14 released",
        "Rust news",
        "Sponsored: a new phone",
    ]
    snakes = next(p for p in got if p.title.startswith("Python"))
    assert "Long text about snakes." in snakes.content and "Buy!" in snakes.content


def test_title_template(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    got = poll(tmp_path, farm, STORIES, clock, title="[{name}] {title}")
    assert sorted(p.title for p in got)[0] == "[Src] Python 3.14 released"
    assert all(p.title.startswith("[Src] ") for p in got)
    assert "-src-python-3-14-released-" in sorted(p.path for p in got if "python" in p.path)[0]


def test_include_matches_title_or_text_ignoring_case(
    tmp_path: Path, farm: Farm, clock: StepClock
) -> None:
    got = poll(tmp_path, farm, STORIES, clock, include="python")
    assert sorted(p.title for p in got) == ["Python 3.14 released", "Rust news"]  # text: PYTHON


def test_exclude(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    got = poll(tmp_path, farm, STORIES, clock, exclude="^sponsored:")
    assert sorted(p.title for p in got) == ["Python 3.14 released", "Rust news"]


def test_strip_removes_boilerplate_before_filters(
    tmp_path: Path, farm: Farm, clock: StepClock
) -> None:
    got = poll(tmp_path, farm, STORIES, clock, strip=[".promo", "footer"], exclude="buy!|mirror")
    assert len(got) == 3  # the excluded words were only in what `strip` removed
    joined = "".join(p.content for p in got)
    assert "Buy!" not in joined and "mirror footer" not in joined
    assert "Long text about snakes." in joined and "All about PYTHON bindings." in joined


def test_full_content_false_keeps_the_summary(tmp_path: Path, farm: Farm, clock: StepClock) -> None:
    long = "<p>" + "word " * 200 + "</p>"
    body = feed(
        ("With summary", "<p>short</p>", "<p>the long version</p>"), ("No summary", "", long)
    )
    got = {p.title: p.content for p in poll(tmp_path, farm, body, clock, full_content=False)}
    assert got["With summary"] == "<p>short</p>"
    assert got["No summary"].startswith("word word") and got["No summary"].endswith("…")
    assert len(got["No summary"]) <= 300


IMAGE = feed(("Pic", "", '<p><img src="https://cdn.example/a.png"></p>'))


@pytest.mark.parametrize(
    ("option", "src"),
    [
        ({}, "https://proxy.example/?u=cdn.example/a.png"),
        ({"image_proxy": "https://mine.example/{url}"}, "https://mine.example/cdn.example/a.png"),
        ({"image_proxy": False}, "https://cdn.example/a.png"),
    ],
)
def test_image_proxy_per_feed(
    tmp_path: Path, farm: Farm, clock: StepClock, option: dict[str, object], src: str
) -> None:
    (post,) = poll(tmp_path, farm, IMAGE, clock, **option)
    assert f'src="{src}"' in post.content


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"include": "("}, "feeds[0].include: is not a valid regular expression"),
        ({"exclude": ""}, "feeds[0].exclude: must not be empty"),
        ({"strip": ["div["]}, "feeds[0].strip[0]: is not a valid CSS selector"),
        ({"strip": "footer"}, "feeds[0].strip: must be a list"),
        ({"title": "{name} only"}, "feeds[0].title: must contain {title}"),
        (
            {"image_proxy": True},
            "feeds[0].image_proxy: must be a URL template with {url}, or false",
        ),
        ({"image_proxy": "https://x.example/"}, "feeds[0].image_proxy: must contain {url}"),
        ({"full_content": "no"}, "feeds[0].full_content: must be true or false"),
    ],
)
def test_invalid_options_name_the_key(
    tmp_path: Path, option: dict[str, object], message: str
) -> None:
    path = write_config(tmp_path, [{"url": "https://a.example/feed", **option}])
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)


def test_options_do_not_change_an_items_identity() -> None:
    """An item without link or GUID is keyed by a hash of its title and date: the key must
    not follow the feed's options (a title template, strip), or changing them would
    archive its items again."""
    from datetime import UTC, datetime

    from aggregator.models import ItemRules
    from aggregator.workers import Job, prepare

    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>B</title>'
        b"<item><title>Bare</title><description>&lt;p&gt;x&lt;/p&gt;&lt;p class='ad'&gt;y"
        b"&lt;/p&gt;</description></item></channel></rss>"
    )

    def keys(rules: ItemRules) -> list[tuple[str, str]]:
        job = Job(body, "https://b.example/f", "application/rss+xml", "https://b.example/f",
                  "B", "B", (), datetime(2024, 1, 1, tzinfo=UTC), None, 100, rules)  # fmt: skip
        return [(p.key, p.title) for p in prepare(job).posts]

    ((plain_key, plain_title),) = keys(ItemRules())
    ((shaped_key, shaped_title),) = keys(ItemRules(title="[{name}] {title}", strip=(".ad",)))
    assert (plain_title, shaped_title) == ("Bare", "[B] Bare")
    assert shaped_key == plain_key and plain_key.startswith("urn:sha256:")
