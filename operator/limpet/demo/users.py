"""Simulated users with real sessions, driving HTTP traffic through the Limpet proxies.

Data flow: :class:`UserPool` keeps ``population`` users alive. Each user is one asyncio
task with its own session: a session id, its running count, and the cookies the proxy
sets (LIMPET), sent back like a browser would. A user works in bursts (a few requests,
``think`` apart) separated by idle pauses, which is when Limpet may move its session
(gradual rebalance and drain move idle sessions only), and leaves after a random number
of requests; a new user takes its place. Each request goes to one of the proxies at
random, like a load balancer in front of them: cookie affinity needs no shared state.

The demo counter app (:mod:`limpet.demo.backend`) answers each request with its pod, the
session's count and a verdict. The pool tallies, per scenario phase (:meth:`set_phase`):
requests, failed requests, sessions started, verdicts, broken sessions and moves by
reason (the ``Limpet-Session-Moved`` reason the app echoes). :meth:`snapshot` also gives
the pod each live session was last served by, which is the "sessions per pod" that the
live view and the report show.

:meth:`quiesce` ends the run's traffic cleanly before the final figures are read: no
request starts after it, and it returns once every request in flight has been answered
and tallied, so what the users saw can be compared with what the proxies counted.

A request that fails leaves the user unsure whether the app counted it; if the next
answer then says "broken", that is counted as ``resynced`` (the failure itself is
already counted as an error), not as a broken session.

Concurrency: one event loop; tallies are plain counters touched only from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Final

import aiohttp

from limpet.demo.backend import COUNT_HEADER, SESSION_HEADER

REQUEST_TIMEOUT: Final = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class UserSettings:
    population: int = 80
    burst: tuple[int, int] = (2, 6)
    """Requests per burst (inclusive range)."""
    think: tuple[float, float] = (0.15, 0.5)
    """Seconds between requests within a burst."""
    pause: tuple[float, float] = (2.0, 8.0)
    """Idle seconds between bursts: long enough, often enough, for a session to count as
    idle (the proxy measures idleness conservatively, from the cookie's coarse last-seen
    time plus its granularity), so that drains and rebalances can move it early."""
    lifetime: tuple[int, int] = (15, 60)
    """Requests before the user leaves."""
    connections: int = 64


@dataclass(slots=True)
class PhaseTally:
    requests: int = 0
    errors: int = 0
    sessions: int = 0
    broken: int = 0
    resynced: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    moves: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TrafficSnapshot:
    """Totals so far, per phase and overall, plus where live sessions sit now."""

    phases: dict[str, PhaseTally]
    sessions_per_pod: dict[str, int]
    live_users: int

    def total(self) -> PhaseTally:
        out = PhaseTally()
        for t in self.phases.values():
            out.requests += t.requests
            out.errors += t.errors
            out.sessions += t.sessions
            out.broken += t.broken
            out.resynced += t.resynced
            out.verdicts.update(t.verdicts)
            out.moves.update(t.moves)
            out.error_samples.extend(t.error_samples[: max(0, 5 - len(out.error_samples))])
        return out


@dataclass(slots=True)
class _User:
    session: str
    count: int = 0
    pod: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)
    failed_last: bool = False


class UserPool:
    """A population of users; :meth:`run` until ``stop`` is set, then all have left."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        settings: UserSettings,
        rng: random.Random | None = None,
    ) -> None:
        if not targets:
            raise ValueError("at least one proxy URL is needed")
        self._targets = list(targets)
        self._settings = settings
        self._rng = rng or random.Random()
        self._phase = "start"
        self._tallies: dict[str, PhaseTally] = {self._phase: PhaseTally()}
        self._users: dict[int, _User] = {}
        self._next_id = 0
        self._population = settings.population
        self._quiet = asyncio.Event()
        """Set by :meth:`quiesce`: no request starts any more."""
        self._in_flight = 0
        self._settled = asyncio.Event()
        """Set when the last request in flight ends after :meth:`quiesce`."""

    def set_phase(self, name: str) -> None:
        self._phase = name
        self._tallies.setdefault(name, PhaseTally())

    def set_targets(self, targets: Sequence[str]) -> None:
        """The proxies to spread requests over, from the next request on."""
        if not targets:
            raise ValueError("at least one proxy URL is needed")
        self._targets = list(targets)

    async def quiesce(self, *, within: float = REQUEST_TIMEOUT + 1.0) -> None:
        """No new request from now on; returns once none is in flight (or ``within``)."""
        self._quiet.set()
        if self._in_flight:
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), within)

    def snapshot(self) -> TrafficSnapshot:
        per_pod: Counter[str] = Counter(u.pod for u in self._users.values() if u.pod)
        phases = {}
        for name, t in self._tallies.items():
            phases[name] = PhaseTally(
                requests=t.requests,
                errors=t.errors,
                sessions=t.sessions,
                broken=t.broken,
                resynced=t.resynced,
                verdicts=Counter(t.verdicts),
                moves=Counter(t.moves),
                error_samples=list(t.error_samples),
            )
        return TrafficSnapshot(
            phases=phases, sessions_per_pod=dict(per_pod), live_users=len(self._users)
        )

    async def run(self, stop: asyncio.Event) -> None:
        connector = aiohttp.TCPConnector(limit=self._settings.connections, force_close=False)
        async with aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        ) as http:
            tasks: set[asyncio.Task[None]] = set()
            first_fill = True
            try:
                while not stop.is_set():
                    while len(tasks) < self._population:
                        # The first users are already part-way through their visit, so
                        # departures (and new sessions) are spread from the start.
                        task = asyncio.create_task(self._live(http, stop, warm=first_fill))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    first_fill = False
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=0.1)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _live(
        self, http: aiohttp.ClientSession, stop: asyncio.Event, *, warm: bool = False
    ) -> None:
        s, rng = self._settings, self._rng
        uid = self._next_id
        self._next_id += 1
        user = _User(session=secrets.token_hex(8))
        self._users[uid] = user
        self._tallies[self._phase].sessions += 1
        try:
            left = rng.randint(1 if warm else s.lifetime[0], s.lifetime[1])
            while left > 0 and not stop.is_set():
                for _ in range(min(left, rng.randint(*s.burst))):
                    await self._request(http, user)
                    left -= 1
                    await asyncio.sleep(rng.uniform(*s.think))
                await asyncio.sleep(rng.uniform(*s.pause))
        finally:
            del self._users[uid]

    async def _request(self, http: aiohttp.ClientSession, user: _User) -> None:
        if self._quiet.is_set():
            return
        self._in_flight += 1
        try:
            await self._exchange(http, user)
        finally:
            self._in_flight -= 1
            if self._quiet.is_set() and not self._in_flight:
                self._settled.set()

    async def _exchange(self, http: aiohttp.ClientSession, user: _User) -> None:
        tally = self._tallies[self._phase]
        tally.requests += 1
        headers = {SESSION_HEADER: user.session, COUNT_HEADER: str(user.count)}
        if user.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in user.cookies.items())
        url = self._rng.choice(self._targets)
        try:
            async with http.get(url, headers=headers) as resp:
                for raw in resp.headers.getall("Set-Cookie", []):
                    with contextlib.suppress(CookieError):
                        jar: SimpleCookie = SimpleCookie(raw)
                        user.cookies.update({k: m.value for k, m in jar.items()})
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status} {body[:60]!r}")
                doc = _decode(body)
        except (aiohttp.ClientError, TimeoutError, OSError, RuntimeError, ValueError) as exc:
            tally.errors += 1
            user.failed_last = True
            if len(tally.error_samples) < 5:
                tally.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        if doc.verdict == "broken" and user.failed_last:
            tally.resynced += 1
        elif doc.verdict == "broken":
            tally.broken += 1
        tally.verdicts[doc.verdict] += 1
        if doc.moved:
            tally.moves[doc.moved] += 1
        user.failed_last = False
        user.count = doc.count
        user.pod = doc.pod


@dataclass(frozen=True, slots=True)
class Answer:
    pod: str
    count: int
    verdict: str
    moved: str | None


def _decode(body: bytes) -> Answer:
    doc = json.loads(body)
    if not isinstance(doc, dict) or not {"pod", "count", "verdict", "moved"} <= doc.keys():
        raise ValueError(f"not a counter answer: {body[:60]!r}")
    moved = doc["moved"]
    return Answer(
        pod=str(doc["pod"]),
        count=int(doc["count"]),
        verdict=str(doc["verdict"]),
        moved=None if moved is None else str(moved),
    )
