"""Session keys from requests: the stable hash of the key a request carries for each
affinity mode (header, query parameter, app cookie, client IP).

Data flow: :class:`RequestKeys` is compiled from a plan's affinity settings, together with
the rest of the routing snapshot (``snapshot.py``); per request the router asks
:meth:`RequestKeys.hash` for each mode in the plan's order and takes the first key found.
The hash is the affinity core's ``key_hash(value_key(mode, value))``: each mode's key
prefix is precomputed, so the hot path hashes one concatenation. The LB cookie is not
handled here: its session is in the signed cookie (``cookies.py``).

Concurrency: built off the event loop (in ``SessionRouter.prepare``), then used from the event
loop only. Its one mutable part is a bounded memo of client-IP hashes per peer address
(when no trusted proxies are configured, the key depends on the peer alone); it starts
empty with every plan and is cleared when full.
"""

from __future__ import annotations

from typing import Final

from limpet.affinity import AffinitySettings, AffinityType, ClientIPKeys, key_hash, value_key
from limpet.proxy.engine.port import RequestView

_XFF: Final = b"x-forwarded-for"


class RequestKeys:
    """The key hash a request carries for a mode, or ``None`` (see the module docstring)."""

    __slots__ = (
        "_peers",
        "app_key",
        "app_prefix",
        "client_ip",
        "header_key",
        "header_lower",
        "peer_memo",
        "query_key",
        "query_probe",
        "trusted",
    )

    def __init__(self, affinity: AffinitySettings, *, peer_memo: int) -> None:
        a = affinity
        app_name = a.app_cookie_name.encode() if a.app_cookie_name else None
        self.app_prefix = app_name + b"=" if app_name else None
        self.header_lower = a.header_name.lower().encode() if a.header_name else None
        # Key prefixes of the affinity core's per-mode keys (value_key(mode, v) is
        # prefix + v), so the hot path hashes one concatenation.
        self.header_key = value_key(AffinityType.HEADER, b"")
        self.query_key = value_key(AffinityType.QUERY, b"")
        self.app_key = value_key(AffinityType.APP_COOKIE, b"")
        self.query_probe = a.query_name.encode() + b"=" if a.query_name else None
        self.client_ip = ClientIPKeys(a.client_ip)
        self.trusted = bool(a.client_ip.trusted_proxies)
        self.peer_memo = peer_memo
        self._peers: dict[str, int] = {}

    def hash(self, mode: AffinityType, req: RequestView) -> int | None:
        """The hash of the session key ``req`` carries for ``mode``, if any."""
        if mode is AffinityType.CLIENT_IP:
            return self.client_ip_hash(req)
        if mode is AffinityType.HEADER:
            want = self.header_lower
            if want is None:
                return None
            size = len(want)
            for name, value in req.headers:
                if len(name) == size and name.lower() == want:
                    value = value.strip()
                    return key_hash(self.header_key + value) if value else None
            return None
        if mode is AffinityType.QUERY:
            probe = self.query_probe
            target = req.target
            q = target.find(b"?")
            if probe is None or q < 0:
                return None
            for part in target[q + 1 :].split(b"&"):
                if part.startswith(probe) and len(part) > len(probe):
                    return key_hash(self.query_key + part[len(probe) :])
            return None
        if mode is AffinityType.APP_COOKIE:
            app = self.app_value(req.cookie)
            return None if app is None else self.app_hash(app)
        return None

    def app_value(self, cookie: bytes | None) -> bytes | None:
        """The app cookie's (first, non-empty) value in a Cookie header, if any."""
        prefix = self.app_prefix
        # ``find``: ``prefix not in cookie`` first tries a bytes operand as an integer,
        # a TypeError raised and cleared (about 2 000 instructions on Python 3.11).
        if prefix is None or cookie is None or cookie.find(prefix) < 0:
            return None
        for part in cookie.split(b";"):
            part = part.strip()
            if part.startswith(prefix):
                return part[len(prefix) :].strip(b'"') or None
        return None

    def app_hash(self, value: bytes) -> int:
        """The session key hash of an app-cookie value."""
        return key_hash(self.app_key + value)

    def client_ip_hash(self, req: RequestView) -> int | None:
        """The client-IP key's hash: the peer, or X-Forwarded-For behind trusted proxies."""
        peer = req.peer_ip
        if not self.trusted:
            h = self._peers.get(peer)
            if h is not None:
                return h
        xff: str | None = None
        if self.trusted:
            found = [v for n, v in req.headers if len(n) == 15 and n.lower() == _XFF]
            if found:
                xff = b",".join(found).decode("latin-1")
        key = self.client_ip(peer, xff)
        if key is None:
            return None
        h = key_hash(key)
        if not self.trusted:
            if len(self._peers) >= self.peer_memo:
                self._peers.clear()
            self._peers[peer] = h
        return h
