"""model/sharing: the session store's Degraded reasons and the ReplicasAgree condition."""

from __future__ import annotations

from limpet.controller.model.sharing import (
    Sharing,
    learned_modes,
    replicas_agree,
    store_degraded,
)
from limpet.controller.model.spec import parse_spec


def _learned(affinity: dict[str, object]) -> tuple[str, ...]:
    return learned_modes(parse_spec({"service": "s", "port": 80, "affinity": affinity}).affinity)


def test_learned_modes_are_the_ones_kept_per_replica() -> None:
    assert _learned({"type": "Cookie"}) == ()
    assert _learned({"type": "Header", "header": {"name": "X-U"}, "fallback": ["ClientIP"]}) == (
        "Header",
        "ClientIP",
    )
    app = _learned({"type": "AppCookie", "appCookie": {"name": "JSESSIONID"}})
    assert app == ("AppCookie (when a client drops the companion cookie)",)


def test_without_a_store_several_replicas_say_what_can_split() -> None:
    ok, reason, message = replicas_agree(Sharing(replicas=3, learned=("Header", "ClientIP")))
    assert (ok, reason) == (False, "NoSessionStore")
    assert "Header and ClientIP" in message
    assert "3 proxy replicas" in message
    assert store_degraded(Sharing(replicas=3, learned=("Header",))) is None


def test_one_replica_or_cookie_only_agree() -> None:
    assert replicas_agree(Sharing(replicas=1, learned=("Header",)))[:2] == (True, "SingleReplica")
    assert replicas_agree(Sharing(replicas=2))[:2] == (True, "StatelessModes")


def test_the_store_decides_once_configured() -> None:
    base = Sharing(replicas=3, learned=("Header",), store_address="redis:6379")
    assert replicas_agree(base)[:2] == (False, "SessionStoreNotReported")
    assert store_degraded(base) is None
    connected = Sharing(replicas=3, learned=("Header",), store_address="redis:6379", connected=3)
    assert replicas_agree(connected)[:2] == (True, "SessionStore")
    down = Sharing(
        replicas=3,
        store_address="redis:6379",
        connected=1,
        unreachable={"p1": "Connection refused", "p2": "timeout"},
    )
    degraded = store_degraded(down)
    assert degraded is not None
    assert degraded[:2] == (True, "SessionStoreUnreachable")
    assert "2 proxy(ies)" in degraded[2]
    assert "p1: Connection refused" in degraded[2]
    assert replicas_agree(down)[:2] == (False, "SessionStoreUnreachable")
    missing = Sharing(store_address="redis:6379", secret_problem="Secret x does not exist")
    assert store_degraded(missing) == (True, "SessionStoreSecretMissing", "Secret x does not exist")
