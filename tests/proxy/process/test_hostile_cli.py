"""``limpet proxy`` options out of range, as a careless or hostile operator types them,
run as real processes (whatever the build: compiled with mypyc under ``make test``).

Each value outside an option's range gets one ``limpet proxy: error:`` line naming the
option and its range, status 2 and no traceback (``inf`` or ``1e20`` seconds would
switch the slowloris and dead-backend guards off; a size of 10^20 bytes would let one
client make the proxy buffer without bound; a garbage-collector count beyond a C int
crashed the start). The extremes of each range are accepted, and a proxy started with
them serves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from limpet.proxy.process.command import MAX_GC_COUNT, RANGES

from ..conftest import ROOT, Backends, Conn, Proxies, _env

OUT_OF_RANGE = {
    "--head-timeout": ["inf", "nan", "-inf", "1e20", "604801", "0", "1e-300"],
    "--idle-timeout": ["Infinity", "1e308"],
    "--send-timeout": ["inf", "0", "-1"],
    "--connect-timeout": ["inf", "-0"],
    "--response-timeout": ["1e300"],
    "--tunnel-idle-timeout": ["inf"],
    "--pool-idle-timeout": ["1e-300", "NaN"],
    "--max-request-line": ["99999999999999999999", "63", "1048577"],
    "--max-header-bytes": ["99999999999999999999", "16777217", "255"],
    "--max-headers": ["99999999999999999999", "10001", "0"],
    "--max-connections": ["99999999999999999999", "1000001", "-1"],
    "--pool-max-idle": ["99999999999999999999", "-1"],
    "--gc-threshold": [f"{MAX_GC_COUNT + 1},10,10", "99999999999999999999,1,1", "1,1,1e3"],
    "--workers": ["99999999999999999999", "1e3", "-0x1"],
}


def limpet(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "limpet.cli", "proxy", "--listen", "127.0.0.1:0"]
    argv += ["--admin-listen", "127.0.0.1:0", "--backend", "a=127.0.0.1:9", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=60)


@pytest.mark.parametrize("option", sorted(OUT_OF_RANGE))
def test_out_of_range_values_get_one_line_and_status_2(option: str) -> None:
    for value in OUT_OF_RANGE[option]:
        done = limpet(f"{option}={value}")  # "=": argparse takes "-inf" for an option
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (option, value, done.stderr[-2000:])
        assert len(lines) == 1, (option, value, lines)
        assert lines[0].startswith(f"limpet proxy: error: {option}"), (option, value, lines)
        assert "Traceback" not in done.stderr


def test_the_ends_of_every_range_are_taken_and_served(backends: Backends, proxy: Proxies) -> None:
    a = backends.start("a")
    # A request must get through at the low end: the timeouts a request waits on stay
    # at their defaults there (a 1 ms answer is a 504 on a busy machine).
    waited_on = {"head-timeout", "idle-timeout", "connect-timeout", "response-timeout"}
    for end in (0, 1):
        ends = {name: span[end] for name, span in RANGES.items()}
        if end == 0:
            ends = {n: v for n, v in ends.items() if n not in waited_on}
            ends["max-connections"] = 4  # one client and the test's
        args = [arg for name, value in ends.items() for arg in (f"--{name}", str(value))]
        p = proxy.start("--backend", f"a={a.address}", *args)
        with Conn(p.address) as c:
            r = c.request("GET", "/who")
            assert r.status == 200, r.body
            assert r.json()["backend"] == "a"
            if end == 0:  # 64 bytes of request target at most
                c.send(b"GET /" + b"x" * 100 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
                assert c.read_response().status == 414
        assert "Traceback" not in p.log_text()
        p.stop()


def test_hostile_files_get_one_line_and_status_2(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    override = tmp_path / "override.json"
    cases = {
        "--state-dir": [str(plain)],
        "--token-file": [str(binary), str(tmp_path)],
        "--cookie-key-file": [str(tmp_path), str(binary)],
        "--address-override": [
            '{"10.0.0.1:80": ["x"]}',
            '{"10.0.0.1:80": "127.0.0.1:99999999999999999999"}',
            "[[[[",
            '{"a": ' + "1" * 5000 + "}",
        ],
    }
    for option, values in cases.items():
        for value in values:
            if option == "--address-override":
                override.write_text(value)
                value = str(override)
            done = limpet(f"{option}={value}")
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 2, (option, value, done.stderr[-2000:])
            assert len(lines) == 1, (option, value, lines)
            assert lines[0].startswith(f"limpet proxy: error: {option}"), (option, lines)
