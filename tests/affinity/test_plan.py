"""The plan schema: canonical round trips, defaults, and a clear error for every bad field."""

from __future__ import annotations

import base64
import contextlib
import copy
import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.affinity import (
    SCHEMA_VERSION,
    AffinitySettings,
    AffinityType,
    Backend,
    BackendId,
    BackendState,
    ClientIPSettings,
    CookieKey,
    CookieSettings,
    DrainSettings,
    LifetimeType,
    Plan,
    PlanError,
    RebalanceSchedule,
    SameSite,
    SessionStoreSettings,
)
from limpet.affinity.plan import plan_from_dict, plan_from_json, plan_to_dict, plan_to_json

from .strategies import KEY, plans

SECRET = base64.b64encode(b"0123456789abcdef").decode()


def minimal() -> dict[str, Any]:
    return {
        "schemaVersion": 1,
        "version": 7,
        "backends": [
            {"id": "b0", "address": "10.0.0.1", "port": 8080, "state": "Active", "weight": 100}
        ],
        "cookieKeys": [{"id": "k1", "secret": SECRET}],
    }


def full_plan() -> Plan:
    return Plan(
        version=42,
        name="web/shop",
        generated_at=1_700_000_000.5,
        slot_table_size=131071,
        backends=(
            Backend(id=BackendId("p-1"), address="10.1.2.3", port=80, weight=100),
            Backend(
                id=BackendId("p-2"),
                address="fd00::2",
                port=8080,
                state=BackendState.WARMING,
                weight=50,
                warming_since=1_700_000_000.0,
            ),
            Backend(
                id=BackendId("p-3"),
                address="pod-3.shop.svc",
                port=8080,
                state=BackendState.DRAINING,
                drain_deadline=1_700_000_300.0,
            ),
            Backend(id=BackendId("p-4"), address="10.1.2.4", port=80, state=BackendState.FAILED),
        ),
        affinity=AffinitySettings(
            type=AffinityType.HEADER,
            fallback=(AffinityType.COOKIE, AffinityType.CLIENT_IP),
            cookie=CookieSettings(
                name="SHOP",
                path="/app",
                domain="example.com",
                secure=True,
                http_only=False,
                same_site=SameSite.NONE,
                lifetime_type=LifetimeType.PERMANENT,
                max_age=3600.0,
            ),
            header_name="X-Session-Id",
            query_name="sid",
            app_cookie_name="JSESSIONID",
            client_ip=ClientIPSettings(
                ipv4_prefix_length=24,
                ipv6_prefix_length=48,
                trusted_proxies=(
                    ipaddress.ip_network("10.0.0.0/8"),
                    ipaddress.ip_network("fd00::/8"),
                ),
            ),
            idle_timeout=None,
            absolute_timeout=7200.0,
            last_seen_granularity=2,
        ),
        rebalance=RebalanceSchedule.from_weights(
            {BackendId("p-1"): 100, BackendId("p-3"): 100},
            from_size=65537,
            start=1_700_000_000.0,
            window=600.0,
            min_idle=30.0,
            max_moves_per_second=50.0,
            expected_moves=1200,
        ),
        session_store=SessionStoreSettings(
            address="[fd00::7]:6380",
            database=2,
            tls=True,
            tls_server_name="redis.web.svc",
            ca_file="/etc/limpet/store/ca.crt",
            username="limpet",
            password_file="/etc/limpet/store/password",
            key_prefix="limpet:web/shop:",
            timeout=0.1,
            ttl_slack=30.0,
        ),
        cookie_keys=(
            CookieKey(id="2024-02", secret=b"n" * 32),
            CookieKey(id="2024-01", secret=b"o" * 32),
        ),
    )


def test_full_plan_round_trip_is_exact_and_canonical() -> None:
    plan = full_plan()
    text = plan_to_json(plan)
    assert plan_from_json(text) == plan
    assert plan_from_json(text.encode()) == plan
    assert plan_to_json(plan_from_json(text)) == text
    assert json.loads(text)["schemaVersion"] == SCHEMA_VERSION == 1
    assert plan_from_dict(plan_to_dict(plan)) == plan


