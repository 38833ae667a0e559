"""The HTTP/1.1 engine's and the session router's CPU time per request, without sockets.

``python -m bench.engine_cpu``: one keep-alive client connection and one pooled backend
connection on in-memory transports (``tests/proxy/fuzzing.py``), the real engine and
session router between them. System calls are not included (a real proxied request adds
about 13 µs of them); compare runs of two versions on the same machine, alternately.

Two groups, each printed as microseconds of this process's CPU time per request (not
wall time, so that time the shared machine gives to other work is not counted), best
and median of seven runs of 20 000 (``--quick``: three runs of 5 000):

- ``engine``: a GET with client-IP affinity and a POST with 1 KiB, each answered by a
  short 200, with the request-duration histogram on (the default) and off
  (``--no-latency-histogram``), measured alternately, and the difference.
- ``sessions``: cookie affinity, the three workloads of ``bench proxy``: ``one`` (every
  request carries the same LB cookie), ``cycle`` (10 000 cookies the proxy issued, sent
  in turn) and ``new`` (no cookie: every request starts a session and gets a
  ``Set-Cookie``). Each is measured through the engine (one backend: the harness pools
  one connection) and through :meth:`SessionRouter.route` alone with the two backends
  ``bench proxy`` uses, which is the session layer's share of the request.

Cycled cookies are as wrk sends them: never updated. In the session workloads the
router's wall clock advances 100 µs a request (:class:`SteppingClock`), as at the
10 000 requests a second ``bench proxy`` reaches on this machine, rather than at the
in-process rate: with the standalone plan's 1 s last-seen step, each of 10 000 cycled
cookies then comes back once per step, so nearly every request misses the route cache
and is decided and re-signed, as in the real benchmark (and one cookie misses once per
10 000 requests). ``--group engine|sessions`` runs one group.

``--count N --workload W [--target engine|router]`` runs exactly N requests of one
session workload, untimed, for an instruction counter (docs/proxy.md, "Session layer,
this round", gives the callgrind command): instructions do not vary with the load the
shared machine is under, where CPU time does.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from tests.proxy.fuzzing import Harness, MemoryTransport

from limpet.proxy.engine.client import ClientConnection
from limpet.proxy.engine.port import RequestView
from limpet.proxy.process.standalone import standalone_plan
from limpet.proxy.session.routing import RouterSettings, SessionRouter

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
PLAIN = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
"""What wrk sends in ``bench proxy``; the session workloads add a Cookie header."""
CYCLE = 10_000
TWO_BACKENDS = [("b1", "127.0.0.1", 9), ("b2", "127.0.0.1", 10)]
RATE = 10_000
"""Requests per second the session workloads' clock assumes."""
Timing = tuple[float, float]
Runner = Callable[[Callable[[int], None]], Timing]
"""Runs a prepared request step (``step(i)``: the i-th request) and measures it."""
WORKLOADS = ("one", "cycle", "new")


def _timed(step: Callable[[int], None], n: int, runs: int) -> Timing:
    """Best and median µs per call of ``step(i)`` over ``runs`` runs of ``n`` (plus a
    first run that warms up and is not counted)."""
    samples = []
    for run in range(runs + 1):
        start = time.process_time()
        for i in range(n):
            step(i)
        if run:
            samples.append((time.process_time() - start) / n * 1e6)
    return min(samples), statistics.median(samples)


