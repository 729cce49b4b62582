"""``aggregator demo``: the daemon over bundled example feeds, with no internet.

The example feeds that come with the package (``aggregator/examples/``) are served on
127.0.0.1 by a small static server; a feeds.yaml pointing at them and an archive are
made in a temporary folder, which is removed at the end unless ``--keep`` asks to keep it.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aggregator.errors import AggregatorError

# The bundled feeds and how the demo's feeds.yaml lists them (also showing some options).
DEMO_FEEDS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("harbor-gazette.xml", {"tags": ["news", "town"], "strip": ["p.promo"]}),
    ("field-notes.xml", {"tags": ["nature"]}),
    ("kitchen.json", {"tags": ["food", "town"], "title": "Recipe: {title}"}),
)


def find_examples(option: Path | None) -> Path:
    """The folder of example feeds: the option, else the package's own."""
    folder = option or Path(__file__).resolve().parent / "examples"
    if all((folder / name).is_file() for name, _ in DEMO_FEEDS):
        return folder
    wanted = ", ".join(name for name, _ in DEMO_FEEDS)
    raise AggregatorError(
        f"the example feeds ({wanted}) are not all in {folder}"
        + ("" if option else ": the installation is incomplete, reinstall aggregator")
    )


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) until the block ends; yield its URL."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def write_demo_config(folder: Path, feeds_url: str, site: str) -> Path:
    """A feeds.yaml in ``folder`` for the example feeds served at ``feeds_url``."""
    from aggregator.posts import yaml_scalar  # noqa: PLC0415

    lines = [
        "# feeds.yaml written by `aggregator demo`: the bundled example feeds.",
        "title: Aggregator demo",
        f"link: {site}",
        "description: The example feeds that come with aggregator, merged.",
        "archive: archive",
        "interval: 15m",
        "feeds:",
    ]
    for name, options in DEMO_FEEDS:
        lines.append(f"  - url: {feeds_url}{name}")
        for key, value in options.items():
            text = (
                "[" + ", ".join(yaml_scalar(v, flow=True) for v in value) + "]"
                if isinstance(value, list)
                else yaml_scalar(value)
            )
            lines.append(f"    {key}: {text}")
    path = folder / "feeds.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_demo(host: str, port: int, feeds: Path | None, keep: bool) -> int:
    """Serve the examples, run the daemon on them until Ctrl-C/SIGTERM; its exit status."""
    from aggregator.config import load_config  # noqa: PLC0415
    from aggregator.scheduler import Daemon  # noqa: PLC0415

    examples = find_examples(feeds)
    folder = Path(tempfile.mkdtemp(prefix="aggregator-demo-"))
    try:
        with serve_folder(examples) as feeds_url:
            site = f"http://{host}:{port}/"
            config = load_config(write_demo_config(folder, feeds_url, site))
            print(
                f"Example feeds ({examples}) served at {feeds_url}\n"
                f"Subscribe in your feed reader: {site}atom.xml  (also feed.xml, feed.json)\n"
                f"Site: {site}  (per-tag feeds: {site}tags/town/atom.xml, ...)\n"
                f"Config and archive: {folder}{'' if keep else ' (removed at the end)'}\n"
                "Stop with Ctrl-C.",
                flush=True,
            )
            # Local files: no need to spread the first polls over a minute.
            return Daemon(config, host=host, port=port, start_spread=0).run()
    finally:
        if keep:
            print(f"kept {folder}: try `aggregator status -c {folder / 'feeds.yaml'}`")
        else:
            shutil.rmtree(folder, ignore_errors=True)
