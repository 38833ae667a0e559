"""The test-only seam: ``--admin-address-override`` reaches a loopback proxy listed under
a placeholder address (what the fake pods' loopback fallback needs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import MappingProxyType

import aiohttp
import pytest

from limpet.controller.command import _override
from limpet.controller.effects.proxies import admin_url
from limpet.controller.kube.client import ENDPOINTSLICES, STICKYSERVICES, KubeClient
from limpet.controller.model.settings import OperatorSettings
from limpet.devcluster.cluster import free_port
from limpet.devcluster.process import ManagedProcess
from tests.controller.harness import (
    LIMPET,
    StartOperator,
    create_service,
    eventually,
    read_token,
    shop_slice,
    sticky_manifest,
)

PLACEHOLDER = "192.0.2.77"  # TEST-NET-1: published, never dialled (the override wins)


def test_override_parsing_and_use() -> None:
    assert _override("10.1.2.3=127.0.0.1:9999") == ("10.1.2.3", "127.0.0.1:9999")
    for bad in ("10.1.2.3", "10.1.2.3=127.0.0.1", "=127.0.0.1:1", "a=b:c"):
        with pytest.raises(argparse.ArgumentTypeError):
            _override(bad)
    plain = OperatorSettings()
    assert admin_url("10.1.2.3", 9901, plain) == "http://10.1.2.3:9901"
    assert admin_url("fd00::1", 9901, plain) == "http://[fd00::1]:9901"
    seam = OperatorSettings(
        admin_address_overrides=MappingProxyType({"10.1.2.3": "127.0.0.1:4000"})
    )
    assert admin_url("10.1.2.3", 9901, seam) == "http://127.0.0.1:4000"
    assert admin_url("10.1.2.4", 9901, seam) == "http://10.1.2.4:9901"


async def test_operator_pushes_through_the_override(
    kube: KubeClient,
    http: aiohttp.ClientSession,
    namespace: str,
    start_operator: StartOperator,
    tmp_path: Path,
) -> None:
    await create_service(kube, namespace)
    await kube.apply(ENDPOINTSLICES.path(namespace, "shop-burst"), shop_slice(namespace, 2))
    await kube.create(STICKYSERVICES.path(namespace), sticky_manifest("shop", "shop"))
    admin = free_port()
    # The operator makes the Secret; read the token from it with a first, plain operator.
    first = start_operator()
    token = await read_token(kube, namespace, "shop")
    first.stop()
    (tmp_path / "token").write_text(token)
    proxy = ManagedProcess(
        "loopback proxy",
        [
            LIMPET,
            "proxy",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            "--token-file",
            str(tmp_path / "token"),
        ],
        log_path=tmp_path / "proxy.log",
    )
    proxy.start()
    try:
        proxy_slice = shop_slice(namespace, 1)
        proxy_slice["metadata"]["name"] = "shop-proxy-x"
        proxy_slice["metadata"]["labels"]["kubernetes.io/service-name"] = "shop-proxy"
        proxy_slice["endpoints"][0]["addresses"] = [PLACEHOLDER]
        await kube.apply(ENDPOINTSLICES.path(namespace, "shop-proxy-x"), proxy_slice)
        start_operator(
            "--standalone", "--admin-address-override", f"{PLACEHOLDER}=127.0.0.1:{admin}"
        )

        async def pushed() -> bool:
            async with http.get(
                f"http://127.0.0.1:{admin}/v1/stats",
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                version = (await resp.json()).get("planVersion")
            obj = await kube.get(STICKYSERVICES.path(namespace, "shop"))
            status = (obj or {}).get("status") or {}
            return bool(version) and version == status.get("planVersion")

        await eventually(pushed, what="the plan on the loopback proxy")
    finally:
        proxy.stop()
