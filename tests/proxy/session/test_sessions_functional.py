"""Sessions end to end: a real ``limpet proxy`` process, real backend processes, loopback
sockets. Affinity modes and fallback, tampering and key rotation, drain, gradual rebalance
pushed through the admin API, failover when a backend process is killed, and a restart
that keeps routing from the state directory."""

from __future__ import annotations

import ipaddress
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from limpet.affinity import (
    AffinitySettings,
    AffinityType,
    Backend,
    BackendId,
    BackendState,
    ClientIPSettings,
    CookieKey,
    DrainSettings,
    Plan,
    RebalanceSchedule,
)
from limpet.affinity.plan.codec import plan_to_json

from ..conftest import Backend as BackendProc
from ..conftest import Backends, Conn, Proxies, Proxy, Response, standalone_args

K1 = CookieKey(id="k1", secret=b"1" * 32)
K2 = CookieKey(id="k2", secret=b"2" * 32)
K3 = CookieKey(id="k3", secret=b"3" * 32)
MOVED = "Limpet-Session-Moved"


def make_plan(
    version: int,
    procs: Sequence[BackendProc],
    *,
    states: dict[str, BackendState] | None = None,
    deadline: float | None = None,
    affinity: AffinitySettings | None = None,
    keys: Sequence[CookieKey] = (K1,),
    drain: DrainSettings | None = None,
    rebalance: RebalanceSchedule | None = None,
) -> Plan:
    states = states or {}
    return Plan(
        version=version,
        backends=tuple(
            Backend(
                id=BackendId(p.id),
                address="127.0.0.1",
                port=p.port,
                state=states.get(p.id, BackendState.ACTIVE),
                drain_deadline=deadline if states.get(p.id) is BackendState.DRAINING else None,
            )
            for p in procs
        ),
        affinity=affinity or AffinitySettings(),
        cookie_keys=tuple(keys),
        drain=drain or DrainSettings(),
        rebalance=rebalance,
    )


def start_with_plan(proxy: Proxies, tmp_path: Path, plan: Plan, *extra: str) -> Proxy:
    path = tmp_path / f"plan-{plan.version}.json"
    path.write_text(plan_to_json(plan))
    return proxy.start("--plan", str(path), *extra)


def push(p: Proxy, plan: Plan) -> None:
    status, body = p.admin("PUT", "/v1/plan", plan_to_json(plan).encode())
    assert status == 200, body


@dataclass
class Seen:
    """One answer as the backend saw the request."""

    backend: str
    headers: list[tuple[str, str]]
    response: Response

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass
class Browser:
    """Keeps the LB cookie (and an app cookie) like a browser; one keep-alive connection."""

    proxy: Proxy
    name: str = "LIMPET"
    jar: dict[str, str] = field(default_factory=dict)
    extra_cookie: str = "theme=dark"
    conn: Conn | None = None

    def get(
        self, path: str = "/", headers: list[tuple[str, str]] | None = None, *, fresh: bool = False
    ) -> Seen:
        if fresh or self.conn is None:
            self.close()
            self.conn = Conn(self.proxy.address)
        cookie = "; ".join([*(f"{k}={v}" for k, v in self.jar.items()), self.extra_cookie])
        resp = self.conn.request("GET", path, headers=[("Cookie", cookie), *(headers or [])])
        assert resp.status == 200, (resp.status, resp.body)
        for sc in resp.all("Set-Cookie"):
            k, _, rest = sc.partition("=")
            if k == self.name:
                self.jar[k] = rest.split(";")[0]
        data = resp.json()
        return Seen(data["backend"], [(k, v) for k, v in data["headers"]], resp)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def get(p: Proxy, path: str = "/", headers: list[tuple[str, str]] | None = None) -> Seen:
    with Conn(p.address) as c:
        resp = c.request("GET", path, headers=headers or [])
    assert resp.status == 200, (resp.status, resp.body)
    data = resp.json()
    return Seen(data["backend"], [(k, v) for k, v in data["headers"]], resp)


def three(backends: Backends) -> list[BackendProc]:
    return [backends.start("s1"), backends.start("s2"), backends.start("s3")]


# -- cookie ------------------------------------------------------------------------------------


def test_cookie_sticky_across_requests_and_connections(
    backends: Backends, proxy: Proxies, tmp_path: Path
) -> None:
    procs = three(backends)
    p = start_with_plan(proxy, tmp_path, make_plan(1, procs))
    clients = [Browser(p) for _ in range(30)]
    home: dict[int, str] = {}
    try:
        for round_ in range(8):
            for i, c in enumerate(clients):
                seen = c.get(fresh=round_ % 3 == 0)  # new connections now and then
                home.setdefault(i, seen.backend)
                assert seen.backend == home[i]
                cookie = seen.header("Cookie") or ""
                assert "LIMPET" not in cookie  # our cookie never reaches the app
                assert "theme=dark" in cookie  # the app's cookies do
                assert seen.header(MOVED) is None
                if round_ == 0:
                    assert seen.response.header("Set-Cookie") is not None
    finally:
        for c in clients:
            c.close()
    assert len(set(home.values())) == 3
    stats = p.stats()
    assert sum(b["requests"] for b in stats["backends"].values()) == 240
    assert sum(b["sessions"] for b in stats["backends"].values()) == 30
    assert sum(stats["migrations"].values()) == 0


def test_tampering_and_key_rotation(backends: Backends, proxy: Proxies, tmp_path: Path) -> None:
    procs = three(backends)
    p = start_with_plan(proxy, tmp_path, make_plan(1, procs, keys=[K1]))
    c = Browser(p)
    home = c.get().backend
    k1_cookie = c.jar["LIMPET"]
    # Tampered: a new session, no error, counted.
    evil = Browser(
        p, jar={"LIMPET": k1_cookie[:-3] + ("AAA" if k1_cookie[-3:] != "AAA" else "BBB")}
    )
    seen = evil.get()
    assert seen.response.header("Set-Cookie") is not None
    assert "LIMPET" not in (seen.header("Cookie") or "")
    garbage = Browser(p, jar={"LIMPET": "not-a-cookie"})
    garbage.get()
    rejected = p.stats()["rejectedCookies"]
    assert rejected["tampered"] == 1
    assert rejected["garbage"] == 1
    # Rotation: K2 signs, K1 still verifies; the session stays and is re-signed.
    push(p, make_plan(2, procs, keys=[K2, K1]))
    seen = c.get()
    assert seen.backend == home
    assert seen.response.header("Set-Cookie") is not None
    assert c.jar["LIMPET"] != k1_cookie
    # K1 retired: the re-signed session still works, an old K1 cookie does not.
    push(p, make_plan(3, procs, keys=[K3, K2]))
    assert c.get().backend == home
    stale = Browser(p, jar={"LIMPET": k1_cookie})
    stale.get()
    assert p.stats()["rejectedCookies"]["unknown_key"] == 1
    for b in (c, evil, garbage, stale):
        b.close()


# -- learned modes (standalone command line) ----------------------------------------------------


def test_header_mode(backends: Backends, proxy: Proxies) -> None:
    procs = three(backends)
    p = proxy.start(*standalone_args(*procs, affinity="header:X-Session-Id"))
    where: dict[str, str] = {}
    for rnd in range(4):
        for u in range(20):
            seen = get(p, "/", [("X-Session-Id", f"user-{u}")])
            assert where.setdefault(f"user-{u}", seen.backend) == seen.backend, rnd
    assert len(set(where.values())) >= 2
    assert p.stats()["learned"]["header"]["entries"] == 20


def test_query_mode(backends: Backends, proxy: Proxies) -> None:
    procs = three(backends)
    p = proxy.start(*standalone_args(*procs, affinity="query:sid"))
    where: dict[int, str] = {}
    for rnd in range(4):
        for u in range(20):
            seen = get(p, f"/cart?page={rnd}&sid=s{u}")
            assert where.setdefault(u, seen.backend) == seen.backend
    assert len(set(where.values())) >= 2


def test_app_cookie_mode_learns_from_set_cookie(backends: Backends, proxy: Proxies) -> None:
    procs = three(backends)
    p = proxy.start(*standalone_args(*procs, affinity="app-cookie:JSESSIONID"))
    where: dict[int, str] = {}
    companions: dict[int, str] = {}
    for u in range(15):
        # The app issues the cookie on whichever backend served the login; the proxy
        # adds its signed companion, scoped like the app's cookie...
        login = get(p, f"/setcookie?name=JSESSIONID&value=sess{u}")
        app, companion = login.response.all("Set-Cookie")
        assert app == f"JSESSIONID=sess{u}; Path=/"
        assert companion.startswith("LIMPETAPP=")
        assert companion.endswith("; Path=/; HttpOnly")
        companions[u] = companion.split(";")[0]
        where[u] = login.backend
    for rnd in range(3):
        for u in range(15):
            # ...and every later request carrying them goes back there; the app sees
            # its own cookies, without the companion. Without the companion (rnd 2) the
            # learned table still knows the session, and the miss is counted.
            both = f"lang=en; {companions[u]}; JSESSIONID=sess{u}" if rnd < 2 else None
            seen = get(p, "/", [("Cookie", both or f"lang=en; JSESSIONID=sess{u}")])
            assert seen.backend == where[u]
            assert seen.header("Cookie") == f"lang=en; JSESSIONID=sess{u}"
    assert p.stats()["learned"]["app-cookie"]["entries"] == 15
    metrics = p.metrics()
    assert metrics['limpet_proxy_app_cookie_outcomes_total{reason="companion_missing"}'] == 15
    assert metrics['limpet_proxy_app_cookie_outcomes_total{reason="companion_rejected"}'] == 0


def test_client_ip_mode_trusts_xff_only_from_trusted_proxies(
    backends: Backends, proxy: Proxies
) -> None:
    procs = three(backends)
    trusted = proxy.start(
        *standalone_args(*procs, affinity="client-ip"), "--trusted-proxy", "127.0.0.0/8"
    )
    where: dict[int, str] = {}
    for _ in range(3):
        for n in range(30):
            seen = get(trusted, "/", [("X-Forwarded-For", f"198.51.100.{n}")])
            assert where.setdefault(n, seen.backend) == seen.backend
    assert len(set(where.values())) >= 2
    untrusted = proxy.start(*standalone_args(*procs, affinity="client-ip"))
    spoofed = {
        get(untrusted, "/", [("X-Forwarded-For", f"198.51.100.{n}")]).backend for n in range(30)
    }
    assert len(spoofed) == 1  # everyone is the loopback peer: the header was not believed


def test_fallback_header_then_client_ip(backends: Backends, proxy: Proxies, tmp_path: Path) -> None:
    procs = three(backends)
    aff = AffinitySettings(
        type=AffinityType.HEADER,
        header_name="X-Sid",
        fallback=(AffinityType.CLIENT_IP,),
        client_ip=ClientIPSettings(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),)),
    )
    p = start_with_plan(proxy, tmp_path, make_plan(1, procs, affinity=aff, keys=()))
    by_ip: dict[int, str] = {}
    for _ in range(3):
        for n in range(20):
            seen = get(p, "/", [("X-Forwarded-For", f"203.0.113.{n}")])
            assert by_ip.setdefault(n, seen.backend) == seen.backend
    assert len(set(by_ip.values())) >= 2
    learned = p.stats()["learned"]
    assert learned["client-ip"]["entries"] == 20
    assert learned["header"]["entries"] == 0
    get(p, "/", [("X-Sid", "abc"), ("X-Forwarded-For", "203.0.113.1")])
    assert p.stats()["learned"]["header"]["entries"] == 1


# -- drain, rebalance, failover -----------------------------------------------------------------


def test_drain_over_sockets(backends: Backends, proxy: Proxies, tmp_path: Path) -> None:
    procs = three(backends)
    p = start_with_plan(proxy, tmp_path, make_plan(1, procs))
    clients = [Browser(p) for _ in range(45)]
    home = [c.get().backend for c in clients]
    on_s2 = [c for c, h in zip(clients, home, strict=True) if h == "s2"]
    assert len(on_s2) >= 4
    busy, idle = on_s2[:2], on_s2[2:]
    push(
        p,
        make_plan(
            2,
            procs,
            states={"s2": BackendState.DRAINING},
            deadline=time.time() + 120,
            drain=DrainSettings(min_idle=2.0),
        ),
    )
    for _ in range(20):  # no new session lands on the draining backend
        newcomer = Browser(p)
        assert newcomer.get().backend != "s2"
        newcomer.close()
    # Busy sessions keep their backend while idle ones wait out the cookie's 5 s
    # granularity plus minIdle.
    end = time.monotonic() + 7.5
    while time.monotonic() < end:
        for c in busy:
            seen = c.get()
            assert seen.backend == "s2"
            assert seen.header(MOVED) is None
        time.sleep(0.3)
    for c in idle:
        seen = c.get()
        assert seen.backend in ("s1", "s3")
        assert seen.header(MOVED) == "drain; from=s2"
        again = c.get()
        assert again.backend == seen.backend
        assert again.header(MOVED) is None
    # The deadline passes: the busy ones move at their next request.
    push(
        p,
        make_plan(
            3,
            procs,
            states={"s2": BackendState.DRAINING},
            deadline=time.time() - 1,
            drain=DrainSettings(min_idle=2.0),
        ),
    )
    for c in busy:
        seen = c.get()
        assert seen.backend in ("s1", "s3")
        assert seen.header(MOVED) == "drain; from=s2"
    stats = p.stats()
    assert stats["migrations"]["drain"] == len(on_s2)
    assert stats["backends"]["s2"]["state"] == "Draining"
    for c in clients:
        c.close()


def test_gradual_rebalance_over_sockets(backends: Backends, proxy: Proxies, tmp_path: Path) -> None:
    procs = three(backends)
    aff = AffinitySettings(type=AffinityType.HEADER, header_name="X-Sid")
    p = start_with_plan(proxy, tmp_path, make_plan(1, procs[:2], affinity=aff, keys=()))
    users = [f"u{i}" for i in range(90)]
    conn = Conn(p.address)

    def ask(u: str) -> Seen:
        resp = conn.request("GET", "/", headers=[("X-Sid", u)])
        assert resp.status == 200
        data = resp.json()
        return Seen(data["backend"], [(k, v) for k, v in data["headers"]], resp)

    where = {u: ask(u).backend for u in users}
    window = 3.0
    schedule = RebalanceSchedule(
        from_backends=((BackendId("s1"), 100), (BackendId("s2"), 100)),
        start=time.time(),
        window=window,
        min_idle=0.2,
    )
    push(p, make_plan(2, procs, affinity=aff, keys=(), rebalance=schedule))
    moved_per_round: list[int] = []
    began = time.monotonic()
    while time.monotonic() - began < window + 1.5:
        time.sleep(0.5)
        n = 0
        for u in users:
            seen = ask(u)
            if seen.backend != where[u]:
                assert seen.backend == "s3"
                assert seen.header(MOVED) == f"rebalance; from={where[u]}"
                where[u] = seen.backend
                n += 1
            else:
                assert seen.header(MOVED) is None
        moved_per_round.append(n)
    conn.close()
    total = sum(moved_per_round)
    assert 0.15 * len(users) < total < 0.55 * len(users)  # about a third: s3's share
    assert sum(1 for n in moved_per_round if n) >= 3  # spread over the window
    assert moved_per_round[-1] == 0  # done after the window
    assert p.stats()["migrations"]["rebalance"] == total
    assert Counter(where.values())["s3"] == total


def test_failover_when_backend_killed(backends: Backends, proxy: Proxies, tmp_path: Path) -> None:
    procs = three(backends)
    p = start_with_plan(proxy, tmp_path, make_plan(1, procs))
    clients = [Browser(p) for _ in range(30)]
    home = [c.get().backend for c in clients]
    victims = sum(h == "s1" for h in home)
    assert victims > 0
    procs[0].kill()
    for c, h in zip(clients, home, strict=True):
        seen = c.get(fresh=True)
        if h == "s1":
            assert seen.backend in ("s2", "s3")
            assert seen.header(MOVED) == "failover; from=s1"
        else:
            assert seen.backend == h
            assert seen.header(MOVED) is None
    for c in clients:  # and they stay on their new backends
        assert c.get().header(MOVED) is None
        c.close()
    stats = p.stats()
    assert stats["migrations"]["failover"] == victims
    assert stats["backends"]["s1"]["health"] in ("down", "probing")


def test_restart_keeps_routing_from_state_dir(
    backends: Backends, proxy: Proxies, tmp_path: Path
) -> None:
    procs = three(backends)
    state = tmp_path / "state"
    first = proxy.start("--state-dir", str(state))
    assert first.admin("GET", "/readyz")[0] == 503
    push(first, make_plan(7, procs))
    assert first.admin("GET", "/readyz")[0] == 200
    clients = [Browser(first) for _ in range(12)]
    home = [c.get().backend for c in clients]
    for c in clients:
        c.close()
    first.stop()
    saved = json.loads((state / "plan.json").read_text())
    assert saved["version"] == 7
    # The operator is gone; the proxy restarts from its state directory alone.
    second = proxy.start("--state-dir", str(state))
    status, body = second.admin("GET", "/readyz")
    assert status == 200, body
    for c, h in zip(clients, home, strict=True):
        c.proxy = second
        assert c.get().backend == h
        c.close()
    assert second.admin("PUT", "/v1/plan", plan_to_json(make_plan(6, procs)).encode())[0] == 409
