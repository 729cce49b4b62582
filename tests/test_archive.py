from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator import archive as archive_module
from aggregator.archive import Archive
from aggregator.errors import ArchiveError
from aggregator.models import Entry, FeedStatus, Outcome, Post
from aggregator.process import make_post
from aggregator.state import State

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Crash(BaseException):
    """A simulated kill: nothing after it runs, no cleanup handler catches it."""


def posts(n: int, when: datetime = T0, prefix: str = "item") -> list[Post]:
    return [
        make_post(
            Entry(
                title=f"{prefix} {i}",
                link=f"https://ex.com/{prefix}/{i}",
                guid=None,
                content=f"<p>{prefix} {i}</p>",
                base="https://ex.com/",
                published=T0 - timedelta(hours=i),
            ),
            feed_url="https://ex.com/feed",
            name="Ex",
            tags=(),
            archived=when + timedelta(seconds=i),
            site_link="https://ex.com/",
        )
        for i in range(n)
    ]


def files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "_posts" in p.parts
    )


def assert_consistent(root: Path, keys: set[str]) -> None:
    """Each key once in the index and once on disk; no temp or stray files."""
    with Archive(root) as arc:
        assert arc.state.pending() == []
        items = list(arc.state.items())
    assert {i.key for i in items} == keys
    on_disk = files(root)
    assert not [f for f in on_disk if f.endswith(".tmp")], on_disk
    assert sorted(i.path for i in items) == on_disk
    for i in items:
        text = (root / i.path).read_text()
        assert text.startswith("---\n") and text.endswith("</div>\n")


def test_store_writes_posts_and_skips_known_keys(tmp_path: Path) -> None:
    batch = posts(3)
    with Archive(tmp_path) as arc:
        written = arc.store(batch + batch[:1])  # a key twice in one batch
        assert [p.key for p in written] == [p.key for p in batch]
        assert arc.store(posts(3, T0 + timedelta(days=1))) == []  # same keys, later: nothing
    assert (tmp_path / batch[0].path).read_text() == batch[0].text
    assert (tmp_path / ".aggregator" / ".gitignore").read_text().endswith("*\n")
    assert_consistent(tmp_path, {p.key for p in batch})


def test_colliding_file_names_get_a_longer_hash(tmp_path: Path) -> None:
    (first,) = posts(1)
    with Archive(tmp_path) as arc:
        arc.store([first])
        clash = Post(**{**{f: getattr(first, f) for f in Post.__slots__}, "key": "other-key"})
        (written,) = arc.store([clash])
    assert written.path != first.path and written.path.endswith(".md")
    assert len(written.path.rsplit("-", 1)[1]) == len("0123456789abcdef.md")


def crash_on_call(n: int, real: Callable[..., object]) -> Callable[..., object]:
    """Call ``real`` n-1 times, then crash."""
    calls = []

    def wrapper(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) >= n:
            raise Crash
        return real(*args, **kwargs)

    return wrapper


STEPS = {
    "after recording pending rows, before any file": ("Archive._write_temp", 1),
    "after the first temp file, before the second": ("Archive._write_temp", 2),
    "after the temp files, before making them durable": ("flush_files", 1),
    "after making them durable, before the renames": ("os.replace", 1),
    "after the first rename, before the second": ("os.replace", 2),
    "after the renames, before the folder fsync": ("fsync_path", 1),
    "after the folder fsync, before marking done": ("State.confirm", 1),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_kill_between_any_two_steps_loses_and_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    target, n = STEPS[step]
    batch = posts(4)
    arc = Archive(tmp_path)
    with monkeypatch.context() as m:
        if target == "os.replace":
            m.setattr(archive_module.os, "replace", crash_on_call(n, os.replace))
        elif target == "State.confirm":
            m.setattr(State, "confirm", crash_on_call(n, State.confirm))
        elif target == "Archive._write_temp":
            m.setattr(Archive, "_write_temp", crash_on_call(n, Archive._write_temp))
        else:
            m.setattr(archive_module, target, crash_on_call(n, getattr(archive_module, target)))
        with pytest.raises(Crash):
            arc.store(batch)
        arc.state._db.close()  # the process dies: no cleanup runs
    # Before recovery, a post is whole or absent: never a partial file under its name.
    for post in batch:
        final = tmp_path / post.path
        assert not final.exists() or final.read_text() == post.text
    # Restart: recover, then the next poll offers the same items again (later clock).
    with Archive(tmp_path) as arc:
        arc.recover()
        arc.store(posts(4, T0 + timedelta(hours=1)))
    assert_consistent(tmp_path, {p.key for p in batch})


@pytest.mark.parametrize("syncfs_works", [True, False], ids=["syncfs", "syncfs fails"])
def test_the_reservation_is_durable_before_any_post_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs_works: bool
) -> None:
    """A power cut must not lose the pending rows of posts already in place (they would be
    archived again). The index shares the posts' file system: the syncfs of the temp
    files, before any rename, makes the rows durable; if it fails, the index's log is
    fsynced on its own before the renames."""
    real_syncfs = archive_module._syncfs()
    assert real_syncfs is not None  # (Linux)
    events: list[str] = []

    def syncfs(fd: int) -> int:
        events.append("syncfs" if syncfs_works else "syncfs failed")
        return real_syncfs(fd) if syncfs_works else -1

    real_replace = os.replace

    def replace(source: str, target: str) -> None:
        events.append("rename")
        real_replace(source, target)

    real_sync = State.sync

    def sync(self: State) -> None:
        events.append("log fsynced")
        real_sync(self)

    monkeypatch.setattr(archive_module, "_syncfs", lambda: syncfs)
    monkeypatch.setattr(State, "sync", sync)
    with Archive(tmp_path) as arc:
        monkeypatch.setattr(archive_module.os, "replace", replace)
        assert len(arc.store(posts(3))) == 3
    monkeypatch.undo()
    covered = "syncfs" if syncfs_works else "log fsynced"
    assert covered in events and events.index(covered) < events.index("rename"), events
    assert_consistent(tmp_path, {p.key for p in posts(3)})


