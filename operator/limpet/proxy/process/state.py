"""The last accepted plan: versioned, idempotent acceptance and atomic persistence.

Data flow: the admin API parses a pushed plan and hands it to :meth:`PlanGate.accept`.
The gate compares versions with the plan it holds (a lower version, or the same version
with other content, is refused with :class:`StalePlanError`; the same plan again is a
no-op), applies a newer plan to its consumer (the router, or the supervisor's fan-out to
workers), and then writes it to ``--state-dir`` through :class:`PlanStore`: a temporary
file in the same directory, fsync, rename over ``plan.json``, fsync of the directory. A
crash at any point leaves either the old or the new file, never a torn one. At start the
proxy loads that file, so it keeps routing after a restart while the operator is away.
A corrupt or unreadable file is reported (the returned problem names the file and the
cause) and moved aside; it never stops the proxy from starting.

Concurrency: the gate lives on the event loop; acceptances are serialised by an
``asyncio.Lock`` so two concurrent pushes cannot persist out of order, and the blocking
write runs in a worker thread so the data path keeps flowing. The state file contains
the cookie signing keys, so it is created with mode 0600.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from limpet.affinity.plan import Plan, PlanError, plan_from_json, plan_to_json

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"


class StalePlanError(Exception):
    """A pushed plan that would take the proxy backwards (answered 409)."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """The outcome of reading the state directory at start."""

    plan: Plan | None
    problem: str | None  # why nothing usable was loaded, for the log; None if fine or absent


class PlanStore:
    """Reads and atomically writes ``<directory>/plan.json``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / PLAN_FILE

    def load(self) -> Loaded:
        """The persisted plan, or ``None`` with a reason. Never raises for a bad file."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Loaded(None, None)
        except OSError as exc:
            return Loaded(None, f"cannot read saved plan {self.path}: {exc}")
        try:
            plan = plan_from_json(data)
        except PlanError as exc:
            aside = self._move_aside()
            where = f"; moved to {aside}" if aside else ""
            return Loaded(None, f"ignoring corrupt saved plan {self.path}: {exc}{where}")
        return Loaded(plan, None)

    def save(self, plan: Plan) -> None:
        """Write ``plan`` atomically (tmp file, fsync, rename, fsync directory)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        data = plan_to_json(plan).encode("utf-8")
        fd, tmp = tempfile.mkstemp(prefix=".plan.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _move_aside(self) -> Path | None:
        aside = self.path.with_name(f"{PLAN_FILE}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
        except OSError:
            return None
        return aside


class PlanGate:
    """Versioned, idempotent plan acceptance in front of a consumer and a store.

    The consumer is either ``apply``, called on the event loop with every newer plan
    (for example ``router.load_plan``), or ``stage``, which compiles the plan in a worker
    thread and returns the commit to run on the loop (``router.stage``: slot tables for
    hundreds of backends take tens of milliseconds to build, which the data path should
    not wait for). ``store`` may be ``None`` (no ``--state-dir``).
    """

    def __init__(
        self,
        *,
        apply: Callable[[Plan], None] | None = None,
        stage: Callable[[Plan], Callable[[], None]] | None = None,
        store: PlanStore | None,
        initial: Plan | None = None,
    ) -> None:
        if (apply is None) == (stage is None):
            raise ValueError("PlanGate needs exactly one of apply= or stage=")
        self._apply = apply
        self._stage = stage
        self._store = store
        self._current = initial
        self._lock = asyncio.Lock()
        self.persist_errors = 0

    @property
    def current(self) -> Plan | None:
        return self._current

    @property
    def version(self) -> int | None:
        return None if self._current is None else self._current.version

    def check(self, plan: Plan) -> bool:
        """True if ``plan`` is new; False if it is the plan already held; else raises."""
        cur = self._current
        if cur is None or plan.version > cur.version:
            return True
        if plan.version < cur.version:
            raise StalePlanError(
                f"plan version {plan.version} is lower than the current version {cur.version}"
            )
        if plan != cur:
            raise StalePlanError(
                f"plan version {plan.version} was already accepted with different content; "
                "a changed plan needs a higher version"
            )
        return False

    async def accept(self, plan: Plan) -> bool:
        """Apply and persist ``plan`` if newer. Returns whether anything changed."""
        async with self._lock:
            if not self.check(plan):
                return False
            if self._stage is not None:
                commit = await asyncio.to_thread(self._stage, plan)
                commit()
            else:
                assert self._apply is not None
                self._apply(plan)
            self._current = plan
            if self._store is not None:
                try:
                    await asyncio.to_thread(self._store.save, plan)
                except OSError as exc:
                    # Routing already follows the new plan; a full or read-only disk must
                    # not stop failover. Counted and logged so it is seen.
                    self.persist_errors += 1
                    log.error("could not persist plan version %d: %s", plan.version, exc)
            return True
