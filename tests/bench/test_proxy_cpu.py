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
