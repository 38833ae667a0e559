"""The pod runner's pure parts: image table, spec interpretation and pod status (no I/O)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.devcluster.podrunner.images import default_table, normalize
from limpet.devcluster.podrunner.runner import node_cidrs
from limpet.devcluster.podrunner.spec import (
    ConfigError,
    Sources,
    check_supported,
    container_plan,
    expand,
    field_value,
    referenced_objects,
)
from limpet.devcluster.podrunner.status import ContainerView, State, phase, pod_status

TABLE = default_table(Path("/venv/bin"))
POD: dict[str, Any] = {
    "metadata": {
        "name": "web-1",
        "namespace": "shop",
        "uid": "u-1",
        "labels": {"app": "web"},
        "annotations": {"note": "hi"},
    },
    "spec": {"nodeName": "limpet-node-0", "serviceAccountName": "web"},
}


def plan(container: dict[str, Any], pod: dict[str, Any] | None = None, **sources: Any) -> Any:
    return container_plan(
        pod or POD,
        {"name": "c", **container},
        TABLE,
        Sources(**sources),
        pod_ip="10.200.0.5",
        host_ip="10.200.0.1",
    )


@pytest.mark.parametrize(
    ("reference", "name"),
    [
        ("busybox", "busybox"),
        ("busybox:1.36", "busybox"),
        ("ghcr.io/limpet-dev/limpet:0.1.0", "ghcr.io/limpet-dev/limpet"),
        ("ghcr.io/limpet-dev/limpet@sha256:abc", "ghcr.io/limpet-dev/limpet"),
        ("localhost:5000/app:v1", "localhost:5000/app"),
        ("localhost:5000/app", "localhost:5000/app"),
    ],
)
def test_image_references_are_normalized(reference: str, name: str) -> None:
    assert normalize(reference) == name


def test_the_limpet_image_mirrors_the_dockerfile() -> None:
    p = plan({"image": "limpet", "args": ["proxy", "--listen", "0.0.0.0:8080"]})
    assert p.argv == ("limpet", "proxy", "--listen", "0.0.0.0:8080")
    assert (p.uid, p.gid, p.working_dir) == (65532, 65532, "/tmp")
    env = dict(p.env)
    assert env["PATH"].startswith("/venv/bin:")
    assert env["HOSTNAME"] == "web-1"


def test_command_replaces_entrypoint_and_cmd() -> None:
    assert plan({"image": "limpet", "command": ["python", "-m", "x"]}).argv == ("python", "-m", "x")
    assert plan({"image": "busybox"}).argv == ("sh",)


def test_an_unknown_image_is_err_image_pull_naming_it() -> None:
    with pytest.raises(ConfigError) as e:
        plan({"image": "nginx:1.27"})
    assert e.value.reason == "ErrImagePull"
    assert "nginx:1.27" in e.value.message
    assert "busybox" in e.value.message  # what is known


@pytest.mark.parametrize("mount_path", ["/venv", "/", "/venv/bin"])
def test_a_volume_over_the_image_s_own_files_is_refused_by_path(mount_path: str) -> None:
    # The limpet image is the host's virtualenv (/venv here): an emptyDir over it
    # would hide the entrypoint, which would only show as "not found in $PATH".
    volume = {"image": "limpet", "volumeMounts": [{"name": "tmp", "mountPath": mount_path}]}
    with pytest.raises(ConfigError) as e:
        plan(volume)
    assert e.value.reason == "CreateContainerConfigError"
    assert mount_path in e.value.message
    assert "/venv" in e.value.message


def test_a_volume_beside_the_image_s_files_is_fine() -> None:
    volume = {"image": "limpet", "volumeMounts": [{"name": "tmp", "mountPath": "/venvs"}]}
    assert plan(volume).mounts[0].path == "/venvs"


def test_downward_api_fields() -> None:
    def f(path: str) -> str:
        return field_value(POD, path, pod_ip="10.200.0.5", host_ip="10.200.0.1")

    assert f("metadata.name") == "web-1"
    assert f("metadata.namespace") == "shop"
    assert f("status.podIP") == "10.200.0.5"
    assert f("status.hostIP") == "10.200.0.1"
    assert f("spec.nodeName") == "limpet-node-0"
    assert f("metadata.labels['app']") == "web"
    assert f("metadata.annotations") == 'note="hi"'
    with pytest.raises(ConfigError):
        f("status.phase")


def test_env_sources_and_expansion() -> None:
    p = plan(
        {
            "image": "busybox",
            "command": ["echo", "$(GREETING)", "$$(GREETING)", "$(UNDEFINED)"],
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "env": [
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "GREETING", "value": "hi $(IP)"},
                {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "p"}}},
                {
                    "name": "MAYBE",
                    "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}},
                },
            ],
        },
        secrets={"s": {"p": b"pw"}},
        config_maps={"cfg": {"mode": b"fast"}},
    )
    env = dict(p.env)
    assert env["GREETING"] == "hi 10.200.0.5"
    assert env["PASS"] == "pw"
    assert env["CFG_mode"] == "fast"
    assert "MAYBE" not in env
    assert p.argv == ("echo", "hi 10.200.0.5", "$(GREETING)", "$(UNDEFINED)")


def test_a_missing_secret_key_is_a_config_error() -> None:
    env = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope"}}}]
    with pytest.raises(ConfigError) as e:
        plan({"image": "busybox", "env": env}, secrets={"s": {"p": b""}})
    assert e.value.reason == "CreateContainerConfigError"
    assert 'secret "s" key "nope" not found' in e.value.message


@given(st.text(alphabet=st.sampled_from("ab$()_ X"), max_size=30))
def test_expansion_without_variables_only_unescapes(text: str) -> None:
    assert expand(text, {}) == text.replace("$$", "$")


@given(st.text(max_size=20))
def test_a_defined_variable_expands_to_its_value_verbatim(value: str) -> None:
    assert expand("<$(X)>", {"X": value}) == f"<{value}>"


def test_security_context_container_over_pod_over_image() -> None:
    pod = {**POD, "spec": {**POD["spec"], "securityContext": {"runAsUser": 1000, "fsGroup": 7}}}
    p = plan({"image": "busybox", "securityContext": {"runAsUser": 2000}}, pod)
    assert p.uid == 2000
    assert p.gid == 0  # the image's group
    assert p.groups == (7,)
    sc: dict[str, Any] = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    sc["capabilities"] = {"drop": ["ALL"]}
    p = plan({"image": "limpet", "securityContext": sc})
    assert (p.read_only_root, p.no_new_privs, p.drop_capabilities) == (True, True, ("ALL",))


def test_run_as_non_root_refuses_a_root_user_and_accepts_an_override() -> None:
    with pytest.raises(ConfigError) as e:
        plan({"image": "busybox", "securityContext": {"runAsNonRoot": True}})
    assert "runAsNonRoot and image will run as root" in e.value.message
    ok = plan({"image": "busybox", "securityContext": {"runAsNonRoot": True, "runAsUser": 5}})
    assert ok.uid == 5


def test_probes_and_pre_stop_resolve_named_ports() -> None:
    p = plan(
        {
            "image": "limpet",
            "ports": [{"name": "admin", "containerPort": 9901}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 2},
            "livenessProbe": {"tcpSocket": {"port": 9901}, "failureThreshold": 5},
            "startupProbe": {"exec": {"command": ["true"]}},
            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        }
    )
    assert p.readiness is not None
    assert (p.readiness.kind, p.readiness.port, p.readiness.period) == ("http", 9901, 2.0)
    assert p.liveness is not None
    assert (p.liveness.kind, p.liveness.failure_threshold) == ("tcp", 5)
    assert p.startup is not None
    assert p.startup.command == ("true",)
    assert p.pre_stop is not None
    assert (p.pre_stop.kind, p.pre_stop.seconds) == ("sleep", 5.0)
    with pytest.raises(ConfigError):
        plan({"image": "limpet", "readinessProbe": {"httpGet": {"port": "nope"}}})


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"hostNetwork": True}, "hostNetwork"),
        ({"hostPID": True}, "hostPID"),
        ({"initContainers": [{"name": "s", "restartPolicy": "Always"}]}, "sidecars"),
    ],
)
def test_what_the_runner_cannot_honour_is_refused_by_name(
    spec: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError) as e:
        check_supported({"spec": spec})
    assert e.value.reason == "CreateContainerConfigError"
    assert needle in e.value.message
    check_supported({"spec": {"initContainers": [{"name": "i"}]}})  # a plain one is fine


def test_referenced_objects_cover_env_and_volumes() -> None:
    pod = {
        "spec": {
            "containers": [
                {
                    "env": [
                        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}
                    ],
                    "envFrom": [{"configMapRef": {"name": "c1"}}],
                }
            ],
            "volumes": [
                {"name": "v", "secret": {"secretName": "s2"}},
                {"name": "w", "projected": {"sources": [{"configMap": {"name": "c2"}}]}},
            ],
        }
    }
    assert referenced_objects(pod) == ({"s1", "s2"}, {"c1", "c2"})


def test_status_phase_and_conditions() -> None:
    running = State(kind="running", started_at="t")
    done_ok = State(kind="terminated", exit_code=0, reason="Completed")
    done_bad = State(kind="terminated", exit_code=3, reason="Error")
    assert phase([ContainerView(name="a", image="i")], restart_policy="Always") == "Pending"
    assert phase([ContainerView(name="a", image="i", state=running)], restart_policy="Always") == (
        "Running"
    )
    assert phase(
        [ContainerView(name="a", image="i", state=done_ok, done=True)], restart_policy="Never"
    ) == ("Succeeded")
    views = [
        ContainerView(name="a", image="i", state=done_ok, done=True),
        ContainerView(name="b", image="i", state=done_bad, done=True),
    ]
    assert phase(views, restart_policy="Never") == "Failed"
    ready = [ContainerView(name="a", image="i", state=running, ready=True, started=True)]
    status = pod_status(POD, ready, pod_ip="10.200.0.5", host_ip="10.200.0.1", start_time="t")
    kinds = {c["type"]: c["status"] for c in status["conditions"]}
    assert kinds["Ready"] == kinds["ContainersReady"] == kinds["PodScheduled"] == "True"
    assert status["podIPs"] == [{"ip": "10.200.0.5"}]
    gated = {**POD, "spec": {**POD["spec"], "readinessGates": [{"conditionType": "x/ok"}]}}
    status = pod_status(gated, ready, pod_ip="10.200.0.5", host_ip="10.200.0.1", start_time="t")
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"


def test_node_cidrs_split_the_pod_subnet() -> None:
    import ipaddress

    net = ipaddress.IPv4Network("10.200.3.0/24")
    assert node_cidrs(net, 1) == [net]
    assert [str(c) for c in node_cidrs(net, 3)] == [
        "10.200.3.0/26",
        "10.200.3.64/26",
        "10.200.3.128/26",
    ]
