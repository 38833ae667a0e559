"""A standard-library smoke client: simulated users with real sessions against one URL.

Used by tools/kind-e2e.sh (through ``kubectl port-forward``) where the project's venv
may be absent: run it as ``python3 operator/limpet/demo/smoke.py --url http://...``.

Data flow: ``--users`` threads, each one user. A user keeps its own cookie jar (so the
proxy's LIMPET cookie comes back, as from a browser), its session id and its running
count, and sends ``X-Demo-Session`` / ``X-Demo-Count`` to the demo counter app
(limpet.demo.backend), pausing ``--think`` seconds between requests so that sessions
go idle and may be moved. Each answer's verdict and pod are tallied. At the end (after
``--duration`` seconds, or ``--requests`` per user) it prints one JSON summary line;
the exit status is 1 if any session broke or any request failed beyond
``--max-errors``, else 0.

Concurrency: one thread per user, each with its own keep-alive connection; the tally
is merged under one lock when a user finishes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit


@dataclass(slots=True)
class Tally:
    requests: int = 0
    errors: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    moves: Counter[str] = field(default_factory=Counter)
    last_pod: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.verdicts.update(other.verdicts)
        self.moves.update(other.moves)
        self.last_pod.update(other.last_pod)
        self.error_samples.extend(other.error_samples[: max(0, 5 - len(self.error_samples))])


@dataclass(frozen=True, slots=True, kw_only=True)
class SmokeSettings:
    host: str
    port: int
    path: str
    users: int
    duration: float
    requests: int | None
    think: float
    timeout: float


def _user(settings: SmokeSettings, deadline: float, out: Tally) -> None:
    session = secrets.token_hex(8)
    count = 0
    jar: dict[str, str] = {}
    pod = ""
    conn: http.client.HTTPConnection | None = None
    sent = 0
    try:
        while time.monotonic() < deadline and (
            settings.requests is None or sent < settings.requests
        ):
            sent += 1
            headers = {"X-Demo-Session": session, "X-Demo-Count": str(count)}
            if jar:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(
                        settings.host, settings.port, timeout=settings.timeout
                    )
                conn.request("GET", settings.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                for raw in resp.headers.get_all("Set-Cookie") or []:
                    try:
                        parsed: SimpleCookie = SimpleCookie(raw)
                    except CookieError:
                        continue
                    jar.update({k: m.value for k, m in parsed.items()})
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {body[:80]!r}")
                doc = json.loads(body)
                count = int(doc["count"])
                pod = str(doc["pod"])
                out.verdicts[str(doc["verdict"])] += 1
                if doc.get("moved"):
                    out.moves[str(doc["moved"])] += 1
            except (OSError, http.client.HTTPException, ValueError, KeyError, RuntimeError) as exc:
                out.errors += 1
                if len(out.error_samples) < 5:
                    out.error_samples.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                    conn = None
            out.requests += 1
            time.sleep(settings.think)
    finally:
        if conn is not None:
            conn.close()
    if pod:
        out.last_pod[pod] += 1


def run_smoke(settings: SmokeSettings) -> Tally:
    total = Tally()
    lock = threading.Lock()
    deadline = time.monotonic() + settings.duration

    def worker() -> None:
        mine = Tally()
        _user(settings, deadline, mine)
        with lock:
            total.merge(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(settings.users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="http://HOST:PORT/PATH of the proxy")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds")
    parser.add_argument("--requests", type=int, default=None, help="per user (default: no cap)")
    parser.add_argument("--think", type=float, default=0.5, help="seconds between requests")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    parser.add_argument("--max-errors", type=int, default=0, help="failed requests tolerated")
    parser.add_argument("--min-pods", type=int, default=1, help="pods that must hold sessions")


def run(args: argparse.Namespace) -> int:
    url = urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        print(f"smoke: --url must be http://HOST[:PORT]/..., got {args.url!r}", file=sys.stderr)
        return 2
    settings = SmokeSettings(
        host=url.hostname,
        port=url.port or 80,
        path=url.path or "/",
        users=args.users,
        duration=args.duration,
        requests=args.requests,
        think=args.think,
        timeout=args.timeout,
    )
    tally = run_smoke(settings)
    broken = tally.verdicts["broken"]
    pods = len(tally.last_pod)
    ok = broken == 0 and tally.errors <= args.max_errors and pods >= args.min_pods
    print(
        json.dumps(
            {
                "ok": ok,
                "requests": tally.requests,
                "errors": tally.errors,
                "broken": broken,
                "verdicts": dict(tally.verdicts),
                "moves": dict(tally.moves),
                "sessions_per_pod": dict(sorted(tally.last_pod.items())),
                "error_samples": tally.error_samples,
            }
        ),
        flush=True,
    )
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smoke", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