@settings(max_examples=60, deadline=None)
@given(plans())
def test_generated_plans_round_trip(plan: Plan) -> None:
    text = plan_to_json(plan)
    again = plan_from_json(text)
    assert again == plan
    assert plan_to_json(again) == text


def test_omitted_optionals_take_documented_defaults() -> None:
    plan = plan_from_dict(minimal())
    assert plan.affinity == AffinitySettings()
    assert plan.affinity.type is AffinityType.COOKIE
    assert plan.affinity.idle_timeout == 1800.0
    assert plan.affinity.absolute_timeout == 86400.0
    assert plan.affinity.cookie.name == "LIMPET"
    assert plan.balance.load_factor == 1.25
    assert plan.drain.min_idle == 10.0
    assert plan.rebalance is None
    assert plan.slot_table_size == 65537
    assert plan.backends[0].warming_since is None
    assert plan.cookie_keys == (CookieKey(id="k1", secret=b"0123456789abcdef"),)


def test_explicit_null_timeouts_mean_no_limit() -> None:
    data = minimal()
    data["affinity"] = {"idleTimeout": None, "absoluteTimeout": None}
    plan = plan_from_dict(data)
    assert plan.affinity.idle_timeout is None
    assert plan.affinity.absolute_timeout is None


def test_granularity_is_explicit_or_a_tenth_of_the_smallest_min_idle() -> None:
    plan = full_plan()
    assert plan.granularity == 2
    derived = Plan(version=1, backends=(), cookie_keys=KEY, drain=DrainSettings(min_idle=45.0))
    assert derived.granularity == 4
    for idle, step in ((0.5, 1), (600, 5)):
        plan = Plan(version=1, backends=(), cookie_keys=KEY, drain=DrainSettings(min_idle=idle))
        assert plan.granularity == step
    with_rebalance = Plan(
        version=1,
        backends=(),
        cookie_keys=KEY,
        drain=DrainSettings(min_idle=45.0),
        rebalance=RebalanceSchedule.from_weights(
            {BackendId("a"): 1}, start=1.0, window=10.0, min_idle=12.0
        ),
    )
    assert with_rebalance.granularity == 1


def test_secret_is_not_in_repr() -> None:
    assert "0123456789" not in repr(plan_from_dict(minimal()))


def test_helpers() -> None:
    plan = full_plan()
    assert set(plan.backend_map()) == {"p-1", "p-2", "p-3", "p-4"}
    assert plan.table_weights() == {"p-1": 100, "p-2": 50}
    assert plan.affinity.modes == (AffinityType.HEADER, AffinityType.COOKIE, AffinityType.CLIENT_IP)
    assert plan.rebalance is not None
    assert plan.rebalance.from_weights_map == {"p-1": 100, "p-3": 100}


def _set(path: str, value: object) -> dict[str, Any]:
    """``minimal()`` with the field at a dotted path (list indices as numbers) set."""
    data = copy.deepcopy(minimal())
    parts = path.split(".")
    target: Any = data
    for part in parts[:-1]:
        key: Any = int(part) if part.isdigit() else part
        if isinstance(target, dict) and key not in target:
            target[key] = {}
        target = target[key]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is _DELETE:
        del target[last]
    elif isinstance(target, list) and last == len(target):
        target.append(value)
    else:
        target[last] = value
    return data


_DELETE = object()