class SteppingClock:
    """Wall-clock seconds that move 1/RATE per call: one call per routed request."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        self.now += 1 / RATE
        return self.now


def _with_cookie(value: bytes) -> bytes:
    return PLAIN[:-2] + b"Cookie: " + value + b"\r\n\r\n"


def engine_us(
    workload: str | None,
    n: int,
    runs: int,
    *,
    request: bytes = GET,
    timing: bool = True,
    runner: Runner | None = None,
) -> Timing:
    """The engine with the router, per request: ``request`` with client-IP affinity
    (``workload=None``), or a cookie-affinity session workload."""
    harness = Harness()
    harness.server.stats.timing = timing
    if workload is not None:
        router = harness.server.router
        assert isinstance(router, SessionRouter)
        router._wall = SteppingClock()  # the harness builds its router on time.time
        router.load_plan(standalone_plan([Harness.BACKEND], "cookie"))
    try:
        up, up_out = harness.idle_backend()
        client = ClientConnection(harness.server)
        out = MemoryTransport()
        client.connection_made(out)

        def exchange(data: bytes) -> bytes:
            client.data_received(data)
            up.data_received(ANSWER)
            answer = bytes(out.out)
            out.out.clear()
            up_out.out.clear()
            return answer

        requests = [request]
        if workload is not None:
            cookies = session_cookies(workload, lambda: set_cookie(exchange(PLAIN)))
            requests = [PLAIN if c is None else _with_cookie(c) for c in cookies]

        def step(i: int) -> None:
            client.data_received(requests[i % len(requests)])
            up.data_received(ANSWER)
            out.out.clear()
            up_out.out.clear()

        got = _timed(step, n, runs) if runner is None else runner(step)
        if out.closed or up.client is not None:
            raise RuntimeError("the engine did not answer and pool as expected")
        return got
    finally:
        harness.close()


def router_us(workload: str, n: int, runs: int, *, runner: Runner | None = None) -> Timing:
    """:meth:`SessionRouter.route` alone, cookie affinity over two backends."""
    router = SessionRouter(settings=RouterSettings(), wall=SteppingClock())
    router.load_plan(standalone_plan(TWO_BACKENDS, "cookie"))
    headers = [(b"Host", b"127.0.0.1")]

    def view(cookie: bytes | None) -> RequestView:
        return RequestView(b"GET", b"/", headers, "127.0.0.1", cookie)

    def issue() -> bytes:
        route = router.route(view(None))
        if route is None or route.set_cookie is None:
            raise RuntimeError("a request without a cookie got no new session")
        return route.set_cookie.split(b";", 1)[0]

    cookies = session_cookies(workload, issue)
    route = router.route

    def step(i: int) -> None:
        # A fresh view per request, as the engine hands the router.
        if route(view(cookies[i % len(cookies)])) is None:
            raise RuntimeError("no route")

    return _timed(step, n, runs) if runner is None else runner(step)


def session_cookies(workload: str, issue: Callable[[], bytes]) -> list[bytes | None]:
    """The Cookie header of each request of ``workload`` in turn, from ``issue()``
    (``NAME=VALUE`` of a new session); ``None``: no cookie."""
    if workload == "new":
        return [None]
    return [issue() for _ in range(1 if workload == "one" else CYCLE)]


def set_cookie(answer: bytes) -> bytes:
    """``NAME=VALUE`` of the one Set-Cookie in a response head."""
    for line in answer.split(b"\r\n"):
        name, _, value = line.partition(b": ")
        if name.lower() == b"set-cookie":
            return value.split(b";", 1)[0]
    raise RuntimeError(f"no Set-Cookie in {answer[:200]!r}")


def engine_group(n: int, runs: int) -> None:
    for name, request in (("GET, client-IP affinity", GET), ("POST 1 KiB", POST)):
        on: list[Timing] = []
        off: list[Timing] = []
        for _ in range(2):  # alternately, so that a burst of other load hits both
            on.append(engine_us(None, n, runs, request=request, timing=True))
            off.append(engine_us(None, n, runs, request=request, timing=False))
        for label, got in (("histogram on", on), ("histogram off", off)):
            _line(name, label, got)
        delta = min(b for b, _ in on) - min(b for b, _ in off)
        print(f"{name:26} histogram cost {delta:+6.2f} µs a request (best against best)")


def sessions_group(n: int, runs: int, workloads: Sequence[str]) -> None:
    for workload in workloads:
        engine: list[Timing] = []
        router: list[Timing] = []
        for _ in range(2):  # alternately, as above
            engine.append(engine_us(workload, n, runs))
            router.append(router_us(workload, n, runs))
        _line(f"cookie, {workload}", "engine+router", engine)
        _line(f"cookie, {workload}", "router alone", router)


def counted(workload: str, n: int, target: str) -> None:
    """Exactly ``n`` requests of a session workload through ``target`` (``engine``: the
    engine and router; ``router``: :meth:`SessionRouter.route` alone), after a warm-up
    (for ``cycle``, one pass over its 10 000 cookies, so that every counted request is
    a cookie seen before); the collector is then frozen and switched off, so that a
    count holds no collection. Prints nothing: run it under an instruction counter and
    subtract two values of ``n`` (docs/proxy.md, "Session layer, this round")."""
    warm = CYCLE if workload == "cycle" else 200

    def run(step: Callable[[int], None]) -> Timing:
        for i in range(warm):
            step(i)
        frozen = gc.get_freeze_count()
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            for i in range(warm, warm + n):
                step(i)
        finally:
            gc.enable()
            if not frozen:  # nothing was frozen before: leave nothing frozen
                gc.unfreeze()
        return 0.0, 0.0

    if target == "engine":
        engine_us(workload, n, 1, runner=run)
    else:
        router_us(workload, n, 1, runner=run)


def _line(name: str, label: str, got: list[Timing]) -> None:
    best = min(b for b, _ in got)
    median = statistics.median(m for _, m in got)
    print(f"{name:26} {label:14} {best:6.2f} µs best, {median:6.2f} µs median", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_cpu", description=__doc__)
    parser.add_argument("--group", choices=("engine", "sessions"), action="append")
    parser.add_argument("--workload", choices=WORKLOADS, action="append")
    parser.add_argument("--quick", action="store_true", help="three runs of 5 000")
    parser.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="run exactly N requests of one --workload through --target, untimed "
        "(for an instruction counter such as callgrind)",
    )
    parser.add_argument("--target", choices=("engine", "router"), default="router")
    args = parser.parse_args(argv)
    if args.count is not None:
        if not args.workload or len(args.workload) != 1:
            parser.error("--count needs exactly one --workload")
        counted(args.workload[0], args.count, args.target)
        return 0
    n, runs = (5_000, 3) if args.quick else (20_000, 7)
    groups = args.group or ["engine", "sessions"]
    if "engine" in groups:
        engine_group(n, runs)
    if "sessions" in groups:
        sessions_group(n, runs, args.workload or WORKLOADS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
