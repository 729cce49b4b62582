"""Where the wall time of a pass goes: a cold pass then a warm one over the farm's feeds,
in this process, with a timer around each stage; the median of 5 such pairs (the
machine is noisy). Usage: python bench/profile.py URLS [ROUNDS [FOLDER]]; the archives
are made in FOLDER and kept there (default: a temporary folder, removed at the end).

Stages of the main process: start-up (imports, feeds.yaml, opening the index), write
(post files), sync (making them durable), index (SQLite: the items and the feeds'
statuses), publish. The batches of posts are written in a thread of their own, so write,
sync and most of index overlap the event loop's work (HTTP, scheduling) rather than add
up with it. Stages that overlap by nature (the requests in flight, the parse workers)
are given as the wall time during which at least one was under way. The parse workers'
split (parse, sanitize, render) is their CPU time, measured again in this process on the
same bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

spent: defaultdict[str, float] = defaultdict(float)
spans: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
counting = threading.Lock()


def add_timer(
    owner: Any,
    name: str,
    stage: str,
    into: defaultdict[str, float] = spent,
    clock: Callable[[], float] = time.perf_counter,
) -> Callable[[], None]:
    """Count the time of ``owner.name`` (a function, not a coroutine) in ``into[stage]``;
    return what puts the function back."""
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return inner(*args, **kwargs)
        finally:
            with counting:  # (called from the writer thread and the event loop's)
                into[stage] += clock() - started

    setattr(owner, name, timed)
    return lambda: setattr(owner, name, inner)


def add_span(owner: Any, name: str, stage: str) -> None:
    """Record when each call of the coroutine ``owner.name`` was under way."""
    inner = getattr(owner, name)

    @functools.wraps(inner)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await inner(*args, **kwargs)
        finally:
            spans[stage].append((started, time.perf_counter()))

    setattr(owner, name, timed)


def covered(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def one_pass(config_path: Path) -> dict[str, float]:
    spent.clear()
    spans.clear()
    started = time.perf_counter()
    from aggregator import cli

    config = cli._load(config_path)
    from aggregator import archive as archive_module
    from aggregator import pipeline, publish, state

    if not getattr(pipeline, "_profiled", False):  # (the timers, once)
        pipeline._profiled = True  # type: ignore[attr-defined]
        add_timer(archive_module.Archive, "_write_temp", "write")
        add_timer(archive_module, "flush_files", "sync")
        add_timer(archive_module, "fsync_path", "sync")
        for method in ("reserve", "confirm", "known_keys", "paths_taken", "save_statuses", "changed", "note_digests"):  # fmt: skip
            add_timer(state.State, method, "index")
        add_timer(publish, "publish", "publish")
        add_span(pipeline, "fetch_feed", "requests in flight")
        add_span(pipeline.Workers, "prepare", "parse workers busy")
    with archive_module.Archive(config.archive) as archive:
        archive.prepare(config.feeds, datetime.now(UTC))
        spent["start-up"] = time.perf_counter() - started
        polling = time.perf_counter()

        asyncio.run(pipeline.poll_all(config, archive))
        wall = time.perf_counter() - polling
    result = {"start-up": spent["start-up"]}
    for stage in ("write", "sync", "index", "publish"):
        result[stage] = spent[stage]
    result["pass (start-up excluded)"] = wall
    for stage in ("requests in flight", "parse workers busy"):
        result[stage] = covered(spans[stage])
    return result


def worker_split(urls: list[str]) -> dict[str, float]:
    """CPU seconds of parse, sanitize and render for every body, in this process."""
    import httpx

    from aggregator import parsers, process, workers
    from aggregator.models import ItemRules

    cpu: defaultdict[str, float] = defaultdict(float)
    bodies = [httpx.get(url).content for url in urls]
    undo = [
        add_timer(owner, name, stage, cpu, time.process_time)
        for owner, name, stage in (
            (parsers, "parse_feed", "parse"),
            (process, "sanitize_html", "sanitize"),
            (process, "make_post", "render (sanitize included)"),
        )
    ]
    for url, body in zip(urls, bodies, strict=True):
        job = workers.Job(
            body, url, None, url, None, url, (), datetime.now(UTC), None, 100, ItemRules()
        )
        workers.prepare(job)
    for restore in undo:
        restore()
    cpu["render"] = cpu.pop("render (sanitize included)") - cpu["sanitize"]
    return dict(cpu)


def main() -> None:
    urls_file = Path(sys.argv[1])
    urls = urls_file.read_text().split()
    interpreter = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - interpreter
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    colds, warms = [], []
    feeds = "".join(f"  - url: {u}\n" for u in urls)
    with contextlib.ExitStack() as stack:
        if len(sys.argv) > 3:
            folder = Path(sys.argv[3])
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aggregator-")))
        for round_ in range(rounds):  # (each archive kept until the end: see run.py's cold)
            config = folder / f"profile-{round_}" / "feeds.yaml"
            config.parent.mkdir(parents=True)
            config.write_text(f"title: Bench\nlink: http://127.0.0.1:8080/\nfeeds:\n{feeds}")
            colds.append(one_pass(config))
            warms.append(one_pass(config))  # (imports done: start-up is feeds.yaml and the index)
    split = worker_split(urls)
    print(f"Python's own start (`python -c pass`): {bare:.3f} s. Medians of {rounds} pairs; the")
    print("first cold pass's start-up includes the imports, the others' do not.\n")
    print("| stage | cold pass (s) | warm pass (s) |\n| --- | --- | --- |")
    print(f"| start-up, imports included | {colds[0]['start-up']:.3f} | |")
    for stage in colds[0]:
        cold = statistics.median(c[stage] for c in colds[1:] or colds)
        warm = statistics.median(w[stage] for w in warms)
        print(f"| {stage} | {cold:.3f} | {warm:.3f} |")
    print(
        "\n| parse workers, CPU of all the cold pass's bodies in one process | s |\n| --- | --- |"
    )
    for stage, seconds in split.items():
        print(f"| {stage} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
