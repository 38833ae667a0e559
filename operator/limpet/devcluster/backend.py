"""A tiny HTTP backend for fake pods: ``python -m limpet.devcluster.backend``.

Data flow: every request gets ``200`` with a JSON body naming the pod that
answered, the path, the client's address and the request's ``Cookie`` header,
so a test can tell which backend served a request and from which source IP.
``/healthz`` answers ``ok``. Request bodies are read and counted, not kept.
HTTP/1.1 with keep-alive, so a proxy can reuse connections.

Standard library only (it starts once per fake pod, so it must start fast).
One thread per connection (``ThreadingHTTPServer``); no shared mutable state.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


def make_handler(pod: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "limpet-fake-pod"

        def _answer(self, with_body: bool) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received = len(self.rfile.read(length)) if length else 0
            if self.path == "/healthz":
                body = b"ok\n"
                ctype = "text/plain"
            else:
                body = json.dumps(
                    {
                        "pod": pod,
                        "method": self.command,
                        "path": self.path,
                        "client": self.client_address[0],
                        "cookie": self.headers.get("Cookie"),
                        "received": received,
                    }
                ).encode()
                ctype = "application/json"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Pod", pod)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(True)

        def do_POST(self) -> None:
            self._answer(True)

        def do_PUT(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per request would drown the log tail shown on errors

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True, help="pod name reported in every answer")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.name))
    server.daemon_threads = True

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    print(f"fake pod {args.name} serving on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
