"""bench/proxy_instructions.py: reading callgrind's and wrk's figures, and its options."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import proxy_instructions

WRK_OUT = """Running 6s test @ http://127.0.0.1:40123/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.61ms  411.40us  12.86ms   89.18%
    Req/Sec   622.41     61.20   700.00     78.33%
  3724 requests in 6.00s, 1.09MB read
Requests/sec:    620.61
Transfer/sec:    185.97KB
"""


def test_the_request_count_is_read_from_wrk() -> None:
    assert proxy_instructions.completed_requests(WRK_OUT) == 3724
    with pytest.raises(ValueError, match="no request count"):
        proxy_instructions.completed_requests("Requests/sec: 620.61\n")


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_the_instruction_total_is_read_from_a_real_dump(tmp_path: Path) -> None:
    # Two loops, one ten times the other's length: the counts must follow (the oracle
    # is the programs, not the parser).
    totals = []
    for n in (20_000, 200_000):
        out = tmp_path / f"cg.{n}"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-S",
                "-c",
                f"n = 0\nfor i in range({n}):\n    n += i\n",
            ],
            capture_output=True,
            check=True,
            timeout=120,
        )
        totals.append(proxy_instructions.dumped_instructions(out.read_text()))
    small, large = totals
    assert small > 1_000_000  # an interpreter's start-up alone is millions
    per_iteration = (large - small) / 180_000
    assert 20 < per_iteration < 2_000
    with pytest.raises(ValueError, match="no summary or totals"):
        proxy_instructions.dumped_instructions("events: Ir\nfn=main\n")


@pytest.mark.parametrize(
    "argv", [["--duration", "0"], ["--connections", "0"], ["--cycle", "0"], ["--bogus"]]
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        proxy_instructions.main(argv)
    assert e.value.code == 2
