from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.farm import Farm

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def farm() -> Iterator[Farm]:
    with Farm().running() as f:
        yield f


class StepClock:
    """A clock that starts at ``start`` and moves one second per call."""

    def __init__(self, start: datetime = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


def write_config(tmp_path: Path, feeds: list[dict[str, object]], **top: object) -> Path:
    """Write a feeds.yaml into ``tmp_path`` and return its path."""
    import yaml

    data = {"title": "Test merged feed", "link": "http://127.0.0.1:8080/", **top, "feeds": feeds}
    path = tmp_path / "feeds.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
