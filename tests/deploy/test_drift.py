"""The manifests must agree with the code that runs behind them.

- Every StickyService spec field the operator reads (found by handing
  ``limpet.controller.spec.parse_spec`` a spec that records each key it is asked for)
  exists in the CRD's schema: a renamed field would otherwise be pruned by the API
  server and silently read as its default.
- The examples' StickyService parses with the operator's own parser.
- The proxy NetworkPolicy selects the pods the operator creates and names their ports;
  the Ingress points at the proxy Service the operator creates, by a port it has.
- The counter app's container arguments parse with the app's own parser.

The permissions half of the drift check (the ClusterRole against the API calls the
operator really makes) needs the operator running: see tests/e2e.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

from limpet.controller.effects import proxies
from limpet.controller.model.settings import OperatorSettings
from limpet.controller.model.spec import parse_spec
from limpet.demo import backend
from tests.deploy.manifests import ROOT, Doc, build, container, find


class Recording(Mapping[str, Any]):
    """A read-only mapping that records every key path it is asked about."""

    def __init__(self, data: Mapping[str, Any], path: str, seen: set[str]) -> None:
        self._data = data
        self._path = path
        self._seen = seen

    def _wrap(self, key: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            return Recording(value, f"{self._path}.{key}", self._seen)
        if isinstance(value, list):
            return [
                Recording(v, f"{self._path}.{key}[]", self._seen) if isinstance(v, Mapping) else v
                for v in value
            ]
        return value

    def __getitem__(self, key: str) -> Any:
        self._seen.add(f"{self._path}.{key}")
        return self._wrap(key, self._data[key])

    def get(self, key: str, default: Any = None) -> Any:
        self._seen.add(f"{self._path}.{key}")
        return self._wrap(key, self._data[key]) if key in self._data else default

    def __contains__(self, key: object) -> bool:
        self._seen.add(f"{self._path}.{key}")
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


# Every optional object present, so that the parser descends into all of them.
FULL_SPEC: dict[str, Any] = {
    "service": "shop",
    "port": "http",
    "affinity": {
        "type": "Cookie",
        "fallback": ["AppCookie", "Header", "Query", "ClientIP"],
        "cookie": {
            "name": "LIMPET",
            "path": "/",
            "domain": "example.com",
            "secure": True,
            "httpOnly": True,
            "sameSite": "Lax",
            "lifetimeType": "Permanent",
        },
        "appCookie": {"name": "JSESSIONID"},
        "header": {"name": "X-Session-Id"},
        "query": {"name": "sid"},
        "clientIP": {"ipv4PrefixLength": 24, "ipv6PrefixLength": 64, "trustedProxies": []},
        "idleTimeout": "30m",
        "absoluteTimeout": "24h",
    },
    "balance": {"loadFactor": 1.25},
    "rebalance": {"mode": "Gradual", "window": "10m", "minIdle": "30s", "maxMovesPerSecond": 50},
    "drain": {"timeout": "5m", "minIdle": "10s"},
    "slowStart": "60s",
    "proxy": {
        "managed": True,
        "replicas": 2,
        "image": "x",
        "port": 8080,
        "adminPort": 9901,
        "selector": {"matchLabels": {"a": "b"}},
    },
}


def _crd_schema() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((ROOT / "crds" / "stickyservice.yaml").read_text()))
    crd = next(d for d in docs if d and d["kind"] == "CustomResourceDefinition")
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _in_schema(schema: Mapping[str, Any], path: str) -> bool:
    node: Mapping[str, Any] = schema
    for part in path.split("."):
        if part.endswith("[]"):
            part = part[:-2]
            props = node.get("properties") or {}
            if part not in props:
                return False
            node = props[part].get("items") or {}
            continue
        props = node.get("properties")
        if props is None:
            # A map (additionalProperties) accepts any key; anything else does not.
            return bool(node.get("additionalProperties")) or bool(
                node.get("x-kubernetes-preserve-unknown-fields")
            )
        if part not in props:
            return False
        node = props[part]
    return True


def test_full_spec_covers_the_schema() -> None:
    """FULL_SPEC itself must name only real fields, or the next test proves nothing."""
    seen: set[str] = set()

    def walk(data: Mapping[str, Any], path: str) -> None:
        for key, value in data.items():
            seen.add(f"{path}.{key}")
            if isinstance(value, Mapping) and key != "matchLabels":
                walk(value, f"{path}.{key}")

    walk(FULL_SPEC, "spec")
    schema = _crd_schema()
    assert sorted(p for p in seen if not _in_schema(schema, p)) == []


def test_every_spec_field_the_operator_reads_is_in_the_crd() -> None:
    seen: set[str] = set()
    parse_spec(Recording(FULL_SPEC, "spec", seen))
    schema = _crd_schema()
    assert len(seen) > 20, sorted(seen)
    missing = sorted(p for p in seen if not _in_schema(schema, p))
    assert missing == [], f"the operator reads fields the CRD does not have: {missing}"


def test_recording_catches_a_field_the_crd_lacks() -> None:
    seen: set[str] = set()
    Recording({"affinity": {}}, "spec", seen)["affinity"].get("stickinessMode")
    assert not _in_schema(_crd_schema(), "spec.affinity.stickinessMode")
    assert "spec.affinity.stickinessMode" in seen


@pytest.fixture(scope="module")
def examples() -> list[Doc]:
    return build(ROOT / "examples")


@pytest.fixture(scope="module")
def base() -> list[Doc]:
    return build(ROOT / "deploy")


def test_example_sticky_service_parses_with_the_operators_parser(examples: list[Doc]) -> None:
    sticky = find(examples, "StickyService", "counter")
    spec = parse_spec(sticky["spec"])
    assert spec.service == "counter"
    assert spec.drain_timeout == 100.0
    assert spec.proxy.managed


def _owner(examples: list[Doc]) -> dict[str, Any]:
    sticky = find(examples, "StickyService", "counter")
    return {"metadata": {**sticky["metadata"], "uid": "00000000-0000-0000-0000-000000000000"}}


def test_network_policy_matches_the_proxy_pods_the_operator_makes(
    base: list[Doc], examples: list[Doc]
) -> None:
    owner = _owner(examples)
    spec = parse_spec(find(examples, "StickyService", "counter")["spec"])
    deployment = proxies.deployment_manifest(owner, spec, OperatorSettings())
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {
        p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]
    }
    for docs in (base, examples):
        policy = find(docs, "NetworkPolicy", "limpet-proxy-admin")
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
        named = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert named <= port_names
        assert named == {"http", "admin"}


def test_ingress_targets_the_proxy_service_the_operator_makes(examples: list[Doc]) -> None:
    owner = _owner(examples)
    spec = parse_spec(find(examples, "StickyService", "counter")["spec"])
    service = proxies.service_manifest(owner, spec)
    ingress = find(examples, "Ingress", "counter")
    backend_ref = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend_ref["name"] == service["metadata"]["name"]
    assert backend_ref["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_counter_container_arguments_parse(examples: list[Doc]) -> None:
    counter = container(find(examples, "Deployment", "counter"), "counter")
    assert counter["command"] == ["python", "-m", "limpet.demo.backend"]
    parser = argparse.ArgumentParser()
    backend.add_arguments(parser)
    args = parser.parse_args(counter["args"])
    ports = {p["name"]: p["containerPort"] for p in counter["ports"]}
    assert args.port == ports["http"]
    probe = counter["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/healthz", "http")


def test_operator_container_arguments_parse_with_the_operators_parser(base: list[Doc]) -> None:
    from limpet.controller import command

    op = container(find(base, "Deployment", "limpet-operator"), "operator")
    assert op["args"][0] == "operator"
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(op["args"][1:])
    assert args.standalone is False
    assert args.peering
    # The released image and the operator's built-in proxy image default are the same.
    assert args.proxy_image == op["image"] == OperatorSettings().proxy_image
