"""The pusher against a real ``limpet proxy`` process: what it reports, and nothing more.

The reporter reads the proxies only through :meth:`Pusher.report` (a
:class:`PushReport` value) and the reconciler learns of news only through
:attr:`Pusher.changed` and :attr:`Pusher.ahead`; these tests pin that contract on real
sockets: a push lands, a proxy already on a higher version is seen ahead, a proxy
that does not answer is reported unreachable, and a session seen by two proxies is
reported once.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from limpet.affinity import BackendId
from limpet.affinity.plan import plan_to_json
from limpet.affinity.plan.model import Backend, CookieKey, Plan
from limpet.controller.effects.pusher import ProxyReport, ProxyTarget, Pusher, PushReport
from limpet.controller.model.settings import BackoffSettings, PushSettings
from tests.proxy.conftest import Backends, Proxies

TOKEN = "pusher-test-token"
FAST = PushSettings(
    timeout=2.0, backoff=BackoffSettings(initial=0.02, maximum=0.2), stats_interval=0.1
)


def _plan(version: int, port: int = 9) -> bytes:
    plan = Plan(
        version=version,
        backends=(Backend(id=BackendId("b1"), address="127.0.0.1", port=port),),
        cookie_keys=(CookieKey(id="k1", secret=b"s" * 32),),
    )
    return plan_to_json(plan).encode()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Proxies]:
    factory = Proxies(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


async def _until(pusher: Pusher, check: Callable[[PushReport], bool]) -> PushReport:
    """Wait on ``changed`` (as the reconciler does) until the report satisfies ``check``."""

    async def wait() -> PushReport:
        while True:
            report = pusher.report()
            if check(report):
                return report
            await pusher.changed.wait()
            pusher.changed.clear()

    return await asyncio.wait_for(wait(), 15)


async def test_a_push_lands_and_the_report_says_so(
    proxies: Proxies, http: aiohttp.ClientSession
) -> None:
    p = proxies.start(token=TOKEN)
    pusher = Pusher(session=http, settings=FAST, token=TOKEN)
    try:
        pusher.set_targets(
            {"a": ProxyTarget(key="a", url=f"http://127.0.0.1:{p.admin_port}", pod="proxy-a")}
        )
        await pusher.set_plan(3, _plan(3))
        report = await _until(pusher, lambda r: r.synced(3) == 1)
        assert report.version == 3
        assert report.proxies == (
            ProxyReport(
                name="proxy-a",
                version=3,
                reachable=True,
                error=None,
                migrations={"drain": 0, "expired": 0, "failover": 0, "rebalance": 0},
            ),
        )
        assert report.out_of_sync(3) == ()
        assert report.unreachable() == ()
        assert pusher.ahead == 0
        # The planner's version counts, not the pusher's: a newer plan not pushed yet
        # leaves the proxy out of sync.
        assert [r.name for r in report.out_of_sync(4)] == ["proxy-a"]
    finally:
        await pusher.close()

    # A second pusher (an operator that restarted and lost the version) with an older
    # plan finds the proxy ahead, and never sends its lower version.
    again = Pusher(session=http, settings=FAST, token=TOKEN)
    try:
        await again.set_plan(1, _plan(1))
        again.set_targets({"a": ProxyTarget(key="a", url=f"http://127.0.0.1:{p.admin_port}")})
        await asyncio.wait_for(again.changed.wait(), 15)
        assert again.ahead == 3
        report = again.report()
        assert [(r.name, r.version) for r in report.out_of_sync(1)] == [
            (f"http://127.0.0.1:{p.admin_port}", 3)
        ]
    finally:
        await again.close()


async def test_a_proxy_that_does_not_answer_is_reported_unreachable(
    http: aiohttp.ClientSession,
) -> None:
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pusher = Pusher(session=http, settings=FAST, token=TOKEN)
    try:
        await pusher.set_plan(1, _plan(1))
        pusher.set_targets({"x": ProxyTarget(key="x", url=f"http://127.0.0.1:{port}", pod="x")})
        report = await _until(pusher, lambda r: bool(r.unreachable()))
        (gone,) = report.unreachable()
        assert gone.name == "x"
        assert not gone.reachable
        assert gone.version is None
        assert gone.error
        assert report.synced(1) == 0
    finally:
        await pusher.close()


@pytest.fixture
def backends() -> Iterator[Backends]:
    factory = Backends()
    try:
        yield factory
    finally:
        factory.close()


async def test_a_session_seen_by_two_proxies_is_reported_once(
    proxies: Proxies, backends: Backends, http: aiohttp.ClientSession
) -> None:
    app = backends.start("b1")
    a, b = proxies.start(token=TOKEN), proxies.start(token=TOKEN)
    pusher = Pusher(session=http, settings=FAST, token=TOKEN)
    try:
        pusher.set_targets(
            {
                name: ProxyTarget(key=name, url=f"http://127.0.0.1:{p.admin_port}", pod=name)
                for name, p in (("a", a), ("b", b))
            }
        )
        await pusher.set_plan(1, _plan(1, app.port))
        await _until(pusher, lambda r: r.synced(1) == 2)
        # Ten users, each through proxy a and then, with a's cookie, through proxy b;
        # then five more through a only and five through b only.
        for _ in range(10):
            async with http.get(a.url()) as first:
                assert first.status == 200
                cookie = first.headers["Set-Cookie"].split(";", 1)[0]
            async with http.get(b.url(), headers={"Cookie": cookie}) as again:
                assert again.status == 200
        for p in [a] * 5 + [b] * 5:
            async with http.get(p.url()) as alone:
                assert alone.status == 200
        # Each proxy counts fifteen: the old sum said 30, the max would say 15; the
        # union of the proxies' sketches counts the 20 users once each.
        # (Stats feed the report on every read; ``changed`` is only for sync news.)
        for _ in range(100):
            report = pusher.report()
            if report.sessions.get("b1", 0) >= 20:
                break
            await asyncio.sleep(0.1)
        for p in (a, b):
            async with http.get(
                f"http://127.0.0.1:{p.admin_port}/v1/stats",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp:
                assert (await resp.json())["backends"]["b1"]["sessions"] == 15
        assert dict(report.sessions) == {"b1": 20}
        assert report.counts.method == {"b1": "sketch"}
    finally:
        await pusher.close()
