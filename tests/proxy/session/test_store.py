"""The session layer's side of the shared store, without sockets: what the router notes
for write-back, and how cluster-wide counts and their loss shape placement."""

from __future__ import annotations

from collections.abc import Sequence

from limpet.affinity import (
    AffinitySettings,
    AffinityType,
    Backend,
    BackendState,
    Plan,
    SessionStoreSettings,
)
from limpet.proxy.session.routing import RequestView

from ..routing_helpers import ABC, Client, Clock, be, mkplan, mkrouter, moved

STORE = SessionStoreSettings(address="127.0.0.1:6379")


def _plan(
    version: int = 1, backends: Sequence[Backend] = ABC, affinity: AffinitySettings | None = None
) -> Plan:
    return mkplan(version, backends, affinity=affinity, session_store=STORE)


def test_sessions_are_noted_once_per_batch_with_their_moves() -> None:
    clock = Clock()
    r = mkrouter(clock, _plan())
    assert r.take_touches().touches == []  # nothing noted before the store is attached
    c = Client()
    home = c.get(r).backend_id
    clock.t += 1
    c.get(r)
    batch = r.take_touches()
    assert [(t.backend, t.moved_from) for t in batch.touches] == [(home, None)]
    assert batch.touches[0].member[:1] == b"C"
    assert sorted(batch.backends) == ["a", "b", "c"]
    assert batch.live_since == clock.t - 1800
    assert r.take_touches().touches == []
    # A failover is noted with the backend the session left.
    others = [be(b) if b != home else be(b, BackendState.FAILED) for b in "abc"]
    r.load_plan(_plan(2, others))
    route = c.get(r)
    assert moved(route) == f"failover; from={home}"
    (touch,) = r.take_touches().touches
    assert (touch.backend, touch.moved_from) == (route.backend_id, home)


def test_cluster_counts_cap_new_sessions_and_their_loss_falls_back() -> None:
    clock = Clock()
    aff = AffinitySettings(type=AffinityType.HEADER, header_name="X-S")
    r = mkrouter(clock, _plan(affinity=aff))
    r.take_touches()
    # Other replicas hold 100 sessions on a: a is over its cluster-wide cap.
    r.store_counts({"a": 100, "b": 0, "c": 0})
    placed = []
    for i in range(30):
        view = RequestView(b"GET", b"/", [(b"X-S", f"k{i}".encode())], "192.0.2.1", None)
        route = r.route(view)
        assert route is not None
        placed.append(route.backend_id)
    assert "a" not in placed
    stats = r.stats()
    assert stats.cluster is not None
    assert stats.cluster["b"] + stats.cluster["c"] == 30  # own placements count at once
    assert stats.store["up"] == 1
    # The store fails: local counts again, and the batch is kept for the next try.
    batch = r.take_touches()
    assert len(batch.touches) == 30
    r.store_failed(batch)
    stats = r.stats()
    assert stats.cluster is None
    assert (stats.store["up"], stats.store["fallbacks"]) == (0, 1)
    batch = r.take_touches()
    assert len(batch.touches) == 30
    # A batch written to a store the plan no longer names is put back, and nothing else:
    # no fallback counted, the newer note of a session seen meanwhile kept.
    seen = RequestView(b"GET", b"/", [(b"X-S", b"k0")], "192.0.2.1", None)
    clock.t += 5
    r.route(seen)
    r.requeue_touches(batch)
    kept = {t.member: t.last_seen for t in batch.touches}
    again = {t.member: t.last_seen for t in r.take_touches().touches}
    assert again.keys() == kept.keys()
    (changed,) = [m for m in kept if again[m] != kept[m]]
    assert again[changed] > kept[changed]
    assert r.stats().store["fallbacks"] == 1
    r.store_detached()
    assert r.stats().store == {}