BAD_FIELDS: list[tuple[str, object, str]] = [
    ("schemaVersion", 2, r"schemaVersion: unsupported plan schema 2"),
    ("schemaVersion", "1", "schemaVersion: unsupported"),
    ("schemaVersion", True, "schemaVersion: unsupported"),
    ("schemaVersion", _DELETE, "schemaVersion: required"),
    ("version", 0, r"version: must be an integer in 1\.\."),
    ("version", -5, "version: must be an integer"),
    ("version", "7", "version: must be an integer, got str"),
    ("version", 1.5, "version: must be an integer, got float"),
    ("version", True, "version: must be an integer, got bool"),
    ("version", 1 << 63, "version: must be an integer in"),
    ("version", _DELETE, "version: required"),
    ("backends", _DELETE, "backends: required"),
    ("backends", {}, "backends: must be an array"),
    ("backends.0", "b0", r"backends\[0\]: must be an object"),
    ("backends.0.port", 0, r"backends\[0\]\.port: must be an integer in 1\.\.65535"),
    ("backends.0.port", 65536, r"backends\[0\]\.port"),
    ("backends.0.port", "80", r"backends\[0\]\.port: must be an integer, got str"),
    ("backends.0.weight", 0, r"backends\[0\]\.weight: must be an integer in 1\.\.1000000"),
    ("backends.0.weight", 10**9, r"backends\[0\]\.weight"),
    ("backends.0.weight", 2.0, r"backends\[0\]\.weight: must be an integer"),
    ("backends.0.state", "Up", r"backends\[0\]\.state: must be one of Warming, Active"),
    ("backends.0.state", _DELETE, r"backends\[0\]\.state: required"),
    ("backends.0.id", "has space", r"backends\[0\]\.id: must be an opaque id"),
    ("backends.0.id", "", r"backends\[0\]\.id"),
    ("backends.0.id", 5, r"backends\[0\]\.id: must be a string"),
    ("backends.0.address", "not an/address", r"backends\[0\]\.address"),
    ("backends.0.address", "", r"backends\[0\]\.address"),
    ("backends.0.drainDeadline", "soon", r"backends\[0\]\.drainDeadline: must be a number"),
    ("backends.0.warmingSince", -1, r"backends\[0\]\.warmingSince"),
    ("backends.0.extra", 1, r"backends\[0\]: unknown field\(s\) 'extra'"),
    ("bogus", 1, r"\(plan\): unknown field\(s\) 'bogus'"),
    ("slotTableSize", 0, "slotTableSize: must be an integer in 1..1000003"),
    ("slotTableSize", 1_000_004, "slotTableSize"),
    ("cookieKeys", [], "cookieKeys: at least one key is required for Cookie affinity"),
    ("cookieKeys.0.secret", "!!notbase64", r"cookieKeys\[0\]\.secret: must be standard base64"),
    ("cookieKeys.0.secret", base64.b64encode(b"short").decode(), r"secret: must be 16\.\.1024"),
    ("cookieKeys.0.id", "bad id", r"cookieKeys\.id: must be a key id"),
    ("cookieKeys.1", {"id": "k1", "secret": SECRET}, "cookieKeys: duplicate key id"),
    ("affinity.type", "Sticky", "affinity.type: must be one of Cookie, AppCookie"),
    ("affinity.type", "Header", r"affinity\.header\.name: required when Header is used"),
    ("affinity.fallback", ["Query"], r"affinity\.query\.name: required when Query is used"),
    ("affinity.fallback", ["Cookie"], "affinity.fallback: repeats a mode"),
    ("affinity.fallback", ["ClientIP", "ClientIP"], "affinity.fallback: repeats"),
    ("affinity.fallback", ["IP"], r"affinity\.fallback\[0\]: must be one of"),
    ("affinity.header", {"name": "Bad Header"}, r"affinity\.header\.name: must be a valid name"),
    ("affinity.header", {"name": "X", "x": 1}, r"affinity\.header: unknown field"),
    ("affinity.appCookie", {"name": "a;b"}, r"affinity\.appCookie\.name"),
    ("affinity.query", {"name": "a&b"}, r"affinity\.query\.name"),
    ("affinity.cookie.name", "LIM PET", r"affinity\.cookie\.name: must be a cookie-name token"),
    ("affinity.cookie.path", "app", r"affinity\.cookie\.path: must be a path starting with /"),
    ("affinity.cookie.path", "/a;b", r"affinity\.cookie\.path"),
    ("affinity.cookie.domain", "ex ample.com", r"affinity\.cookie\.domain"),
    ("affinity.cookie.sameSite", "None", r"affinity\.cookie\.sameSite: None requires secure"),
    ("affinity.cookie.sameSite", "lax", r"affinity\.cookie\.sameSite: must be one of"),
    ("affinity.cookie.secure", "yes", r"affinity\.cookie\.secure: must be a boolean"),
    ("affinity.cookie.lifetimeType", "Forever", r"affinity\.cookie\.lifetimeType"),
    ("affinity.cookie.maxAge", 0, r"affinity\.cookie\.maxAge"),
    ("affinity.clientIP.ipv4PrefixLength", 33, r"affinity\.clientIP\.ipv4PrefixLength"),
    ("affinity.clientIP.ipv6PrefixLength", -1, r"affinity\.clientIP\.ipv6PrefixLength"),
    ("affinity.clientIP.trustedProxies", ["10.0.0.1/8"], r"trustedProxies\[0\]: not a CIDR"),
    ("affinity.clientIP.trustedProxies", ["nope"], r"trustedProxies\[0\]: not a CIDR"),
    ("affinity.clientIP.trustedProxies", [10], r"trustedProxies\[0\]: must be a CIDR string"),
    ("affinity.idleTimeout", 0, r"affinity\.idleTimeout"),
    ("affinity.lastSeenGranularity", 0, r"affinity\.lastSeenGranularity: must be .* 1\.\.15"),
    ("affinity.lastSeenGranularity", 16, r"affinity\.lastSeenGranularity: must be .* 1\.\.15"),
    ("affinity.lastSeenGranularity", 1.5, r"affinity\.lastSeenGranularity: must be an integer"),
    ("affinity.absoluteTimeout", "1h", r"affinity\.absoluteTimeout: must be a number"),
    ("balance.loadFactor", 0.5, r"balance\.loadFactor: must be a finite number in \[1\.0"),
    ("balance.slowStart", -1, r"balance\.slowStart"),
    ("drain.minIdle", -0.1, r"drain\.minIdle"),
    ("sessionStore", {}, r"sessionStore\.address: required"),
    ("sessionStore", {"address": "redis"}, r"sessionStore\.address: must be host:port"),
    ("sessionStore", {"address": "a b:1"}, r"sessionStore\.address"),
    ("sessionStore", {"address": "r:6379", "caFile": "/ca"}, r"sessionStore\.tls: caFile"),
    ("sessionStore", {"address": "r:6379", "passwordFile": "rel"}, r"passwordFile"),
    ("sessionStore", {"address": "r:6379", "timeout": 0}, r"sessionStore\.timeout"),
    ("sessionStore", {"address": "r:6379", "keyPrefix": "a b"}, r"sessionStore\.keyPrefix"),
    ("sessionStore", {"address": "r:6379", "db": 1}, r"unknown field\(s\) 'db'"),
    ("rebalance", {"start": 1.0, "window": 1.0, "minIdle": 1.0}, r"rebalance\.fromBackends"),
    ("rebalance", {"fromBackends": {}, "start": 1, "window": 1, "minIdle": 1}, "fromBackends"),
    ("rebalance", {"fromBackends": {"b0": 0}, "start": 1, "window": 1, "minIdle": 1}, "b0"),
    ("rebalance", {"fromBackends": {"b0": 1}, "window": 1, "minIdle": 1}, r"rebalance\.start"),
    (
        "rebalance",
        {"fromBackends": {"b0": 1}, "start": 1, "window": -1, "minIdle": 1},
        r"rebalance\.window",
    ),
    (
        "rebalance",
        {"fromBackends": {"b0": 1}, "start": 1, "window": 1, "minIdle": 1, "maxMovesPerSecond": 0},
        r"rebalance\.maxMovesPerSecond",
    ),
    (
        "rebalance",
        {"fromBackends": {"b0": 1}, "start": 1, "window": 1, "minIdle": 1, "expectedMoves": -1},
        r"rebalance\.expectedMoves",
    ),
    (
        "rebalance",
        {"fromBackends": {"b0": 1}, "start": 1, "window": 1, "minIdle": 1, "maxMovesPerSecond": 5},
        r"rebalance\.expectedMoves: required when maxMovesPerSecond is set",
    ),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_FIELDS)
