"""StickyService spec (a JSON dict from the API server) to typed, defaulted values.

Data flow: the reconciler passes ``body["spec"]``; :func:`parse_spec` returns a frozen
:class:`StickySpec` or raises :class:`SpecError` with the field's path. The API server
already validated and defaulted the object (crds/stickyservice.yaml); the defaults are
repeated here so that an object stored before a CRD upgrade, or a partial dict in a
test, still reads the same. The spec carries the plan schema's values where they map
one to one (``StickySpec.affinity`` is an :class:`AffinitySettings`), and
:meth:`StickySpec.balance_settings` and :meth:`StickySpec.drain_settings` build the
others (limpet.affinity.plan). ``spec.sessionStore`` reads into a
:class:`SessionStoreSpec`: where the store is and the Secret/ConfigMap keys the proxies
need (references only; the plan's section, :meth:`SessionStoreSpec.plan_settings`, names
files, never the password). Pure functions.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from limpet.affinity.plan.model import (
    AffinitySettings,
    AffinityType,
    BalanceSettings,
    ClientIPSettings,
    CookieSettings,
    DrainSettings,
    LifetimeType,
    SameSite,
    SessionStoreSettings,
    derived_granularity,
)

STORE_FILES = "/etc/limpet/session-store"
"""Where proxies find the session store's ``password`` and ``ca.crt`` files (managed
proxies: a read-only projected volume of the user's Secret/ConfigMap keys)."""


class SpecError(ValueError):
    """A spec the operator cannot use (the message starts with the field path)."""