def test_a_failed_write_leaves_nothing_half_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is renamed into place only once all its files are written and durable, so
    a disk that fills up half-way leaves no post of the batch and no temp file: the
    items stay new and the next poll archives them."""
    batch = posts(3)
    real = Archive._write_temp
    calls = []

    def disk_full(self: Archive, post: object) -> None:
        calls.append(post)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(self, post)  # type: ignore[arg-type]

    with (
        Archive(tmp_path) as arc,
        pytest.raises(archive_module.ArchiveError, match="No space left"),
    ):
        monkeypatch.setattr(Archive, "_write_temp", disk_full)
        arc.store(batch)
    monkeypatch.undo()
    assert_consistent(tmp_path, set())
    with Archive(tmp_path) as arc:
        assert len(arc.store(batch)) == 3
    assert_consistent(tmp_path, {p.key for p in batch})


def test_reindex_rebuilds_the_same_index(tmp_path: Path) -> None:
    batch = posts(5)
    with Archive(tmp_path) as arc:
        arc.store(batch)
        before = sorted(arc.state.items(), key=lambda i: i.key)
    (tmp_path / ".aggregator" / "state.sqlite3").unlink()
    for extra in ("-wal", "-shm"):
        (tmp_path / ".aggregator" / f"state.sqlite3{extra}").unlink(missing_ok=True)
    with Archive(tmp_path) as arc:
        assert arc.state.known_keys(p.key for p in batch) == set()
        count, problems = arc.reindex({"Ex": "https://ex.com/feed"})
        after = sorted(arc.state.items(), key=lambda i: i.key)
        assert arc.store(posts(5, T0 + timedelta(days=3))) == []  # same dedupe decisions
    assert (count, problems) == (5, [])
    assert after == before


def test_reindex_reports_unreadable_and_duplicate_posts(tmp_path: Path) -> None:
    (post,) = posts(1)
    with Archive(tmp_path) as arc:
        arc.store([post])
        copy = tmp_path / post.path.replace(".md", "-copy.md")
        copy.write_text(post.text)
        (tmp_path / "_posts" / "2024" / "broken.md").write_text("no front matter here")
        edited = tmp_path / "_posts" / "2024" / "edited.md"  # (its YAML broken by hand)
        edited.write_text("---\ntitle: [unclosed\ndate: 2024-01-01T00:00:00.000Z\n---\nx\n")
        count, problems = arc.reindex({})
        with pytest.raises(ArchiveError, match=r"edited\.md: unreadable post: front matter is not"):
            arc.read_post("_posts/2024/edited.md")  # (publish skips it, saying so)
    assert count == 1
    assert any(
        "broken.md: unreadable post" in p or "broken.md: front matter" in p for p in problems
    ), problems
    assert any("edited.md: unreadable post: front matter is not valid YAML" in p for p in problems)
    assert any("duplicate of" in p for p in problems), problems


def test_read_post_round_trip(tmp_path: Path) -> None:
    (post,) = posts(1)
    with Archive(tmp_path) as arc:
        arc.store([post])
        stored = arc.read_post(post.path)
    assert stored.title == "item 0"
    assert stored.link == stored.source == "https://ex.com/item/0"
    assert stored.author == "Ex" and stored.tags == ("Ex",)
    assert stored.archived == post.archived
    assert stored.published == T0
    assert stored.content == "<p>item 0</p>"


def test_while_a_batch_is_written_the_poller_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Posts are written away from the event loop: while a slow disk holds a batch, the
    poller still reads and writes the index (feed statuses), other feeds queue their posts,
    and everything is stored once the disk answers."""
    from aggregator.pipeline import _Batches

    entered, slow = threading.Event(), threading.Event()
    waited: list[bool] = []
    real_write = Archive._write_temp

    def stuck(self: Archive, post: Post) -> None:  # the first batch waits for the loop
        if not entered.is_set():
            entered.set()
            waited.append(slow.wait(timeout=10))
        real_write(self, post)

    monkeypatch.setattr(Archive, "_write_temp", stuck)
    first, second = posts(3, prefix="first"), posts(2, prefix="second")

    async def go() -> tuple[list[Post], list[Post], FeedStatus | None]:
        with Archive(tmp_path) as arc:
            batches = _Batches(arc)
            one = asyncio.create_task(batches.store(first))
            while not entered.is_set() and not one.done():  # (until the write has begun)
                await asyncio.sleep(0.01)
            try:
                two = asyncio.create_task(batches.store(second))
                await asyncio.sleep(0)  # (queued behind the first batch)
                arc.state.save_statuses([FeedStatus("https://ex.com/feed", outcome=Outcome.NEW)])
                status = arc.state.statuses().get("https://ex.com/feed")
                # The first batch is reserved (so known), not written yet; the second waits.
                assert arc.state.known_keys(p.key for p in first + second) == {p.key for p in first}
            finally:
                slow.set()
            return await one, await two, status

    stored_first, stored_second, status = asyncio.run(go())
    assert waited == [True]  # the loop let the disk go on, not the 10 s timeout
    assert status is not None and status.outcome is Outcome.NEW
    assert [p.title for p in stored_first + stored_second] == [
        "first 0",
        "first 1",
        "first 2",
        "second 0",
        "second 1",
    ]
    assert_consistent(tmp_path, {p.key for p in first + second})


