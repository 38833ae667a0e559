"""Push the current plan to every proxy's admin API, and keep each one on it.

Data flow: the reconciler calls :meth:`Pusher.set_plan` (only ever with a higher version)
and :meth:`Pusher.set_targets` (the proxy pods discovered from their EndpointSlices, each
with its admin URL). One worker task per proxy loops:

1. It first reads ``GET /v1/stats`` to learn which version the proxy runs.
2. While the proxy runs an older version than the current plan, ``PUT /v1/plan``; on a
   connection error, a timeout or a 5xx it backs off exponentially (with jitter) and
   tries again. A 409 means the proxy holds a version this process did not push (an
   operator restart that lost it, or a plan from elsewhere): the worker records it in
   ``ahead`` so the planner issues a version above it. A lower version is never sent.
3. Otherwise it waits for a newer plan or ``stats_interval``, then reads stats again: a
   proxy that restarted (no plan, or its persisted older one) is pushed to again, and the
   counting fields (:mod:`~limpet.controller.model.counts`) feed status and the
   rebalance estimate.

Every change of a proxy's sync state sets :attr:`Pusher.changed`; a proxy found on a
higher version raises :attr:`Pusher.ahead`. :meth:`Pusher.report` is the value the
status is made of. The pusher calls nobody back: its reader waits on ``changed``.

Concurrency: one event loop. Workers are independent, so a slow or dead proxy delays
nobody else. The plan body is encoded once per version and shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from limpet.controller.model.backoff import Backoff
from limpet.controller.model.counts import ProxyCounts, SessionCounts, combine, parse_counts
from limpet.controller.model.settings import PushSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProxyTarget:
    key: str
    """Stable identity of the proxy pod."""
    url: str
    """Base URL of its admin API, e.g. ``http://10.1.2.3:9901``."""
    pod: str | None = None


@dataclass(slots=True)
class ProxyState:
    target: ProxyTarget
    version: int | None = None
    """The plan version the proxy last reported or acknowledged (None: none / unknown)."""
    pushed: int = 0
    """The highest version this process successfully pushed to it."""
    reachable: bool = False
    last_error: str | None = None
    counts: ProxyCounts = field(default_factory=ProxyCounts)
    migrations: dict[str, int] = field(default_factory=dict)
    synced_at: float | None = None


@dataclass(frozen=True, slots=True)
class ProxyReport:
    """One proxy as the pusher last heard from it."""

    name: str
    """Its pod's name, else its admin URL."""
    version: int | None
    reachable: bool
    error: str | None
    migrations: Mapping[str, int]
    """Sessions it moved since it started, by reason (its own counts)."""

    @property
    def rebalance_moves(self) -> int:
        return self.migrations.get("rebalance", 0)


@dataclass(frozen=True, slots=True)
class PushReport:
    """What the proxies said, at one instant: the value status and Events are made of."""

    version: int
    """The pusher's current plan version (0: none yet)."""
    proxies: tuple[ProxyReport, ...]
    counts: SessionCounts
    """Distinct live sessions per backend, counted once however many proxies saw them
    (:func:`~limpet.controller.model.counts.combine`)."""

    @property
    def sessions(self) -> Mapping[str, int]:
        return self.counts.sessions

    def synced(self, version: int) -> int:
        """How many proxies run plan ``version`` (none while ``version`` is 0)."""
        return sum(1 for p in self.proxies if version and p.version == version)

    def out_of_sync(self, version: int) -> tuple[ProxyReport, ...]:
        return tuple(p for p in self.proxies if p.version != version)

    def unreachable(self) -> tuple[ProxyReport, ...]:
        return tuple(p for p in self.proxies if p.error and not p.reachable)


class PushObserver(Protocol):
    """Where each push's duration and outcome go (the operator's metrics)."""

    def pushed(self, seconds: float, result: str) -> None: ...


