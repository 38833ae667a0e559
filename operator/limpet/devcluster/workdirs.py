"""The dev cluster's work directories: where they go, and sweeping those of dead runs.

Data flow: :func:`make_work_dir` creates ``<root>/limpet-devcluster-XXXX/`` (on tmpfs
when there is one, see :func:`default_work_root`) with an owner record (``owner.json``:
PID and process start time, later the children's PIDs, see ``ownership``).
:func:`sweep_stale_work_dirs` removes the directories of owners that died, killing their
orphaned control-plane processes first: only processes whose command line names that
directory, so a reused PID is never hit.

Touches only the file system and ``/proc``; safe from any thread, and runs on one
machine side by side with other runs, whose live directories it leaves alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from limpet.devcluster.ownership import (
    current_owner,
    is_alive,
    read_record,
    wait_gone,
    write_record,
)

WORK_DIR_PREFIX = "limpet-devcluster-"
OWNER_FILE = "owner.json"


def make_work_dir(root: Path) -> Path:
    work_dir = Path(tempfile.mkdtemp(prefix=WORK_DIR_PREFIX, dir=root))
    write_record(work_dir / OWNER_FILE, current_owner())
    return work_dir


def record_children(work_dir: Path, pids: list[int]) -> None:
    """Note the control-plane processes in the owner record, for a later sweep."""
    write_record(work_dir / OWNER_FILE, current_owner(), children=pids)


def default_work_root() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def sweep_stale_work_dirs(root: Path) -> list[Path]:
    """Remove work directories of dead owners, killing their orphaned children first."""
    swept: list[Path] = []
    for work_dir in root.glob(WORK_DIR_PREFIX + "*"):
        record = read_record(work_dir / OWNER_FILE)
        if record is None:
            # Either being set up right now, or the owner died before writing the record:
            # only sweep the latter, judged by age.
            with contextlib.suppress(OSError):
                if time.time() - work_dir.stat().st_mtime > 600:
                    shutil.rmtree(work_dir, ignore_errors=True)
                    swept.append(work_dir)
            continue
        owner, extra = record
        if is_alive(owner):
            continue
        children = extra.get("children", [])
        killed = [
            int(pid)
            for pid in (children if isinstance(children, list) else [])
            if _kill_if_ours(int(pid), work_dir)
        ]
        # SIGKILL is asynchronous: a large Go process takes a moment to go. Wait, so the
        # caller never sees a swept cluster's processes alive, nor have them write into
        # the directory being removed.
        wait_gone(killed, timeout=10.0)
        shutil.rmtree(work_dir, ignore_errors=True)
        swept.append(work_dir)
    return swept


def _kill_if_ours(pid: int, work_dir: Path) -> bool:
    """SIGKILL ``pid``'s process group if it is one of ours; whether a signal was sent."""
    # Guard against PID reuse: only a process whose command line names our work dir.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if str(work_dir).encode() not in cmdline:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True
