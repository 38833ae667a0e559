"""The HTTP/1.1 engine's CPU time per request, without sockets.

``python -m bench.engine_cpu``: one keep-alive client connection and one pooled backend
connection on in-memory transports (``tests/proxy/fuzzing.py``), the real engine and
session router between them; a GET with a session cookie and a POST with 1 KiB, each
answered by a short 200. Printed: microseconds per request, best and median of seven
runs of 20 000, with the request-duration histogram on (the default) and off
(``--no-latency-histogram``), measured alternately, and the difference. System calls are
not included (a real proxied request adds about 13 µs of them); compare runs of two
versions on the same machine, alternately.
"""

from __future__ import annotations

import statistics
import sys
import time

from tests.proxy.fuzzing import Harness, MemoryTransport

from limpet.proxy.engine.client import ClientConnection

GET = (
    b"GET /app/page?x=1 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: wrk\r\n"
    b"Accept: */*\r\nCookie: sid=abc; LIMPET=zzz\r\n\r\n"
)
POST = (
    b"POST /app/form HTTP/1.1\r\nHost: shop.example\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 1024\r\n\r\n" + b"x" * 1024
)
ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
    b"Connection: keep-alive\r\n\r\nhello, world\n"
)


def per_request_us(
    request: bytes, n: int = 20_000, runs: int = 7, *, timing: bool = True
) -> tuple[float, float]:
    harness = Harness()
    harness.server.stats.timing = timing
    try:
        up, up_out = harness.idle_backend()
        client = ClientConnection(harness.server)
        out = MemoryTransport()
        client.connection_made(out)
        samples = []
        for run in range(runs + 1):
            start = time.perf_counter()
            for _ in range(n):
                client.data_received(request)
                up.data_received(ANSWER)
                out.out.clear()
                up_out.out.clear()
            if run:  # the first run warms up
                samples.append((time.perf_counter() - start) / n * 1e6)
        if out.closed or up.client is not None:
            raise RuntimeError("the engine did not answer and pool as expected")
        return min(samples), statistics.median(samples)
    finally:
        harness.close()


def main(argv: list[str]) -> int:
    for name, request in (("GET with a session cookie", GET), ("POST 1 KiB", POST)):
        on: list[tuple[float, float]] = []
        off: list[tuple[float, float]] = []
        for _ in range(2):  # alternately, so that a burst of other load hits both
            on.append(per_request_us(request, timing=True))
            off.append(per_request_us(request, timing=False))
        for label, got in (("histogram on", on), ("histogram off", off)):
            best = min(b for b, _ in got)
            median = statistics.median(m for _, m in got)
            print(f"{name:26} {label:14} {best:6.2f} µs best, {median:6.2f} µs median")
        delta = min(b for b, _ in on) - min(b for b, _ in off)
        print(f"{name:26} histogram cost {delta:+6.2f} µs a request (best against best)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
