"""The stdlib smoke client of tools/kind-e2e.sh, run against real counter processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from limpet.demo import backend, smoke

BACKEND = Path(backend.__file__)
SMOKE = Path(smoke.__file__)


def start_counter(port: int, name: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(BACKEND), "--host", "127.0.0.1", "--port", str(port), "--name", name],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening" in line, line
    return proc, int(line.rsplit(":", 1)[1])


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


def run_smoke(port: int, *extra: str) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, str(SMOKE), "--url", f"http://127.0.0.1:{port}/", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_sticky_backend_passes() -> None:
    proc, port = start_counter(0, "only")
    try:
        rc, summary = run_smoke(port, "--users", "5", "--requests", "6", "--think", "0")
    finally:
        stop(proc)
    assert rc == 0, summary
    assert summary["requests"] == 30
    assert summary["verdicts"] == {"new": 5, "continued": 25}
    assert summary["sessions_per_pod"] == {"only": 5}


def _sessions(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as resp:
        held: int = json.load(resp)["sessions"]
    return held


def test_lost_sessions_fail_the_smoke() -> None:
    proc, port = start_counter(0, "first")
    runner = subprocess.Popen(
        [
            sys.executable,
            str(SMOKE),
            "--url",
            f"http://127.0.0.1:{port}/",
            "--users",
            "3",
            "--duration",
            "10",
            "--think",
            "0.05",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # Every user has a session on the first counter (polled: a loaded machine may
        # take a while to start the runner), then the pod "restarts": its memory is
        # gone, and nobody announced a move. 10 s of run leave every user time to
        # come back to the second one.
        deadline = time.monotonic() + 30
        while _sessions(port) < 3:
            assert time.monotonic() < deadline, "the users never reached the first counter"
            time.sleep(0.1)
        stop(proc)
        proc, _ = start_counter(port, "second")
        out, _ = runner.communicate(timeout=60)
    finally:
        stop(proc)
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    summary = json.loads(out.strip().splitlines()[-1])
    assert runner.returncode == 1
    assert summary["broken"] == 3, summary  # one break per session, then it continues
    assert summary["ok"] is False


def test_bad_url_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, str(SMOKE), "--url", "ftp://x/"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "--url" in done.stderr
