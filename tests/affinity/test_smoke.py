"""First checks of the public API: plan round trip, routing and a keep decision."""

from __future__ import annotations

from limpet.affinity import (
    Backend,
    BackendId,
    CookieKey,
    Plan,
    Router,
    Session,
    cookie_key,
    decide,
    key_hash,
    slot_of,
    table,
)


def test_plan_round_trip_and_keep() -> None:
    plan = Plan(
        version=3,
        backends=tuple(
            Backend(id=BackendId(f"b{i}"), address=f"10.0.0.{i + 1}", port=80) for i in range(3)
        ),
        cookie_keys=(CookieKey(id="k1", secret=b"s" * 32),),
    )
    assert Plan.from_json(plan.to_json()) == plan
    router = Router(plan)
    h = key_hash(cookie_key("session-1"))
    owner = router.route_new(h, 0.0)
    assert owner == table({"b0": 100, "b1": 100, "b2": 100})[slot_of(cookie_key("session-1"))]
    assert owner is not None
    session = Session(backend=owner, key_hash=h, last_seen=10.0, created=0.0)
    assert decide(session, router, 11.0).keep
