"""The benchmark is run by hand (`make bench`); this only checks that it runs, on a tiny
farm, and writes a report with every section."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import debian_program

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_the_benchmark_runs_on_a_tiny_farm(tmp_path: Path) -> None:
    debian_program("newsboat", "newsboat")  # (a peer: `make bench` installs it)
    report = tmp_path / "RESULTS.md"
    run = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--out", str(report)],
        capture_output=True, text=True, timeout=600, check=False, cwd=BENCH,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    text = report.read_text()
    for needle in (
        "cold 10 × 3, aggregator", "cold 10 × 3, reader-1", "cold 10 × 3, reader-16",
        "cold 10 × 3, newsboat", "cold 10 × 3, floor", "warm 10 × 3, reader-4",
        "churn 10 × 3, aggregator", "reader's best at 10 feeds", "## Ratios",
        "aggregator / newsboat", "## Where the time goes", "| parse workers busy |", "| sanitize |",
        "### Publish", "### Warm pass", "### Daemon", "quick smoke run, not a measurement",
    ):  # fmt: skip
        assert needle in text, needle