_DURATION_PART = re.compile(r"([0-9]{1,5})(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(field: str, text: object) -> float:
    """``1h30m``, ``500ms``, ``0`` (Gateway API duration syntax) to seconds."""
    if not isinstance(text, str):
        raise SpecError(f"{field}: must be a duration string, got {text!r}")
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise SpecError(f"{field}: {text!r} is not a duration such as 30s, 5m or 1h30m")
    return total


@dataclass(frozen=True, slots=True, kw_only=True)
class RebalanceSpec:
    mode: str = "Gradual"
    window: float = 600.0
    min_idle: float = 30.0
    max_moves_per_second: int = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxySpec:
    managed: bool = True
    replicas: int | None = None
    image: str | None = None
    port: int = 8080
    admin_port: int = 9901
    selector: Mapping[str, str] | None = None

    def label_selector(self) -> str | None:
        """External mode: the EndpointSlice label selector that finds the proxies."""
        if self.selector is None:
            return None
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector.items()))


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRef:
    """One key of a Secret or ConfigMap in the StickyService's namespace."""

    name: str
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreTLSSpec:
    enabled: bool = False
    ca_secret: KeyRef | None = None
    ca_config_map: KeyRef | None = None
    server_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStoreSpec:
    """``spec.sessionStore``: a Redis-protocol store shared by every proxy replica."""

    address: str
    database: int = 0
    username: str | None = None
    password: KeyRef | None = None
    tls: StoreTLSSpec = StoreTLSSpec()
    key_prefix: str | None = None
    timeout: float = 0.25
    ttl_slack: float = 60.0

    def prefix_for(self, namespace: str, name: str) -> str:
        """The key prefix: the spec's, else one per StickyService so that two never meet."""
        return self.key_prefix or f"limpet:{namespace}/{name}:"

    def plan_settings(self, namespace: str, name: str) -> SessionStoreSettings:
        """The plan's ``sessionStore``: no secret in it, only the paths where managed
        proxies find the password and CA (``STORE_FILES``; external proxies mount the
        same Secret keys there)."""
        tls = self.tls
        has_ca = tls.enabled and (tls.ca_secret or tls.ca_config_map) is not None
        return SessionStoreSettings(
            address=self.address,
            database=self.database,
            tls=tls.enabled,
            tls_server_name=tls.server_name if tls.enabled else None,
            ca_file=f"{STORE_FILES}/ca.crt" if has_ca else None,
            username=self.username,
            password_file=f"{STORE_FILES}/password" if self.password is not None else None,
            key_prefix=self.prefix_for(namespace, name),
            timeout=self.timeout,
            ttl_slack=self.ttl_slack,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class StickySpec:
    service: str
    port: int | str
    affinity: AffinitySettings
    load_factor: float = 1.25
    rebalance: RebalanceSpec = RebalanceSpec()
    drain_timeout: float = 300.0
    drain_min_idle: float = 10.0
    slow_start: float = 60.0
    proxy: ProxySpec = ProxySpec()
    session_store: SessionStoreSpec | None = None

    def last_seen_granularity(self) -> int:
        """The last-seen step (seconds) the plan states: the spec's, else a tenth of the
        smallest minIdle the spec sets (drain's, and rebalance's when Gradual), within
        1..5 s. Derived from the spec rather than from whether a rebalance runs, so the
        step (and with it every cookie's refresh) does not change when one starts."""
        explicit = self.affinity.last_seen_granularity
        if explicit is not None:
            return explicit
        idle = self.drain_min_idle
        if self.rebalance.mode == "Gradual":
            idle = min(idle, self.rebalance.min_idle)
        return derived_granularity(idle)

    def plan_affinity(self) -> AffinitySettings:
        """The plan's affinity section, with the last-seen step always stated."""
        return replace(self.affinity, last_seen_granularity=self.last_seen_granularity())

    def balance_settings(self) -> BalanceSettings:
        return BalanceSettings(load_factor=self.load_factor, slow_start=self.slow_start)

    def drain_settings(self) -> DrainSettings:
        return DrainSettings(min_idle=self.drain_min_idle)


def _obj(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"spec.{key}: must be an object")
    return value


def _affinity(data: Mapping[str, Any]) -> AffinitySettings:
    try:
        kind = AffinityType(data.get("type", "Cookie"))
        fallback = tuple(AffinityType(m) for m in data.get("fallback") or ())
    except ValueError as exc:
        raise SpecError(f"spec.affinity.type: {exc}") from exc
    c = data.get("cookie") or {}
    absolute = data.get("absoluteTimeout")
    absolute_s = parse_duration("spec.affinity.absoluteTimeout", absolute) if absolute else None
    lifetime = LifetimeType(c.get("lifetimeType", "Session"))
    cookie = CookieSettings(
        name=c.get("name", "LIMPET"),
        path=c.get("path", "/"),
        # RFC 6265 5.2.3: a leading dot is ignored; the plan wants the bare name.
        domain=c["domain"].lstrip(".") if c.get("domain") else None,
        secure=bool(c.get("secure", True)),
        http_only=bool(c.get("httpOnly", True)),
        same_site=SameSite(c.get("sameSite", "Lax")),
        lifetime_type=lifetime,
        max_age=absolute_s if lifetime is LifetimeType.PERMANENT else None,
    )
    ip = data.get("clientIP") or {}
    client_ip = ClientIPSettings(
        ipv4_prefix_length=int(ip.get("ipv4PrefixLength", 32)),
        ipv6_prefix_length=int(ip.get("ipv6PrefixLength", 64)),
        trusted_proxies=tuple(
            ipaddress.ip_network(p, strict=False) for p in ip.get("trustedProxies") or ()
        ),
    )
    step = data.get("lastSeenGranularity")
    return AffinitySettings(
        last_seen_granularity=(
            int(parse_duration("spec.affinity.lastSeenGranularity", step)) if step else None
        ),
        type=kind,
        fallback=fallback,
        cookie=cookie,
        app_cookie_name=(data.get("appCookie") or {}).get("name"),
        header_name=(data.get("header") or {}).get("name"),
        query_name=(data.get("query") or {}).get("name"),
        client_ip=client_ip,
        idle_timeout=parse_duration("spec.affinity.idleTimeout", data.get("idleTimeout", "30m")),
        absolute_timeout=absolute_s,
    )


def _key_ref(data: object, field: str, default_key: str) -> KeyRef | None:
    if data is None:
        return None
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
        raise SpecError(f"{field}.name: required")
    return KeyRef(name=data["name"], key=str(data.get("key") or default_key))


def _session_store(data: Mapping[str, Any]) -> SessionStoreSpec | None:
    if not data:
        return None
    field = "spec.sessionStore"
    address = data.get("address")
    if not isinstance(address, str) or ":" not in address:
        raise SpecError(f"{field}.address: must be host:port")
    tls = data.get("tls") or {}
    return SessionStoreSpec(
        address=address,
        database=int(data.get("database", 0)),
        username=data.get("username"),
        password=_key_ref(data.get("passwordSecretRef"), f"{field}.passwordSecretRef", "password"),
        tls=StoreTLSSpec(
            enabled=bool(tls.get("enabled", False)),
            ca_secret=_key_ref(tls.get("caSecretRef"), f"{field}.tls.caSecretRef", "ca.crt"),
            ca_config_map=_key_ref(
                tls.get("caConfigMapRef"), f"{field}.tls.caConfigMapRef", "ca.crt"
            ),
            server_name=tls.get("serverName"),
        ),
        key_prefix=data.get("keyPrefix"),
        timeout=parse_duration(f"{field}.timeout", data.get("timeout", "250ms")),
        ttl_slack=parse_duration(f"{field}.ttlSlack", data.get("ttlSlack", "60s")),
    )


def parse_spec(spec: Mapping[str, Any]) -> StickySpec:
    """Typed values from a StickyService ``spec``; :class:`SpecError` if unusable."""
    service = spec.get("service")
    if not isinstance(service, str) or not service:
        raise SpecError("spec.service: required")
    port = spec.get("port")
    if not isinstance(port, int | str) or isinstance(port, bool) or port == "":
        raise SpecError("spec.port: required (a port name or number)")
    try:
        affinity = _affinity(_obj(spec, "affinity"))
    except (ValueError, TypeError) as exc:
        raise SpecError(f"spec.affinity: {exc}") from exc
    reb = _obj(spec, "rebalance")
    drain = _obj(spec, "drain")
    prx = _obj(spec, "proxy")
    selector = (prx.get("selector") or {}).get("matchLabels")
    return StickySpec(
        service=service,
        port=port,
        affinity=affinity,
        load_factor=float(_obj(spec, "balance").get("loadFactor", 1.25)),
        rebalance=RebalanceSpec(
            mode=str(reb.get("mode", "Gradual")),
            window=parse_duration("spec.rebalance.window", reb.get("window", "10m")),
            min_idle=parse_duration("spec.rebalance.minIdle", reb.get("minIdle", "30s")),
            max_moves_per_second=int(reb.get("maxMovesPerSecond", 50)),
        ),
        drain_timeout=parse_duration("spec.drain.timeout", drain.get("timeout", "5m")),
        drain_min_idle=parse_duration("spec.drain.minIdle", drain.get("minIdle", "10s")),
        slow_start=parse_duration("spec.slowStart", spec.get("slowStart", "60s")),
        proxy=ProxySpec(
            managed=bool(prx.get("managed", True)),
            replicas=prx.get("replicas"),
            image=prx.get("image"),
            port=int(prx.get("port", 8080)),
            admin_port=int(prx.get("adminPort", 9901)),
            selector=dict(selector) if selector else None,
        ),
        session_store=_session_store(_obj(spec, "sessionStore")),
    )
