"""spec.sessionStore end to end: real API server, the operator under its own RBAC, real
proxies. A missing password Secret is a Degraded condition (never a crash) that clears
once the Secret appears; managed proxies get the password as a projected file, never in
a plan; and without a store the ReplicasAgree condition says which modes can split."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

from limpet.controller.kube.client import SECRETS, KubeClient
from tests.controller.harness import FAST, Scenes, eventually, status_condition

# Loopback inside each proxy's pod (network namespace); nothing listens on port 1.
CLOSED = "127.0.0.1:1"
STORE = {"address": CLOSED, "passwordSecretRef": {"name": "redis-auth"}}


async def _condition(scenes: Scenes, kind: str) -> dict[str, Any]:
    path = f"/apis/limpet.dev/v1alpha1/namespaces/{scenes.namespace}/stickyservices/shop"
    obj = await scenes.kube.get(path)
    assert obj is not None
    return status_condition(obj.get("status") or {}, kind)


async def test_missing_store_secret_degrades_then_clears(
    kube: KubeClient, http: aiohttp.ClientSession, namespace: str, scenes: Scenes
) -> None:
    spec = {
        **FAST,
        "affinity": {"type": "Header", "header": {"name": "X-User"}},
        "sessionStore": STORE,
    }
    scene = await scenes.open(spec=spec)  # Ready: traffic does not wait for the store

    async def degraded_by(reason: str) -> bool:
        c = await _condition(scenes, "Degraded")
        return c.get("status") == "True" and c.get("reason") == reason

    await eventually(
        lambda: degraded_by("SessionStoreSecretMissing"), within=15, what="Degraded: Secret"
    )
    degraded = await _condition(scenes, "Degraded")
    assert f"Secret {namespace}/redis-auth does not exist" in degraded["message"]
    assert (await _condition(scenes, "Ready"))["status"] == "True"
    # A Secret without the key is named as such, with the keys it has.
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "redis-auth"},
        "data": {"pass": base64.b64encode(b"s3cret").decode()},
    }
    await kube.create(SECRETS.path(namespace), secret)

    async def names_the_key() -> bool:
        c = await _condition(scenes, "Degraded")
        return "has no key 'password' (it has pass)" in (c.get("message") or "")

    await eventually(names_the_key, within=20, what="Degraded names the missing key")
    await kube.merge_patch(
        SECRETS.path(namespace, "redis-auth"),
        {"data": {"password": base64.b64encode(b"s3cret").decode()}},
    )

    async def secret_found() -> bool:
        c = await _condition(scenes, "Degraded")
        return c.get("reason") != "SessionStoreSecretMissing"

    await eventually(secret_found, within=20, what="Degraded no longer blames the Secret")
    # Nothing listens at the address, so no proxy can claim the store connected.
    agree = await _condition(scenes, "ReplicasAgree")
    assert agree["status"] == "False"
    assert agree["reason"] in ("SessionStoreNotReported", "SessionStoreUnreachable"), agree
    assert scene.operator is not None
    assert scene.operator.alive(), scene.operator.tail()

    # The managed proxies mount the password read-only; it is in no plan.
    deployment = await kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/shop-proxy")
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "session-store"]
    assert volume["projected"]["sources"] == [
        {
            "secret": {
                "name": "redis-auth",
                "items": [{"key": "password", "path": "password", "mode": 0o440}],
            }
        }
    ]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {
        "name": "session-store",
        "mountPath": "/etc/limpet/session-store",
        "readOnly": True,
    } in (mounts)
    stats = await scene.fleet.stats(http, scene.fleet.pods[0])
    assert "s3cret" not in repr(stats)


async def test_proxies_that_cannot_reach_the_store_make_it_degraded(scenes: Scenes) -> None:
    spec = {**FAST, "sessionStore": {"address": CLOSED, "timeout": "100ms"}}
    scene = await scenes.open(spec=spec)  # Ready: traffic does not wait for the store

    async def unreachable() -> bool:
        c = await _condition(scenes, "Degraded")
        return c.get("status") == "True" and c.get("reason") == "SessionStoreUnreachable"

    await eventually(unreachable, within=20, what="Degraded: SessionStoreUnreachable")
    message = (await _condition(scenes, "Degraded"))["message"]
    assert f"cannot reach the session store at {CLOSED}" in message
    assert "its write-backs fail" in message
    assert any(p.name in message for p in scene.fleet.pods), message
    agree = await _condition(scenes, "ReplicasAgree")
    assert (agree["status"], agree["reason"]) == ("False", "SessionStoreUnreachable")
    assert (await _condition(scenes, "Ready"))["status"] == "True"


async def test_without_a_store_replicas_agree_says_what_can_split(scenes: Scenes) -> None:
    spec = {
        **FAST,
        "affinity": {
            "type": "Header",
            "header": {"name": "X-User"},
            "fallback": ["Cookie"],
            "cookie": {"secure": False},
        },
    }
    await scenes.open(spec=spec)

    async def says_header_splits() -> bool:
        c = await _condition(scenes, "ReplicasAgree")
        return c.get("reason") == "NoSessionStore"

    await eventually(says_header_splits, within=15, what="ReplicasAgree=False NoSessionStore")
    agree = await _condition(scenes, "ReplicasAgree")
    assert agree["status"] == "False"
    assert "each of the 2 proxy replicas learns Header sessions" in agree["message"]
    degraded = await _condition(scenes, "Degraded")
    assert degraded["status"] == "False", degraded
