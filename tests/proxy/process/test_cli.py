"""``limpet proxy`` command line: every option is documented, every bad option is one line
on stderr with exit status 2, and the process reports start-up failures."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from limpet.affinity.plan.codec import plan_to_json
from limpet.proxy.process.standalone import standalone_plan

from ..conftest import Backends, Conn, Proxies, _env, standalone_args

OPTIONS = [
    "--plan",
    "--backend",
    "--affinity",
    "--cookie-key-file",
    "--listen",
    "--admin-listen",
    "--token-file",
    "--state-dir",
    "--workers",
    "--trusted-proxy",
    "--address-override",
    "--log-level",
    "--build",
    "--head-timeout",
    "--idle-timeout",
    "--send-timeout",
    "--connect-timeout",
    "--response-timeout",
    "--tunnel-idle-timeout",
    "--pool-idle-timeout",
    "--max-request-line",
    "--max-header-bytes",
    "--max-headers",
    "--max-connections",
    "--pool-max-idle",
    "--no-gc-freeze",
    "--gc-threshold",
]


def limpet(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "limpet.cli", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )


def test_help_lists_every_option() -> None:
    result = limpet("--help")
    assert result.returncode == 0
    for option in OPTIONS:
        assert option in result.stdout, option


def _write(tmp_path: Path, name: str, data: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return str(path)


BAD = {
    "listen-no-port": ["--listen", "localhost", "--backend", "a=127.0.0.1:1"],
    "listen-bad-port": ["--listen", "127.0.0.1:99999", "--backend", "a=127.0.0.1:1"],
    "admin-v6-no-brackets": ["--admin-listen", "::1:80", "--backend", "a=127.0.0.1:1"],
    "backend-no-equals": ["--backend", "127.0.0.1:8080"],
    "backend-no-port": ["--backend", "a=127.0.0.1"],
    "backend-port-zero": ["--backend", "a=127.0.0.1:0"],
    "backend-bad-id": ["--backend", "bad id!=127.0.0.1:80"],
    "backend-duplicate-id": ["--backend", "a=127.0.0.1:80", "--backend", "a=127.0.0.1:81"],
    "affinity-unknown": ["--backend", "a=127.0.0.1:80", "--affinity", "sticky"],
    "affinity-needs-name": ["--backend", "a=127.0.0.1:80", "--affinity", "header"],
    "affinity-no-backend": ["--affinity", "cookie"],
    "plan-and-backend": ["--plan", "x.json", "--backend", "a=127.0.0.1:80"],
    "plan-missing": ["--plan", "/nonexistent/plan.json"],
    "workers-zero": ["--backend", "a=127.0.0.1:80", "--workers", "0"],
    "workers-word": ["--backend", "a=127.0.0.1:80", "--workers", "two"],
    "timeout-negative": ["--backend", "a=127.0.0.1:80", "--head-timeout", "-1"],
    "timeout-word": ["--backend", "a=127.0.0.1:80", "--connect-timeout", "soon"],
    "limit-zero": ["--backend", "a=127.0.0.1:80", "--max-connections", "0"],
    "trusted-proxy-bad": ["--backend", "a=127.0.0.1:80", "--trusted-proxy", "10.0.0.300/8"],
    "token-missing": ["--backend", "a=127.0.0.1:80", "--token-file", "/nonexistent/token"],
    "log-level-bad": ["--backend", "a=127.0.0.1:80", "--log-level", "loud"],
    "missing-option-value": ["--backend", "a=127.0.0.1:80", "--workers"],
    "unknown-option": ["--backend", "a=127.0.0.1:80", "--bogus", "1"],
    "stray-argument": ["--backend", "a=127.0.0.1:80", "extra"],
    "gc-threshold-two": ["--backend", "a=127.0.0.1:80", "--gc-threshold", "700,10"],
    "gc-threshold-zero": ["--backend", "a=127.0.0.1:80", "--gc-threshold", "0,10,10"],
    "gc-threshold-word": ["--backend", "a=127.0.0.1:80", "--gc-threshold", "many,10,10"],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_options_one_line_exit_2(case: str) -> None:
    result = limpet(*BAD[case])
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("limpet proxy: error: "), lines[0]
    assert "Traceback" not in result.stderr


def test_bad_files_one_line_exit_2(tmp_path: Path) -> None:
    cases = [
        ["--plan", _write(tmp_path, "garbage.json", "{not json")],
        ["--plan", _write(tmp_path, "wrong.json", '{"schemaVersion": 99}')],
        ["--backend", "a=127.0.0.1:80", "--cookie-key-file", _write(tmp_path, "k", "short")],
        ["--backend", "a=127.0.0.1:80", "--token-file", _write(tmp_path, "t", "\n")],
        ["--backend", "a=127.0.0.1:80", "--address-override", _write(tmp_path, "o", "[1]")],
    ]
    for args in cases:
        result = limpet(*args)
        assert result.returncode == 2, (args, result)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def test_port_in_use_is_reported(proxy: Proxies) -> None:
    p = proxy.start("--state-dir", str(proxy.tmp / "s"))
    result = limpet(
        "--listen",
        f"127.0.0.1:{p.port}",
        "--admin-listen",
        "127.0.0.1:0",
        "--backend",
        "a=127.0.0.1:80",
    )
    assert result.returncode == 1
    assert "address already in use" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_plan_file(tmp_path: Path, proxy: Proxies) -> None:
    plan = standalone_plan([("a", "127.0.0.1", 9)], "client-ip", version=7)
    p = proxy.start("--plan", _write(tmp_path, "plan.json", plan_to_json(plan)))
    assert p.stats()["planVersion"] == 7
    status, _ = p.admin("GET", "/readyz")
    assert status == 200


def test_cookie_key_file_shared_by_two_proxies(
    tmp_path: Path, backends: Backends, proxy: Proxies
) -> None:
    b1, b2 = backends.start("b1"), backends.start("b2")
    key = _write(tmp_path, "key", "0123456789abcdef0123456789abcdef\n")
    args = standalone_args(b1, b2)
    p1 = proxy.start(*args, "--cookie-key-file", key)
    p2 = proxy.start(*args, "--cookie-key-file", key)
    p3 = proxy.start(*args)  # its own generated key
    pinned: dict[str, str] = {}
    issued_at = int(time.time())
    with Conn(p1.address) as c:
        while len(pinned) < 2:
            r = c.request("GET", "/new")
            set_cookie = r.header("Set-Cookie")
            assert set_cookie is not None
            assert set_cookie.startswith("LIMPET=")
            pinned.setdefault(r.json()["backend"], set_cookie.split(";")[0])
    for backend, cookie in pinned.items():
        with Conn(p2.address) as c:
            r = c.request("GET", "/again", headers={"Cookie": cookie})
            assert r.json()["backend"] == backend
            if int(time.time()) == issued_at:
                # No last-seen step (a whole number of seconds) can have begun since
                # the cookie was issued, so a cookie honoured as is is not re-issued.
                assert r.header("Set-Cookie") is None
        with Conn(p3.address) as c:
            r = c.request("GET", "/other-key", headers={"Cookie": cookie})
            assert r.status == 200
            assert r.header("Set-Cookie") is not None  # not honoured: a new session
    # p2 verified both cookies (a refresh on a new step is not a rejection).
    assert sum(p2.stats()["rejectedCookies"].values()) == 0
    assert p3.stats()["rejectedCookies"]["unknown_key"] == 2
