"""lemon24/reader updating the farm's feeds through its API, 16 retrieval threads, every
feed updated whatever its schedule. Usage: python bench/reader_update.py DB URLS"""

from __future__ import annotations

import sys
from pathlib import Path

from reader import make_reader

if __name__ == "__main__":
    db, urls = sys.argv[1], Path(sys.argv[2]).read_text().split()
    reader = make_reader(db)
    for url in urls:
        reader.add_feed(url, exist_ok=True)
    failed = [
        url
        for url, value in reader.update_feeds_iter(scheduled=False, workers=16)
        if isinstance(value, Exception)
    ]
    reader.close()
    if failed:
        sys.exit(f"reader failed on {len(failed)} feeds, e.g. {failed[0]}")
