"""The chart's monitoring files as data: alert and dashboard PromQL, and the metric names
they use.

``rule_exprs()`` reads files/prometheus-rules.yaml; ``dashboard_exprs()`` reads every
panel target and variable query of files/grafana-dashboard.json with Grafana's variables
replaced by what Grafana would send when "All" is selected (``$__rate_interval`` by
``RATE_INTERVAL``). ``metric_names`` finds the ``limpet_*`` series an expression reads.
``promtool`` is Debian's (the ``prometheus`` package, installed by tools/apt-deps.sh).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.helmchart import CHART

RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
RATE_INTERVAL = "1m"
_METRIC = re.compile(r"\blimpet_[a-z0-9_]+\b")
_VARIABLE_QUERY = re.compile(r"^label_values\((.*), *[a-z_]+\)$")


def promtool() -> Path:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make deps` installs Debian's prometheus package"
    return Path(found)


def rule_exprs() -> dict[str, str]:
    """Alert name -> expression."""
    doc: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def grafana_to_promql(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace('"$namespace"', '".*"')
        .replace('"$stickyservice"', '".*"')
    )


def dashboard_exprs() -> dict[str, str]:
    """ "Panel / legend" (or "variable NAME") -> PromQL, Grafana variables substituted."""
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    out: dict[str, str] = {}
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} / {target['legendFormat']}"] = grafana_to_promql(target["expr"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            match = _VARIABLE_QUERY.match(var["query"]["query"])
            assert match, var["query"]
            out[f"variable {var['name']}"] = grafana_to_promql(match.group(1))
    return out


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def exposed_names(text: str) -> set[str]:
    """Every series name a Prometheus text exposition holds or, for a family without
    samples yet, can produce (its TYPE line's name with the type's suffixes)."""
    suffixes = {
        "counter": ("", "_total"),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
    }
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.update(name + s for s in suffixes.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names
