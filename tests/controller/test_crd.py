"""The StickyService CRD against the real API server: defaults, CEL rules, columns."""

from __future__ import annotations

from typing import Any

import pytest

from limpet.controller.kube.client import STICKYSERVICES, ApiError, KubeClient
from limpet.controller.model.spec import parse_spec


def sticky(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "limpet.dev/v1alpha1",
        "kind": "StickyService",
        "metadata": {"name": name},
        "spec": spec,
    }


async def create(kube: KubeClient, namespace: str, name: str, spec: dict[str, Any]) -> Any:
    return await kube.create(STICKYSERVICES.path(namespace), sticky(name, spec))


async def test_minimal_spec_gets_every_default(kube: KubeClient, namespace: str) -> None:
    obj = await create(kube, namespace, "shop", {"service": "shop", "port": "http"})
    assert obj["spec"] == {
        "service": "shop",
        "port": "http",
        "affinity": {"type": "Cookie", "idleTimeout": "30m"},
        "balance": {"loadFactor": 1.25},
        "rebalance": {
            "mode": "Gradual",
            "window": "10m",
            "minIdle": "30s",
            "maxMovesPerSecond": 50,
        },
        "drain": {"timeout": "5m", "minIdle": "10s"},
        "slowStart": "60s",
        "proxy": {"managed": True, "port": 8080, "adminPort": 9901},
    }
    parsed = parse_spec(obj["spec"])
    assert parsed.affinity.idle_timeout == 1800
    assert parsed.rebalance.window == 600
    assert parsed.proxy.managed


async def test_nested_defaults_fill_partial_objects(kube: KubeClient, namespace: str) -> None:
    obj = await create(
        kube,
        namespace,
        "shop",
        {
            "service": "shop",
            "port": 8080,
            "affinity": {"type": "ClientIP", "fallback": ["Cookie"], "cookie": {}, "clientIP": {}},
            "rebalance": {"window": "1m"},
        },
    )
    aff = obj["spec"]["affinity"]
    assert aff["cookie"] == {
        "name": "LIMPET",
        "path": "/",
        "secure": True,
        "httpOnly": True,
        "sameSite": "Lax",
        "lifetimeType": "Session",
    }
    assert aff["clientIP"] == {"ipv4PrefixLength": 32, "ipv6PrefixLength": 64}
    assert aff["idleTimeout"] == "30m"
    assert obj["spec"]["rebalance"]["minIdle"] == "30s"


VALID = [
    {
        "service": "web",
        "port": "http",
        "affinity": {
            "type": "Cookie",
            "cookie": {
                "name": "SRV_ID",
                "path": "/app",
                "domain": ".example.com",
                "sameSite": "None",
                "secure": True,
                "lifetimeType": "Permanent",
            },
            "idleTimeout": "15m",
            "absoluteTimeout": "12h",
        },
    },
    {
        "service": "web",
        "port": 443,
        "affinity": {
            "type": "AppCookie",
            "appCookie": {"name": "JSESSIONID"},
            "fallback": ["Header", "ClientIP"],
            "header": {"name": "X-Session-Id"},
            "clientIP": {"ipv4PrefixLength": 24, "trustedProxies": ["10.0.0.0/8", "192.168.1.1"]},
        },
    },
    {"service": "web", "port": "grpc", "affinity": {"type": "Query", "query": {"name": "sid"}}},
    {
        "service": "web",
        "port": 80,
        "slowStart": "0s",
        "rebalance": {"mode": "Never"},
        "drain": {"timeout": "1h30m", "minIdle": "1500ms"},
        "proxy": {"managed": False, "selector": {"matchLabels": {"app": "edge"}}},
    },
    {"service": "web", "port": 80, "proxy": {"replicas": 5, "image": "r.example/limpet:1"}},
    {
        "service": "web",
        "port": 80,
        "affinity": {"type": "Header", "header": {"name": "X-User"}, "lastSeenGranularity": "2s"},
        "rebalance": {"minIdle": "0s"},
        "drain": {"minIdle": "2s"},
        "sessionStore": {
            "address": "redis.cache.svc:6379",
            "username": "limpet",
            "database": 3,
            "passwordSecretRef": {"name": "redis-auth"},
            "tls": {
                "enabled": True,
                "caConfigMapRef": {"name": "redis-ca"},
                "serverName": "redis.cache.svc",
            },
            "keyPrefix": "shop:",
            "timeout": "50ms",
            "ttlSlack": "1m",
        },
    },
    {"service": "web", "port": 80, "sessionStore": {"address": "[fd00::7]:6380"}},
    {"service": "web", "port": 80, "sessionStore": {"address": "10.0.0.7:6379"}},
]


