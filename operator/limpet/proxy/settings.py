"""Engine settings: listeners, timeouts, limits and trusted proxies, in one frozen object.

Data flow: ``command.py`` parses the command line into a :class:`ProxySettings`; ``app.py``
hands it to the server, the upstream pool and (with ``--workers N``) serialises it to every
worker process with :meth:`ProxySettings.to_json` / :meth:`ProxySettings.from_json`.
Nothing here does I/O; the object is immutable and shared freely between coroutines.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint. ``parse`` accepts ``HOST:PORT``, ``[V6]:PORT`` and ``:PORT``."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, default_host: str = "0.0.0.0") -> Address:
        text = text.strip()
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            ipaddress.IPv6Address(host)  # raises ValueError on nonsense
        elif ":" in host:
            raise ValueError(f"IPv6 addresses need brackets: {text!r}")
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range in {text!r}")
        return cls(host or default_host, port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _frozen_map(items: Mapping[Address, Address] | None = None) -> Mapping[Address, Address]:
    return MappingProxyType(dict(items or {}))


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxySettings:
    """Everything the engine needs. Timeouts are seconds, sizes are bytes.

    ``max_connections`` is per worker process. ``address_override`` maps a backend's plan
    address to the address actually dialled; only tests and the local demo set it, because
    their fake pods are loopback processes.
    """

    listen: Address = Address("0.0.0.0", 8080)
    admin_listen: Address = Address("127.0.0.1", 8081)
    workers: int = 1
    # Client side.
    head_timeout: float = 10.0
    idle_timeout: float = 60.0
    # A client that leaves an answer unread: its write buffer must drain within this
    # (nginx's send_timeout, HAProxy's timeout client), or it and its backend are cut.
    send_timeout: float = 60.0
    tunnel_idle_timeout: float = 3600.0
    max_request_line: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    max_connections: int = 10000
    backlog: int = 1024
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # Upstream side.
    connect_timeout: float = 3.0
    response_timeout: float = 60.0
    pool_max_idle: int = 64
    pool_idle_timeout: float = 30.0
    address_override: Mapping[Address, Address] = field(default_factory=_frozen_map)
    # Metrics.
    latency_histogram: bool = True
    # Process level.
    token_file: Path | None = None
    state_dir: Path | None = None
    cookie_key_file: Path | None = None
    # The cyclic garbage collector (process/gc_tuning.py): freeze what start-up left,
    # and the collector's thresholds (None: Python's, 700/10/10).
    gc_freeze: bool = True
    gc_threshold: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        for name in (
            "head_timeout",
            "idle_timeout",
            "send_timeout",
            "tunnel_idle_timeout",
            "connect_timeout",
            "response_timeout",
            "pool_idle_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_request_line", "max_header_bytes", "max_headers", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.pool_max_idle < 0:
            raise ValueError("pool_max_idle must not be negative")
        # Typed as three counts, but from_json builds it from whatever list the JSON held.
        counts: tuple[int, ...] = self.gc_threshold or (1, 1, 1)
        if len(counts) != 3 or not all(t >= 1 for t in counts):
            raise ValueError("gc_threshold must be three positive counts (gen0, gen1, gen2)")

    @property
    def sweep_interval(self) -> float:
        """Tick of the one timer that enforces every timeout (coarse on purpose: no
        per-request timer objects). A deadline fires between ``t`` and ``t + 2 * tick``."""
        shortest = min(
            self.head_timeout,
            self.idle_timeout,
            self.send_timeout,
            self.connect_timeout,
            self.response_timeout,
            self.pool_idle_timeout,
        )
        return min(1.0, max(0.02, shortest / 8))

    def is_trusted(self, peer_ip: str) -> bool:
        if not self.trusted_proxies or not peer_ip:
            return False
        try:
            ip = ipaddress.ip_address(peer_ip.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.trusted_proxies)

    def dial_address(self, host: str, port: int) -> tuple[str, int]:
        if self.address_override:
            target = self.address_override.get(Address(host, port))
            if target is not None:
                return target.host, target.port
        return host, port

    def to_json(self) -> str:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Address):
                value = str(value)
            elif f.name == "trusted_proxies":
                value = [str(n) for n in value]
            elif f.name == "address_override":
                value = {str(k): str(v) for k, v in value.items()}
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return json.dumps(out)

    @classmethod
    def from_json(cls, text: str) -> ProxySettings:
        raw: dict[str, Any] = json.loads(text)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw:
                continue
            value = raw[f.name]
            if f.name in ("listen", "admin_listen"):
                value = Address.parse(value)
            elif f.name == "trusted_proxies":
                value = tuple(ipaddress.ip_network(v) for v in value)
            elif f.name == "address_override":
                value = _frozen_map({Address.parse(k): Address.parse(v) for k, v in value.items()})
            elif f.name in ("token_file", "state_dir", "cookie_key_file"):
                value = None if value is None else Path(value)
            elif f.name == "gc_threshold":
                value = None if value is None else tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)


def load_address_override(path: Path) -> Mapping[Address, Address]:
    """Read the test/demo seam: a JSON object ``{"10.0.0.7:8080": "127.0.0.1:41234"}``."""
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of HOST:PORT -> HOST:PORT")
    return _frozen_map({Address.parse(str(k)): Address.parse(str(v)) for k, v in raw.items()})