class Pusher:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        settings: PushSettings,
        token: str,
        metrics: PushObserver | None = None,
    ) -> None:
        self._session = session
        self._settings = settings
        self._token = token
        self._metrics = metrics
        self._version = 0
        self._body = b""
        self._new_plan = asyncio.Condition()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._proxies: dict[str, ProxyState] = {}
        self.changed = asyncio.Event()
        """Set when a proxy's sync state changed or one was seen ahead; its one reader
        (the reconciler) clears it."""
        self.ahead = 0
        """The highest plan version seen on a proxy that this pusher did not push (an
        operator restart lost it, or a plan came from elsewhere); 0: none."""

    @property
    def version(self) -> int:
        return self._version

    async def set_plan(self, version: int, body: bytes) -> None:
        """Make ``version`` current; lower or equal versions are ignored."""
        if version <= self._version:
            return
        self._version, self._body = version, body
        async with self._new_plan:
            self._new_plan.notify_all()

    def set_targets(self, targets: Mapping[str, ProxyTarget]) -> None:
        for key in list(self._workers):
            if key not in targets or self._proxies[key].target != targets[key]:
                self._workers.pop(key).cancel()
                self._proxies.pop(key, None)
        for key, target in targets.items():
            if key not in self._workers:
                self._proxies[key] = ProxyState(target=target)
                self._workers[key] = asyncio.create_task(
                    self._worker(self._proxies[key]), name=f"push:{target.url}"
                )

    def report(self) -> PushReport:
        counts = combine({p.target.pod or p.target.url: p.counts for p in self._proxies.values()})
        return PushReport(
            version=self._version,
            proxies=tuple(
                ProxyReport(
                    name=p.target.pod or p.target.url,
                    version=p.version,
                    reachable=p.reachable,
                    error=p.last_error,
                    migrations=dict(p.migrations),
                )
                for p in self._proxies.values()
            ),
            counts=counts,
        )

    def _saw_ahead(self, version: int) -> None:
        self.ahead = max(self.ahead, version)
        self.changed.set()

    async def close(self) -> None:
        tasks = list(self._workers.values())
        self._workers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _behind(self, state: ProxyState) -> bool:
        return self._version > 0 and state.version != self._version

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self._settings.timeout)

    async def _read_stats(self, state: ProxyState) -> None:
        async with self._session.get(
            state.target.url + "/v1/stats", headers=self._headers(), timeout=self._timeout()
        ) as resp:
            if resp.status != 200:
                raise _Failure(f"stats: HTTP {resp.status}")
            data: dict[str, Any] = await resp.json()
        reported = data.get("planVersion")
        state.version = int(reported) if isinstance(reported, int) else None
        state.counts = parse_counts(data)
        state.migrations = {str(k): int(v) for k, v in (data.get("migrations") or {}).items()}
        state.reachable = True

    async def _push(self, state: ProxyState) -> None:
        """PUT the current plan, timed and counted by result for the operator's metrics."""
        started, result = time.perf_counter(), "error"
        try:
            await self._put_plan(state)
            result = "ok"
        except _Failure as exc:
            result = "conflict" if exc.status == 409 else "error"
            raise
        except asyncio.CancelledError:
            result = ""  # the worker was stopped (targets changed): not a push outcome
            raise
        finally:
            if self._metrics is not None and result:
                self._metrics.pushed(time.perf_counter() - started, result)

    async def _put_plan(self, state: ProxyState) -> None:
        version, body = self._version, self._body
        async with self._session.put(
            state.target.url + "/v1/plan",
            data=body,
            headers={**self._headers(), "Content-Type": "application/json"},
            timeout=self._timeout(),
        ) as resp:
            text = await resp.text()
            if resp.status == 200:
                state.version = version
                state.pushed = max(state.pushed, version)
                state.synced_at = time.monotonic()
                return
            if resp.status == 409:
                await self._read_stats(state)
                if state.version is not None and state.version >= version:
                    self._saw_ahead(state.version)
                raise _Failure(f"push v{version}: 409 {text.strip()[:200]}", status=409)
            raise _Failure(
                f"push v{version}: HTTP {resp.status} {text.strip()[:200]}", status=resp.status
            )

    async def _worker(self, state: ProxyState) -> None:
        s = self._settings
        backoff = Backoff(s.backoff)
        first = True
        while True:
            before = (state.version, state.reachable, state.last_error)
            try:
                if first:
                    await self._read_stats(state)
                    first = False
                    if (
                        state.version is not None
                        and state.version >= self._version > 0
                        and state.version != state.pushed
                    ):
                        self._saw_ahead(state.version)
                if self._behind(state):
                    await self._push(state)
                else:
                    async with self._new_plan:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(
                                self._new_plan.wait_for(lambda: self._behind(state)),
                                timeout=s.stats_interval,
                            )
                    if not self._behind(state):
                        await self._read_stats(state)
                state.last_error = None
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, TimeoutError, _Failure, ValueError) as exc:
                state.last_error = str(exc) or type(exc).__name__
                if not isinstance(exc, _Failure):
                    state.reachable = False
                    first = True
                log.debug("proxy %s: %s", state.target.url, state.last_error)
                if (state.version, state.reachable, state.last_error) != before:
                    self.changed.set()
                await asyncio.sleep(backoff.next_delay())
                continue
            if (state.version, state.reachable, state.last_error) != before:
                self.changed.set()


class _Failure(Exception):
    """The proxy answered, but not with success."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