@pytest.mark.parametrize(
    "spec",
    VALID,
    ids=["cookie", "appcookie", "query", "external", "managed", "store", "store-v6", "store-v4"],
)
async def test_valid_specs_are_accepted(
    kube: KubeClient, namespace: str, spec: dict[str, Any]
) -> None:
    obj = await create(kube, namespace, "ok", spec)
    parsed = parse_spec(obj["spec"])  # the operator reads whatever the API server accepts
    if parsed.session_store is not None:  # ...and the plan schema takes its store section
        parsed.session_store.plan_settings(namespace, "ok")


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("port-range", {"port": 70000}, "port number must be between 1 and 65535"),
    ("port-zero", {"port": 0}, "port number must be between 1 and 65535"),
    ("port-name", {"port": "HTTP_1"}, "port name must be an IANA service name"),
    ("port-name-long", {"port": "a-very-long-port-name"}, "port name must be an IANA"),
    ("service-name", {"service": "Shop"}, "service must be a Service name"),
    ("cookie-name", {"affinity": {"cookie": {"name": "a b"}}}, "cookie.name must be an HTTP token"),
    ("cookie-name-eq", {"affinity": {"cookie": {"name": "a=b"}}}, "cookie.name must be an HTTP"),
    ("cookie-path", {"affinity": {"cookie": {"path": "app"}}}, "cookie.path must start with '/'"),
    ("cookie-path-semi", {"affinity": {"cookie": {"path": "/a;b"}}}, "contain no ';'"),
    ("cookie-domain", {"affinity": {"cookie": {"domain": "Ex ample"}}}, "cookie.domain must be"),
    (
        "samesite-none-insecure",
        {"affinity": {"cookie": {"sameSite": "None", "secure": False}}},
        "cookie.sameSite None requires cookie.secure true",
    ),
    (
        "permanent-needs-absolute",
        {"affinity": {"cookie": {"lifetimeType": "Permanent"}}},
        "cookie.lifetimeType Permanent requires affinity.absoluteTimeout",
    ),
    ("type-enum", {"affinity": {"type": "Sticky"}}, "Unsupported value"),
    (
        "appcookie-needs-name",
        {"affinity": {"type": "AppCookie"}},
        "affinity.appCookie.name is required exactly when type or fallback is AppCookie",
    ),
    (
        "header-needs-name",
        {"affinity": {"type": "Cookie", "fallback": ["Header"]}},
        "affinity.header.name is required exactly when type or fallback is Header",
    ),
    (
        "query-needs-name",
        {"affinity": {"type": "Query"}},
        "affinity.query.name is required exactly when type or fallback is Query",
    ),
    (
        "header-unused",
        {"affinity": {"type": "Cookie", "header": {"name": "X-S"}}},
        "affinity.header.name is required exactly when type or fallback is Header",
    ),
    (
        "header-token",
        {"affinity": {"type": "Header", "header": {"name": "X Session"}}},
        "header.name must be an HTTP token",
    ),
    (
        "query-name",
        {"affinity": {"type": "Query", "query": {"name": "s id"}}},
        "query.name must use only",
    ),
    (
        "fallback-repeats-type",
        {"affinity": {"type": "ClientIP", "fallback": ["ClientIP"]}},
        "affinity.fallback must not repeat affinity.type",
    ),
    (
        "cookie-without-cookie-mode",
        {"affinity": {"type": "ClientIP", "cookie": {"name": "X"}}},
        "affinity.cookie is set but neither type nor fallback is Cookie",
    ),
    (
        "clientip-without-mode",
        {"affinity": {"clientIP": {"ipv4PrefixLength": 24}}},
        "affinity.clientIP is set but neither type nor fallback is ClientIP",
    ),
    (
        "trusted-proxy",
        {"affinity": {"type": "ClientIP", "clientIP": {"trustedProxies": ["10.0.0.0/33"]}}},
        "each trustedProxies entry must be an IP address or a CIDR",
    ),
    (
        "prefix-range",
        {"affinity": {"type": "ClientIP", "clientIP": {"ipv4PrefixLength": 33}}},
        "33",
    ),
    ("duration-fraction", {"affinity": {"idleTimeout": "1.5h"}}, "must be a duration such as"),
    ("duration-space", {"drain": {"timeout": "5 m"}}, "must be a duration such as"),
    ("duration-unit", {"rebalance": {"window": "10d"}}, "must be a duration such as"),
    (
        "idle-range",
        {"affinity": {"idleTimeout": "800h"}},
        "idleTimeout must be between 1s and 720h",
    ),
    (
        "idle-over-absolute",
        {"affinity": {"idleTimeout": "2h", "absoluteTimeout": "1h"}},
        "affinity.idleTimeout must not exceed affinity.absoluteTimeout",
    ),
    ("window-range", {"rebalance": {"window": "25h"}}, "rebalance.window must be between"),
    ("min-idle-range", {"rebalance": {"minIdle": "2h"}}, "rebalance.minIdle must be at most 1h"),
    ("moves-range", {"rebalance": {"maxMovesPerSecond": 0}}, "maxMovesPerSecond"),
    ("mode-enum", {"rebalance": {"mode": "Immediate"}}, "Unsupported value"),
    ("load-factor", {"balance": {"loadFactor": 0.9}}, "loadFactor"),
    (
        "drain-idle-over-timeout",
        {"drain": {"timeout": "10s", "minIdle": "1m"}},
        "drain.minIdle must not exceed drain.timeout",
    ),
    (
        "rebalance-min-idle-sub-second",
        {"rebalance": {"minIdle": "500ms"}},
        "rebalance.minIdle must be 0s or at least 1s: idleness is measured",
    ),
    (
        "drain-min-idle-sub-second",
        {"drain": {"minIdle": "999ms"}},
        "drain.minIdle must be 0s or at least 1s",
    ),
    (
        "granularity-format",
        {"affinity": {"lastSeenGranularity": "1500ms"}},
        "affinity.lastSeenGranularity must be whole seconds from 1s to 15s",
    ),
    (
        "granularity-range",
        {"affinity": {"lastSeenGranularity": "16s"}},
        "affinity.lastSeenGranularity must be whole seconds from 1s to 15s",
    ),
    (
        "granularity-over-min-idle",
        {"affinity": {"lastSeenGranularity": "5s"}, "drain": {"minIdle": "3s"}},
        "affinity.lastSeenGranularity must not exceed a non-zero rebalance.minIdle",
    ),
    ("store-needs-address", {"sessionStore": {}}, "spec.sessionStore.address: Required value"),
    (
        "store-address-long",
        {"sessionStore": {"address": ".".join(["a" * 63] * 4) + ":6379"}},
        "sessionStore.address must be host:port",
    ),
    (
        "store-address-v6",
        {"sessionStore": {"address": "[fd00::7::1]:6379"}},
        "sessionStore.address must be host:port",
    ),
    (
        "store-username",
        {"sessionStore": {"address": "r:6379", "username": "a:b"}},
        "sessionStore.username must be a token",
    ),
    ("store-database", {"sessionStore": {"address": "r:6379", "database": 1024}}, "1023"),
    (
        "store-address-no-port",
        {"sessionStore": {"address": "redis"}},
        "sessionStore.address must be host:port",
    ),
    (
        "store-address-port-range",
        {"sessionStore": {"address": "redis:70000"}},
        "sessionStore.address must be host:port",
    ),
    (
        "store-address-upper",
        {"sessionStore": {"address": "Redis.Cache:6379"}},
        "sessionStore.address must be host:port",
    ),
    (
        "store-password-name",
        {"sessionStore": {"address": "r:6379", "passwordSecretRef": {"name": "Bad_Name"}}},
        "must be the name of an object in this namespace",
    ),
    (
        "store-ca-twice",
        {
            "sessionStore": {
                "address": "r:6379",
                "tls": {
                    "enabled": True,
                    "caSecretRef": {"name": "a"},
                    "caConfigMapRef": {"name": "b"},
                },
            }
        },
        "sessionStore.tls takes caSecretRef or caConfigMapRef, not both",
    ),
    (
        "store-tls-off",
        {"sessionStore": {"address": "r:6379", "tls": {"serverName": "r"}}},
        "only apply when tls.enabled is true",
    ),
    (
        "store-prefix",
        {"sessionStore": {"address": "r:6379", "keyPrefix": "a b"}},
        "sessionStore.keyPrefix must be 1..64 letters",
    ),
    (
        "store-timeout",
        {"sessionStore": {"address": "r:6379", "timeout": "10s"}},
        "sessionStore.timeout must be between 10ms and 5s",
    ),
    ("slow-start-range", {"slowStart": "2h"}, "slowStart must be at most 1h"),
    ("slow-start-format", {"slowStart": "soon"}, "must be a duration such as"),
    (
        "external-needs-selector",
        {"proxy": {"managed": False}},
        "proxy.selector is required when proxy.managed is false",
    ),
    (
        "selector-needs-external",
        {"proxy": {"selector": {"matchLabels": {"a": "b"}}}},
        "proxy.selector only applies when proxy.managed is false",
    ),
    (
        "replicas-need-managed",
        {"proxy": {"managed": False, "replicas": 2, "selector": {"matchLabels": {"a": "b"}}}},
        "proxy.replicas and proxy.image only apply when proxy.managed is true",
    ),
    ("ports-differ", {"proxy": {"port": 9901}}, "proxy.port and proxy.adminPort must differ"),
    ("replicas-range", {"proxy": {"replicas": 0}}, "replicas"),
    ("missing-port", {"port": None}, "spec.port: Required value"),
    ("missing-service", {"service": None}, "spec.service: Required value"),
]


