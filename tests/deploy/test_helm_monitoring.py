"""The chart's optional monitoring objects and files.

- PodMonitors (operator, and one per listed StickyService's proxies), the PrometheusRule
  and the dashboard ConfigMap are applied to the real API server after the Prometheus
  Operator's own CRDs (their upstream YAML, pinned and fetched through the Go module
  proxy by tools/helm/prometheus-operator-crds.sh): the server validates them against
  those schemas (strict field validation; a wrong type is shown to be refused).
- Every alert and every dashboard query parses with promtool (Debian's prometheus).

That each metric they name is really exposed, and that a real Prometheus evaluates them
to series, is checked against running proxies and a running operator in
tests/controller/test_monitoring.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.namespaces import create_namespace, purge_namespace
from tests.deploy.helmchart import CHART, RELEASE, helm
from tests.deploy.manifests import ROOT, Doc, kubectl
from tests.deploy.monitoring import DASHBOARD, RULES, dashboard_exprs, promtool, rule_exprs

PROM_CRDS = ROOT / ".cache" / "prometheus-operator-crds"
CRD_NAMES = (
    "podmonitors.monitoring.coreos.com",
    "servicemonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
)


def monitoring_values(proxy_ns: str) -> list[str]:
    return [
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.dashboard.enabled=true",
        "--set",
        f"metrics.proxies[0].namespace={proxy_ns}",
        "--set",
        "metrics.proxies[0].stickyService=shop",
    ]


@pytest.fixture(scope="module")
def prometheus_crds(devcluster: DevCluster) -> Path:
    assert (PROM_CRDS / ".stamp").is_file(), (
        "Prometheus Operator CRDs missing: `make deps` runs tools/helm/prometheus-operator-crds.sh"
    )
    done = kubectl("apply", "--server-side", "-f", str(PROM_CRDS), kubeconfig=devcluster.kubeconfig)
    assert done.returncode == 0, done.stderr
    done = kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{n}" for n in CRD_NAMES),
        kubeconfig=devcluster.kubeconfig,
    )
    assert done.returncode == 0, done.stderr
    return devcluster.kubeconfig


@pytest.fixture
def namespaces(admin_api: k8s.ApiClient) -> Iterator[tuple[str, str]]:
    release = create_namespace(admin_api, "t-helm-mon")
    proxies = create_namespace(admin_api, "t-helm-shop")
    yield release, proxies
    for ns in (release, proxies):
        purge_namespace(admin_api, ns)


def monitoring_docs(release_ns: str, proxy_ns: str) -> list[Doc]:
    done = helm("template", RELEASE, str(CHART), "-n", release_ns, *monitoring_values(proxy_ns))
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    return [
        d
        for d in docs
        if d["kind"] in ("PodMonitor", "PrometheusRule")
        or (d["kind"] == "ConfigMap" and d["metadata"]["name"] == "limpet-dashboard")
    ]


def apply_docs(
    kubeconfig: Path, docs: list[Doc], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "objects.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    return kubectl("apply", "--server-side", "-f", str(path), kubeconfig=kubeconfig)


def test_monitoring_objects_pass_the_prometheus_operator_schemas(
    prometheus_crds: Path, namespaces: tuple[str, str], tmp_path: Path
) -> None:
    release_ns, proxy_ns = namespaces
    docs = monitoring_docs(release_ns, proxy_ns)
    kinds = sorted((d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted(
        [
            ("ConfigMap", release_ns, "limpet-dashboard"),
            ("PodMonitor", release_ns, "limpet-operator"),
            ("PodMonitor", proxy_ns, "limpet-proxy-shop"),
            ("PrometheusRule", release_ns, "limpet"),
        ]
    )
    done = apply_docs(prometheus_crds, docs, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    # What the API server stored: the proxies' PodMonitor reads the StickyService's token.
    got = kubectl(
        "-n",
        proxy_ns,
        "get",
        "podmonitor",
        "limpet-proxy-shop",
        "-o",
        "json",
        kubeconfig=prometheus_crds,
    )
    endpoint = json.loads(got.stdout)["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "admin"
    assert endpoint["authorization"]["credentials"] == {"name": "shop-limpet", "key": "admin-token"}
    rule = json.loads(
        kubectl(
            "-n",
            release_ns,
            "get",
            "prometheusrule",
            "limpet",
            "-o",
            "json",
            kubeconfig=prometheus_crds,
        ).stdout
    )
    stored = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {a: e.strip() for a, e in stored.items()} == {
        a: e.strip() for a, e in rule_exprs().items()
    }
    dashboard = json.loads(
        kubectl(
            "-n",
            release_ns,
            "get",
            "configmap",
            "limpet-dashboard",
            "-o",
            "json",
            kubeconfig=prometheus_crds,
        ).stdout
    )
    assert json.loads(dashboard["data"]["limpet.json"]) == json.loads(DASHBOARD.read_text())


def test_the_server_refuses_a_podmonitor_that_breaks_the_schema(
    prometheus_crds: Path, namespaces: tuple[str, str], tmp_path: Path
) -> None:
    """The validation above is real: a port number where the schema wants a name fails."""
    release_ns, proxy_ns = namespaces
    monitor = next(d for d in monitoring_docs(release_ns, proxy_ns) if d["kind"] == "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["port"] = 8081
    done = apply_docs(prometheus_crds, [monitor], tmp_path)
    assert done.returncode != 0
    assert "podMetricsEndpoints" in done.stderr


def test_chart_installs_with_monitoring_on(
    prometheus_crds: Path, namespaces: tuple[str, str]
) -> None:
    release_ns, proxy_ns = namespaces
    for obj in ("clusterrole/limpet-operator", "clusterrolebinding/limpet-operator"):
        kubectl("delete", "--ignore-not-found", obj, kubeconfig=prometheus_crds)
    done = helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        release_ns,
        *monitoring_values(proxy_ns),
        kubeconfig=prometheus_crds,
    )
    try:
        assert done.returncode == 0, done.stderr
        got = kubectl(
            "get",
            "podmonitors,prometheusrules",
            "-A",
            "-l",
            f"app.kubernetes.io/instance={RELEASE}",
            "-o",
            "name",
            kubeconfig=prometheus_crds,
        )
        assert sorted(got.stdout.split()) == [
            "podmonitor.monitoring.coreos.com/limpet-operator",
            "podmonitor.monitoring.coreos.com/limpet-proxy-shop",
            "prometheusrule.monitoring.coreos.com/limpet",
        ]
    finally:
        helm("uninstall", RELEASE, "-n", release_ns, "--wait", kubeconfig=prometheus_crds)


def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run(
        [str(promtool()), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in done.stdout


def _check_as_recording_rules(
    exprs: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    rules = [{"record": f"limpet:check:{i}", "expr": e} for i, e in enumerate(exprs.values())]
    path = tmp_path / "exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    return subprocess.run(
        [str(promtool()), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    done = _check_as_recording_rules(exprs, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout


def test_promtool_would_catch_a_broken_query(tmp_path: Path) -> None:
    done = _check_as_recording_rules({"bad": "sum by (le (rate(x[1m]))"}, tmp_path)
    assert done.returncode != 0


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    """Grafana stacks overlapping panels and confuses panels sharing an id."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    taken: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]  # Grafana's grid is 24 wide
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, (p["title"], taken.get((x, y)))
                taken[(x, y)] = p["title"]
    titles = {p["title"] for p in panels}
    for wanted in ("Errors per backend", "Request latency", "p99 latency per backend"):
        assert wanted in titles
