"""limpet.devcluster.redis: a real redis-server as a Pod on the pod runner.

Checked from outside the code under test: raw RESP over a socket (the server refuses a
client without the password, answers with it), redis-py as the proxies use it, the
process table and ``ip netns`` (the server and its namespace are gone after stop), and
the API server (no Pod or Secret left).
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from kubernetes import client as k8s
from redis.exceptions import AuthenticationError

from limpet.devcluster import hostnet
from limpet.devcluster.client import request
from limpet.devcluster.netns import list_netns
from limpet.devcluster.podrunner.process import PodRunnerProcess
from limpet.devcluster.redis import (
    PASSWORD_KEY,
    RedisPod,
    RedisPodError,
    RedisSettings,
    check_auth,
    manifests,
)
from tests.proxy.replicas.fleet import RedisServer

pytestmark = pytest.mark.timeout(180)


def netns_holding(address: str) -> str:
    """The network namespace whose interfaces hold ``address``."""
    for name in list_netns():
        for link in hostnet.ip_json("-n", name, "-4", "addr", "show"):
            if any(a["local"] == address for a in link.get("addr_info", [])):
                return name
    raise AssertionError(f"no network namespace holds {address}")


def comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def test_manifests_keep_the_password_off_the_command_line() -> None:
    secret, pod = manifests("ns", RedisSettings(port=7000), "s3cret")
    container = pod["spec"]["containers"][0]
    assert "s3cret" not in repr(pod)
    assert container["command"] == ["redis-server", "/etc/limpet-redis/redis.conf"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    conf = secret["stringData"]["redis.conf"]
    assert "requirepass s3cret\n" in conf
    assert "port 7000\n" in conf
    assert secret["stringData"][PASSWORD_KEY] == "s3cret"


def test_check_auth_refuses_a_server_without_a_password(tmp_path: Path) -> None:
    open_server = RedisServer(tmp_path)  # no requirepass: anyone may read the sessions
    open_server.start()
    try:
        with pytest.raises(RedisPodError, match=r"PING answered b'\+PONG', not b'-NOAUTH'"):
            check_auth("127.0.0.1", open_server.port, "anything")
    finally:
        open_server.kill()
    locked = RedisServer(tmp_path, password="right")
    locked.start()
    try:
        check_auth("127.0.0.1", locked.port, "right")
        with pytest.raises(RedisPodError, match="WRONGPASS"):
            check_auth("127.0.0.1", locked.port, "wrong")
    finally:
        locked.kill()


def test_a_pod_that_never_gets_ready_is_reported_with_its_container_state(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess
) -> None:
    # An image the runner does not know: the Pod stays Pending with ErrImagePull.
    settings = RedisSettings(image="redis:7", ready_timeout=5)
    redis_pod = RedisPod(api, namespace, runner_nodes=pod_runner.nodes, settings=settings)
    with pytest.raises(RedisPodError, match=r"ErrImagePull|ImagePullBackOff"), redis_pod:
        pytest.fail("the pod cannot be Ready")
    for kind in ("pods", "secrets"):  # what start() made was removed
        with pytest.raises(k8s.ApiException) as gone:
            request(api, "GET", f"/api/v1/namespaces/{namespace}/{kind}/limpet-redis")
        assert gone.value.status == 404


def test_up_password_protected_and_stops_cleanly(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess
) -> None:
    redis_pod = RedisPod(api, namespace, runner_nodes=pod_runner.nodes)
    with redis_pod as endpoint:
        assert endpoint.address == f"{endpoint.host}:6379"
        assert endpoint.session_store() == {
            "address": endpoint.address,
            "passwordSecretRef": {"name": "limpet-redis", "key": "password"},
        }
        # The oracle: raw RESP, not the module's own check.
        with socket.create_connection((endpoint.host, endpoint.port), timeout=3) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            assert sock.recv(1024).startswith(b"-NOAUTH")
        with pytest.raises(RedisPodError, match="WRONGPASS"):
            check_auth(endpoint.host, endpoint.port, "a guess")

        async def through_redis_py() -> None:
            good = aioredis.Redis(
                host=endpoint.host, port=endpoint.port, password=endpoint.password
            )
            bad = aioredis.Redis(host=endpoint.host, port=endpoint.port, password="wrong")
            try:
                assert await good.set("k", "v") is True
                assert await good.get("k") == b"v"
                with pytest.raises(AuthenticationError):
                    await bad.ping()
            finally:
                await good.aclose()
                await bad.aclose()

        asyncio.run(through_redis_py())

        # The Secret a StickyService's passwordSecretRef would name holds the password.
        secret = request(api, "GET", f"/api/v1/namespaces/{namespace}/secrets/limpet-redis")
        assert "password" in secret["data"]
        ns = netns_holding(endpoint.host)
        pids = [int(p) for p in hostnet.ip("netns", "pids", ns).split()]
        servers = [p for p in pids if comm(p) == "redis-server"]
        assert servers, f"no redis-server among {pids} in {ns}"
        assert os.stat(f"/proc/{servers[0]}").st_uid == 65532  # not root

    # Stopped: no server process, no namespace, no Pod, no Secret.
    assert all(comm(p) != "redis-server" for p in servers)
    assert ns not in list_netns()
    for kind in ("pods", "secrets"):
        with pytest.raises(k8s.ApiException) as gone:
            request(api, "GET", f"/api/v1/namespaces/{namespace}/{kind}/limpet-redis")
        assert gone.value.status == 404
    redis_pod.stop()  # idempotent
