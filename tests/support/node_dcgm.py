"""One dcgm-exporter per node, made of the simulators on that node.

Each GPU-less simulator serves the DCGM series of its own simulated GPUs on a side port (`--dcgm-port`), labelled
with its pod as dcgm-exporter's pod mapping labels them. A real node runs one dcgm-exporter for all its GPUs; this
server is that exporter: on the node's address it serves the union of its simulators' DCGM series, one HELP/TYPE
header per metric, as one exposition.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


def merge_expositions(texts: Iterable[str]) -> str:
    """Prometheus text expositions merged: samples grouped by metric, each metric's HELP and TYPE once."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(maxsplit=3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    kept = headers.setdefault(parts[2], [])
                    if not any(h.split(maxsplit=2)[1] == parts[1] for h in kept):
                        kept.append(line)
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            samples.setdefault(name, []).append(line)
            headers.setdefault(name, [])
    out: list[str] = []
    for name, lines in samples.items():
        out += headers.get(name, []) + lines
    return "\n".join(out) + "\n"


class NodeDcgmExporter:
    """Serves on (address, port) the merged DCGM series of the URLs `upstreams()` names at scrape time."""

    def __init__(self, address: str, port: int, upstreams: Callable[[], list[str]]) -> None:
        self.upstreams = upstreams
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                texts = []
                for url in exporter.upstreams():
                    try:
                        texts.append(httpx.get(url, timeout=2.0).text)
                    except httpx.HTTPError:
                        continue  # a simulator that just stopped: its GPUs vanish, as a lost GPU does
                body = merge_expositions(texts).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> NodeDcgmExporter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
