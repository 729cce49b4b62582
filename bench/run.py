"""The benchmark (``make bench``): aggregator vs lemon24/reader vs the parse floor, side by
side on a loopback farm, then the scaling runs. Writes bench/RESULTS.md.

Every figure is the wall time of a whole process, from start to exit, as a user runs it.
Tools alternate within each round (A B C, then B C A, ...) so that a noisy neighbour on
this shared machine hurts all of them alike; medians are reported with min and max.

    python bench/run.py                # everything (about 40 minutes on 2 cores)
    python bench/run.py --quick        # a tiny farm, one round: checks that it all runs
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PY = sys.executable


@dataclass
class Series:
    label: str
    command: str
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def row(self) -> str:
        return (
            f"| {self.label} | {len(self.times)} | {min(self.times):.2f} | {self.median:.2f} |"
            f" {max(self.times):.2f} |"
        )


@contextlib.contextmanager
def farm(feeds: int, items: int, work: Path, port: int = 18080) -> Iterator[Path]:
    urls = work / f"urls-{feeds}x{items}.txt"
    proc = subprocess.Popen(
        [PY, str(BENCH / "farm.py"), "--feeds", str(feeds), "--items", str(items), "--port", str(port), "--urls", str(urls)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("READY"):
        raise SystemExit("the farm did not start")
    try:
        yield urls
    finally:
        proc.terminate()
        proc.wait()


def churn(urls: Path, seed: int) -> None:
    host = urls.read_text().split()[0].rsplit("/feed/", 1)[0]
    urllib.request.urlopen(f"{host}/_churn?seed={seed}&share=0.1&new=2").read()


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    run = subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stderr[-2000:]}")
    return elapsed


def agg_config(folder: Path, urls: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    feeds = "".join(f"  - url: {u}\n" for u in urls.read_text().split())
    path = folder / "feeds.yaml"
    path.write_text(f"title: Bench\nlink: http://127.0.0.1:8080/\nfeeds:\n{feeds}")
    return path


def agg_poll(folder: Path, urls: Path) -> list[str]:
    return [PY, "-m", "aggregator", "poll", "-q", "-c", str(agg_config(folder, urls))]


def reader_update(db: Path, urls: Path) -> list[str]:
    return [PY, str(BENCH / "reader_update.py"), str(db), str(urls)]


def floor(urls: Path) -> list[str]:
    return [PY, str(BENCH / "floor.py"), str(urls)]


COMMANDS = {
    "aggregator": "aggregator poll -q -c feeds.yaml",
    "reader": "python bench/reader_update.py reader.sqlite urls.txt",
    "floor": "python bench/floor.py urls.txt",
}


def rotate(items: list[str], by: int) -> list[str]:
    by %= len(items)
    return items[by:] + items[:by]


def compare(
    size: tuple[int, int], rounds: int, work: Path, with_floor: bool
) -> dict[str, dict[str, Series]]:
    feeds, items = size
    name = f"{feeds} × {items}"
    results: dict[str, dict[str, Series]] = {}
    with farm(feeds, items, work) as urls:
        # cold: an empty archive / database each time
        tools = ["aggregator", "reader"] + (["floor"] if with_floor else [])
        cold = {t: Series(f"cold {name}, {t}", COMMANDS[t]) for t in tools}
        for r in range(rounds):
            for tool in rotate(tools, r):
                scratch = work / f"cold-{tool}-{r}"
                scratch.mkdir()
                if tool == "aggregator":
                    cmd = agg_poll(scratch, urls)
                elif tool == "reader":
                    cmd = reader_update(scratch / "reader.sqlite", urls)
                else:
                    cmd = floor(urls)
                cold[tool].times.append(timed(cmd))
                shutil.rmtree(scratch)
                print(f"  {cold[tool].label}: {cold[tool].times[-1]:.2f}s", flush=True)
        results["cold"] = cold
        # warm: everything unchanged, every feed answers 304
        agg_home, reader_db = work / "warm-agg", work / "warm-reader.sqlite"
        timed(agg_poll(agg_home, urls))
        timed(reader_update(reader_db, urls))
        warm = {t: Series(f"warm {name}, {t}", COMMANDS[t]) for t in ("aggregator", "reader")}
        churned = {t: Series(f"churn {name}, {t}", COMMANDS[t]) for t in ("aggregator", "reader")}
        commands = {
            "aggregator": agg_poll(agg_home, urls),
            "reader": reader_update(reader_db, urls),
        }
        for r in range(rounds):
            for tool in rotate(["aggregator", "reader"], r):
                warm[tool].times.append(timed(commands[tool]))
                print(f"  {warm[tool].label}: {warm[tool].times[-1]:.2f}s", flush=True)
        # churn: 10 % of the feeds gain 2 items before each round
        for r in range(rounds):
            churn(urls, seed=r + 1)
            for tool in rotate(["aggregator", "reader"], r):
                churned[tool].times.append(timed(commands[tool]))
                print(f"  {churned[tool].label}: {churned[tool].times[-1]:.2f}s", flush=True)
        results["warm"], results["churn"] = warm, churned
        shutil.rmtree(agg_home)
        reader_db.unlink()
    return results


def commit() -> str:
    """The commit measured (with "+changes" when the work tree differs from it)."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=BENCH.parent, capture_output=True, text=True, check=False
        )
        return out.stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no")
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+changes" if changed else "")


