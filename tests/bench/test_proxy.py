"""The proxy benchmark's own parts, quickly: its arguments, wrk's output parsing, the
session harvest and stickiness check against a small loopback server, and the cookie
cycling script run by the real wrk. The benchmark itself (minutes of load) is not run
here."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from bench._proxy_load import (
    MAX_CYCLED,
    Result,
    Session,
    check_sticky,
    cycle_lua,
    cycle_script,
    issue_sessions,
    parse_wrk,
)

from bench import proxy

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:40001/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   512.30us  100.20us   4.10ms   90.00%
    Req/Sec    60.12k     1.20k   62.00k    80.00%
  Latency Distribution
     50%  480.00us
     75%  520.00us
     90%  600.00us
     99%    1.25ms
  180360 requests in 3.00s, 40.00MB read
  Socket errors: connect 0, read 2, write 1, timeout 0
  Non-2xx or 3xx responses: 4
Requests/sec:  60120.50
Transfer/sec:     13.33MB
"""


def test_defaults_run_every_workload() -> None:
    args = proxy.parse_args([])
    assert args.workload == ["one", "cycle", "new"]
    assert (args.cycle, args.rounds, args.duration) == (10_000, 3, 10.0)


def test_quick_and_a_chosen_workload() -> None:
    args = proxy.parse_args(["--quick", "--workload", "new", "--workload", "cycle"])
    assert args.workload == ["new", "cycle"]
    assert (args.rounds, args.duration, args.warmup) == (1, 3.0, 1.0)


