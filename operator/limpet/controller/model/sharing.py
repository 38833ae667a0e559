"""Do the proxy replicas agree on every session? The session store's health and the
``ReplicasAgree`` condition.

Data flow: the status reporter builds a :class:`Sharing` from the spec (the modes in use,
``spec.sessionStore``), the reconciler's check of the store's Secrets, the proxies'
``sessionStore`` stats (:class:`~limpet.controller.model.counts.SessionCounts`) and the
replica count; :func:`store_degraded` gives Degraded's verdict when the store is the
problem, :func:`replicas_agree` the ``ReplicasAgree`` condition. Pure functions.

What can split without a store (docs/affinity.md): Cookie sessions carry their backend,
times and step in the signed cookie, and an AppCookie session its companion cookie, so
every replica decides alike. Header, Query and ClientIP keys (and an AppCookie whose
client dropped the companion) are learned by each replica on its own: they agree while
nothing moves, but during a drain or a rebalance each replica judges idleness from its
own last-seen times, so two can place one session on two pods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from limpet.affinity.plan.model import AffinitySettings, AffinityType

SECRET_MISSING = "SessionStoreSecretMissing"
UNREACHABLE = "SessionStoreUnreachable"

Verdict = tuple[bool, str, str]

_LEARNED = {
    AffinityType.HEADER: "Header",
    AffinityType.QUERY: "Query",
    AffinityType.CLIENT_IP: "ClientIP",
    AffinityType.APP_COOKIE: "AppCookie (when a client drops the companion cookie)",
}


def learned_modes(affinity: AffinitySettings) -> tuple[str, ...]:
    """The modes in use whose sessions live in each replica's own tables."""
    return tuple(_LEARNED[m] for m in affinity.modes if m in _LEARNED)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sharing:
    replicas: int = 0
    learned: tuple[str, ...] = ()
    store_address: str | None = None
    secret_problem: str | None = None
    unreachable: Mapping[str, str] = field(default_factory=dict)
    """Proxy name -> error, for proxies that report the store unreachable."""
    connected: int = 0
    """Proxies that report the store connected."""


def store_degraded(s: Sharing) -> Verdict | None:
    """Degraded because of the store: a missing Secret, or proxies that cannot reach it."""
    if s.store_address is None:
        return None
    if s.secret_problem is not None:
        return True, SECRET_MISSING, s.secret_problem
    if s.unreachable:
        names = sorted(s.unreachable)
        detail = "; ".join(f"{n}: {s.unreachable[n]}" for n in names[:3])
        return (
            True,
            UNREACHABLE,
            f"{len(names)} proxy(ies) cannot reach the session store at {s.store_address} "
            f"and place sessions from local tables ({detail})",
        )
    return None


def replicas_agree(s: Sharing) -> Verdict:
    """``ReplicasAgree``: whether every replica makes the same decision for a session."""
    modes = " and ".join(s.learned)
    if s.store_address is not None:
        if s.unreachable or s.secret_problem is not None:
            return False, UNREACHABLE, f"the session store at {s.store_address} is not in use"
        if s.connected:
            return (
                True,
                "SessionStore",
                f"{s.connected} proxy(ies) share sessions and loads through {s.store_address}",
            )
        return (
            False,
            "SessionStoreNotReported",
            f"no proxy reports a connection to the session store at {s.store_address} yet",
        )
    if s.replicas <= 1:
        return True, "SingleReplica", "one proxy replica makes every decision"
    if not s.learned:
        return (
            True,
            "StatelessModes",
            f"the {s.replicas} replicas agree: the session cookie carries each session's "
            "state (bounded loads cap on each replica's own counts without a session store)",
        )
    return (
        False,
        "NoSessionStore",
        f"without spec.sessionStore, each of the {s.replicas} proxy replicas learns {modes} "
        "sessions on its own: they agree while nothing moves, but during a drain or a "
        "rebalance replicas can place one session on two pods",
    )
