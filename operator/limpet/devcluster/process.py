"""One child process with its output in a log file, and a clean way to stop it.

Data flow: ``argv`` in; stdout and stderr go to ``log_path``; :meth:`tail` reads
the end of that file back for error messages. Each child runs in its own
session (process group), so a Ctrl-C on the terminal reaches only our Python
process, which then stops the children in a deliberate order, and so
:meth:`stop` can signal a child together with anything it forked.

Not thread-safe: one owner thread starts, polls and stops a process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def tail_file(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except FileNotFoundError:
        return "(no log written)"
    text = data.decode("utf-8", errors="replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._env = None if env is None else dict(env)
        self._cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )

    def poll(self) -> int | None:
        """The exit code if the process has exited, else None (also None before start)."""
        return None if self._proc is None else self._proc.poll()

    def tail(self, lines: int = 30) -> str:
        return tail_file(self.log_path, lines)

    def describe_exit(self, lines: int = 30) -> str:
        code = self.poll()
        how = f"exited with code {code}" if code is not None and code >= 0 else "was killed"
        if code is not None and code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        return f"{self.name} {how}; last lines of {self.log_path.name}:\n{self.tail(lines)}"

    def terminate(self) -> None:
        """SIGTERM the process group and return at once (``stop`` then waits)."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL after ``timeout``; idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Children that outlived the leader (none expected) go with the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def stop_together(processes: Sequence[ManagedProcess], *, timeout: float = 10.0) -> None:
    """Stop several processes whose shutdowns do not depend on each other, in parallel:
    SIGTERM them all, then wait for each (SIGKILL after ``timeout``)."""
    for proc in processes:
        proc.terminate()
    for proc in processes:
        proc.stop(timeout=timeout)
