"""Counter app processes on loopback for the demo's tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from limpet.demo import backend

BACKEND = Path(backend.__file__)

CounterFactory = Callable[[str], str]


@pytest.fixture
def counters() -> Iterator[CounterFactory]:
    """``counters("pod-a")`` starts a counter app and returns its base URL."""
    procs: list[subprocess.Popen[str]] = []

    def start(name: str) -> str:
        proc = subprocess.Popen(
            [sys.executable, str(BACKEND), "--host", "127.0.0.1", "--port", "0", "--name", name],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening" in line, line
        return f"http://127.0.0.1:{int(line.rsplit(':', 1)[1])}/"

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