def test_bad_field_is_a_clear_error(path: str, value: object, message: str) -> None:
    data = _set(path, value)
    with pytest.raises(PlanError, match=message):
        plan_from_dict(data)
    with pytest.raises(PlanError, match=message):
        plan_from_json(json.dumps(data))


def test_rate_cap_needs_expected_moves() -> None:
    # A rate alone used to be accepted and then silently ignored by the release schedule.
    pool = ((BackendId("b0"), 1),)
    with pytest.raises(PlanError, match=r"rebalance\.expectedMoves: required when"):
        RebalanceSchedule(from_backends=pool, start=1.0, max_moves_per_second=5.0)
    alone = RebalanceSchedule(from_backends=pool, start=1.0, expected_moves=10)
    assert alone.max_moves_per_second is None
    both = RebalanceSchedule(
        from_backends=pool, start=1.0, max_moves_per_second=5.0, expected_moves=0
    )
    assert both.expected_moves == 0


def test_duplicate_backend_ids() -> None:
    data = minimal()
    data["backends"].append(dict(data["backends"][0]))
    with pytest.raises(PlanError, match=r"backends\[1\]\.id: duplicate backend id 'b0'"):
        plan_from_dict(data)


def test_permanent_cookie_needs_a_lifetime() -> None:
    data = minimal()
    data["affinity"] = {"cookie": {"lifetimeType": "Permanent"}, "absoluteTimeout": None}
    with pytest.raises(PlanError, match=r"Permanent needs cookie\.maxAge or absoluteTimeout"):
        plan_from_dict(data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("[]", r"\(plan\): must be an object, got array"),
        ("null", r"\(plan\): must be an object"),
        ('{"schemaVersion": 1, "schemaVersion": 1}', "duplicate key 'schemaVersion'"),
        ('{"schemaVersion": NaN}', "NaN is not a valid number"),
        ('{"schemaVersion": 1, "version": Infinity}', "Infinity is not a valid number"),
        ("[" * 100_000, "nested too deeply|not valid JSON"),
    ],
)
def test_malformed_json(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan_from_json(text)


def test_invalid_utf8_and_wrong_types() -> None:
    with pytest.raises(PlanError, match="not valid JSON"):
        plan_from_json(b"\xff\xfe{")
    with pytest.raises(PlanError, match="expected str or bytes"):
        plan_from_json(123)  # type: ignore[arg-type]


def test_models_validate_when_built_in_python() -> None:
    with pytest.raises(PlanError, match="port"):
        Backend(id=BackendId("a"), address="10.0.0.1", port=0)
    b = Backend(id=BackendId("a"), address="10.0.0.1", port=1)
    with pytest.raises(PlanError, match="duplicate backend id"):
        Plan(version=1, backends=(b, b), cookie_keys=KEY)
    with pytest.raises(PlanError, match="schemaVersion"):
        Plan(version=1, backends=(), cookie_keys=KEY, schema_version=2)
    with pytest.raises(PlanError, match="sorted"):
        RebalanceSchedule(
            from_backends=((BackendId("b"), 1), (BackendId("a"), 1)),
            start=0.0,
        )
    with pytest.raises(PlanError, match="duplicate"):
        RebalanceSchedule(from_backends=((BackendId("a"), 1), (BackendId("a"), 2)), start=0.0)


def test_empty_backend_list_is_a_valid_plan() -> None:
    # A Service with no endpoints: the plan is valid and the proxy answers 503.
    data = minimal()
    data["backends"] = []
    assert plan_from_dict(data).backends == ()


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_garbage_never_escapes_as_another_exception(garbage: object) -> None:
    with contextlib.suppress(PlanError):
        plan_from_dict(garbage)


def test_the_documented_example_is_a_valid_plan() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "plan.md").read_text()
    example = doc.split("```json", 1)[1].split("```", 1)[0]
    plan = plan_from_json(example)
    assert plan.version == 42
    assert [b.state for b in plan.backends] == [
        BackendState.ACTIVE,
        BackendState.WARMING,
        BackendState.DRAINING,
    ]
    assert plan.rebalance is not None
    assert plan_from_json(plan_to_json(plan)) == plan
