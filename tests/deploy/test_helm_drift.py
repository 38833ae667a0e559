"""One source of truth: the Helm chart renders the kustomize base's objects.

``helm template`` with default values and ``kubectl kustomize deploy/`` must give the
same objects, field for field, once Helm's own release labels are set aside; the only
object the chart leaves out is the Namespace (Helm installs into a namespace that exists
or that ``--create-namespace`` makes; see the README for its Pod Security labels). The
chart's crds/ are byte-for-byte the repository's crds/ (Helm never templates crds/), so
the CRDs lack only the ``part-of`` label that kustomize's ``labels:`` adds to everything.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.deploy.helmchart import CHART, HELM3, HELM_ONLY_LABELS, render
from tests.deploy.manifests import ROOT, Doc, build

Key = tuple[str, str, str]


def _key(doc: Doc) -> Key:
    meta = doc["metadata"]
    return (doc["kind"], meta.get("namespace", ""), meta["name"])


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    """The paths where two documents differ (for a readable failure)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            p for k in sorted(a.keys() | b.keys()) for p in _diff(a.get(k), b.get(k), f"{path}.{k}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            p
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for p in _diff(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: chart {a!r} != kustomize {b!r}"]


def _without_helm_labels(doc: Doc) -> Doc:
    out: dict[str, Any] = copy.deepcopy(doc)
    labels = out["metadata"].get("labels") or {}
    for label in HELM_ONLY_LABELS:
        labels.pop(label, None)
    return out


@pytest.fixture(scope="module")
def kustomized() -> dict[Key, Doc]:
    docs = {_key(d): d for d in build(ROOT / "deploy") if d["kind"] != "Namespace"}
    for key, doc in docs.items():
        if key[0] == "CustomResourceDefinition":
            labels = doc["metadata"]["labels"]
            assert labels.pop("app.kubernetes.io/part-of") == "limpet"
            if not labels:
                del doc["metadata"]["labels"]
    return docs


@pytest.fixture(scope="module")
def charted() -> dict[Key, Doc]:
    docs = render(crds=True)
    keys = [_key(d) for d in docs]
    assert len(keys) == len(set(keys)), "the chart renders an object twice"
    return {_key(d): _without_helm_labels(d) for d in docs}


def test_chart_and_kustomize_render_the_same_set_of_objects(
    kustomized: dict[Key, Doc], charted: dict[Key, Doc]
) -> None:
    assert sorted(charted) == sorted(kustomized)


def test_every_object_is_identical(kustomized: dict[Key, Doc], charted: dict[Key, Doc]) -> None:
    different = {k: _diff(charted.get(k), v) for k, v in kustomized.items() if charted.get(k) != v}
    assert different == {}


def test_the_comparison_sees_a_changed_value(kustomized: dict[Key, Doc]) -> None:
    """A value away from the defaults must show as drift, or the test above proves nothing."""
    changed = {_key(d): _without_helm_labels(d) for d in render("--set", "replicas=3", crds=True)}
    key = ("Deployment", "limpet-system", "limpet-operator")
    assert changed[key] != kustomized[key]
    assert changed[key]["spec"]["replicas"] == 3


def test_helm_labels_are_the_only_ones_set_aside() -> None:
    labels = render()[0]["metadata"]["labels"]
    assert labels.keys() >= HELM_ONLY_LABELS
    assert labels["app.kubernetes.io/managed-by"] == "Helm"


@pytest.mark.parametrize("name", ["stickyservice.yaml", "kopf-peering.yaml"])
def test_chart_crds_are_the_repositorys_crds(name: str) -> None:
    assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes()


def test_chart_ships_every_crd_file() -> None:
    repo = {p.name for p in (ROOT / "crds").glob("*.yaml") if p.name != "kustomization.yaml"}
    assert {p.name for p in (CHART / "crds").iterdir()} == repo


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["--set", "watchNamespaces={a,b}", "--set", "proxy.replicas=3", "--set", "logLevel=DEBUG"],
        [
            "--set",
            "metrics.podMonitor.enabled=true",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.dashboard.enabled=true",
            "--set",
            "metrics.proxies[0].namespace=shop",
            "--set",
            "metrics.proxies[0].stickyService=cart",
        ],
    ],
    ids=["defaults", "namespaced", "monitoring"],
)
def test_helm3_renders_what_helm4_renders(values: list[str]) -> None:
    """Helm 3 and 4 give the same objects (bar the chart-version label format), so every
    check made with helm 4 holds for helm 3."""
    four = [_without_helm_labels(d) for d in render(*values, crds=True)]
    three = [_without_helm_labels(d) for d in render(*values, crds=True, binary=HELM3)]
    assert len(four) > 5
    assert sorted(map(_key, three)) == sorted(map(_key, four))
    by_key = {_key(d): d for d in four}
    different = {_key(d): _diff(d, by_key[_key(d)]) for d in three if d != by_key[_key(d)]}
    assert different == {}
