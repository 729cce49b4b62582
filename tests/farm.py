"""A loopback HTTP server for tests: routes map a path to a canned or computed answer."""

from __future__ import annotations

import contextlib
import ssl
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    port: int = 0  # the client's: one per connection


Handler = Callable[[Request], Answer]


@dataclass
class Raw:
    """A route that writes its own bytes to the socket (for misbehaving servers).

    ``write(wfile, stopping)`` must return once ``stopping`` is set or the client leaves.
    """

    write: Callable[[BinaryIO, threading.Event], None]


class Farm:
    """Serves ``routes`` on 127.0.0.1 (over TLS with ``tls``) and records every request."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Answer | Handler | Raw] = {}
        self.requests: list[Request] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        farm = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                request = Request(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.client_address[1],
                )
                with farm._lock:
                    farm.requests.append(request)
                route = farm.routes.get(self.path.split("?")[0])
                if isinstance(route, Raw):
                    self.close_connection = True
                    with contextlib.suppress(OSError):  # the client gave up, as it should
                        route.write(self.wfile, farm.stopping)
                    return
                if route is None:
                    answer = Answer(404, b"not found")
                elif callable(route):
                    answer = route(request)
                else:
                    answer = route
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *args: object) -> None:
                pass

        class _Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that hang up early are part of the tests

        self.server = _Server((host, 0), _Handler)
        self.server.daemon_threads = True
        if tls is not None:  # HTTPS, with the context's certificate
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.base = f"{scheme}://{host}:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    @contextmanager
    def running(self) -> Iterator[Farm]:
        thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stopping.set()
            self.server.shutdown()
            self.server.server_close()
            thread.join()


def rss(
    items: list[dict[str, str]], title: str = "Test feed", link: str = "http://example.com/"
) -> bytes:
    """A small RSS 2.0 document; each item dict may have title, link, guid, pubDate, description."""
    from xml.sax.saxutils import escape

    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0"><channel>',
        f"<title>{escape(title)}</title><link>{escape(link)}</link><description>d</description>",
    ]
    for item in items:
        parts.append("<item>")
        for tag in ("title", "link", "guid", "pubDate", "description"):
            if tag in item:
                parts.append(f"<{tag}>{escape(item[tag])}</{tag}>")
        parts.append("</item>")
    parts.append("</channel></rss>")
    return "".join(parts).encode()


def png(seed: int, size: int = 1) -> bytes:
    """A valid PNG picture, different for each ``seed`` (``size`` pads it: a bigger file)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + bytes([seed % 256, seed // 256 % 256, 7]))
    padding = chunk(b"tEXt", b"c\x00" + b"x" * size) if size > 1 else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + padding
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )
