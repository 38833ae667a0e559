"""Pure parts of the controller: ids, durations, planner rules, status round trip, keys,
debouncing. (No API server needed; the scenario tests cover them end to end.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from limpet.affinity.ids import BackendId
from limpet.affinity.lifecycle import BackendState, BackendStatus, Observation
from limpet.controller.command import peer_identity
from limpet.controller.debounce import Debouncer
from limpet.controller.model.keys import (
    from_secret_data,
    new_material,
    next_retirement,
    prune,
    rotate,
    to_secret_data,
)
from limpet.controller.model.membership import (
    Member,
    backend_id,
    build_membership,
    parse_slice,
    proxy_endpoints,
)
from limpet.controller.model.names import child_name
from limpet.controller.model.planner import EventKind, PlanInputs, PlannerState, plan_next
from limpet.controller.model.settings import DebounceSettings
from limpet.controller.model.spec import SpecError, parse_duration, parse_spec
from limpet.controller.model.status import (
    ProxySync,
    StatusView,
    build_status,
    recover_state,
    weight,
)

KEY = b"k" * 32
PLAN_KEYS = new_material(0).plan_keys()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("0s", 0.0), ("500ms", 0.5), ("30s", 30.0), ("1h30m", 5400.0), ("2m5s", 125.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration("f", text) == seconds


@pytest.mark.parametrize("text", ["", "1.5h", "5 m", "10d", "m", "1h-2m", 5])
def test_bad_durations(text: object) -> None:
    with pytest.raises(SpecError, match="f"):
        parse_duration("f", text)


def _slice(name: str, *eps: tuple[str, str, dict[str, bool]], port: str = "http") -> dict:  # type: ignore[type-arg]
    return {
        "metadata": {"name": name},
        "addressType": "IPv4",
        "ports": [{"name": port, "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [addr],
                "conditions": cond,
                "targetRef": {"kind": "Pod", "name": pod, "uid": f"uid-{pod}"},
            }
            for pod, addr, cond in eps
        ],
    }


def test_ids_are_stable_opaque_and_keyed() -> None:
    a = backend_id(KEY, "uid:1234")
    assert a == backend_id(KEY, "uid:1234")
    assert a != backend_id(KEY, "uid:1235")
    assert a != backend_id(b"x" * 32, "uid:1234")
    assert "1234" not in a
    # A pod moving to another slice, with another address, keeps its id.
    one = build_membership(
        [parse_slice(_slice("s1", ("p", "10.0.0.1", {"ready": True})))],
        port_name="http",
        id_key=KEY,
    )
    two = build_membership(
        [parse_slice(_slice("s2", ("p", "10.0.0.9", {"ready": True})))],
        port_name="http",
        id_key=KEY,
    )
    assert set(one) == set(two)
    assert "10.0.0" not in next(iter(one))


def test_membership_conditions_dedupe_and_port() -> None:
    slices = [
        parse_slice(
            _slice(
                "a",
                ("ready", "10.0.0.1", {"ready": True}),
                ("drain", "10.0.0.2", {"ready": False, "serving": True, "terminating": True}),
                ("dead", "10.0.0.3", {"ready": False, "serving": False}),
            )
        ),
        # "ready" also listed (not ready) in another slice while moving: the best wins.
        parse_slice(_slice("b", ("ready", "10.0.0.1", {"ready": False}))),
        parse_slice(_slice("c", ("other", "10.0.0.4", {"ready": True}), port="metrics")),
    ]
    members = build_membership(slices, port_name="http", id_key=KEY)
    by_pod = {m.pod: m.observation for m in members.values()}
    assert by_pod == {
        "ready": Observation.READY,
        "drain": Observation.SERVING_TERMINATING,
        "dead": Observation.NOT_SERVING,
    }
    assert {m.port for m in members.values()} == {8080}
    assert len(proxy_endpoints(slices)) == 4


def _spec(**over: object) -> PlanInputs:
    spec = parse_spec(
        {
            "service": "s",
            "port": "http",
            "slowStart": "10s",
            "rebalance": {"window": "60s", "minIdle": "5s", "maxMovesPerSecond": 10},
            "drain": {"timeout": "30s", "minIdle": "1s"},
        }
    )
    base: dict[str, object] = {
        "name": "ns/s",
        "spec": spec,
        "members": {},
        "cookie_keys": PLAN_KEYS,
    }
    base.update(over)
    return PlanInputs(**base)  # type: ignore[arg-type]


def _members(*pods: tuple[str, Observation]) -> dict[BackendId, Member]:
    out = {}
    for i, (pod, obs) in enumerate(pods):
        bid = backend_id(KEY, f"uid:{pod}")
        out[bid] = Member(id=bid, address=f"10.0.0.{i + 1}", port=8080, pod=pod, observation=obs)
    return out


R = Observation.READY


def test_planner_lifecycle_schedule_and_versions() -> None:
    three = _members(("a", R), ("b", R), ("c", R))
    r1 = plan_next(_spec(members=three), PlannerState(), now=1000.0)
    assert r1.plan.version == 1
    assert {b.state for b in r1.plan.backends} == {BackendState.ACTIVE}  # no warm peers yet
    assert r1.plan.rebalance is None
    assert r1.durable_changed
    # Same inputs later: same plan, same version.
    r2 = plan_next(_spec(members=three), r1.state, now=1001.0)
    assert not r2.new_version
    assert r2.plan.version == 1
    # Scale-out: new pods warm up, a schedule starts from the old table, events say so.
    five = _members(("a", R), ("b", R), ("c", R), ("d", R), ("e", R))
    r3 = plan_next(_spec(members=five, sessions=1000), r2.state, now=1002.0)
    assert r3.plan.version == 2
    states = {b.id: b.state for b in r3.plan.backends}
    assert sorted(s.value for s in states.values()) == ["Active"] * 3 + ["Warming"] * 2
    sched = r3.plan.rebalance
    assert sched is not None
    assert set(sched.from_weights_map) == set(three)
    assert sched.start == 1002.0
    assert sched.expected_moves == 400
    kinds = {e.kind for e in r3.events}
    assert {EventKind.SCALE_OUT, EventKind.REBALANCE_STARTED} <= kinds
    assert r3.next_wakeup == 1012.0  # slow start ends
    # Slow start over: Active. Window over: finished, then dropped after the grace.
    r4 = plan_next(_spec(members=five), r3.state, now=1012.0)
    assert {b.state for b in r4.plan.backends} == {BackendState.ACTIVE}
    r5 = plan_next(_spec(members=five), r4.state, now=1062.5)
    assert EventKind.REBALANCE_FINISHED in {e.kind for e in r5.events}
    assert r5.state.schedule_finished
    assert r5.plan.rebalance is not None
    r6 = plan_next(_spec(members=five), r5.state, now=1062.5 + 1800)
    assert r6.plan.rebalance is None
    versions = [r.plan.version for r in (r1, r2, r3, r4, r5, r6)]
    assert versions == sorted(versions)


def test_planner_drain_failover_gone_and_proxy_ahead() -> None:
    three = _members(("a", R), ("b", R), ("c", R))
    r1 = plan_next(_spec(members=three), PlannerState(), now=0.0)
    drain = _members(("a", R), ("b", R), ("c", Observation.SERVING_TERMINATING))
    r2 = plan_next(_spec(members=drain), r1.state, now=10.0)
    c = next(b for b in r2.plan.backends if b.state is BackendState.DRAINING)
    assert c.drain_deadline == 40.0
    assert EventKind.DRAIN_STARTED in {e.kind for e in r2.events}
    assert r2.plan.rebalance is None  # removals never schedule a rebalance
    # It leaves the slices: drained and Gone, not a failover.
    gone = _members(("a", R), ("b", R))
    r3 = plan_next(_spec(members=gone), r2.state, now=20.0)
    assert EventKind.DRAIN_FINISHED in {e.kind for e in r3.events}
    assert EventKind.FAILOVER not in {e.kind for e in r3.events}
    assert {b.state for b in r3.plan.backends} == {BackendState.ACTIVE, BackendState.GONE}
    # A pod that stops serving fails over.
    dead = _members(("a", R), ("b", Observation.NOT_SERVING))
    r4 = plan_next(_spec(members=dead), r3.state, now=30.0)
    assert EventKind.FAILOVER in {e.kind for e in r4.events}
    # The Service vanishes: every backend is absent.
    r5 = plan_next(_spec(members=None), r4.state, now=31.0)
    assert not any(b.state.takes_new_sessions for b in r5.plan.backends)
    # A proxy holds a version we did not issue: the next one goes past it.
    r6 = plan_next(_spec(members=None, version_floor=r5.plan.version + 7), r5.state, now=32.0)
    assert r6.new_version
    assert r6.plan.version == r5.plan.version + 8


def _status(
    state: PlannerState,
    *,
    generation: int,
    now: float,
    proxies: int = 2,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The status for ``state`` with every one of ``proxies`` proxies in sync."""
    sync = ProxySync(desired=proxies, discovered=proxies, synced=proxies)
    view = StatusView(generation=generation, state=state, proxies=sync, now=now)
    return build_status(view, previous)


def test_status_round_trip_recovers_the_durable_state() -> None:
    three = _members(("a", R), ("b", R), ("c", R))
    r1 = plan_next(_spec(members=three), PlannerState(), now=1000.25)
    five = _members(("a", R), ("b", R), ("c", Observation.SERVING_TERMINATING), ("d", R), ("e", R))
    r2 = plan_next(_spec(members=five, sessions=77), r1.state, now=1001.5)
    status = _status(r2.state, generation=3, now=1002.0)
    assert status["planVersion"] == r2.plan.version
    assert status["rebalance"]["phase"] == "InProgress"
    recovered = recover_state(status)
    assert recovered.version == r2.state.version
    assert recovered.durable_key() == r2.state.durable_key()
    # Replanning from the recovered state at the same instant keeps the schedule and the
    # drain deadline, and only bumps the version.
    r3 = plan_next(_spec(members=five, sessions=77), recovered, now=1001.5)
    assert r3.plan.rebalance == r2.plan.rebalance
    assert r3.plan.backends == r2.plan.backends
    assert r3.plan.version == r2.plan.version + 1
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Progressing"]["reason"] == "Rebalancing"
    # Transition times survive an unchanged status.
    again = _status(r2.state, generation=3, now=2000.0, previous=status)
    assert again["conditions"] == status["conditions"]


def test_status_before_the_first_plan_names_no_plan_version() -> None:
    """Status is written while a reconcile keeps failing (its conditions say why); it
    must not claim a plan that was never made, and recovering from it starts at 0."""
    status = _status(PlannerState(), generation=1, now=1000.0)
    assert "planVersion" not in status
    assert recover_state(status).version == 0


def test_rate_cap_only_with_an_estimate() -> None:
    three = _members(("a", R), ("b", R), ("c", R))
    five = _members(("a", R), ("b", R), ("c", R), ("d", R), ("e", R))
    r1 = plan_next(_spec(members=three), PlannerState(), now=1000.0)
    # No proxy reports sessions: no estimate, so the plan carries no rate either.
    r2 = plan_next(_spec(members=five), r1.state, now=1001.0)
    sched = r2.plan.rebalance
    assert sched is not None
    assert (sched.max_moves_per_second, sched.expected_moves) == (None, None)
    status = _status(r2.state, generation=1, now=1002.0, proxies=0)
    assert "maxMovesPerSecond" not in status["rebalance"]
    # A status from an older operator with a rate alone still recovers the schedule.
    status["rebalance"]["maxMovesPerSecond"] = 10.0
    recovered = recover_state(status).schedule
    assert recovered is not None
    assert recovered.from_backends == sched.from_backends
    assert recovered.max_moves_per_second is None


def _many(n: int) -> dict[BackendId, Member]:
    out = {}
    for i in range(n):
        bid = backend_id(KEY, f"uid:pod-{i}")
        address = f"10.1.{i // 250}.{i % 250 + 1}"
        out[bid] = Member(id=bid, address=address, port=8080, pod=f"pod-{i}", observation=R)
    return out


