"""Session keys: one namespace per mode, client-IP masking and trusted X-Forwarded-For."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.affinity import (
    AffinityError,
    AffinityType,
    ClientIPKeys,
    ClientIPSettings,
    client_address,
    client_ip_key,
    cookie_key,
    parse_address,
    value_key,
)

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def test_modes_have_separate_namespaces() -> None:
    keys = {
        cookie_key("abc"),
        value_key(AffinityType.APP_COOKIE, "abc"),
        value_key(AffinityType.HEADER, "abc"),
        value_key(AffinityType.QUERY, "abc"),
    }
    assert len(keys) == 4
    assert cookie_key("abc") == cookie_key(b"abc") == b"c:abc"
    assert value_key(AffinityType.HEADER, b"\xff") == b"h:\xff"


def test_value_key_refuses_client_ip() -> None:
    with pytest.raises(AffinityError, match="ClientIPKeys"):
        value_key(AffinityType.CLIENT_IP, "1.2.3.4")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:5678", "1.2.3.4"),
        ("::1", "::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("unknown", None),
        ("", None),
        ("[::1", None),
        ("1.2.3.400", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    addr = parse_address(text)
    assert (None if addr is None else str(addr)) == expected


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("192.0.2.1", "203.0.113.9", "192.0.2.1"),  # untrusted peer: header ignored
        ("10.0.0.5", None, "10.0.0.5"),
        ("10.0.0.5", "203.0.113.9", "203.0.113.9"),
        ("10.0.0.5", "198.51.100.1, 203.0.113.9, 10.1.1.1", "203.0.113.9"),  # skip trusted hops
        ("10.0.0.5", "10.9.9.9, 10.1.1.1", "10.9.9.9"),  # all trusted: the leftmost
        ("10.0.0.5", "203.0.113.9, garbage", "10.0.0.5"),  # malformed: stop at the last trusted
        ("10.0.0.5", "garbage, 10.1.1.1", "10.1.1.1"),
        ("fd00::5", "2001:db8::7", "2001:db8::7"),
        ("not-an-ip", "203.0.113.9", None),
    ],
)
def test_client_address(peer: str, xff: str | None, expected: str | None) -> None:
    addr = client_address(peer, xff, TRUSTED)
    assert (None if addr is None else str(addr)) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert str(client_address("10.0.0.5", "203.0.113.9", ())) == "10.0.0.5"


def test_masks_and_key_bytes() -> None:
    keys = ClientIPKeys(
        ClientIPSettings(ipv4_prefix_length=24, ipv6_prefix_length=64, trusted_proxies=TRUSTED)
    )
    assert keys("192.0.2.1") == keys("192.0.2.254") == b"i:\xc0\x00\x02\x00\x18"
    assert keys("192.0.3.1") != keys("192.0.2.1")
    assert keys("2001:db8:1:2::1") == keys("2001:db8:1:2:ffff::9")
    assert keys("2001:db8:1:3::1") != keys("2001:db8:1:2::1")
    assert keys("10.0.0.5", "192.0.2.77") == keys("192.0.2.1")
    assert str(keys.network("10.0.0.5", "192.0.2.77")) == "192.0.2.0/24"
    assert keys("nonsense") is None
    assert keys.network("nonsense") is None


def test_default_settings_key_each_ipv4_host() -> None:
    settings = ClientIPSettings()
    assert client_ip_key("192.0.2.1", None, settings) != client_ip_key("192.0.2.2", None, settings)
    assert client_ip_key("::ffff:192.0.2.1", None, settings) == client_ip_key(
        "192.0.2.1", None, settings
    )


@given(
    st.ip_addresses(v=4),
    st.integers(min_value=0, max_value=32),
    st.integers(min_value=0, max_value=255),
)
def test_same_prefix_same_key(addr: ipaddress.IPv4Address, bits: int, noise: int) -> None:
    keys = ClientIPKeys(ClientIPSettings(ipv4_prefix_length=bits))
    host_bits = 32 - bits
    other = ipaddress.IPv4Address(int(addr) ^ (noise & ((1 << host_bits) - 1)))
    assert keys(str(addr)) == keys(str(other))
