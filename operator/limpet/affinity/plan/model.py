"""The plan model: typed, frozen, self-validating dataclasses (schema version 1).

A :class:`Plan` is the whole contract between the operator (which builds it) and every
proxy replica (which routes by it). Objects validate themselves in ``__post_init__``, so
an invalid plan cannot be constructed, whether in Python or from JSON (see ``codec``).
Times are wall-clock epoch seconds (float) so that every replica reads the same instants;
durations are seconds. Immutable values: safe to share between threads and tasks.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import PlanError
from ..ids import BackendId
from ..lifecycle import BackendState
from ..limits import DEFAULT_SIZE, MAX_BACKENDS, MAX_SIZE, MAX_WEIGHT
from . import checks

if TYPE_CHECKING:
    from collections.abc import Mapping

SCHEMA_VERSION = 1
"""The plan schema this code reads and writes (``schemaVersion`` in JSON)."""

MAX_GRANULARITY = 15
"""The coarsest last-seen step a cookie can state (it has four bits for it)."""


MAX_PLAN_VERSION = (1 << 63) - 1

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AffinityType(enum.Enum):
    """Where a request's session key comes from. The value is its JSON spelling."""

    COOKIE = "Cookie"
    APP_COOKIE = "AppCookie"
    HEADER = "Header"
    QUERY = "Query"
    CLIENT_IP = "ClientIP"


class SameSite(enum.Enum):
    """The LB cookie's SameSite attribute."""

    STRICT = "Strict"
    LAX = "Lax"
    NONE = "None"


class LifetimeType(enum.Enum):
    """Session cookies die with the browser; Permanent ones carry Max-Age."""

    SESSION = "Session"
    PERMANENT = "Permanent"