def machine() -> str:
    mem = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        "?",
    )
    return (
        f"`nproc` {os.cpu_count()}, memory {int(mem) / 1024 / 1024:.1f} GiB, {platform.platform()},"
        f" Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny farm, one round (a smoke test)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    sizes = [(10, 3)] if args.quick else [(200, 20), (2000, 20)]
    from scale import scaling

    with tempfile.TemporaryDirectory(prefix="aggregator-bench-") as tmp:
        work = Path(tmp)
        side_by_side = {}
        for size in sizes:
            print(f"{size[0]} feeds × {size[1]} items", flush=True)
            side_by_side[size] = compare(size, rounds, work, with_floor=size == sizes[0])
        scale = scaling(work, quick=args.quick)
    report = render(side_by_side, scale, sizes, rounds, args.quick)
    args.out.write_text(report)
    print(report)


def render(side_by_side, scale, sizes, rounds, quick) -> str:  # type: ignore[no-untyped-def]
    small, *rest = sizes
    lines = [
        "# Benchmark results",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · commit {commit()} · {machine()}"
        + (" · **quick smoke run, not a measurement**" if quick else ""),
        "",
        f"Command: `make bench` (`python bench/run.py`). {rounds} runs of each tool per scenario,"
        " alternating within each round. Times are seconds of wall clock for a whole process.",
        "",
        "| run | n | min | median | max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for size in sizes:
        for scenario in ("cold", "warm", "churn"):
            for series in side_by_side[size][scenario].values():
                lines.append(series.row())
    lines += [
        "",
        "## Ratios (medians)",
        "",
        "| comparison | ratio | target |",
        "| --- | --- | --- |",
    ]

    def med(size: tuple[int, int], scenario: str, tool: str) -> float:
        return side_by_side[size][scenario][tool].median

    lines.append(
        f"| cold {small[0]}×{small[1]}: aggregator / reader | {med(small, 'cold', 'aggregator') / med(small, 'cold', 'reader'):.2f} | ≤ 0.5 |"
    )
    lines.append(
        f"| cold {small[0]}×{small[1]}: aggregator / parse floor | {med(small, 'cold', 'aggregator') / med(small, 'cold', 'floor'):.2f} | ≤ 1.0 |"
    )
    lines.append(
        f"| warm {small[0]}×{small[1]}: aggregator / reader | {med(small, 'warm', 'aggregator') / med(small, 'warm', 'reader'):.2f} | ≤ 0.7 |"
    )
    lines.append(
        f"| churn {small[0]}×{small[1]}: aggregator / reader | {med(small, 'churn', 'aggregator') / med(small, 'churn', 'reader'):.2f} | (no target) |"
    )
    for big in rest:
        lines.append(
            f"| cold {big[0]}×{big[1]} / cold {small[0]}×{small[1]} (aggregator) | {med(big, 'cold', 'aggregator') / med(small, 'cold', 'aggregator'):.2f} | ≤ 11 |"
        )
        lines.append(
            f"| cold {big[0]}×{big[1]}: aggregator / reader | {med(big, 'cold', 'aggregator') / med(big, 'cold', 'reader'):.2f} | < 0.5 |"
        )
        lines.append(
            f"| warm {big[0]}×{big[1]}: aggregator / reader | {med(big, 'warm', 'aggregator') / med(big, 'warm', 'reader'):.2f} | (no target) |"
        )
    lines += ["", *scale, "", "## Commands", ""]
    lines += [f"- {tool}: `{command}`" for tool, command in COMMANDS.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
