"""The benchmark's feed farm: N feeds × M realistic items on loopback, with ETag and
Last-Modified (an unchanged feed answers 304), spread over several loopback addresses
so that per-host politeness limits behave as they would on the web.

Run by bench/run.py as its own process:  python bench/farm.py --feeds 200 --items 20
It prints one line, ``READY <url-list-file>``, then serves until killed.
``GET /_churn?seed=S&share=0.1&new=2`` adds ``new`` items to a seeded ``share`` of feeds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import sys
import time
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

WORDS = (
    "the", "of", "and", "to", "in", "is", "for", "that", "on", "with", "as", "by", "it",
    "from", "at", "this", "be", "are", "was", "an", "or", "news", "report", "market", "city",
    "council", "water", "energy", "climate", "school", "health", "policy", "court", "election",
    "budget", "science", "research", "data", "open", "source", "software", "release", "update",
    "weather",
)  # fmt: skip
CJK = "北京上海气候峰会合作关系经济发展科学技术研究报告新闻世界和平中国美国欧洲"


def paragraph(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(25, 80))]
    if rng.random() < 0.25:
        words.insert(
            rng.randint(0, len(words)), "".join(rng.choice(CJK) for _ in range(rng.randint(8, 30)))
        )
    if rng.random() < 0.5:
        i = rng.randint(0, len(words) - 1)
        href = (
            f"/story/{rng.randint(1, 9999)}"
            if rng.random() < 0.5
            else f"https://example.org/{rng.randint(1, 9999)}"
        )
        words[i] = f'<a href="{href}">{words[i]}</a>'
    return "<p>" + " ".join(words).capitalize() + ".</p>"


def content(feed: int, item: int) -> str:
    """1–5 KB of HTML: paragraphs, an image or two, links, sometimes a list, some CJK."""
    rng = random.Random(feed * 100_003 + item)
    parts = []
    target = rng.randint(1000, 5000)
    while sum(map(len, parts)) < target:
        roll = rng.random()
        if roll < 0.15:
            src = (
                f"/images/{feed}/{item}-{len(parts)}.jpg"
                if rng.random() < 0.5
                else f"https://cdn.example.net/{feed}/{item}.jpg"
            )
            parts.append(f'<img src="{src}" width="600" alt="photo">')
        elif roll < 0.22:
            parts.append(
                "<ul>"
                + "".join(f"<li>{rng.choice(WORDS)} {rng.choice(WORDS)}</li>" for _ in range(4))
                + "</ul>"
            )
        else:
            parts.append(paragraph(rng))
    return "".join(parts)


class Feed:
    def __init__(self, index: int, items: int, base: str) -> None:
        self.index, self.items, self.base = index, items, base
        self.atom = index % 2 == 1
        self.modified = time.time() - 86400
        self.render()

    def add(self, count: int) -> None:
        self.items += count
        self.modified = time.time()
        self.render()

    def render(self) -> None:
        i, start = self.index, self.items
        entries = []
        for j in range(start - 1, max(-1, start - 1 - 50), -1):  # the newest 50 at most
            title = f"Story {j} of feed {i}: {' '.join(WORDS[(i + j + k) % len(WORDS)] for k in range(6))}"
            link = f"{self.base}/story/{i}/{j}"
            when = 1_700_000_000 + j * 3600 + i * 7
            if self.atom:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
                entries.append(
                    f"<entry><title>{escape(title)}</title><link href={quoteattr(link)}/><id>{escape(link)}</id>"
                    f"<updated>{stamp}</updated><published>{stamp}</published><author><name>Author {i}</name></author>"
                    f'<content type="html">{escape(content(i, j))}</content></entry>'
                )
            else:
                entries.append(
                    f"<item><title>{escape(title)}</title><link>{escape(link)}</link><guid>{escape(link)}</guid>"
                    f"<pubDate>{formatdate(when, usegmt=True)}</pubDate><description>{escape(content(i, j))}</description></item>"
                )
        if self.atom:
            body = (
                '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
                f'<title>Bench feed {i}</title><id>{self.base}/feed/{i}</id><link href="{self.base}/"/>'
                f"<updated>{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.modified))}</updated>"
                + "".join(entries)
                + "</feed>"
            )
        else:
            body = (
                '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
                f"<title>Bench feed {i}</title><link>{self.base}/</link><description>Feed {i}</description>"
                + "".join(entries)
                + "</channel></rss>"
            )
        self.body = body.encode()
        self.etag = '"' + hashlib.sha1(self.body).hexdigest()[:20] + '"'
        self.last_modified = formatdate(self.modified, usegmt=True)
        self.type = "application/atom+xml" if self.atom else "application/rss+xml"


class Farm(asyncio.Protocol):
    feeds: dict[str, Feed] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:])
            }
            self.respond(path, headers)

    def respond(self, path: str, headers: dict[str, str]) -> None:
        if path.startswith("/_churn"):
            query = dict(p.split("=") for p in path.split("?", 1)[1].split("&"))
            rng = random.Random(int(query["seed"]))
            feeds = list(self.feeds.values())
            for feed in rng.sample(feeds, max(1, round(len(feeds) * float(query["share"])))):
                feed.add(int(query["new"]))
            return self.send(200, b"ok", {})
        feed = self.feeds.get(path)
        if feed is None:
            return self.send(404, b"not found", {})
        validators = {"ETag": feed.etag, "Last-Modified": feed.last_modified}
        if headers.get("if-none-match") == feed.etag or _not_modified(
            headers.get("if-modified-since"), feed.modified
        ):
            return self.send(304, b"", validators)
        return self.send(200, feed.body, {**validators, "Content-Type": feed.type})

    def send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        reason = {200: "OK", 304: "Not Modified", 404: "Not Found"}[status]
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.transport.write(head.encode() + b"\r\n" + body)  # type: ignore[attr-defined]


def _not_modified(since: str | None, modified: float) -> bool:
    if not since:
        return False
    try:
        return parsedate_to_datetime(since).timestamp() >= int(modified)
    except (TypeError, ValueError):
        return False


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--urls", type=Path, required=True)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    hosts = [f"127.0.{1 + h // 250}.{1 + h % 250}" for h in range(args.hosts)]
    urls = []
    for i in range(args.feeds):
        base = f"http://{hosts[i % len(hosts)]}:{args.port}"
        Farm.feeds[f"/feed/{i}.xml"] = Feed(i, args.items, base)
        urls.append(f"{base}/feed/{i}.xml")
    for host in hosts:
        await loop.create_server(Farm, host, args.port, backlog=1024)
    args.urls.write_text("\n".join(urls) + "\n")
    print("READY", args.urls, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
