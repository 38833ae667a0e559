"""Standalone mode: a plan built from the command line, for ``limpet proxy --backend
ID=HOST:PORT ... --affinity MODE`` without Kubernetes or an operator.

Data flow: ``command.py`` parses its options and calls :func:`standalone_plan`, whose
result the proxy loads like any plan pushed by the operator. Pure functions (only
:func:`generate_cookie_key` draws randomness); errors are one-line ``ValueError``s.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from typing import Any

from limpet.affinity import (
    AffinitySettings,
    AffinityType,
    Backend,
    BackendId,
    BackendState,
    ClientIPSettings,
    CookieKey,
    CookieSettings,
    Plan,
    SessionStoreSettings,
)


def generate_cookie_key() -> CookieKey:
    """A fresh random signing key (standalone mode without ``--cookie-key-file``)."""
    return CookieKey(id=f"g{secrets.token_hex(4)}", secret=secrets.token_bytes(32))


def parse_affinity(
    text: str,
    *,
    trusted_proxies: Sequence[str] = (),
    cookie: CookieSettings | None = None,
) -> AffinitySettings:
    """``cookie | app-cookie:NAME | header:NAME | query:NAME | client-ip`` to settings.

    Raises ``ValueError`` with a one-line message on anything else.
    """
    kind, _, name = text.partition(":")
    kind = kind.strip().lower()
    nets = tuple(ipaddress.ip_network(t, strict=False) for t in trusted_proxies)
    client_ip = ClientIPSettings(trusted_proxies=nets)
    base: dict[str, Any] = {"client_ip": client_ip, "cookie": cookie or CookieSettings()}
    needs_name = {"app-cookie": "app_cookie_name", "header": "header_name", "query": "query_name"}
    types = {
        "cookie": AffinityType.COOKIE,
        "app-cookie": AffinityType.APP_COOKIE,
        "header": AffinityType.HEADER,
        "query": AffinityType.QUERY,
        "client-ip": AffinityType.CLIENT_IP,
    }
    if kind not in types:
        raise ValueError(
            f"unknown affinity {text!r}: expected cookie, app-cookie:NAME, header:NAME, "
            "query:NAME or client-ip"
        )
    if kind in needs_name:
        if not name:
            raise ValueError(f"affinity {kind} needs a name, as in {kind}:NAME")
        base[needs_name[kind]] = name
    elif name:
        raise ValueError(f"affinity {kind} takes no name (got {text!r})")
    try:
        return AffinitySettings(type=types[kind], **base)
    except ValueError as exc:
        raise ValueError(f"affinity {text!r}: {exc}") from None


def standalone_plan(
    backends: Sequence[tuple[str, str, int]],
    affinity: str | AffinitySettings,
    cookie_keys: Sequence[CookieKey] = (),
    *,
    version: int = 1,
    session_store: SessionStoreSettings | None = None,
) -> Plan:
    """A plan for ``limpet proxy --backend ID=HOST:PORT ... --affinity ...``.

    Every backend is Active with equal weight. Cookie affinity (and AppCookie, whose
    companion cookie is signed) without keys gets a fresh random key, so a standalone
    proxy works with no key file (its cookies then neither survive a restart nor agree
    with other replicas: give every replica the same ``--cookie-key-file``). Raises
    ``ValueError`` (a ``PlanError`` for plan fields).
    """
    settings = parse_affinity(affinity) if isinstance(affinity, str) else affinity
    keys = tuple(cookie_keys)
    signed = (AffinityType.COOKIE, AffinityType.APP_COOKIE)
    if not keys and any(m in settings.modes for m in signed):
        keys = (generate_cookie_key(),)
    if not backends:
        raise ValueError("at least one --backend ID=HOST:PORT is required")
    return Plan(
        version=version,
        backends=tuple(
            Backend(id=BackendId(bid), address=host, port=port, state=BackendState.ACTIVE)
            for bid, host, port in backends
        ),
        affinity=settings,
        cookie_keys=keys,
        session_store=session_store,
        name="standalone",
    )
