"""The demo counter app, as a real process on a loopback port, spoken to over HTTP."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from limpet.demo import backend
from limpet.demo.backend import SessionTable

BACKEND_FILE = Path(backend.__file__)


@pytest.fixture
def server() -> Iterator[int]:
    """The counter run as a plain script (the way examples/ documents it)."""
    proc = subprocess.Popen(
        [sys.executable, str(BACKEND_FILE), "--host", "127.0.0.1", "--port", "0", "--name", "p1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()


def request(
    conn: http.client.HTTPConnection, headers: dict[str, str], path: str = "/"
) -> tuple[http.client.HTTPResponse, dict[str, object]]:
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    return resp, json.loads(body)


def test_sticky_session_counts_up_and_detects_a_break(server: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
    try:
        for n in range(3):
            resp, doc = request(conn, {"X-Demo-Session": "s1", "X-Demo-Count": str(n)})
            assert resp.status == 200
            assert resp.getheader("X-Demo-Pod") == "p1"
            assert doc["count"] == n + 1
            assert doc["verdict"] == ("new" if n == 0 else "continued")
            assert doc["client"] == "127.0.0.1"  # no proxy: the TCP peer
        # A session that this pod never saw, arriving mid-way and unannounced: a break.
        _, doc = request(conn, {"X-Demo-Session": "s2", "X-Demo-Count": "7"})
        assert doc["verdict"] == "broken"
        assert doc["count"] == 8
        # The same, announced by the proxy: the app reloads it.
        _, doc = request(
            conn,
            {"X-Demo-Session": "s3", "X-Demo-Count": "4", "Limpet-Session-Moved": "drain; from=b1"},
        )
        assert (doc["verdict"], doc["moved"], doc["count"]) == ("reloaded", "drain", 5)
        # Behind proxies: the last X-Forwarded-For hop, the peer the nearest one saw.
        _, doc = request(conn, {"X-Demo-Session": "s4", "X-Forwarded-For": "10.1.1.1, 10.2.2.2"})
        assert doc["client"] == "10.2.2.2"
        conn.request("GET", "/stats")
        stats = json.loads(conn.getresponse().read())
        assert stats["sessions"] == 4
        assert stats["verdicts"] == {"new": 2, "continued": 2, "reloaded": 1, "broken": 1}
    finally:
        conn.close()


def test_browser_mode_uses_app_cookies(server: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
    try:
        conn.request("GET", "/", headers={"Accept": "text/html"})
        resp = conn.getresponse()
        page = resp.read().decode()
        assert "Limpet demo counter" in page
        cookies = [v.split(";", 1)[0] for k, v in resp.getheaders() if k == "Set-Cookie"]
        assert {c.split("=", 1)[0] for c in cookies} == {"demo_sid", "demo_count"}
        jar = dict(c.split("=", 1) for c in cookies)
        assert jar["demo_count"] == "1"
        resp, doc = request(conn, {"Cookie": f"demo_sid={jar['demo_sid']}; demo_count=1"})
        assert (doc["session"], doc["count"], doc["verdict"]) == (jar["demo_sid"], 2, "continued")
    finally:
        conn.close()


def test_table_is_bounded_and_expires_idle_sessions() -> None:
    table = SessionTable(max_sessions=2, idle_timeout=10.0)
    for i in range(3):
        table.observe(f"s{i}", 0, None, now=float(i))
    assert table.stats()["sessions"] == 2
    # s0 was evicted: coming back with a count is a break, not a continuation.
    assert table.observe("s0", 1, None, now=3.0).verdict == "broken"
    # Everything idle for longer than the timeout is forgotten.
    assert table.observe("s9", 0, None, now=100.0).verdict == "new"
    assert table.stats()["sessions"] == 1
    assert table.observe("s1", 1, None, now=101.0).verdict == "broken"


def test_moved_back_to_a_stale_pod_is_a_reload_not_a_break() -> None:
    table = SessionTable()
    table.observe("s", 0, None, now=0.0)
    # The session went elsewhere for two requests, then moved back (announced).
    out = table.observe("s", 3, "rebalance; from=b2", now=1.0)
    assert (out.verdict, out.count) == ("reloaded", 4)
    assert table.observe("s", 4, None, now=2.0).verdict == "continued"


def _run_backend(port: str) -> subprocess.CompletedProcess[str]:
    """The counter app on loopback at ``port``, run to its exit (these tests expect one)."""
    return subprocess.run(
        [sys.executable, "-m", "limpet.demo.backend", "--host", "127.0.0.1", "--port", port],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("port", ["99999", "http"])
def test_bad_port_is_a_usage_error(port: str) -> None:
    rc = _run_backend(port)
    assert rc.returncode == 2
    assert "not a port number" in rc.stderr


def test_taken_port_exits_2(server: int) -> None:
    rc = _run_backend(str(server))
    assert rc.returncode == 2
    assert "cannot listen" in rc.stderr