def test_slot_table_grows_with_the_backends_and_never_shrinks() -> None:
    r1 = plan_next(_spec(members=_many(3)), PlannerState(), now=0.0)
    assert r1.plan.slot_table_size == 65537
    # 1100 backends get fewer than 64 slots each at 65537: the table grows to about 256
    # each (a prime from the ladder), and the schedule places sessions not yet moved by
    # the old table at its old size.
    r2 = plan_next(_spec(members=_many(1100)), r1.state, now=1.0)
    assert r2.plan.slot_table_size == 524287
    assert r2.plan.rebalance is not None
    assert r2.plan.rebalance.from_size == 65537
    # Scaling in keeps the size (a change would reshuffle every slot).
    r3 = plan_next(_spec(members=_many(20)), r2.state, now=2.0)
    assert r3.plan.slot_table_size == 524287
    # A restarted operator plans on the same table.
    status = build_status(
        StatusView(
            generation=1,
            state=r3.state,
            proxies=ProxySync(desired=1, discovered=1, synced=1),
            now=3.0,
        ),
        None,
    )
    recovered = recover_state(status)
    assert recovered.slot_table_size == 524287
    r4 = plan_next(_spec(members=_many(20)), recovered, now=3.0)
    assert r4.plan.slot_table_size == 524287


def test_keys_rotate_prune_and_round_trip() -> None:
    m = new_material(100.0)
    assert from_secret_data(to_secret_data(m)) == m
    r = rotate(m, now=200.0, retention=50.0)
    assert [k.id for k in r.cookie_keys][1:] == [m.cookie_keys[0].id]
    assert r.plan_keys()[0].id == r.active_key_id != m.active_key_id
    assert next_retirement(r) == 250.0
    assert prune(r, now=249.0) is r
    assert [k.id for k in prune(r, now=250.0).cookie_keys] == [r.active_key_id]
    assert from_secret_data({"admin-token": "eA=="}) is None
    assert from_secret_data(None) is None


def test_child_names_fit() -> None:
    assert child_name("shop", "proxy") == "shop-proxy"
    long = child_name("x" * 70, "proxy")
    assert len(long) <= 63
    assert long.endswith("-proxy")
    assert long != child_name("x" * 69 + "y", "proxy")


async def test_debouncer_paces_bursts_and_passes_lone_changes() -> None:
    d = Debouncer(DebounceSettings(settle=0.001, min_interval=0.02, max_interval=0.2))
    assert not await d.wait(0.01)  # nothing pending: times out
    d.poke()
    t0 = time.monotonic()
    assert await d.wait(None)
    assert time.monotonic() - t0 < 0.1  # a lone change goes at once
    fired = 0

    async def burst() -> None:
        for _ in range(100):
            d.poke()
            await asyncio.sleep(0.005)

    task = asyncio.create_task(burst())
    while not task.done():
        if await d.wait(0.05):
            fired += 1
    await task
    if d.pending:
        fired += 1
    assert 2 <= fired <= 10, fired  # ~0.5 s of pokes every 5 ms: a handful of passes


def test_status_weight_is_what_new_sessions_see() -> None:
    def at(state: BackendState, now: float, warming_since: float | None = 100.0) -> int:
        status = BackendStatus(state=state, since=100.0, warming_since=warming_since)
        return weight(status, slow_start=10.0, now=now)

    assert at(BackendState.ACTIVE, 200.0) == 100
    # The ramp, rounded down, never 0 while warming, full only once it is over.
    ramp = [at(BackendState.WARMING, 100.0 + t) for t in range(12)]
    assert ramp[0] >= 1
    assert ramp == sorted(ramp)
    assert ramp[5] < 100
    assert ramp[-1] == 100
    # No new sessions: no weight.
    for state in (BackendState.DRAINING, BackendState.FAILED, BackendState.GONE):
        assert at(state, 200.0) == 0, state


def test_peer_identity_names_the_pod_without_the_password_database() -> None:
    # The image's user 65532 has no passwd entry; kopf's default identity needs one.
    first = peer_identity({"POD_NAME": "limpet-operator-7d9f-abcde"})
    second = peer_identity({"POD_NAME": "limpet-operator-7d9f-abcde"})
    assert first.startswith("limpet-operator-7d9f-abcde/")
    assert first != second  # a restarted container is a new peer
    assert peer_identity({"POD_ID": "given"}) == "given"
    assert peer_identity({}).split("/")[0]  # the host name, outside a pod
