"""The names of what the operator creates for a StickyService.

Data flow: a StickyService's name in, its children's names out: the managed proxies'
Deployment and Service (``<name>-proxy``) and its key Secret (``<name>-limpet``). Both
the effects that create them (:mod:`limpet.controller.effects.proxies`) and the watches
that find the proxies' EndpointSlices (:mod:`limpet.controller.kube.watches`) read the
names here. Pure functions.
"""

from __future__ import annotations

import hashlib


def child_name(name: str, suffix: str, limit: int = 63) -> str:
    """``<name>-<suffix>``, shortened with a hash when it would exceed ``limit``."""
    full = f"{name}-{suffix}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name[: limit - len(suffix) - len(digest) - 2].rstrip("-")
    return f"{head}-{digest}-{suffix}"


def proxy_service_name(name: str) -> str:
    return child_name(name, "proxy")


def secret_name(name: str) -> str:
    return child_name(name, "limpet", limit=253)
