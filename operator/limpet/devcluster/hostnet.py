"""Read-only facts about the host's IPv4 routing, and running ``ip``.

Data flow: ``ip -j`` (or ``/proc/net/route`` where iproute2 is missing) in;
lists of networks out. The fake-pod networks use these facts to pick subnets
that nothing on the host routes yet, so that an address we hand out can only
ever lead into a namespace we made (or, for placeholders, nowhere specific).

Stateless; each call runs a short subprocess. Safe from any thread.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from limpet.devcluster.errors import FakePodError

IPv4Network = ipaddress.IPv4Network


def ip(*args: str, check: bool = True, timeout: float = 10.0) -> str:
    """Run ``ip ARGS``; on failure raise :class:`FakePodError` with its stderr."""
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise FakePodError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def ip_json(*args: str) -> Any:
    out = ip("-j", *args)
    return json.loads(out) if out.strip() else []


def _proc_net_routes() -> list[IPv4Network]:
    nets: list[IPv4Network] = []
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return nets
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        dest = socket.inet_ntoa(struct.pack("<I", int(fields[1], 16)))
        mask = socket.inet_ntoa(struct.pack("<I", int(fields[7], 16)))
        net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        if net.prefixlen > 0:
            nets.append(net)
    return nets


def routed_networks() -> list[IPv4Network]:
    """Every IPv4 destination the host routes or holds, except the default route."""
    if shutil.which("ip") is None:
        return _proc_net_routes()
    nets: list[IPv4Network] = []
    for route in ip_json("-4", "route", "show", "table", "all"):
        dst = route.get("dst", "default")
        if dst == "default":
            continue
        net = ipaddress.ip_network(dst, strict=False)
        if isinstance(net, IPv4Network) and net.prefixlen > 0:
            nets.append(net)
    for link in ip_json("-4", "addr", "show"):
        for addr in link.get("addr_info", []):
            nets.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return nets


def first_unrouted(
    candidates: Iterable[IPv4Network],
    *,
    taken: Sequence[IPv4Network] = (),
) -> IPv4Network | None:
    """The first candidate that overlaps no routed network and nothing in ``taken``."""
    busy = [*routed_networks(), *taken]
    for net in candidates:
        if not any(net.overlaps(other) for other in busy):
            return net
    return None
