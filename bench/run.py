"""The benchmark (``make bench``): aggregator vs lemon24/reader's command line vs newsboat
vs the parse floor, side by side on a loopback farm, then the scaling runs. Writes
bench/RESULTS.md.

Every figure is the wall time of a whole process, from start to exit, as a user runs it.
Tools alternate within each round (A B C, then B C A, ...) so that a noisy neighbour on
this shared machine hurts all of them alike; medians are reported with min and max.

Each peer runs at its best: reader's ``update`` at 1, 4 and 16 workers, the best median
of the three being the one compared (at 2,000 feeds, the worker count best at 200);
newsboat with ``reload-threads 16`` (its most parallel setting that the farm's hosts
take). Subscribing (reader's ``add``, newsboat's url file, the aggregator's feeds.yaml)
is not timed.

    python bench/run.py                # everything (about 40 minutes on 2 cores)
    python bench/run.py --small-only   # the 200-feed side by side only (about 10 minutes)
    python bench/run.py --quick        # a tiny farm, one round: checks that it all runs
"""

from __future__ import annotations

import argparse
import compileall
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


READER_WORKERS = (1, 4, 16)
NEWSBOAT_THREADS = 16


def reader_add(db: Path, urls: Path) -> None:
    timed([PY, str(BENCH / "reader_add.py"), str(db), str(urls)])


def reader_update(db: Path, workers: int) -> list[str]:
    return [
        PY,
        "-m",
        "reader",
        "--db",
        str(db),
        "update",
        "--no-scheduled",
        "--workers",
        str(workers),
    ]


