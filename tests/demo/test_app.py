"""The demo's app manifests: examples/app/counter.yaml, renamed and retimed."""

from __future__ import annotations

import yaml

from limpet.demo.app import EXAMPLE_APP, counter_app


def test_the_example_app_is_what_the_demo_deploys() -> None:
    shipped = [d for d in yaml.safe_load_all(EXAMPLE_APP.read_text()) if d]
    deployment, service = counter_app("ns", replicas=4, pre_stop=9, grace=14)
    ship_dep = next(d for d in shipped if d["kind"] == "Deployment")
    assert deployment["metadata"]["namespace"] == service["metadata"]["namespace"] == "ns"
    spec = deployment["spec"]
    assert spec["replicas"] == 4
    # The rollout the demo shows: one pod at a time, never fewer than wanted.
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 14
    (container,) = pod["containers"]
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 9}}}
    (shipped_container,) = ship_dep["spec"]["template"]["spec"]["containers"]
    for key in ("image", "command", "args", "env", "readinessProbe", "securityContext"):
        assert container[key] == shipped_container[key], key
    assert container["readinessProbe"]["periodSeconds"] == 1


def test_a_renamed_app_selects_only_its_own_pods() -> None:
    deployment, service = counter_app("ns", name="shop")
    labels = {"app.kubernetes.io/name": "shop"}
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "shop"
    assert deployment["spec"]["selector"] == {"matchLabels": labels}
    assert deployment["spec"]["template"]["metadata"]["labels"] == labels
    assert service["spec"]["selector"] == labels
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "lifecycle" not in container  # no preStop asked for