@pytest.mark.parametrize(("case", "change", "message"), INVALID, ids=[c[0] for c in INVALID])
async def test_invalid_specs_are_rejected_with_their_message(
    kube: KubeClient, namespace: str, case: str, change: dict[str, Any], message: str
) -> None:
    spec: dict[str, Any] = {"service": "shop", "port": "http"}
    for key, value in change.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    with pytest.raises(ApiError) as info:
        await create(kube, namespace, case, spec)
    assert info.value.status == 422
    assert message in info.value.message, info.value.message


async def test_printer_columns_and_status_subresource(kube: KubeClient, namespace: str) -> None:
    await create(kube, namespace, "shop", {"service": "shop", "port": "http"})
    path = STICKYSERVICES.path(namespace, "shop")
    # Status is a subresource: a status write through the main resource is ignored...
    await kube.merge_patch(path, {"status": {"planVersion": 7}})
    assert "status" not in (await kube.get(path) or {})
    # ...and through /status it sticks, without bumping the generation.
    await kube.merge_patch(
        path + "/status",
        {
            "status": {
                "planVersion": 7,
                "backendCount": 3,
                "proxies": {"desired": 2, "synced": 2, "summary": "2/2"},
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "Synced",
                        "message": "ok",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
            }
        },
    )
    obj = await kube.get(path)
    assert obj is not None
    assert obj["status"]["planVersion"] == 7
    assert obj["metadata"]["generation"] == 1
    rendered = await _as_table(kube, namespace)
    columns = [c["name"] for c in rendered["columnDefinitions"]]
    assert columns[:5] == ["Name", "Type", "Backends", "Synced", "Ready"]
    assert "Age" in columns
    row = rendered["rows"][0]["cells"]
    assert row[1:5] == ["Cookie", 3, "2/2", "True"]


async def _as_table(kube: KubeClient, namespace: str) -> dict[str, Any]:
    """What kubectl get asks for: the server-side Table rendering with printer columns."""
    return await kube.request(
        "GET",
        STICKYSERVICES.path(namespace),
        accept="application/json;as=Table;v=v1;g=meta.k8s.io",
    )


async def test_short_name_is_served(kube: KubeClient) -> None:
    doc = await kube.request("GET", "/apis/limpet.dev/v1alpha1")
    res = next(r for r in doc["resources"] if r["name"] == "stickyservices")
    assert res["shortNames"] == ["sticky"]
    assert res["namespaced"] is True
