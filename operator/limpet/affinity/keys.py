"""Session keys for every affinity mode: what a request's session key bytes are.

Data flow (proxy, per request): the mode's raw value (cookie session id, app-cookie,
header or query value, or the peer address plus X-Forwarded-For) becomes key bytes here,
then :func:`limpet.affinity.key_hash` and the slot. Each mode's keys carry a one-letter
prefix, so equal values in two modes are two different sessions. Pure functions;
:class:`ClientIPKeys` precomputes its masks and trusted networks once per plan.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from .errors import AffinityError
from .plan.model import AffinityType, ClientIPSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_PREFIX = {
    AffinityType.COOKIE: b"c:",
    AffinityType.APP_COOKIE: b"a:",
    AffinityType.HEADER: b"h:",
    AffinityType.QUERY: b"q:",
    AffinityType.CLIENT_IP: b"i:",
}


def cookie_key(session_id: str | bytes) -> bytes:
    """The key of an LB-cookie session: its opaque session id."""
    raw = session_id.encode("utf-8") if isinstance(session_id, str) else bytes(session_id)
    return b"c:" + raw


def value_key(mode: AffinityType, value: str | bytes) -> bytes:
    """The key of an app-cookie, header or query session: the value itself."""
    if mode is AffinityType.CLIENT_IP:
        raise AffinityError("value_key: use ClientIPKeys for ClientIP affinity")
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    return _PREFIX[mode] + raw


def parse_address(text: str) -> IPAddress | None:
    """An IP address from a peer or X-Forwarded-For entry, or ``None`` if it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:port``, ``::1``, ``[::1]`` and ``[::1]:port``;
    IPv4-mapped IPv6 addresses become IPv4. Zone ids (``%eth0``) are dropped.
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    text = text.partition("%")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: IPAddress, nets: Sequence[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in nets)


def client_address(
    peer: str, forwarded_for: str | None, trusted_proxies: Sequence[IPNetwork]
) -> IPAddress | None:
    """The real client address.

    X-Forwarded-For is believed only when the peer is a trusted proxy; it is then read from
    the right, skipping trusted proxies, and the first untrusted entry is the client (if
    every entry is trusted, the leftmost one). A malformed entry stops the walk at the last
    trusted hop. ``None`` only when the peer itself is not an IP address.
    """
    addr = parse_address(peer)
    if addr is None or not forwarded_for or not trusted_proxies:
        return addr
    if not _trusted(addr, trusted_proxies):
        return addr
    for entry in reversed(forwarded_for.split(",")):
        hop = parse_address(entry)
        if hop is None:
            return addr
        addr = hop
        if not _trusted(hop, trusted_proxies):
            return hop
    return addr


class ClientIPKeys:
    """Client-IP session keys for one plan's settings: ``keys(peer, xff) -> bytes | None``."""

    __slots__ = ("_mask4", "_mask6", "_settings")

    def __init__(self, settings: ClientIPSettings) -> None:
        self._settings = settings
        v4, v6 = settings.ipv4_prefix_length, settings.ipv6_prefix_length
        self._mask4 = ((1 << 32) - 1) ^ ((1 << (32 - v4)) - 1)
        self._mask6 = ((1 << 128) - 1) ^ ((1 << (128 - v6)) - 1)

    def network(self, peer: str, forwarded_for: str | None = None) -> IPNetwork | None:
        """The client's masked network, or ``None`` if no client address can be found."""
        addr = client_address(peer, forwarded_for, self._settings.trusted_proxies)
        if addr is None:
            return None
        if addr.version == 4:
            bits = self._settings.ipv4_prefix_length
            return ipaddress.IPv4Network((int(addr) & self._mask4, bits))
        bits = self._settings.ipv6_prefix_length
        return ipaddress.IPv6Network((int(addr) & self._mask6, bits))

    def __call__(self, peer: str, forwarded_for: str | None = None) -> bytes | None:
        """The session key of a client, or ``None`` if no client address can be found."""
        addr = client_address(peer, forwarded_for, self._settings.trusted_proxies)
        if addr is None:
            return None
        if addr.version == 4:
            masked = (int(addr) & self._mask4).to_bytes(4, "big")
            return b"i:" + masked + bytes((self._settings.ipv4_prefix_length,))
        masked = (int(addr) & self._mask6).to_bytes(16, "big")
        return b"i:" + masked + bytes((self._settings.ipv6_prefix_length,))


def client_ip_key(peer: str, forwarded_for: str | None, settings: ClientIPSettings) -> bytes | None:
    """One-off form of :class:`ClientIPKeys` (build the class once per plan on hot paths)."""
    return ClientIPKeys(settings)(peer, forwarded_for)