def derived_granularity(min_idle: float) -> int:
    """The last-seen step for a smallest minIdle: a tenth of it, within 1..5 s."""
    return min(5, max(1, int(min_idle // 10)))


@dataclass(frozen=True, slots=True, kw_only=True)
class CookieSettings:
    """Attributes of the proxy-inserted LB cookie."""

    name: str = "LIMPET"
    path: str = "/"
    domain: str | None = None
    secure: bool = False
    http_only: bool = True
    same_site: SameSite = SameSite.LAX
    lifetime_type: LifetimeType = LifetimeType.SESSION
    max_age: float | None = None
    """Max-Age in seconds for Permanent cookies; defaults to the absolute timeout."""

    def __post_init__(self) -> None:
        checks.matching("cookie.name", self.name, checks.TOKEN_RE, "a cookie-name token")
        checks.matching("cookie.path", self.path, checks.COOKIE_PATH_RE, "a path starting with /")
        if self.domain is not None:
            checks.matching("cookie.domain", self.domain, checks.HOSTNAME_RE, "a domain name")
        checks.boolean("cookie.secure", self.secure)
        checks.boolean("cookie.httpOnly", self.http_only)
        if not isinstance(self.same_site, SameSite):
            raise PlanError(f"cookie.sameSite: must be a SameSite, got {self.same_site!r}")
        if not isinstance(self.lifetime_type, LifetimeType):
            raise PlanError(
                f"cookie.lifetimeType: must be a LifetimeType, got {self.lifetime_type!r}"
            )
        checks.optional_number("cookie.maxAge", self.max_age, minimum=1.0)
        if self.same_site is SameSite.NONE and not self.secure:
            raise PlanError(
                "cookie.sameSite: None requires secure: true (browsers drop it otherwise)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientIPSettings:
    """Client-IP affinity: prefix masks, and the proxies whose X-Forwarded-For is trusted."""

    ipv4_prefix_length: int = 32
    ipv6_prefix_length: int = 64
    trusted_proxies: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        checks.integer("clientIP.ipv4PrefixLength", self.ipv4_prefix_length, minimum=0, maximum=32)
        checks.integer("clientIP.ipv6PrefixLength", self.ipv6_prefix_length, minimum=0, maximum=128)
        if not isinstance(self.trusted_proxies, tuple):
            raise PlanError("clientIP.trustedProxies: must be a tuple of networks")
        for i, net in enumerate(self.trusted_proxies):
            if not isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise PlanError(f"clientIP.trustedProxies[{i}]: must be an IP network, got {net!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class AffinitySettings:
    """How sessions are keyed, and how long they live."""

    type: AffinityType = AffinityType.COOKIE
    fallback: tuple[AffinityType, ...] = ()
    """Modes tried in order when the primary key is absent from a request."""
    cookie: CookieSettings = field(default_factory=CookieSettings)
    app_cookie_name: str | None = None
    header_name: str | None = None
    query_name: str | None = None
    client_ip: ClientIPSettings = field(default_factory=ClientIPSettings)
    idle_timeout: float | None = 1800.0
    """A session idle this long is expired (a new session); ``None``: no idle limit."""
    absolute_timeout: float | None = 86400.0
    """A session this old is expired (a new session); ``None``: no age limit."""
    last_seen_granularity: int | None = None
    """Seconds (1..15): the step of the LB cookie's (and companion's) times, so its
    refresh interval and the tolerance of ``minIdle``. ``None``: derived from the plan's
    smallest minIdle (:meth:`Plan.granularity`)."""

    @property
    def modes(self) -> tuple[AffinityType, ...]:
        """The primary mode followed by the fallbacks."""
        return (self.type, *self.fallback)

    def __post_init__(self) -> None:
        if not isinstance(self.type, AffinityType):
            raise PlanError(f"affinity.type: must be an AffinityType, got {self.type!r}")
        if not isinstance(self.fallback, tuple) or not all(
            isinstance(m, AffinityType) for m in self.fallback
        ):
            raise PlanError("affinity.fallback: must be a tuple of AffinityType")
        if len(set(self.modes)) != len(self.modes):
            raise PlanError("affinity.fallback: repeats a mode or the primary type")
        if not isinstance(self.cookie, CookieSettings):
            raise PlanError("affinity.cookie: must be CookieSettings")
        if not isinstance(self.client_ip, ClientIPSettings):
            raise PlanError("affinity.clientIP: must be ClientIPSettings")
        names = (
            (AffinityType.APP_COOKIE, "appCookie.name", self.app_cookie_name, checks.TOKEN_RE),
            (AffinityType.HEADER, "header.name", self.header_name, checks.TOKEN_RE),
            (AffinityType.QUERY, "query.name", self.query_name, checks.QUERY_NAME_RE),
        )
        for mode, label, value, pattern in names:
            if value is None:
                if mode in self.modes:
                    raise PlanError(f"affinity.{label}: required when {mode.value} is used")
            else:
                checks.matching(f"affinity.{label}", value, pattern, "a valid name")
        checks.optional_number("affinity.idleTimeout", self.idle_timeout, minimum=1.0)
        checks.optional_number("affinity.absoluteTimeout", self.absolute_timeout, minimum=1.0)
        if self.last_seen_granularity is not None:
            checks.integer(
                "affinity.lastSeenGranularity",
                self.last_seen_granularity,
                minimum=1,
                maximum=MAX_GRANULARITY,
            )
        if (
            self.cookie.lifetime_type is LifetimeType.PERMANENT
            and self.cookie.max_age is None
            and self.absolute_timeout is None
        ):
            raise PlanError(
                "affinity.cookie.lifetimeType: Permanent needs cookie.maxAge or absoluteTimeout"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceSettings:
    """Bounded loads for new sessions, and slow start."""

    load_factor: float = 1.25
    """No backend takes a new session at or above ceil(load_factor x its weighted mean)."""
    slow_start: float = 0.0
    """Seconds over which a Warming backend's weight ramps from ~0 to full."""

    def __post_init__(self) -> None:
        checks.number("balance.loadFactor", self.load_factor, minimum=1.0, maximum=100.0)
        checks.number("balance.slowStart", self.slow_start, minimum=0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainSettings:
    """How a Draining backend's sessions leave it."""

    min_idle: float = 10.0
    """A session on a Draining backend moves once idle this long (or at the deadline)."""

    def __post_init__(self) -> None:
        checks.number("drain.minIdle", self.min_idle, minimum=0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class RebalanceSchedule:
    """A gradual rebalance from a previous table to the plan's current one.

    A session is a candidate when it began before ``start``, the "from" table put it where
    it is (or its new owner joined since) and the current table puts its key elsewhere.
    Candidates are released in release-fraction order: the released fraction rises
    linearly from 0 at ``start`` to 1 at ``start + window``, and never faster than
    ``max_moves_per_second`` for ``expected_moves`` candidates. A released candidate moves
    once idle for ``min_idle``. A rate needs the estimate: without it there is no fraction
    to cap, so a rate alone is rejected rather than silently ignored.
    """

    from_backends: tuple[tuple[BackendId, int], ...]
    """The previous table's members and weights (id, weight), sorted by id."""
    from_size: int = DEFAULT_SIZE
    start: float
    window: float = 600.0
    min_idle: float = 30.0
    max_moves_per_second: float | None = None
    """Global move budget; ``None`` means only the window limits the pace. Requires
    ``expected_moves``."""
    expected_moves: int | None = None
    """The operator's estimate of candidate sessions, which the budget is spread over."""

    @classmethod
    def from_weights(cls, weights: Mapping[BackendId, int], **kwargs: object) -> RebalanceSchedule:
        """Build with ``from_backends`` given as a mapping (sorted here)."""
        pairs = tuple(sorted(weights.items()))
        return cls(from_backends=pairs, **kwargs)  # type: ignore[arg-type]

    @property
    def from_weights_map(self) -> dict[BackendId, int]:
        """``from_backends`` as a dict."""
        return dict(self.from_backends)

    def __post_init__(self) -> None:
        if not isinstance(self.from_backends, tuple) or not self.from_backends:
            raise PlanError("rebalance.fromBackends: must be a non-empty tuple of (id, weight)")
        seen: set[str] = set()
        for item in self.from_backends:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise PlanError("rebalance.fromBackends: items must be (id, weight) pairs")
            bid, weight = item
            checks.matching("rebalance.fromBackends", bid, checks.BACKEND_ID_RE, "a backend id")
            checks.integer(f"rebalance.fromBackends.{bid}", weight, minimum=1, maximum=MAX_WEIGHT)
            if bid in seen:
                raise PlanError(f"rebalance.fromBackends: duplicate id {bid!r}")
            seen.add(bid)
        if list(self.from_backends) != sorted(self.from_backends):
            raise PlanError("rebalance.fromBackends: must be sorted by id")
        checks.integer("rebalance.fromSize", self.from_size, minimum=1, maximum=MAX_SIZE)
        checks.number("rebalance.start", self.start)
        checks.number("rebalance.window", self.window)
        checks.number("rebalance.minIdle", self.min_idle)
        checks.optional_number(
            "rebalance.maxMovesPerSecond", self.max_moves_per_second, minimum=1e-9
        )
        if self.expected_moves is not None:
            checks.integer(
                "rebalance.expectedMoves", self.expected_moves, minimum=0, maximum=1 << 53
            )
        if self.max_moves_per_second is not None and self.expected_moves is None:
            raise PlanError(
                "rebalance.expectedMoves: required when maxMovesPerSecond is set "
                "(the budget is spread over that many moves)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStoreSettings:
    """A Redis-protocol store (Redis 7 or Valkey) shared by every proxy replica.

    Secrets are never in the plan: ``password_file`` and ``ca_file`` are paths inside the
    proxy (the operator mounts the Secret there). Entries expire ``ttl_slack`` seconds
    after the session's ``idleTimeout`` (or, without one, after ``absoluteTimeout``).
    """

    address: str
    """``host:port``, ``[v6]:port``; the host is an IP literal or a DNS name."""
    database: int = 0
    tls: bool = False
    tls_server_name: str | None = None
    ca_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    key_prefix: str = "limpet:"
    timeout: float = 0.25
    """Seconds a store call may take before the proxy falls back to its own tables."""
    ttl_slack: float = 60.0

    def __post_init__(self) -> None:
        host, _ = split_address("sessionStore.address", self.address)
        checks.host("sessionStore.address", host, "host:port")
        checks.integer("sessionStore.database", self.database, minimum=0, maximum=1023)
        checks.boolean("sessionStore.tls", self.tls)
        if self.tls_server_name is not None:
            checks.matching(
                "sessionStore.tlsServerName", self.tls_server_name, checks.HOSTNAME_RE, "a name"
            )
        for label, path in (("caFile", self.ca_file), ("passwordFile", self.password_file)):
            if path is not None:
                checks.matching(f"sessionStore.{label}", path, checks.FILE_PATH_RE, "a path")
        if (self.ca_file is not None or self.tls_server_name is not None) and not self.tls:
            raise PlanError("sessionStore.tls: caFile and tlsServerName need tls: true")
        if self.username is not None:
            checks.matching("sessionStore.username", self.username, checks.TOKEN_RE, "a name")
        checks.matching("sessionStore.keyPrefix", self.key_prefix, checks.KEY_PREFIX_RE, "a prefix")
        checks.number("sessionStore.timeout", self.timeout, minimum=0.001, maximum=10.0)
        checks.number("sessionStore.ttlSlack", self.ttl_slack, minimum=0.0, maximum=86400.0)


def split_address(field: str, text: object) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` to (host, port); a :class:`PlanError` otherwise."""
    if not isinstance(text, str):
        raise PlanError(f"{field}: must be a string")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    # ASCII digits only (str.isdigit takes other scripts' digits, which int() reads too),
    # and at most five of them (int() refuses thousands of digits with a ValueError).
    digits = port.isascii() and port.isdigit() and len(port) <= 5
    if not sep or not host or not digits or not 1 <= int(port) <= 65535:
        raise PlanError(f"{field}: must be host:port, got {checks.shown(repr(text))}")
    return host, int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class CookieKey:
    """One LB-cookie signing key. The newest key (first in the plan) signs."""

    id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        checks.matching("cookieKeys.id", self.id, checks.KEY_ID_RE, "a key id ([A-Za-z0-9._-])")
        if not isinstance(self.secret, bytes) or not 16 <= len(self.secret) <= 1024:
            raise PlanError(f"cookieKeys[{self.id}].secret: must be 16..1024 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    """One backend (pod): a stable opaque id, where to reach it, and its lifecycle."""

    id: BackendId
    address: str
    """An IP address literal or a DNS name."""
    port: int
    state: BackendState = BackendState.ACTIVE
    weight: int = 100
    warming_since: float | None = None
    """Epoch seconds when slow start began; meaningful while Warming."""
    drain_deadline: float | None = None
    """Epoch seconds when a Draining backend's remaining sessions move regardless of idleness."""

    def __post_init__(self) -> None:
        checks.matching("id", self.id, checks.BACKEND_ID_RE, "an opaque id [A-Za-z0-9._~-]")
        checks.host("address", self.address, "an IP or DNS name")
        checks.integer("port", self.port, minimum=1, maximum=65535)
        if not isinstance(self.state, BackendState):
            raise PlanError(f"state: must be a BackendState, got {self.state!r}")
        checks.integer("weight", self.weight, minimum=1, maximum=MAX_WEIGHT)
        checks.optional_number("warmingSince", self.warming_since)
        checks.optional_number("drainDeadline", self.drain_deadline)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Everything a proxy needs to route: backends, affinity, balance, migration, keys."""

    version: int
    """Monotonically increasing; a proxy refuses a lower version than it has."""
    backends: tuple[Backend, ...]
    affinity: AffinitySettings = field(default_factory=AffinitySettings)
    balance: BalanceSettings = field(default_factory=BalanceSettings)
    drain: DrainSettings = field(default_factory=DrainSettings)
    rebalance: RebalanceSchedule | None = None
    session_store: SessionStoreSettings | None = None
    """The store every replica shares (cluster-wide session counts); ``None``: none."""
    cookie_keys: tuple[CookieKey, ...] = ()
    """Newest first: the first key signs, every listed key verifies."""
    slot_table_size: int = DEFAULT_SIZE
    name: str = ""
    """Informational: ``namespace/name`` of the StickyService."""
    generated_at: float | None = None
    """Informational: epoch seconds when the operator built this plan."""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise PlanError(
                f"schemaVersion: unsupported plan schema {self.schema_version!r}, "
                f"this build reads {SCHEMA_VERSION}"
            )
        checks.integer("version", self.version, minimum=1, maximum=MAX_PLAN_VERSION)
        if not isinstance(self.backends, tuple):
            raise PlanError("backends: must be a tuple of Backend")
        if len(self.backends) > MAX_BACKENDS:
            raise PlanError(f"backends: at most {MAX_BACKENDS}, got {len(self.backends)}")
        seen: set[str] = set()
        for i, backend in enumerate(self.backends):
            if not isinstance(backend, Backend):
                raise PlanError(f"backends[{i}]: must be a Backend, got {backend!r}")
            if backend.id in seen:
                raise PlanError(f"backends[{i}].id: duplicate backend id {backend.id!r}")
            seen.add(backend.id)
        for label, value, kind in (
            ("affinity", self.affinity, AffinitySettings),
            ("balance", self.balance, BalanceSettings),
            ("drain", self.drain, DrainSettings),
        ):
            if not isinstance(value, kind):
                raise PlanError(f"{label}: must be {kind.__name__}, got {value!r}")
        if self.rebalance is not None and not isinstance(self.rebalance, RebalanceSchedule):
            raise PlanError("rebalance: must be a RebalanceSchedule or None")
        if self.session_store is not None and not isinstance(
            self.session_store, SessionStoreSettings
        ):
            raise PlanError("sessionStore: must be SessionStoreSettings or None")
        if not isinstance(self.cookie_keys, tuple) or not all(
            isinstance(k, CookieKey) for k in self.cookie_keys
        ):
            raise PlanError("cookieKeys: must be a tuple of CookieKey")
        key_ids = [k.id for k in self.cookie_keys]
        if len(set(key_ids)) != len(key_ids):
            raise PlanError("cookieKeys: duplicate key id")
        if AffinityType.COOKIE in self.affinity.modes and not self.cookie_keys:
            raise PlanError("cookieKeys: at least one key is required for Cookie affinity")
        checks.integer("slotTableSize", self.slot_table_size, minimum=1, maximum=MAX_SIZE)
        if not isinstance(self.name, str) or len(self.name) > 512:
            raise PlanError("name: must be a string of at most 512 characters")
        checks.optional_number("generatedAt", self.generated_at)

    @property
    def granularity(self) -> int:
        """The last-seen step in seconds: ``affinity.lastSeenGranularity``, else a tenth
        of the smallest minIdle (drain, and rebalance while one runs), within 1..5 s.

        A session is moved for idleness only when idle for minIdle, measured from the
        end of its last step: never early, and at most one step late."""
        explicit = self.affinity.last_seen_granularity
        if explicit is not None:
            return explicit
        idle = self.drain.min_idle
        if self.rebalance is not None:
            idle = min(idle, self.rebalance.min_idle)
        return derived_granularity(idle)

    def backend_map(self) -> dict[BackendId, Backend]:
        """The backends by id (a fresh dict)."""
        return {b.id: b for b in self.backends}

    def table_weights(self) -> dict[BackendId, int]:
        """The weights of the backends that own slots (Warming and Active), by id."""
        return {b.id: b.weight for b in self.backends if b.state.takes_new_sessions}
