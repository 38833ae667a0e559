"""Pure affinity algorithms and the plan schema, shared by the proxy and the operator.

No I/O, no asyncio, no Kubernetes: everything is a pure function of its inputs, and the
caller passes the clock in, so every proxy replica and the operator agree. Modules:

- ``hashing``: stable key hashes, slots, release fractions (``key_hash``, ``slot_of``).
- ``slottable``: the weighted slot table (``table``, ``SlotTable``, ``recommended_size``).
- ``rendezvous``: the weighted rendezvous kernels under it, and ``Scorer``.
- ``keys``: session keys for each affinity mode (``cookie_key``, ``value_key``,
  ``ClientIPKeys``).
- ``bounded``: bounded-load caps and per-key preference orders.
- ``lifecycle``: EndpointSlice conditions to backend states, slow-start ramp.
- ``migration``: the keep/move decision (``decide``, ``Decision``, ``Reason``).
- ``router``: a plan compiled for the request path (``Router``).
- ``plan``: the versioned plan schema (``Plan``, ``PlanError``; see ``docs/plan.md``).

Typical proxy use::

    router = Router(plan, previous=old_router)     # once per plan, off the hot path
    h = key_hash(value_key(AffinityType.HEADER, value))   # per request
    backend = router.route_new(h, now, loads, exclude=down)    # new session
    decision = decide(session, router, now, loads=loads, exclude=down)   # existing one
"""

from .errors import AffinityError, PlanError
from .hashing import (
    key_hash,
    release_fraction,
    slot_of,
    slot_of_hash,
)
from .ids import NO_BACKENDS, BackendId, KeyHash
from .keys import ClientIPKeys, client_address, client_ip_key, cookie_key, parse_address, value_key
from .lifecycle import (
    BackendState,
    BackendStatus,
    LifecycleTiming,
    Observation,
    advance,
    observe,
    ramp,
)
from .limits import DEFAULT_SIZE, LARGE_SIZE, MAX_SIZE, MAX_WEIGHT
from .migration import (
    KEEP,
    Decision,
    Reason,
    Session,
    SessionLike,
    decide,
    release_complete_at,
    released_fraction,
)
from .plan import (
    SCHEMA_VERSION,
    AffinitySettings,
    AffinityType,
    Backend,
    BalanceSettings,
    ClientIPSettings,
    CookieKey,
    CookieSettings,
    DrainSettings,
    LifetimeType,
    Plan,
    RebalanceSchedule,
    SameSite,
    SessionStoreSettings,
)
from .router import Router
from .slottable import SlotTable, recommended_size, table

__all__ = [
    "DEFAULT_SIZE",
    "KEEP",
    "LARGE_SIZE",
    "MAX_SIZE",
    "MAX_WEIGHT",
    "NO_BACKENDS",
    "SCHEMA_VERSION",
    "AffinityError",
    "AffinitySettings",
    "AffinityType",
    "Backend",
    "BackendId",
    "BackendState",
    "BackendStatus",
    "BalanceSettings",
    "ClientIPKeys",
    "ClientIPSettings",
    "CookieKey",
    "CookieSettings",
    "Decision",
    "DrainSettings",
    "KeyHash",
    "LifecycleTiming",
    "LifetimeType",
    "Observation",
    "Plan",
    "PlanError",
    "Reason",
    "RebalanceSchedule",
    "Router",
    "SameSite",
    "Session",
    "SessionLike",
    "SessionStoreSettings",
    "SlotTable",
    "advance",
    "client_address",
    "client_ip_key",
    "cookie_key",
    "decide",
    "key_hash",
    "observe",
    "parse_address",
    "ramp",
    "recommended_size",
    "release_complete_at",
    "release_fraction",
    "released_fraction",
    "slot_of",
    "slot_of_hash",
    "table",
    "value_key",
]
