"""Standalone mode: plans from ``--backend`` and ``--affinity``."""

from __future__ import annotations

import pytest

from limpet.affinity import AffinityType
from limpet.proxy.process.standalone import parse_affinity, standalone_plan

from .routing_helpers import Client, Clock, mkrouter


def test_standalone_plan() -> None:
    p = standalone_plan([("a", "127.0.0.1", 8001), ("b", "127.0.0.1", 8002)], "cookie")
    assert p.affinity.cookie.name == "LIMPET"
    assert len(p.cookie_keys) == 1
    assert [b.id for b in p.backends] == ["a", "b"]
    r = mkrouter(Clock(), p)
    assert Client().get(r).set_cookie is not None
    h = standalone_plan([("a", "h.example", 1)], "header:X-User")
    assert h.affinity.type is AffinityType.HEADER
    assert h.affinity.header_name == "X-User"
    assert h.cookie_keys == ()
    assert standalone_plan([("a", "::1", 1)], "client-ip").affinity.type is AffinityType.CLIENT_IP
    assert parse_affinity("app-cookie:JSESSIONID").app_cookie_name == "JSESSIONID"
    assert parse_affinity("query:sid").query_name == "sid"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sticky", "unknown affinity"),
        ("header", "needs a name"),
        ("cookie:X", "takes no name"),
        ("header:bad name", "header"),
    ],
)
def test_parse_affinity_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_affinity(text)
    with pytest.raises(ValueError, match="at least one"):
        standalone_plan([], "cookie")
