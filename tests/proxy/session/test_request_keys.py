"""Session keys from requests, per mode: the hashes match the affinity core's keys."""

from __future__ import annotations

import ipaddress

import pytest

from limpet.affinity import (
    AffinitySettings,
    AffinityType,
    ClientIPSettings,
    client_ip_key,
    key_hash,
    value_key,
)
from limpet.proxy.engine.port import RequestView
from limpet.proxy.session.request_keys import RequestKeys


@pytest.mark.parametrize("mode", [AffinityType.HEADER, AffinityType.QUERY, AffinityType.APP_COOKIE])
def test_key_prefix_shortcut_matches_the_core(mode: AffinityType) -> None:
    # The router hashes prefix + value instead of calling value_key per request.
    for value in (b"x", b"abc%20def", "ü".encode()):
        assert value_key(mode, b"") + value == value_key(mode, value)


def view(
    target: bytes = b"/",
    headers: list[tuple[bytes, bytes]] | None = None,
    cookie: bytes | None = None,
    peer: str = "192.0.2.7",
) -> RequestView:
    return RequestView(b"GET", target, headers or [], peer, cookie)


def test_header_query_and_app_cookie_keys() -> None:
    keys = RequestKeys(
        AffinitySettings(
            type=AffinityType.HEADER, header_name="X-Sid", query_name="sid", app_cookie_name="JSID"
        ),
        peer_memo=16,
    )
    want = key_hash(value_key(AffinityType.HEADER, b"u1"))
    assert keys.hash(AffinityType.HEADER, view(headers=[(b"x-SID", b" u1 ")])) == want
    assert keys.hash(AffinityType.HEADER, view(headers=[(b"X-Sid", b"  ")])) is None
    assert keys.hash(AffinityType.HEADER, view(headers=[(b"X-Other", b"u1")])) is None
    q = key_hash(value_key(AffinityType.QUERY, b"42"))
    assert keys.hash(AffinityType.QUERY, view(b"/p?a=1&sid=42")) == q
    assert keys.hash(AffinityType.QUERY, view(b"/p?sid=")) is None
    assert keys.hash(AffinityType.QUERY, view(b"/p?xsid=42")) is None
    app = key_hash(value_key(AffinityType.APP_COOKIE, b"abc"))
    assert keys.hash(AffinityType.APP_COOKIE, view(cookie=b'a=1; JSID="abc"')) == app
    assert keys.hash(AffinityType.APP_COOKIE, view(cookie=b"JSID=")) is None
    assert keys.hash(AffinityType.APP_COOKIE, view(cookie=b"a=1")) is None
    assert keys.hash(AffinityType.COOKIE, view(cookie=b"LIMPET=x")) is None  # not here


def test_client_ip_key_masks_and_memoises_only_untrusted_peers() -> None:
    plain = RequestKeys(
        AffinitySettings(
            type=AffinityType.CLIENT_IP, client_ip=ClientIPSettings(ipv4_prefix_length=24)
        ),
        peer_memo=2,
    )
    a, b = view(peer="192.0.2.7"), view(peer="192.0.2.99")
    assert plain.hash(AffinityType.CLIENT_IP, a) == plain.hash(AffinityType.CLIENT_IP, b)
    for i in range(5):  # the memo is bounded: it is cleared when full, answers unchanged
        assert plain.client_ip_hash(view(peer=f"198.51.100.{i}")) is not None
    assert plain.hash(AffinityType.CLIENT_IP, a) == plain.hash(AffinityType.CLIENT_IP, b)
    trusted = RequestKeys(
        AffinitySettings(
            type=AffinityType.CLIENT_IP,
            client_ip=ClientIPSettings(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),)),
        ),
        peer_memo=2,
    )
    behind = view(headers=[(b"X-Forwarded-For", b"203.0.113.5")], peer="10.1.1.1")
    direct = view(headers=[(b"X-Forwarded-For", b"203.0.113.5")], peer="192.0.2.7")
    client = client_ip_key("203.0.113.5", None, ClientIPSettings())
    assert client is not None
    assert trusted.client_ip_hash(behind) == key_hash(client)
    assert trusted.client_ip_hash(direct) != key_hash(client)