def newsboat(folder: Path, urls: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config"
    config.write_text(f"reload-threads {NEWSBOAT_THREADS}\n")
    return [
        "newsboat",
        "-u",
        str(urls),
        "-c",
        str(folder / "cache.db"),
        "-C",
        str(config),
        "-x",
        "reload",
    ]


def floor(urls: Path) -> list[str]:
    return [PY, str(BENCH / "floor.py"), str(urls)]


COMMANDS = {
    "aggregator": "aggregator poll -q -c feeds.yaml",
    **{
        f"reader-{n}": f"python -m reader --db reader.sqlite update --no-scheduled --workers {n}"
        for n in READER_WORKERS
    },
    "newsboat": f"newsboat -u urls.txt -c cache.db -C config -x reload (config: reload-threads {NEWSBOAT_THREADS})",
    "floor": "python bench/floor.py urls.txt",
}
READERS = [f"reader-{n}" for n in READER_WORKERS]
PROFILES: dict[tuple[int, int], str] = {}  # bench/profile.py's tables, by farm size


def command(tool: str, scratch: Path, urls: Path, cold: bool) -> list[str]:
    """The timed command of ``tool`` with its state in ``scratch`` (set up, untimed, when
    it does not exist yet)."""
    if tool == "aggregator":
        return agg_poll(scratch, urls)
    if tool.startswith("reader-"):
        db = scratch / "reader.sqlite"
        if not db.exists():
            scratch.mkdir(parents=True, exist_ok=True)
            reader_add(db, urls)
            if not cold:
                timed(reader_update(db, int(tool.split("-")[1])))
        return reader_update(db, int(tool.split("-")[1]))
    if tool == "newsboat":
        return newsboat(scratch, urls)
    return floor(urls)


def best_reader(series: dict[str, Series]) -> str:
    return min((t for t in series if t.startswith("reader-")), key=lambda t: series[t].median)


def rotate(items: list[str], by: int) -> list[str]:
    by %= len(items)
    return items[by:] + items[:by]


def compare(
    size: tuple[int, int], rounds: int, work: Path, readers: list[str], full: bool
) -> dict[str, dict[str, Series]]:
    """Cold, warm and churn passes of each tool on one farm. ``full``: newsboat and the
    parse floor too."""
    feeds, items = size
    name = f"{feeds} × {items}"
    results: dict[str, dict[str, Series]] = {}
    work = work / f"{feeds}x{items}"  # (each scenario's folders, kept: see cold below)
    work.mkdir()
    with farm(feeds, items, work) as urls:
        # cold: an empty archive / database each time. Nothing is deleted until the end
        # of the benchmark: on an ext4 without a journal, each file created within
        # minutes of many deletions costs its creator a look at every recently freed
        # inode (here a cold pass after deleting the last one's posts took 4.5 s instead
        # of 3.5), a cost the deleting benchmark, not the tool, would cause.
        tools = ["aggregator", *readers] + (["newsboat", "floor"] if full else [])
        cold = {t: Series(f"cold {name}, {t}", COMMANDS[t]) for t in tools}
        for r in range(rounds):
            for tool in rotate(tools, r):
                scratch = work / f"cold-{tool}-{r}"
                cmd = command(tool, scratch, urls, cold=True)
                cold[tool].times.append(timed(cmd))
                print(f"  {cold[tool].label}: {cold[tool].times[-1]:.2f}s", flush=True)
        results["cold"] = cold
        if full:  # where the aggregator's time goes, on the same farm (before any churn)
            profiled = subprocess.run(
                [PY, str(BENCH / "profile.py"), str(urls), "5", str(work)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            PROFILES[size] = profiled.stdout.strip()
        # warm: everything unchanged, every feed answers 304 (newsboat sends no
        # conditional request: it reads every feed again)
        again = ["aggregator", *readers] + (["newsboat"] if full else [])
        commands = {}
        for tool in again:
            commands[tool] = command(tool, work / f"warm-{tool}", urls, cold=False)
            if tool in ("aggregator", "newsboat"):
                timed(commands[tool])  # the first pass fills it
        warm = {t: Series(f"warm {name}, {t}", COMMANDS[t]) for t in again}
        churned = {t: Series(f"churn {name}, {t}", COMMANDS[t]) for t in again}
        for r in range(rounds):
            for tool in rotate(again, r):
                warm[tool].times.append(timed(commands[tool]))
                print(f"  {warm[tool].label}: {warm[tool].times[-1]:.2f}s", flush=True)
        # churn: 10 % of the feeds gain 2 items before each round
        for r in range(rounds):
            churn(urls, seed=r + 1)
            for tool in rotate(again, r):
                churned[tool].times.append(timed(commands[tool]))
                print(f"  {churned[tool].label}: {churned[tool].times[-1]:.2f}s", flush=True)
        results["warm"], results["churn"] = warm, churned
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
    parser.add_argument("--small-only", action="store_true", help="the 200-feed comparison only")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    args = parser.parse_args()
    if shutil.which("newsboat") is None:
        raise SystemExit("newsboat is not installed (Debian: apt-get install newsboat)")
    rounds = 1 if args.quick else args.rounds
    sizes = [(10, 3)] if args.quick else [(200, 20)] if args.small_only else [(200, 20), (2000, 20)]
    # Bytecode, as `pip install` compiles it (an editable install otherwise compiles the
    # package at each start where PYTHONDONTWRITEBYTECODE is set).
    compileall.compile_dir(BENCH.parent / "aggregator", quiet=1)
    from scale import scaling

    with tempfile.TemporaryDirectory(prefix="aggregator-bench-") as tmp:
        work = Path(tmp)
        side_by_side = {}
        for size in sizes:
            print(f"{size[0]} feeds × {size[1]} items", flush=True)
            small = side_by_side.get(sizes[0])
            readers = READERS if small is None else [best_reader(small["cold"])]
            side_by_side[size] = compare(size, rounds, work, readers, full=small is None)
        scale = [] if args.small_only else scaling(work, quick=args.quick)
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

    def med(size: tuple[int, int], scenario: str, tool: str) -> float:
        return side_by_side[size][scenario][tool].median

    def ratio(size: tuple[int, int], scenario: str, tool: str, target: str) -> str:
        value = med(size, scenario, "aggregator") / med(size, scenario, tool)
        return f"| {scenario} {size[0]}×{size[1]}: aggregator / {tool} | {value:.2f} | {target} |"

    cold_best = best_reader(side_by_side[small]["cold"])
    warm_best = best_reader(side_by_side[small]["warm"])
    lines += [
        "",
        f"reader's best at {small[0]} feeds: {cold_best} cold, {warm_best} warm"
        f" (of {', '.join(READERS)}); at more feeds it runs as {cold_best}.",
        "",
        "## Ratios (medians)",
        "",
        "| comparison | ratio | target |",
        "| --- | --- | --- |",
        ratio(small, "cold", cold_best, "≤ 0.4"),
        ratio(small, "cold", "newsboat", "≤ 1.0"),
        ratio(small, "cold", "floor", "≤ 1.0"),
        ratio(small, "warm", warm_best, "≤ 0.5"),
        ratio(small, "churn", best_reader(side_by_side[small]["churn"]), "(no target)"),
    ]
    for big in rest:
        lines.append(
            f"| cold {big[0]}×{big[1]} / cold {small[0]}×{small[1]} (aggregator) | {med(big, 'cold', 'aggregator') / med(small, 'cold', 'aggregator'):.2f} | ≤ 11 |"
        )
        lines.append(ratio(big, "cold", cold_best, "< 0.5"))
        lines.append(ratio(big, "warm", cold_best, "(no target)"))
    for size, table in PROFILES.items():
        lines += [
            "",
            f"## Where the time goes ({size[0]} × {size[1]}, `python bench/profile.py urls.txt`)",
            "",
            table,
        ]
    lines += ["", *scale, "", "## Commands", ""]
    lines += [f"- {tool}: `{command}`" for tool, command in COMMANDS.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
