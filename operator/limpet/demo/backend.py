"""The demo's stateful app: a tiny HTTP server whose in-memory per-session counter shows stickiness.

Standard library only, one file: run it as ``python -m limpet.demo.backend`` or as a
plain script (``python operator/limpet/demo/backend.py --port 8080``); the example
Deployment in ``examples/app`` runs it from the Limpet image.

Data flow, per request (any path but ``/healthz`` and ``/stats``):

- The session is named by the ``X-Demo-Session`` header or, for a browser, by the
  app's own ``demo_sid`` cookie, which the app sets when it is absent. (Limpet's
  ``LIMPET`` cookie never reaches the app: the proxy strips it.)
- The client says how many requests of this session it has completed, in the
  ``X-Demo-Count`` header or the ``demo_count`` cookie. The app compares that with the
  count it holds in memory and answers a verdict:

  ``new``        an unknown session whose client count is 0;
  ``continued``  the app held this session and its count matches: stickiness worked;
  ``reloaded``   the count does not match (or the session is unknown) but the proxy
                 announced the move with ``Limpet-Session-Moved: <reason>; from=<id>``,
                 so the app "reloads" the session from its store (here: the client's
                 count). A planned move, not a break;
  ``broken``     the session arrived at a pod that does not hold it, unannounced.

The answer is JSON (or a small HTML page for a browser) carrying the pod name, the
session, the new count, the verdict, the move reason and the client's address (the
last ``X-Forwarded-For`` hop, i.e. the peer the nearest proxy saw, else the TCP
peer); ``X-Demo-Pod`` and ``X-Demo-Verdict`` repeat the essentials as headers.
``/stats`` reports the sessions held and the verdict counts; ``/healthz`` answers ``ok``.

Concurrency: ``ThreadingHTTPServer``, one thread per connection (HTTP/1.1 keep-alive);
the session table is one ``OrderedDict`` under one lock, bounded in size (least
recently used first out) and swept of idle sessions on access.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final, Literal

Verdict = Literal["new", "continued", "reloaded", "broken"]
VERDICTS: Final[tuple[Verdict, ...]] = ("new", "continued", "reloaded", "broken")

SESSION_HEADER: Final = "X-Demo-Session"
COUNT_HEADER: Final = "X-Demo-Count"
MOVED_HEADER: Final = "Limpet-Session-Moved"
POD_HEADER: Final = "X-Demo-Pod"
VERDICT_HEADER: Final = "X-Demo-Verdict"
SESSION_COOKIE: Final = "demo_sid"
COUNT_COOKIE: Final = "demo_count"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What the app answers for one request of one session."""

    session: str
    count: int
    verdict: Verdict
    moved: str | None


