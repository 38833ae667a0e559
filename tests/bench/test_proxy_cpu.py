"""bench/proxy_cpu.py and the CPU accounting it shares with bench proxy."""

from __future__ import annotations

import subprocess
import sys

import pytest
from bench._proxy_load import process_cpu, process_times

from bench import proxy_cpu

# Arithmetic, with the clock read (a system call) once per 200 000 additions.
BURN = """
import time
t = time.process_time()
while time.process_time() - t < 0.4:
    n = 0
    for i in range(200_000):
        n += i
"""


def test_process_times_split_user_from_system() -> None:
    proc = subprocess.Popen([sys.executable, "-c", BURN + "input()\n"], stdin=subprocess.PIPE)
    try:
        user = system = 0.0
        for _ in range(100):  # until the child has burnt its 0.4 s (bounded: 10 s)
            user, system = process_times(proc.pid)
            if user >= 0.3:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert user >= 0.3  # a pure-Python loop is user time
        assert system < user
        assert process_cpu(proc.pid) == pytest.approx(user + system, abs=0.05)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def test_a_process_that_is_not_there_counts_nothing() -> None:
    assert process_times(2**22 + 12345) == (0.0, 0.0)  # above the largest pid_max: no such pid


@pytest.mark.parametrize("argv", [["--duration", "0"], ["--connections", "0"], ["--bogus"]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        proxy_cpu.main(argv)
    assert e.value.code == 2


# `perf report --sort dso --stdio`, as perf 6.1 prints it (header lines start with #).
REPORT = """\
# Total Lost Samples: 0
#
# Samples: 10K of event 'cpu-clock'
# Event count (approx.): 2500000000
#
# Overhead  Shared Object
# ........  ....................................................
#
    44.70%  [kernel.kallsyms]
    21.37%  libpython3.11.so.1.0
    13.78%  limpet_native__mypyc.cpython-311-x86_64-linux-gnu.so
     9.78%  parser.cpython-311-x86_64-linux-gnu.so
     5.71%  loop.cpython-311-x86_64-linux-gnu.so
     4.47%  libc.so.6
     0.19%  [vdso]
"""


def test_samples_are_split_by_part() -> None:
    shares = proxy_cpu.part_shares(REPORT)
    assert shares == pytest.approx(
        {
            "kernel": 0.447,
            "interpreter": 0.2137,
            "compiled hot path": 0.1378,
            "httptools": 0.0978,
            "uvloop": 0.0571,
            "libc": 0.0447,
            "other": 0.0019,
        }
    )
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.001)


@pytest.mark.parametrize(
    ("dso", "part"),
    [
        ("haproxy", "haproxy"),
        ("[kernel.kallsyms]", "kernel"),
        ("libc.so.6", "libc"),
        ("parser.cpython-311-x86_64-linux-gnu.so", "httptools"),
        ("_hashlib.cpython-311-x86_64-linux-gnu.so", "other"),
        ("haproxy.cfg", "other"),
    ],
)
def test_each_sampled_object_has_one_part(dso: str, part: str) -> None:
    assert proxy_cpu.part_of(dso) == part


def test_the_where_row_scales_the_shares_to_microseconds() -> None:
    row = proxy_cpu.where_line("limpet", 80.0, {"kernel": 0.5, "interpreter": 0.25})
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = [c.strip() for c in proxy_cpu.where_header().splitlines()[0].strip("|").split("|")]
    assert len(cells) == len(header)
    assert dict(zip(header, cells, strict=True)) == {
        "proxy": "limpet",
        "µs a request": "80.0",
        "kernel": "40.0",
        "interpreter": "20.0",
        "compiled hot path": "0.0",
        "httptools": "0.0",
        "uvloop": "0.0",
        "libc": "0.0",
        "haproxy": "0.0",
        "other": "0.0",
    }
