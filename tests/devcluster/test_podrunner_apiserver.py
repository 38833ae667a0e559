"""Pods reach the API server as in a real cluster: ``KUBERNETES_SERVICE_HOST``/``_PORT``
and the service-account mount, read by the operator's own in-cluster loader.

The oracle is the API server: a SelfSubjectReview made from inside the pod, with the
projected token over TLS verified against the mounted ``ca.crt``, names the pod's
ServiceAccount and the pod itself (the token is bound to it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes import client as k8s

from limpet.devcluster.podrunner.apirelay import SERVICE_PORT, loopback_target, service_env
from limpet.devcluster.podrunner.images import default_table
from limpet.devcluster.podrunner.launcher import in_root
from limpet.devcluster.podrunner.process import PodRunnerProcess
from limpet.devcluster.podrunner.spec import Sources, container_env
from tests.devcluster.podrunner_helpers import create_pod, wait_pod

SCRIPT = """
import json, os, urllib.request
from limpet.controller.kube.config import load_cluster_config
keys = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBERNETES_SERVICE_PORT_HTTPS")
cfg = load_cluster_config()
req = urllib.request.Request(
    cfg.server + "/apis/authentication.k8s.io/v1/selfsubjectreviews",
    method="POST",
    data=b'{"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}',
    headers={"Authorization": cfg.authorization(), "Content-Type": "application/json"},
)
review = json.load(urllib.request.urlopen(req, context=cfg.ssl_context(), timeout=10))
out = {"env": {k: os.environ.get(k) for k in keys}, "server": cfg.server,
       "namespace": cfg.default_namespace, "review": review}
open("/out/result.json.tmp", "w").write(json.dumps(out))
os.rename("/out/result.json.tmp", "/out/result.json")
"""


def test_a_pod_reaches_the_api_server_with_its_service_account_as_in_a_cluster(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # written by the image's non-root user
    create_pod(
        api,
        namespace,
        "incluster",
        [
            {
                "name": "main",
                "image": "ghcr.io/limpet-dev/limpet:0.1.0",
                "command": ["python", "-c", SCRIPT],
                "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True},
            }
        ],
        node=pod_runner.nodes[0],
        automountServiceAccountToken=True,  # the ServiceAccount admission plugin adds the mount
        restartPolicy="Never",
        volumes=[{"name": "out", "hostPath": {"path": str(out)}}],
    )
    pod = wait_pod(
        api,
        namespace,
        "incluster",
        "Succeeded",
        lambda p: (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        timeout=30,
    )
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    result = json.loads((out / "result.json").read_text())
    host, port = pod_runner.api_address.rsplit(":", 1)
    assert host == pod["status"]["hostIP"]  # the node's side of the pod network
    assert int(port) == SERVICE_PORT
    assert result["env"] == {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
    }
    assert result["server"] == f"https://{host}:{port}"
    assert result["namespace"] == namespace
    user = result["review"]["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{namespace}:default"
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == ["incluster"]


def test_mount_points_follow_symlinks_inside_the_containers_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")  # as on Debian: absolute, so host-relative
    (root / "etc").mkdir()
    (root / "etc" / "here").symlink_to("../run")
    (root / "loop").symlink_to("/loop")
    assert in_root(root, "/var/run/secrets/sa") == root / "run" / "secrets" / "sa"
    assert in_root(root, "/etc/here/x") == root / "run" / "x"
    assert in_root(root, "/../../var/run") == root / "run"
    with pytest.raises(OSError, match="too many symlinks"):
        in_root(root, "/loop/x")


def test_the_relay_goes_only_to_a_loopback_api_server() -> None:
    assert loopback_target("https://127.0.0.1:6443") == ("127.0.0.1", 6443)
    assert loopback_target("https://[::1]:6443/") == ("::1", 6443)
    for server in ("https://10.0.0.1:6443", "https://192.0.2.7"):
        with pytest.raises(ValueError, match="not on loopback"):
            loopback_target(server)


def test_the_containers_own_env_wins_over_the_service_variables() -> None:
    env = service_env("10.201.7.1")
    assert env["KUBERNETES_PORT_443_TCP"] == "tcp://10.201.7.1:443"
    pod = {"metadata": {"name": "p", "namespace": "n"}, "spec": {}}
    container = {"name": "c", "env": [{"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}]}
    image = default_table().resolve("busybox")
    assert image is not None
    got = container_env(
        container, pod, image, Sources(), pod_ip="10.201.7.2", host_ip="10.201.7.1",
        service_env=env,
    )  # fmt: skip
    assert got["KUBERNETES_SERVICE_HOST"] == "10.201.7.1"
    assert got["KUBERNETES_SERVICE_PORT"] == "6443"
