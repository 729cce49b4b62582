"""Poll RSS/Atom/JSON feeds, archive every new item as a post, republish a merged feed."""

import sys as _sys

__version__ = "0.1.0"

# httpx imports its command-line client when click, rich and pygments are installed: 90 ms
# of every start for a program that never runs it (httpx.main then says how to get it).
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
