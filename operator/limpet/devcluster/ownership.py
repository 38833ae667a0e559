"""Who owns a piece of leftover state: a process identity that survives PID reuse.

Data flow: a run writes :func:`current_owner` (PID plus the kernel's start time
of that PID) next to the state it creates, *before* creating it. A later run's
sweeper reads the record back and asks :func:`is_alive`; only state of dead
owners is swept, so concurrent runs on the same machine leave each other alone.

Reads ``/proc`` only; no shared in-process state, safe from any thread.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Owner:
    pid: int
    start_ticks: int  # field 22 of /proc/PID/stat: distinguishes a reused PID

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start_ticks": self.start_ticks}

    @classmethod
    def from_json(cls, data: object) -> Owner:
        if not isinstance(data, dict):
            raise ValueError(f"not an owner record: {data!r}")
        return cls(pid=int(data["pid"]), start_ticks=int(data["start_ticks"]))


def process_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def current_owner() -> Owner:
    pid = os.getpid()
    ticks = process_start_ticks(pid)
    assert ticks is not None  # we are running
    return Owner(pid=pid, start_ticks=ticks)


def is_alive(owner: Owner) -> bool:
    return process_start_ticks(owner.pid) == owner.start_ticks


def write_record(path: Path, owner: Owner, **extra: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"owner": owner.to_json(), **extra}))
    tmp.replace(path)


def read_record(path: Path) -> tuple[Owner, dict[str, object]] | None:
    """The owner and extra fields, or None if the record is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
        return Owner.from_json(data.pop("owner")), data
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (killed, not yet reaped) counts as gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status and "State:\tX" not in status


def wait_gone(pids: Sequence[int], *, timeout: float) -> None:
    """Wait until none of ``pids`` runs, at most ``timeout`` s.

    SIGKILL is asynchronous: a large process takes a moment to go, and callers that
    delete what it holds (a work dir, a network namespace) or report it gone must not
    see it still running.
    """
    deadline = time.monotonic() + timeout
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
