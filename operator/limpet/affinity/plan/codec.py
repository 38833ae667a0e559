"""Plan <-> JSON: canonical output, strict input.

Input is rejected, with a :class:`PlanError` naming the JSON path, when the schema version
is unknown, a key is unknown or duplicated, a required key is missing, a type is wrong
(``true`` is not an integer), a number is NaN or infinite, or any model check fails.
Optional keys may be omitted or ``null``; they then take the defaults documented in
``docs/plan.md``. Output is canonical (sorted keys, no spaces) and round-trips exactly.
Pure functions, no shared state.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import PlanError
from ..ids import BackendId
from ..lifecycle import BackendState
from ..limits import DEFAULT_SIZE, MAX_BACKENDS
from . import checks
from .model import (
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

MAX_PLAN_BYTES = 32 * 1024 * 1024

_E = TypeVar("_E")
_T = TypeVar("_T")
_MISSING: Any = object()


class _Obj:
    """A JSON object being read: typed getters that name the path, and an unknown-key check."""

    def __init__(self, path: str, value: object) -> None:
        if not isinstance(value, dict):
            raise PlanError(f"{path or '(plan)'}: must be an object, got {_kind(value)}")
        self.path = path
        self.value: dict[str, object] = value
        self.used: set[str] = set()

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: object = _MISSING) -> object:
        self.used.add(key)
        value = self.value.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise PlanError(f"{self.field(key)}: required")
            return default
        return value

    def obj(self, key: str, *, required: bool = False) -> _Obj | None:
        value = self.get(key) if required else self.get(key, None)
        return None if value is None else _Obj(self.field(key), value)

    def text(self, key: str, default: object = _MISSING) -> Any:
        value = self.get(key, default)
        if value is not default and not isinstance(value, str):
            raise PlanError(f"{self.field(key)}: must be a string, got {_kind(value)}")
        return value

    def enum(self, key: str, kind: type[_E], default: object = _MISSING) -> Any:
        value = self.get(key, default)
        if value is default:
            return value
        try:
            return kind(value)  # type: ignore[call-arg]
        except ValueError:
            allowed = ", ".join(m.value for m in kind)  # type: ignore[attr-defined]
            got = checks.shown(repr(value))
            raise PlanError(f"{self.field(key)}: must be one of {allowed}, got {got}") from None

    def array(self, key: str) -> list[object]:
        value = self.get(key, [])
        if not isinstance(value, list):
            raise PlanError(f"{self.field(key)}: must be an array, got {_kind(value)}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.value) - self.used)
        if unknown:
            where = self.path or "(plan)"
            raise PlanError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")


def _kind(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


def _build(prefix: str, make: Callable[[], _T]) -> _T:
    """Run a model constructor, prefixing its error with the JSON path of the object."""
    try:
        return make()
    except PlanError as exc:
        message = str(exc)
        if message.startswith(prefix):  # raised by a getter that already knows the full path
            raise
        raise PlanError(f"{prefix}{message}") from None
    except TypeError as exc:  # a wrong-typed value that a check compared before typing it
        raise PlanError(f"{prefix.rstrip('.') or '(plan)'}: {exc}") from None


def _cookie(o: _Obj | None) -> CookieSettings:
    if o is None:
        return CookieSettings()
    d = CookieSettings()
    result = _build(
        "affinity.",
        lambda: CookieSettings(
            name=o.get("name", d.name),  # type: ignore[arg-type]
            path=o.get("path", d.path),  # type: ignore[arg-type]
            domain=o.get("domain", None),  # type: ignore[arg-type]
            secure=o.get("secure", d.secure),  # type: ignore[arg-type]
            http_only=o.get("httpOnly", d.http_only),  # type: ignore[arg-type]
            same_site=o.enum("sameSite", SameSite, d.same_site),
            lifetime_type=o.enum("lifetimeType", LifetimeType, d.lifetime_type),
            max_age=o.get("maxAge", None),  # type: ignore[arg-type]
        ),
    )
    o.done()
    return result


def _name(o: _Obj | None) -> str | None:
    if o is None:
        return None
    name: str = o.text("name")
    o.done()
    return name


def _client_ip(o: _Obj | None) -> ClientIPSettings:
    if o is None:
        return ClientIPSettings()
    nets = []
    for i, raw in enumerate(o.array("trustedProxies")):
        where = f"{o.field('trustedProxies')}[{i}]"
        if not isinstance(raw, str):
            raise PlanError(f"{where}: must be a CIDR string, got {_kind(raw)}")
        try:
            nets.append(ipaddress.ip_network(raw, strict=True))
        except ValueError as exc:
            raise PlanError(f"{where}: not a CIDR network ({exc})") from None
    d = ClientIPSettings()
    result = _build(
        "affinity.",
        lambda: ClientIPSettings(
            ipv4_prefix_length=o.get("ipv4PrefixLength", d.ipv4_prefix_length),  # type: ignore[arg-type]
            ipv6_prefix_length=o.get("ipv6PrefixLength", d.ipv6_prefix_length),  # type: ignore[arg-type]
            trusted_proxies=tuple(nets),
        ),
    )
    o.done()
    return result


def _affinity(o: _Obj | None) -> AffinitySettings:
    if o is None:
        return AffinitySettings()
    d = AffinitySettings()
    fallback = []
    for i, raw in enumerate(o.array("fallback")):
        try:
            fallback.append(AffinityType(raw))
        except ValueError:
            allowed = ", ".join(m.value for m in AffinityType)
            raise PlanError(
                f"affinity.fallback[{i}]: must be one of {allowed}, got {raw!r}"
            ) from None
    # Timeouts: an absent key takes the default, an explicit null means "no limit".
    idle = o.value.get("idleTimeout", d.idle_timeout)
    absolute = o.value.get("absoluteTimeout", d.absolute_timeout)
    o.used.update(("idleTimeout", "absoluteTimeout"))
    kind = o.enum("type", AffinityType, d.type)
    cookie = _cookie(o.obj("cookie"))
    app_cookie = _name(o.obj("appCookie"))
    header = _name(o.obj("header"))
    query = _name(o.obj("query"))
    client_ip = _client_ip(o.obj("clientIP"))
    result = _build(
        "",
        lambda: AffinitySettings(
            type=kind,
            fallback=tuple(fallback),
            cookie=cookie,
            app_cookie_name=app_cookie,
            header_name=header,
            query_name=query,
            client_ip=client_ip,
            idle_timeout=idle,  # type: ignore[arg-type]
            absolute_timeout=absolute,  # type: ignore[arg-type]
            last_seen_granularity=o.get("lastSeenGranularity", None),  # type: ignore[arg-type]
        ),
    )
    o.done()
    return result


def _balance(o: _Obj | None) -> BalanceSettings:
    if o is None:
        return BalanceSettings()
    d = BalanceSettings()
    result = _build(
        "",
        lambda: BalanceSettings(
            load_factor=o.get("loadFactor", d.load_factor),  # type: ignore[arg-type]
            slow_start=o.get("slowStart", d.slow_start),  # type: ignore[arg-type]
        ),
    )
    o.done()
    return result


def _drain(o: _Obj | None) -> DrainSettings:
    if o is None:
        return DrainSettings()
    result = _build("", lambda: DrainSettings(min_idle=o.get("minIdle", DrainSettings().min_idle)))  # type: ignore[arg-type]
    o.done()
    return result


def _rebalance(o: _Obj | None) -> RebalanceSchedule | None:
    if o is None:
        return None
    weights = o.obj("fromBackends", required=True)
    assert weights is not None
    pairs = tuple(sorted((BackendId(k), v) for k, v in weights.value.items()))
    weights.used.update(weights.value)
    result = _build(
        "",
        lambda: RebalanceSchedule(
            from_backends=pairs,  # type: ignore[arg-type]
            from_size=o.get("fromSize", DEFAULT_SIZE),  # type: ignore[arg-type]
            start=o.get("start"),  # type: ignore[arg-type]
            window=o.get("window"),  # type: ignore[arg-type]
            min_idle=o.get("minIdle"),  # type: ignore[arg-type]
            max_moves_per_second=o.get("maxMovesPerSecond", None),  # type: ignore[arg-type]
            expected_moves=o.get("expectedMoves", None),  # type: ignore[arg-type]
        ),
    )
    o.done()
    return result


def _session_store(o: _Obj | None) -> SessionStoreSettings | None:
    if o is None:
        return None
    result = _build(
        "",
        lambda: SessionStoreSettings(
            address=o.text("address"),
            database=o.get("database", 0),  # type: ignore[arg-type]
            tls=o.get("tls", False),  # type: ignore[arg-type]
            tls_server_name=o.text("tlsServerName", None),
            ca_file=o.text("caFile", None),
            username=o.text("username", None),
            password_file=o.text("passwordFile", None),
            key_prefix=o.text("keyPrefix", "limpet:"),
            timeout=o.get("timeout", 0.25),  # type: ignore[arg-type]
            ttl_slack=o.get("ttlSlack", 60.0),  # type: ignore[arg-type]
        ),
    )
    o.done()
    return result


def _store_dict(s: SessionStoreSettings | None) -> dict[str, object] | None:
    if s is None:
        return None
    return {
        "address": s.address,
        "database": s.database,
        "tls": s.tls,
        "tlsServerName": s.tls_server_name,
        "caFile": s.ca_file,
        "username": s.username,
        "passwordFile": s.password_file,
        "keyPrefix": s.key_prefix,
        "timeout": s.timeout,
        "ttlSlack": s.ttl_slack,
    }


def _cookie_key(i: int, raw: object) -> CookieKey:
    o = _Obj(f"cookieKeys[{i}]", raw)
    key_id = o.text("id")
    secret_text = o.text("secret")
    try:
        secret = base64.b64decode(secret_text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise PlanError(f"cookieKeys[{i}].secret: must be standard base64") from None
    result = _build("", lambda: CookieKey(id=key_id, secret=secret))
    o.done()
    return result


def _backend(i: int, raw: object) -> Backend:
    o = _Obj(f"backends[{i}]", raw)
    result = _build(
        f"backends[{i}].",
        lambda: Backend(
            id=o.text("id"),
            address=o.text("address"),
            port=o.get("port"),  # type: ignore[arg-type]
            state=o.enum("state", BackendState),
            weight=o.get("weight"),  # type: ignore[arg-type]
            warming_since=o.get("warmingSince", None),  # type: ignore[arg-type]
            drain_deadline=o.get("drainDeadline", None),  # type: ignore[arg-type]
        ),
    )
    o.done()
    return result


def plan_from_dict(data: object) -> Plan:
    """Validate a decoded JSON value as a plan."""
    o = _Obj("", data)
    schema = o.get("schemaVersion")
    if isinstance(schema, bool) or schema != SCHEMA_VERSION:
        raise PlanError(
            f"schemaVersion: unsupported plan schema {schema!r}, this build reads {SCHEMA_VERSION}"
        )
    if o.value.get("backends") is None:  # absent or null; an empty list is a plan
        raise PlanError("backends: required")
    listed = o.array("backends")
    if len(listed) > MAX_BACKENDS:  # before building each one
        raise PlanError(f"backends: at most {MAX_BACKENDS}, got {len(listed)}")
    backends = tuple(_backend(i, raw) for i, raw in enumerate(listed))
    keys = tuple(_cookie_key(i, raw) for i, raw in enumerate(o.array("cookieKeys")))
    affinity = _affinity(o.obj("affinity"))
    balance = _balance(o.obj("balance"))
    drain = _drain(o.obj("drain"))
    rebalance = _rebalance(o.obj("rebalance"))
    store = _session_store(o.obj("sessionStore"))
    result = _build(
        "",
        lambda: Plan(
            version=o.get("version"),  # type: ignore[arg-type]
            backends=backends,
            affinity=affinity,
            balance=balance,
            drain=drain,
            rebalance=rebalance,
            session_store=store,
            cookie_keys=keys,
            slot_table_size=o.get("slotTableSize", DEFAULT_SIZE),  # type: ignore[arg-type]
            name=o.text("name", ""),
            generated_at=o.get("generatedAt", None),  # type: ignore[arg-type]
        ),
    )
    o.done()
    return result


def _reject_constant(name: str) -> object:
    raise PlanError(f"plan JSON: {name} is not a valid number")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise PlanError(f"plan JSON: duplicate key {key!r}")
        result[key] = value
    return result


def plan_from_json(text: str | bytes) -> Plan:
    """Parse and validate plan JSON text (UTF-8 if bytes)."""
    if not isinstance(text, str | bytes | bytearray):
        raise PlanError(f"plan JSON: expected str or bytes, got {type(text).__name__}")
    if len(text) > MAX_PLAN_BYTES:
        raise PlanError(f"plan JSON: larger than {MAX_PLAN_BYTES} bytes")
    try:
        data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except PlanError:
        raise
    except ValueError as exc:
        # JSONDecodeError, UnicodeDecodeError, and an integer longer than Python reads
        # (sys.get_int_max_str_digits()): each is input the proxy cannot take.
        raise PlanError(f"plan JSON: not valid JSON ({exc})") from None
    except RecursionError:
        raise PlanError("plan JSON: nested too deeply") from None
    return plan_from_dict(data)


def _cookie_dict(c: CookieSettings) -> dict[str, object]:
    return {
        "name": c.name,
        "path": c.path,
        "domain": c.domain,
        "secure": c.secure,
        "httpOnly": c.http_only,
        "sameSite": c.same_site.value,
        "lifetimeType": c.lifetime_type.value,
        "maxAge": c.max_age,
    }


def plan_to_dict(plan: Plan) -> dict[str, object]:
    """The JSON-ready dict of a plan (every key present; ``None`` for unset optionals)."""
    a = plan.affinity
    r = plan.rebalance
    return {
        "schemaVersion": plan.schema_version,
        "version": plan.version,
        "name": plan.name,
        "generatedAt": plan.generated_at,
        "slotTableSize": plan.slot_table_size,
        "backends": [
            {
                "id": b.id,
                "address": b.address,
                "port": b.port,
                "state": b.state.value,
                "weight": b.weight,
                "warmingSince": b.warming_since,
                "drainDeadline": b.drain_deadline,
            }
            for b in plan.backends
        ],
        "affinity": {
            "type": a.type.value,
            "fallback": [m.value for m in a.fallback],
            "cookie": _cookie_dict(a.cookie),
            "appCookie": None if a.app_cookie_name is None else {"name": a.app_cookie_name},
            "header": None if a.header_name is None else {"name": a.header_name},
            "query": None if a.query_name is None else {"name": a.query_name},
            "clientIP": {
                "ipv4PrefixLength": a.client_ip.ipv4_prefix_length,
                "ipv6PrefixLength": a.client_ip.ipv6_prefix_length,
                "trustedProxies": [str(n) for n in a.client_ip.trusted_proxies],
            },
            "idleTimeout": a.idle_timeout,
            "absoluteTimeout": a.absolute_timeout,
            "lastSeenGranularity": a.last_seen_granularity,
        },
        "balance": {"loadFactor": plan.balance.load_factor, "slowStart": plan.balance.slow_start},
        "drain": {"minIdle": plan.drain.min_idle},
        "rebalance": None
        if r is None
        else {
            "fromBackends": dict(r.from_backends),
            "fromSize": r.from_size,
            "start": r.start,
            "window": r.window,
            "minIdle": r.min_idle,
            "maxMovesPerSecond": r.max_moves_per_second,
            "expectedMoves": r.expected_moves,
        },
        "sessionStore": _store_dict(plan.session_store),
        "cookieKeys": [
            {"id": k.id, "secret": base64.b64encode(k.secret).decode("ascii")}
            for k in plan.cookie_keys
        ],
    }


def plan_to_json(plan: Plan) -> str:
    """Canonical JSON text of a plan: sorted keys, compact separators."""
    return json.dumps(plan_to_dict(plan), sort_keys=True, separators=(",", ":"), allow_nan=False)