def test_feeds_whose_parse_ends_together_share_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One reservation, syncfs and confirmation for them all; an item two of them carry
    goes to the first; a feed whose poll is cancelled meanwhile still has its posts stored
    (nothing stays pending); a post that cannot be written fails its own feed only, and a
    full disk every feed of the batch."""
    from aggregator.pipeline import _Batches

    real_syncfs = archive_module._syncfs()
    assert real_syncfs is not None  # (Linux)
    syncs: list[int] = []
    monkeypatch.setattr(
        archive_module, "_syncfs", lambda: lambda fd: syncs.append(fd) or real_syncfs(fd)
    )
    a, b, c = posts(3, prefix="a"), posts(2, prefix="b"), posts(2, prefix="c")
    shared = posts(1, prefix="a")  # the first item of feed a, carried by feed b too

    async def go() -> tuple[list[list[Post]], list[Post]]:
        with Archive(tmp_path) as arc:
            batches = _Batches(arc)
            feeds = [asyncio.create_task(batches.store(p)) for p in (a, b + shared, c)]
            await asyncio.sleep(0)  # (each has queued its posts)
            feeds[2].cancel()  # the poll of feed c is abandoned
            done = await asyncio.gather(*feeds[:2])
            await batches.settle()
            later = await batches.store(posts(1, prefix="d"))
        return done, later

    (stored_a, stored_b), later = asyncio.run(go())
    assert len(syncs) == 2  # one for the three feeds, one for the later
    assert [p.title for p in stored_a] == ["a 0", "a 1", "a 2"]
    assert [p.title for p in stored_b] == ["b 0", "b 1"]  # "a 0" is feed a's
    assert [p.title for p in later] == ["d 0"]
    everything = {p.key for p in a + b + c + posts(1, prefix="d")}
    assert_consistent(tmp_path, everything)  # feed c's posts too, none pending

    real_write = Archive._write_temp

    def refused(self: Archive, post: Post) -> None:  # one feed's post cannot be written
        if post.title.startswith("bad"):
            raise OSError(36, "File name too long")
        real_write(self, post)

    monkeypatch.setattr(Archive, "_write_temp", refused)

    async def one_bad() -> list[BaseException | list[Post]]:
        with Archive(tmp_path) as arc:
            batches = _Batches(arc)
            feeds = [batches.store(posts(1, prefix=p)) for p in ("good", "bad", "fine")]
            return await asyncio.gather(*feeds, return_exceptions=True)

    good, bad, fine = asyncio.run(one_bad())
    assert isinstance(bad, archive_module.ArchiveError) and "too long" in str(bad)
    assert isinstance(good, list) and isinstance(fine, list), (good, fine)
    assert [p.title for p in good + fine] == ["good 0", "fine 0"]
    everything |= {p.key for p in posts(1, prefix="good") + posts(1, prefix="fine")}
    assert_consistent(tmp_path, everything)

    monkeypatch.setattr(Archive, "_write_temp", real_write)
    real_confirm = State.confirm
    calls: list[int] = []

    def busy(self: State, keys: object) -> None:  # the batch's files are in place by now
        calls.append(1)
        if len(calls) == 1:
            raise archive_module.ArchiveError("database is locked")
        real_confirm(self, keys)  # type: ignore[arg-type]

    monkeypatch.setattr(State, "confirm", busy)

    async def placed() -> list[BaseException | list[Post]]:
        with Archive(tmp_path) as arc:
            batches = _Batches(arc)
            feeds = [batches.store(posts(1, prefix=p)) for p in ("late", "later")]
            return await asyncio.gather(*feeds, return_exceptions=True)

    late = asyncio.run(placed())  # not "nothing new": the error is each feed's
    assert all(isinstance(e, archive_module.ArchiveError) and "locked" in str(e) for e in late)
    monkeypatch.setattr(State, "confirm", real_confirm)
    with Archive(tmp_path) as arc:
        arc.recover()  # (the next start settles the rows left pending)
    everything |= {p.key for p in posts(1, prefix="late") + posts(1, prefix="later")}

    real_new = Archive.new_posts
    reads: list[int] = []

    def locked_once(self: Archive, batch: object) -> list[Post]:  # the batch's first read
        reads.append(1)
        if len(reads) == 1:
            raise archive_module.ArchiveError("database is locked")
        return real_new(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(Archive, "new_posts", locked_once)

    async def unreadable() -> list[list[Post]]:
        with Archive(tmp_path) as arc:
            batches = _Batches(arc)
            feeds = [batches.store(posts(1, prefix=p)) for p in ("one", "two")]
            return await asyncio.wait_for(asyncio.gather(*feeds), timeout=10)  # (no wait forever)

    assert [[p.title for p in r] for r in asyncio.run(unreadable())] == [["one 0"], ["two 0"]]
    monkeypatch.setattr(Archive, "new_posts", real_new)
    everything |= {p.key for p in posts(1, prefix="one") + posts(1, prefix="two")}
    assert_consistent(tmp_path, everything)

    def full(self: Archive, post: Post) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Archive, "_write_temp", full)

    async def fail() -> list[BaseException | list[Post]]:
        with Archive(tmp_path) as arc:
            batches = _Batches(arc)
            feeds = [batches.store(posts(1, prefix=f"e{i}")) for i in range(2)]
            return await asyncio.gather(*feeds, return_exceptions=True)

    errors = asyncio.run(fail())
    assert all(isinstance(e, archive_module.ArchiveError) and "No space" in str(e) for e in errors)
    monkeypatch.undo()
    assert_consistent(tmp_path, everything)


def test_polls_that_find_the_index_damaged_together_repair_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the daemon every poll that ends while the index is damaged asks for its repair,
    and each waits for the batch being written first: the first repairs it, the others
    find it repaired (they must not move the new index aside again)."""
    import httpx

    from aggregator.config import load_config
    from aggregator.errors import IndexDamaged
    from aggregator.pipeline import Poller
    from tests.conftest import write_config

    config = load_config(write_config(tmp_path, [{"url": "https://ex.com/feed"}]))
    entered, slow = threading.Event(), threading.Event()
    real_write = Archive._write_temp

    def stuck(self: Archive, post: Post) -> None:  # a batch still being written
        if not entered.is_set():
            entered.set()
            slow.wait(timeout=10)
        real_write(self, post)

    monkeypatch.setattr(Archive, "_write_temp", stuck)

    async def go(arc: Archive) -> None:
        async with httpx.AsyncClient() as client:
            poller = Poller(config, arc, client)
            writing = asyncio.create_task(poller.batches.store(posts(2)))
            while not entered.is_set() and not writing.done():  # (until the write has begun)
                await asyncio.sleep(0.01)
            poller.damage = IndexDamaged(f"{arc.state.path}: file is not a database")
            repairs = [asyncio.create_task(poller.repair_index(config.feeds)) for _ in range(2)]
            await asyncio.sleep(0.05)  # (both wait for the batch)
            slow.set()
            await asyncio.gather(writing, *repairs)
            await poller.workers.close()
            assert poller.damage is None

    with Archive(config.archive) as arc:
        asyncio.run(go(arc))
        assert arc.state.count() == 2  # the new index, rebuilt from the posts
    aside = [p.name for p in config.archive.rglob("*.damaged-*") if "-wal" not in p.name]
    assert len([n for n in aside if not n.endswith("-shm")]) == 1, aside
    assert_consistent(config.archive, {p.key for p in posts(2)})