@pytest.mark.parametrize("argv", [["--workload", "all"], ["--cycle", "0"], ["--rounds", "-1"]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        proxy.parse_args(argv)
    assert e.value.code == 2


def test_wrk_output_is_parsed() -> None:
    figures = parse_wrk(WRK_OUTPUT)
    assert figures.rps == 60120.5
    assert figures.p50_ms == pytest.approx(0.48)
    assert figures.p99_ms == pytest.approx(1.25)
    assert figures.errors == 7


def test_wrk_output_without_figures_is_an_error() -> None:
    with pytest.raises(ValueError, match="Requests/sec"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_target_line_states_met_and_not_met() -> None:
    hap = Result("haproxy (1 thread)", 100.0, 0.3, 1.0, 1.0, 1.0, 0)
    limpet = Result("limpet", 60.0, 0.5, 2.5, 1.0, 1.0, 0)
    line = proxy.target_line("new", limpet, hap)
    assert "0.60 x req/s (target >= 0.5: met)" in line
    assert "2.50 x p99 (target <= 2: not met)" in line


def test_rounds_line_pairs_each_round_and_shows_haproxys_spread() -> None:
    def run(name: str, rps: float, p99: float) -> Result:
        return Result(name, rps, 0.5, p99, 1.0, 1.0, 0)

    by_peer = {
        proxy.HAPROXY: [run(proxy.HAPROXY, 100.0, 1.0), run(proxy.HAPROXY, 80.0, 2.0)],
        "limpet": [run("limpet", 50.0, 3.0), run("limpet", 48.0, 3.0)],
    }
    line = proxy.rounds_line("new", by_peer)
    # Each round's limpet run against the same round's HAProxy run, not the medians.
    assert "req/s / p99: 0.50/3.00, 0.60/1.50;" in line
    assert line.endswith("HAProxy's rate 80 to 100 req/s (25% apart)")
    assert proxy.rounds_line("new", {"limpet": by_peer["limpet"]}) == ""


def test_histogram_line_compares_limpet_with_and_without() -> None:
    on = Result("limpet", 95.0, 0.5, 2.0, 1.0, 0.5, 0)  # 190 req/s per core
    off = Result(proxy.NO_HISTOGRAM, 100.0, 0.5, 1.0, 1.0, 0.5, 0)  # 200 per core
    line = proxy.histogram_line("one", [on, off])
    assert line == "histogram on / off (one): 0.950 x req/s, 0.950 x req/s per core, 2.00 x p99"
    assert proxy.histogram_line("one", [on]) == ""  # without --histogram-cost
    assert proxy.parse_args(["--histogram-cost"]).histogram_cost
    assert not proxy.parse_args([]).histogram_cost


@pytest.mark.parametrize(
    "cookie", ["no-equals-sign", 'a="quoted"', "a=b;c=d", "a=back\\slash", "a=b c"]
)
def test_cookies_lua_cannot_hold_plainly_are_refused(cookie: str) -> None:
    with pytest.raises(ValueError, match="cookie"):
        cycle_lua(["ok=1", cookie])


def test_cycle_size_is_bounded() -> None:
    with pytest.raises(ValueError, match="at most"):
        cycle_lua([f"s={i}" for i in range(MAX_CYCLED + 1)])
    with pytest.raises(ValueError, match="no cookies"):
        cycle_lua([])


class _Sticky(BaseHTTPRequestHandler):
    """Issues ``S=<n>`` to a request without one and answers it from backend b1 or b2
    by n's parity; with ``sticky`` off it answers known sessions from the wrong one."""

    protocol_version = "HTTP/1.1"
    counter = itertools.count()
    sticky = True
    seen: list[str]

    def do_GET(self) -> None:
        cookie = self.headers.get("Cookie")
        self.server.seen.append(cookie or "")  # type: ignore[attr-defined]
        self.send_response(200)
        if cookie is None:
            n = next(self.counter)
            self.send_header("Set-Cookie", f"S={n}; Path=/; HttpOnly")
        else:
            n = int(cookie.removeprefix("S=")) + (0 if self.sticky else 1)
        self.send_header("X-Backend", f"b{n % 2 + 1}")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[tuple[int, list[str]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    seen: list[str] = []
    server.seen = seen  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def sticky_server() -> Iterator[tuple[int, list[str]]]:
    yield from _serve(_Sticky)


@pytest.fixture
def fickle_server() -> Iterator[tuple[int, list[str]]]:
    yield from _serve(type("_Fickle", (_Sticky,), {"sticky": False}))


def test_sessions_are_issued_and_replayed(sticky_server: tuple[int, list[str]]) -> None:
    port, seen = sticky_server
    sessions = issue_sessions(port, "S", 20)
    assert len({s.cookie for s in sessions}) == 20
    assert {s.backend for s in sessions} == {"b1", "b2"}
    check_sticky(port, sessions, sample=5)
    assert seen[:20] == [""] * 20
    assert len(seen) == 25
    assert all(c.startswith("S=") for c in seen[20:])


def test_a_proxy_that_moves_sessions_is_caught(fickle_server: tuple[int, list[str]]) -> None:
    port, _ = fickle_server
    sessions = issue_sessions(port, "S", 4)
    with pytest.raises(RuntimeError, match="not sticky"):
        check_sticky(port, sessions)


class _RoundRobin(_Sticky):
    """Ignores cookies: each request goes to the next backend."""

    def do_GET(self) -> None:
        self.server.seen.append(self.headers.get("Cookie") or "")  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("X-Backend", f"b{next(self.counter) % 2 + 1}")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def round_robin_server() -> Iterator[tuple[int, list[str]]]:
    yield from _serve(_RoundRobin)


def test_made_up_sessions_must_stay_where_they_first_went(
    sticky_server: tuple[int, list[str]], round_robin_server: tuple[int, list[str]]
) -> None:
    made_up = [Session(f"S={n}", None) for n in range(10)]
    port, seen = sticky_server
    check_sticky(port, made_up, sample=5)
    assert seen == [c for n in range(0, 10, 2) for c in (f"S={n}", f"S={n}")]
    with pytest.raises(RuntimeError, match="not sticky"):
        check_sticky(round_robin_server[0], made_up)


def test_a_proxy_without_the_cookie_is_caught(sticky_server: tuple[int, list[str]]) -> None:
    port, _ = sticky_server
    with pytest.raises(RuntimeError, match="no LIMPET cookie"):
        issue_sessions(port, "LIMPET", 1)


def test_wrk_cycles_the_cookies_in_order(
    sticky_server: tuple[int, list[str]], tmp_path: Path
) -> None:
    wrk = shutil.which("wrk")
    assert wrk is not None, "wrk is missing: run bash tools/apt-deps.sh"
    port, seen = sticky_server
    cookies = [Session(f"S={n}", "b1").cookie for n in (10, 11, 12, 13, 14)]
    script = cycle_script(tmp_path, "a proxy (1 thread)", cookies)
    assert script.name == "cycle-a-proxy-1-thread.lua"
    subprocess.run(
        [wrk, "-t1", "-c1", "-d1s", "-s", str(script), f"http://127.0.0.1:{port}/"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    # wrk calls request() once before connecting (to count pipelined requests), so
    # the cycle starts one cookie in; after that it goes round in order.
    assert len(seen) >= 2 * len(cookies)
    start = cookies.index(seen[0])
    assert seen == [cookies[(start + i) % len(cookies)] for i in range(len(seen))]


def test_learned_memory_probe_runs() -> None:
    """The probe imports the proxy's learned table in a subprocess; a package move
    would break it only at the end of a long benchmark run, so it is run here."""
    mem = proxy.learned_memory(1000)
    assert mem["entries"] == 1000
    assert mem["insert_us"] > 0
    # Then 500 more into the full table, each insert timed.
    assert mem["full_inserts"] == 500
    assert mem["full_insert_us"] > 0
    assert mem["full_worst_ms"] > 0
    assert 0 <= mem["full_over_1ms"] <= 500
