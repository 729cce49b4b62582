"""Files kept in the archive (``media: keep``): pictures, and enclosures if asked.

Each file is stored once under the hash of its content, ``media/<2 hex>/<sha256>.<ext>``,
by the posts' write protocol (a temp file made durable, then renamed), so a post never
refers to a file that is not whole. Pictures are kept only when their content is a
JPEG, PNG, GIF, WebP or AVIF picture (an SVG can carry scripts: refused); a kept
enclosure must not be markup. Posts refer to a kept file by its root-relative path
(:data:`aggregator.posts.LOCAL_MEDIA`); the merged feeds make it absolute under ``link``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aggregator.archive import fsync_path
from aggregator.models import (
    DEFAULT_MAX_ENCLOSURE_BYTES,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_MEDIA_BYTES,
)

MEDIA_DIR = "media"
_TEMP_DIR = ".partial"  # downloads under way; what a kill leaves there is removed later

# What the first bytes of a picture are: the only pictures kept.
_IMAGES = (
    (re.compile(rb"\xff\xd8\xff"), "jpg"),
    (re.compile(rb"\x89PNG\r\n\x1a\n"), "png"),
    (re.compile(rb"GIF8[79]a"), "gif"),
    (re.compile(rb"RIFF....WEBP", re.DOTALL), "webp"),
    (re.compile(rb"....ftyp(avif|avis)", re.DOTALL), "avif"),
)
# Enclosures: audio, video and documents people attach, by their first bytes.
_FILES = (
    (re.compile(rb"ID3|\xff[\xe0-\xff]"), "mp3"),
    (re.compile(rb"....ftyp(M4A |M4B )", re.DOTALL), "m4a"),
    (re.compile(rb"....ftyp", re.DOTALL), "mp4"),
    (re.compile(rb"OggS"), "ogg"),
    (re.compile(rb"\x1a\x45\xdf\xa3"), "webm"),
    (re.compile(rb"RIFF....WAVE", re.DOTALL), "wav"),
    (re.compile(rb"fLaC"), "flac"),
    (re.compile(rb"%PDF-"), "pdf"),
    (re.compile(rb"PK\x03\x04"), "zip"),
)
CONTENT_TYPES = {
    "jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
    "avif": "image/avif", "mp3": "audio/mpeg", "m4a": "audio/mp4", "mp4": "video/mp4",
    "ogg": "audio/ogg", "webm": "video/webm", "wav": "audio/wav", "flac": "audio/flac",
    "pdf": "application/pdf", "zip": "application/zip", "bin": "application/octet-stream",
}  # fmt: skip


_NAMES = itertools.count()  # of this process's downloads (one per process, not per store)


class Refused(ValueError):
    """The file is not one the archive keeps; the message says why."""


def picture_kind(head: bytes) -> str:
    """The extension of the picture ``head`` starts; :class:`Refused` if it is none."""
    for pattern, ext in _IMAGES:
        if pattern.match(head):
            return ext
    start = head.lstrip()[:256].lower()
    if b"<svg" in start or (start.startswith(b"<?xml") and b"svg" in head[:1024].lower()):
        raise Refused("an SVG picture (it can carry scripts): not kept")
    raise Refused("not a JPEG, PNG, GIF, WebP or AVIF picture")


def file_kind(head: bytes) -> str:
    """The extension of the enclosure ``head`` starts ("bin" when unknown); refused when
    it is markup, which a browser could run from the archive's site."""
    for pattern, ext in _IMAGES + _FILES:
        if pattern.match(head):
            return ext
    if head.lstrip()[:1] == b"<":
        raise Refused("markup (HTML, SVG or XML), not a file the archive keeps")
    return "bin"


@dataclass(frozen=True, slots=True)
class MediaLimits:
    """How much ``media: keep`` may download (feeds.yaml ``media_limits``), in bytes."""

    image: int = DEFAULT_MAX_IMAGE_BYTES  # one picture
    enclosure: int = DEFAULT_MAX_ENCLOSURE_BYTES  # one enclosure (``keep_enclosures``)
    total: int = DEFAULT_MAX_MEDIA_BYTES  # the whole media folder


class Download:
    """One file being downloaded into the media folder's temp area: written piece by
    piece (the sink of a fetch), hashed on the way, then :meth:`keep` or :meth:`discard`."""

    def __init__(self, store: MediaStore) -> None:
        self.store = store
        store.temp.mkdir(parents=True, exist_ok=True)
        self.path = store.temp / f"{os.getpid()}-{next(_NAMES)}"
        self.file = open(self.path, "wb")  # noqa: SIM115 -- closed by keep/discard
        self.hash = hashlib.sha256()
        self.head = b""
        self.size = 0

    def write(self, piece: bytes) -> None:
        if len(self.head) < 64:
            self.head += piece[: 64 - len(self.head)]
        self.hash.update(piece)
        self.size += len(piece)
        self.file.write(piece)

    def keep(self, ext: str) -> str:
        """Make it durable and put it in place; return its root-relative path."""
        digest = self.hash.hexdigest()
        relative = f"{MEDIA_DIR}/{digest[:2]}/{digest}.{ext}"
        target = self.store.root / relative
        try:
            if target.exists():  # the same file, kept for another post
                return "/" + relative
            self.store.reserve(self.size)
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, target)
            fsync_path(target.parent)
            self.store.added(self.size)
            return "/" + relative
        finally:
            self.discard()

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class MediaStore:
    """The archive's ``media/`` folder."""

    def __init__(self, root: Path, limits: MediaLimits | None = None) -> None:
        self.root = root
        self.folder = root / MEDIA_DIR
        self.temp = self.folder / _TEMP_DIR
        self.limits = limits or MediaLimits()
        self._total: int | None = None

    def has(self, path: str) -> bool:
        """``path`` (``/media/...``) is a kept file."""
        return (self.root / path.lstrip("/")).is_file()

    def total(self) -> int:
        """Bytes kept (counted once, then kept up to date)."""
        if self._total is None:
            self._total = sum(p.stat().st_size for p in self.files())
        return self._total

    def reserve(self, size: int) -> None:
        if self.total() + size > self.limits.total:
            raise Refused(
                f"the media folder is full ({self.total():,} of {self.limits.total:,} bytes)"
            )

    def added(self, size: int) -> None:
        self._total = self.total() + size

    def files(self) -> Iterator[Path]:
        """Every kept file (not the temp area)."""
        if not self.folder.is_dir():
            return
        for sub in self.folder.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                yield from (p for p in sub.iterdir() if p.is_file() and not p.name.startswith("."))

    def clean_partial(self) -> int:
        """Remove downloads a kill interrupted (this process's own are its to finish)."""
        removed = 0
        if self.temp.is_dir():
            for path in self.temp.iterdir():
                if not path.name.startswith(f"{os.getpid()}-"):
                    with contextlib.suppress(OSError):
                        path.unlink()
                        removed += 1
        return removed

    def prune(self, used: set[str]) -> tuple[int, int]:
        """Remove the kept files no post refers to (``used``: the ``/media/...`` paths the
        posts refer to); return (files, bytes) removed."""
        files = removed = 0
        for path in list(self.files()):
            if "/" + path.relative_to(self.root).as_posix() not in used:
                size = path.stat().st_size
                path.unlink()
                files, removed = files + 1, removed + size
        self.clean_partial()
        self._total = None
        return files, removed
