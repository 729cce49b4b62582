"""The parse floor: fetch every feed with httpx (16 at a time) and parse each with
feedparser's defaults as it arrives. Stores nothing. Usage: python bench/floor.py URLS"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import feedparser
import httpx


async def main(urls: list[str]) -> int:
    limit = asyncio.Semaphore(16)
    entries = 0
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(url: str) -> None:
            nonlocal entries
            async with limit:
                response = await client.get(url)
            entries += len(
                feedparser.parse(response.content, response_headers=dict(response.headers)).entries
            )

        await asyncio.gather(*(one(u) for u in urls))
    return entries


if __name__ == "__main__":
    count = asyncio.run(main(Path(sys.argv[1]).read_text().split()))
    print(f"parsed {count} entries", file=sys.stderr)
