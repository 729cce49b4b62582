"""Scaling runs: publish and warm-pass time as the archive grows; the daemon's start-up
time and peak memory with 2,000 feeds and 100,000 posts. Called by bench/run.py."""

from __future__ import annotations

import contextlib
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from run import PY, agg_config, farm, timed

from aggregator.archive import Archive
from aggregator.config import load_config
from aggregator.models import Entry
from aggregator.process import make_post
from aggregator.publish import publish
from aggregator.state import ItemRecord
from farm import content

OLD = datetime(2020, 1, 1, tzinfo=UTC)


def generate(root: Path, count: int) -> None:
    """An archive of ``count`` posts like real ones (not fsynced: this is test data)."""
    records = []
    with Archive(root) as archive:
        for i in range(count):
            entry = Entry(
                title=f"Archived story {i}", link=f"https://old.example/{i}", guid=None,
                content=content(i % 997, i), base="https://old.example/", published=OLD + timedelta(minutes=i),
            )  # fmt: skip
            post = make_post(
                entry, feed_url=f"https://old.example/feed/{i % 300}", name=f"Old source {i % 300}",
                tags=("old",), archived=OLD + timedelta(minutes=i, seconds=30), site_link="https://old.example/",
            )  # fmt: skip
            path = root / post.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(post.text)
            records.append(
                ItemRecord(
                    post.key, post.feed_url, post.title, post.path, post.published, post.archived
                )
            )
        archive.state.replace_items(records)


def time_publish(folder: Path, root: Path) -> float:
    """Seconds of one publish() over the archive at ``root``."""
    config_path = folder / f"publish-{root.name}.yaml"
    config_path.write_text(f"link: http://127.0.0.1:8080/\narchive: {root}\nfeeds: []\n")
    config = load_config(config_path)
    with Archive(root) as archive:
        started = time.perf_counter()
        publish(config, archive, datetime.now(UTC))
        return time.perf_counter() - started


def stats(times: list[float]) -> str:
    return f"{min(times):.3f} | {statistics.median(times):.3f} | {max(times):.3f}"


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """VmHWM of the process, and of it plus its children (the parse workers)."""

    def hwm(p: int) -> float:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    main = hwm(pid)
    return main, main + sum(hwm(c) for c in children)


def daemon_run(
    work: Path, urls: Path, archive: Path, feeds: int, full_pass: bool = True
) -> tuple[float, float, float, float]:
    """Start-up seconds, seconds to a full pass, peak RSS of the daemon and with workers."""
    folder = work / "daemon"
    config = agg_config(folder, urls)
    config.write_text(
        config.read_text().replace(
            "feeds:\n", f"archive: {archive}\nserve: {{port: 18090}}\nfeeds:\n", 1
        )
    )
    started = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "aggregator", "run", "-q", "-c", str(config)])
    try:
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen("http://127.0.0.1:18090/healthz", timeout=1).read()
                break
            time.sleep(0.05)
        startup = time.perf_counter() - started
        while True:
            text = (
                urllib.request.urlopen("http://127.0.0.1:18090/metrics", timeout=5).read().decode()
            )
            polls = sum(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("aggregator_polls_total")
            )
            if polls >= (feeds if full_pass else 1):
                break
            time.sleep(1)
        full_pass = time.perf_counter() - started
        time.sleep(2)  # let the last publish happen
        main, total = peak_rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    return startup, full_pass, main, total


def scaling(work: Path, quick: bool) -> list[str]:
    sizes = [100, 1_000] if quick else [1_000, 10_000, 100_000]
    lines = ["## Scaling", "", "### Publish (in-process `publish()`, 7 runs of each, alternating)", "",
             "| posts in archive | min | median | max |", "| --- | --- | --- | --- |"]  # fmt: skip
    for size in sizes:
        print(f"generating {size} posts", flush=True)
        generate(work / f"archive-{size}", size)
    publish_times: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(7):  # alternating, like every other comparison here
        for size in sizes:
            publish_times[size].append(time_publish(work, work / f"archive-{size}"))
    publish_medians = {size: statistics.median(times) for size, times in publish_times.items()}
    for size in sizes:
        lines.append(f"| {size:,} | {stats(publish_times[size])} |")
    lines.append(
        f"\nRatio {sizes[-1]:,} / {sizes[0]:,}: **{publish_medians[sizes[-1]] / publish_medians[sizes[0]]:.2f}** (target ≤ 1.5)\n"
    )

    lines += ["### Warm pass (`aggregator poll`, 200 × 20 farm all answering 304, 5 runs of each, alternating)", "",
              "| posts in archive | min | median | max |", "| --- | --- | --- | --- |"]  # fmt: skip
    configs = {}
    with farm(10 if quick else 200, 3 if quick else 20, work, port=18085) as urls:
        for size in [0, *sizes]:
            config = agg_config(work / f"warm-{size}", urls)
            if size:
                text = config.read_text()
                config.write_text(
                    text.replace("feeds:\n", f"archive: {work / f'archive-{size}'}\nfeeds:\n", 1)
                )
            timed([PY, "-m", "aggregator", "poll", "-q", "-c", str(config)])  # cold: validators
            configs[size] = config
        warm_times: dict[int, list[float]] = {size: [] for size in configs}
        for _ in range(5):  # alternating
            for size, config in configs.items():
                warm_times[size].append(
                    timed([PY, "-m", "aggregator", "poll", "-q", "-c", str(config)])
                )
    warm = {size: statistics.median(times) for size, times in warm_times.items()}
    for size, times in warm_times.items():
        lines.append(f"| {size:,} (+ the farm's own posts) | {stats(times)} |")
    lines.append(
        f"\nRatio {sizes[-1]:,} posts / empty: **{warm[sizes[-1]] / warm[0]:.2f}** (target ≤ 1.5)\n"
    )

    feeds = 20 if quick else 2000
    with farm(feeds, 3 if quick else 20, work, port=18086) as urls:
        startup, full_pass, main, total = daemon_run(
            work, urls, work / f"archive-{sizes[-1]}", feeds, full_pass=not quick
        )
    lines += [
        f"### Daemon (`aggregator run`, {feeds:,} feeds, {sizes[-1]:,} posts already archived)", "",
        f"- start-up, from exec to answering `/healthz`: **{startup:.2f} s**",
        f"- first full pass (due feeds are spread over the first minute by design): {full_pass:.1f} s",
        f"- peak RSS after the full pass: **{main:.0f} MiB** for the daemon, {total:.0f} MiB with its parse workers (target ≤ 200 MiB)",
    ]  # fmt: skip
    return lines


if __name__ == "__main__":
    sys.exit("run bench/run.py")
