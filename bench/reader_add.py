"""Subscribe lemon24/reader's database to the farm's feeds, before the timed runs (the
aggregator's equivalent is writing feeds.yaml). Usage: python bench/reader_add.py DB URLS"""

from __future__ import annotations

import sys
from pathlib import Path

from reader import make_reader

if __name__ == "__main__":
    db, urls = sys.argv[1], Path(sys.argv[2]).read_text().split()
    reader = make_reader(db)
    for url in urls:
        reader.add_feed(url, exist_ok=True)
    reader.close()
