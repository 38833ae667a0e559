"""Read a kube-apiserver audit log: what one user really asked of the API server.

``policy()`` is the audit policy the end-to-end test gives the demo's control plane:
request bodies for StickyService status writes, metadata for every other request of a
ServiceAccount, nothing else. :func:`calls` reduces the log to one :class:`Call` per
request of the users matching a predicate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Request
    userGroups: [system:serviceaccounts]
    resources:
      - group: limpet.dev
        resources: [stickyservices/status]
  - level: Metadata
    userGroups: [system:serviceaccounts]
  - level: None
"""


@dataclass(frozen=True, slots=True)
class Call:
    user: str
    verb: str
    group: str
    resource: str
    """With the subresource, as RBAC names it: ``stickyservices/status``."""
    namespace: str
    name: str
    code: int
    content_type: str
    body: dict[str, Any] | None


def _events(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text().splitlines():
        if line.strip():
            yield json.loads(line)


def calls(path: Path, user: Callable[[str], bool]) -> list[Call]:
    out = []
    for ev in _events(path):
        if ev.get("stage") != "ResponseComplete" or not user(ev["user"]["username"]):
            continue
        ref = ev.get("objectRef") or {}
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        out.append(
            Call(
                user=ev["user"]["username"],
                verb=ev["verb"],
                group=ref.get("apiGroup", ""),
                resource=resource,
                namespace=ref.get("namespace", ""),
                name=ref.get("name", ""),
                code=int((ev.get("responseStatus") or {}).get("code", 0)),
                content_type=(ev.get("requestObject") or {}).get("kind", ""),
                body=ev.get("requestObject"),
            )
        )
    return out


def granted(calls_: list[Call]) -> set[tuple[str, str, str]]:
    """(group, resource, RBAC verb) exercised by successful calls.

    A server-side apply that created its object (PATCH answered 201) needed ``create``
    as well as ``patch``; RBAC checks both, so both count as used.
    """
    used = set()
    for c in calls_:
        if c.code >= 400:
            continue
        used.add((c.group, c.resource, c.verb))
        if c.verb == "patch" and c.code == 201:
            used.add((c.group, c.resource, "create"))
    return used