@dataclass(slots=True, kw_only=True)
class SessionTable:
    """Per-session counters held in memory, bounded and idle-expired.

    ``observe`` is the whole state machine; it is called from many handler threads,
    hence the lock.
    """

    max_sessions: int = 100_000
    idle_timeout: float = 1800.0
    _counts: OrderedDict[str, tuple[int, float]] = field(default_factory=OrderedDict)
    _verdicts: dict[Verdict, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    _requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(
        self, session: str, client_count: int | None, moved: str | None, *, now: float
    ) -> Outcome:
        with self._lock:
            self._requests += 1
            held = self._counts.pop(session, None)
            known = held[0] if held is not None and now - held[1] <= self.idle_timeout else None
            verdict: Verdict
            if known is not None and (client_count is None or client_count == known):
                verdict, count = "continued", known + 1
            elif moved is not None:
                verdict, count = "reloaded", (client_count or 0) + 1
            elif known is None and not client_count:
                verdict, count = "new", 1
            else:
                # Adopt the client's count so one break is reported once, not on
                # every later request of the session.
                verdict, count = "broken", (client_count or 0) + 1
            self._counts[session] = (count, now)
            while len(self._counts) > self.max_sessions:
                self._counts.popitem(last=False)
            self._expire(now)
            self._verdicts[verdict] += 1
            return Outcome(session=session, count=count, verdict=verdict, moved=moved)

    def _expire(self, now: float) -> None:
        # Entries are in last-use order, so idle ones sit at the front.
        while self._counts:
            _, (_, seen) = next(iter(self._counts.items()))
            if now - seen <= self.idle_timeout:
                return
            self._counts.popitem(last=False)

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {
                "sessions": len(self._counts),
                "requests": self._requests,
                "verdicts": dict(self._verdicts),
            }


def parse_moved(value: str | None) -> str | None:
    """The reason of a ``Limpet-Session-Moved: <reason>; from=<id>`` header."""
    if value is None:
        return None
    reason = value.split(";", 1)[0].strip()
    return reason or "unknown"


def parse_count(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


class CounterHandler(BaseHTTPRequestHandler):
    """One request: read the session, ask the table, answer."""

    protocol_version = "HTTP/1.1"
    server: CounterServer

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        elif self.path == "/stats":
            body = dict(self.server.table.stats(), pod=self.server.pod)
            self._send(200, json.dumps(body).encode(), "application/json")
        else:
            self._count()

    def do_POST(self) -> None:
        length = parse_count(self.headers.get("Content-Length")) or 0
        self.rfile.read(length)
        self._count()

    def _count(self) -> None:
        cookies = self._cookies()
        session = self.headers.get(SESSION_HEADER)
        from_browser = session is None
        if session is None:
            session = cookies.get(SESSION_COOKIE) or secrets.token_urlsafe(12)
        client_count = parse_count(self.headers.get(COUNT_HEADER))
        if client_count is None and from_browser:
            client_count = parse_count(cookies.get(COUNT_COOKIE))
        outcome = self.server.table.observe(
            session,
            client_count,
            parse_moved(self.headers.get(MOVED_HEADER)),
            now=time.monotonic(),
        )
        extra: list[tuple[str, str]] = [
            (POD_HEADER, self.server.pod),
            (VERDICT_HEADER, outcome.verdict),
        ]
        if from_browser:
            attrs = "Path=/; HttpOnly; SameSite=Lax"
            extra.append(("Set-Cookie", f"{SESSION_COOKIE}={session}; {attrs}"))
            extra.append(("Set-Cookie", f"{COUNT_COOKIE}={outcome.count}; {attrs}"))
        doc = {
            "pod": self.server.pod,
            "session": outcome.session,
            "count": outcome.count,
            "verdict": outcome.verdict,
            "moved": outcome.moved,
            "client": self._client(),
        }
        if "text/html" in self.headers.get("Accept", ""):
            self._send(200, _page(doc).encode(), "text/html; charset=utf-8", extra)
        else:
            self._send(200, json.dumps(doc).encode(), "application/json", extra)

    def _client(self) -> str:
        hops = ",".join(self.headers.get_all("X-Forwarded-For") or []).split(",")
        return hops[-1].strip() or str(self.client_address[0])

    def _cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for raw in self.headers.get_all("Cookie") or []:
            try:
                jar.load(raw)
            except CookieError:
                continue
        return {k: m.value for k, m in jar.items()}

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


def _page(doc: dict[str, object]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in doc.items()
    )
    return (
        "<!doctype html><title>Limpet demo counter</title>"
        "<h1>Limpet demo counter</h1><p>Reload: the count goes up on the same pod.</p>"
        f"<table>{rows}</table>\n"
    )


class CounterServer(ThreadingHTTPServer):
    daemon_threads = True
    # The demo opens many short-lived connections; a longer backlog avoids resets.
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        *,
        pod: str,
        table: SessionTable,
        verbose: bool = False,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.pod = pod
        self.table = table
        self.verbose = verbose
        super().__init__(address, CounterHandler)


def port_number(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument(
        "--port", type=port_number, default=8080, help="port to listen on (0: any free one)"
    )
    parser.add_argument(
        "--name",
        default=os.environ.get("POD_NAME") or socket.gethostname(),
        help="pod name reported in answers (default: $POD_NAME or the host name)",
    )
    parser.add_argument("--max-sessions", type=int, default=100_000)
    parser.add_argument("--idle-timeout", type=float, default=1800.0, help="seconds")
    parser.add_argument("--verbose", action="store_true", help="log every request")


def run(args: argparse.Namespace) -> int:
    table = SessionTable(max_sessions=args.max_sessions, idle_timeout=args.idle_timeout)
    try:
        server = CounterServer(
            (args.host, args.port), pod=args.name, table=table, verbose=args.verbose
        )
    except OSError as exc:
        print(f"counter: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        # shutdown() blocks until serve_forever returns, so it runs off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"counter {args.name} listening on {args.host}:{server.server_port}", flush=True)
    with server:
        server.serve_forever(poll_interval=0.2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="counter", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
