"""Fake pods as Linux network namespaces with real pod IPs (needs root and iproute2).

Data flow: :meth:`NetnsPodNetwork.create` sweeps what dead runs left behind,
then, under a machine-wide lock, picks a /24 from 10.200.0.0/13 that nothing
on the host routes, records it with its owner in ``/run/limpet/fakepods``, and
creates a bridge ``lp<run>br`` holding the subnet's first address in the root
namespace. Each :meth:`attach` makes a namespace ``limpet-<run>-<n>`` and a
veth pair (``eth0`` inside, ``lp<run>v<n>`` on the bridge) and gives ``eth0``
the next free pod IP. The root namespace then reaches every pod IP through the
bridge (a connected route: no forwarding, no default route inside the pods, so
nothing can leave through them), and the pods reach the root namespace at the
bridge address.

Safety: :meth:`verify` proves an address is ours before anyone uses it: the
namespace is one this run created, its ``eth0`` holds exactly that address,
and the root namespace routes the address straight onto our bridge.

Failures: :meth:`set_link` takes a pod's link down (peers see no route to
host); :meth:`set_blackhole` makes the pod silently drop its replies to the
root namespace (peers see a hang), using a route inside the namespace only.

Clean-up: :meth:`close` (also registered with ``atexit``) kills what runs in
the namespaces and deletes them and the bridge. :func:`sweep_stale` removes the
namespaces, bridges and records of runs whose owner process is gone; it runs
at every :meth:`create`, under the lock, so concurrent runs never touch each
other's state.

One thread uses a network at a time.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import fcntl
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from limpet.devcluster import hostnet
from limpet.devcluster.errors import FakePodError
from limpet.devcluster.ownership import (
    current_owner,
    is_alive,
    read_record,
    wait_gone,
    write_record,
)
from limpet.devcluster.podslot import Endpoint, Mode, PodSlot

STATE_DIR = Path("/run/limpet/fakepods")
POD_SUBNET_POOL = ipaddress.IPv4Network("10.200.0.0/13")
NETNS_PREFIX = "limpet-"
POD_IFACE = "eth0"
_RUN_ID = re.compile(r"^[0-9a-f]{6}$")
_NETNS_NAME = re.compile(r"^limpet-([0-9a-f]{6})-\d+$")
_BRIDGE_NAME = re.compile(r"^lp([0-9a-f]{6})br$")


def netns_unavailable_reason() -> str | None:
    """None if this process can create network namespaces, else why not."""
    if os.geteuid() != 0:
        return "not running as root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"{NETNS_PREFIX}probe-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        hostnet.ip("netns", "add", probe)
    except (FakePodError, OSError, subprocess.SubprocessError) as e:
        return f"`ip netns add` does not work here: {e}"
    hostnet.ip("netns", "delete", probe, check=False)
    return None


@contextlib.contextmanager
def _machine_lock(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / ".lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def list_netns() -> list[str]:
    """The names of the machine's network namespaces (``ip netns list``)."""
    return [line.split()[0] for line in hostnet.ip("netns", "list").splitlines() if line.strip()]


def _kill_and_delete_netns(name: str) -> None:
    # A namespace lives on while processes hold it: kill them before deleting it, and
    # wait for them to be gone, so nobody sees a pod process outlive its clean-up.
    killed = []
    for pid in hostnet.ip("netns", "pids", name, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))
    wait_gone(killed, timeout=5.0)
    hostnet.ip("netns", "delete", name, check=False)


def _live_runs(state_dir: Path) -> tuple[set[str], list[ipaddress.IPv4Network]]:
    live: set[str] = set()
    subnets: list[ipaddress.IPv4Network] = []
    for path in state_dir.glob("*.json"):
        record = read_record(path)
        if record is not None and is_alive(record[0]):
            live.add(path.stem)
            with contextlib.suppress(KeyError, ValueError):
                subnets.append(ipaddress.IPv4Network(str(record[1]["subnet"])))
    return live, subnets


def sweep_stale(state_dir: Path = STATE_DIR) -> list[str]:
    """Delete the namespaces, bridges and records of dead runs; returns what went.

    Call with the machine lock held (``create`` does).
    """
    removed: list[str] = []
    live, _ = _live_runs(state_dir)
    for name in list_netns():
        m = _NETNS_NAME.match(name)
        if m and m.group(1) not in live:
            _kill_and_delete_netns(name)
            removed.append(name)
    for link in hostnet.ip_json("link", "show", "type", "bridge"):
        m = _BRIDGE_NAME.match(link.get("ifname", ""))
        if m and m.group(1) not in live:
            hostnet.ip("link", "delete", link["ifname"], check=False)
            removed.append(link["ifname"])
    for path in state_dir.glob("*.json"):
        if path.stem not in live and _RUN_ID.match(path.stem):
            path.unlink(missing_ok=True)
    return removed


class NetnsPodNetwork:
    """One run's pod subnet, bridge and namespaces."""

    def __init__(
        self,
        *,
        run_id: str,
        subnet: ipaddress.IPv4Network,
        state_dir: Path = STATE_DIR,
    ) -> None:
        self.run_id = run_id
        self.subnet = subnet
        hosts = list(subnet.hosts())
        self.gateway = str(hosts[0])
        self.bridge = f"lp{run_id}br"
        self._state_path = state_dir / f"{run_id}.json"
        # First in, first out: a freed address is reused as late as possible.
        self._free = collections.deque(str(h) for h in hosts[1:])
        self._next_index = 0
        self._slots: dict[str, PodSlot] = {}  # by netns name
        self._closed = False

    @property
    def mode(self) -> Mode:
        return "netns"

    @classmethod
    def create(cls, *, state_dir: Path = STATE_DIR) -> NetnsPodNetwork:
        run_id = secrets.token_hex(3)
        with _machine_lock(state_dir):
            sweep_stale(state_dir)
            _, taken = _live_runs(state_dir)
            pool = list(POD_SUBNET_POOL.subnets(new_prefix=24))
            random.shuffle(pool)
            subnet = hostnet.first_unrouted(pool, taken=taken)
            if subnet is None:
                raise FakePodError(f"no free /24 left in {POD_SUBNET_POOL} on this host")
            # The record goes first: a crash from here on leaves state the sweeper finds.
            write_record(state_dir / f"{run_id}.json", current_owner(), subnet=str(subnet))
            net = cls(run_id=run_id, subnet=subnet, state_dir=state_dir)
            atexit.register(net.close)
            try:
                # A fixed MAC: by default a bridge takes its lowest port's MAC and changes it
                # (flushing every neighbour entry) as pods come and go.
                mac = "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
                hostnet.ip("link", "add", net.bridge, "address", mac, "type", "bridge")
                hostnet.ip("addr", "add", f"{net.gateway}/{subnet.prefixlen}", "dev", net.bridge)
                hostnet.ip("link", "set", net.bridge, "up")
            except BaseException:
                net.close()
                raise
        return net

    def attach(
        self, pod: str, port: int, *, within: ipaddress.IPv4Network | None = None
    ) -> PodSlot:
        """A new namespace for ``pod``; ``within`` limits its address (a node's pod CIDR)."""
        if self._closed:
            raise FakePodError("the pod network is closed")
        free = [a for a in self._free if within is None or ipaddress.IPv4Address(a) in within]
        if not free:
            raise FakePodError(f"pod subnet {within or self.subnet} is full")
        index = self._next_index
        self._next_index += 1
        ns = f"{NETNS_PREFIX}{self.run_id}-{index}"
        host_link = f"lp{self.run_id}v{index}"
        address = free[0]
        self._free.remove(address)
        slot = PodSlot(
            pod=pod,
            address=address,
            port=port,
            bind=(address, port),
            connect=(address, port),
            netns=ns,
            host_link=host_link,
        )
        self._slots[ns] = slot
        try:
            self._forget_neighbour(address)
            hostnet.ip("netns", "add", ns)
            hostnet.ip(
                "link", "add", host_link, "type", "veth", "peer", "name", POD_IFACE, "netns", ns
            )
            hostnet.ip("link", "set", host_link, "master", self.bridge, "up")
            hostnet.ip(
                "-n", ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", POD_IFACE
            )
            hostnet.ip("-n", ns, "link", "set", POD_IFACE, "up")
            hostnet.ip("-n", ns, "link", "set", "lo", "up")
            self.verify(slot)
        except BaseException:
            self.detach(slot)
            raise
        return slot

    def detach(self, slot: PodSlot) -> None:
        if slot.netns is None or self._slots.pop(slot.netns, None) is None:
            return
        _kill_and_delete_netns(slot.netns)
        if slot.host_link is not None:
            # Deleting the namespace destroys the pair; this only catches a half-made one.
            hostnet.ip("link", "delete", slot.host_link, check=False)
        self._forget_neighbour(slot.address)
        self._free.append(slot.address)

    def _forget_neighbour(self, address: str) -> None:
        # The root namespace caches the MAC of a pod IP for tens of seconds; a new pod that
        # reuses the address has a new MAC, and packets to the cached one would vanish.
        hostnet.ip("neigh", "flush", "to", address, "dev", self.bridge, check=False)

    def wrap(self, slot: PodSlot, argv: Sequence[str]) -> list[str]:
        if slot.netns is None:
            raise FakePodError(f"{slot.pod} has no network namespace")
        return ["ip", "netns", "exec", slot.netns, *argv]

    def owns(self, address: str) -> bool:
        return any(s.address == address for s in self._slots.values())

    def verify(self, slot: PodSlot) -> None:
        ns = slot.netns
        if ns is None or self._slots.get(ns) != slot:
            raise FakePodError(f"{slot.pod}: namespace {ns!r} was not created by this run")
        if ipaddress.IPv4Address(slot.address) not in self.subnet:
            raise FakePodError(f"{slot.pod}: {slot.address} is outside this run's {self.subnet}")
        held = {
            (a["local"], a["prefixlen"])
            for link in hostnet.ip_json("-n", ns, "-4", "addr", "show", "dev", POD_IFACE)
            for a in link.get("addr_info", [])
        }
        if (slot.address, self.subnet.prefixlen) not in held:
            raise FakePodError(f"{slot.pod}: {slot.address} is not on {POD_IFACE} in {ns}")
        routes = hostnet.ip_json("route", "get", slot.address)
        route = routes[0] if routes else {}
        if route.get("dev") != self.bridge or "gateway" in route:
            raise FakePodError(
                f"{slot.pod}: the root namespace does not route {slot.address} straight to "
                f"bridge {self.bridge} (route: {route})"
            )

    def set_link(self, slot: PodSlot, *, up: bool) -> None:
        """Take the pod's link to the bridge down (or up again)."""
        if slot.host_link is None:
            raise FakePodError(f"{slot.pod} has no link")
        hostnet.ip("link", "set", slot.host_link, "up" if up else "down")

    def set_blackhole(self, slot: PodSlot, *, on: bool) -> None:
        """Make the pod drop, silently, everything it sends to the root namespace."""
        if slot.netns is None:
            raise FakePodError(f"{slot.pod} has no network namespace")
        verb = "add" if on else "delete"
        hostnet.ip("-n", slot.netns, "route", verb, "blackhole", f"{self.gateway}/32")

    def overrides(self) -> dict[Endpoint, Endpoint]:
        return {}

    def close(self) -> None:
        """Kill what runs in our namespaces and delete them, the bridge and the record."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for slot in list(self._slots.values()):
            self.detach(slot)
        # Anything of ours that escaped the bookkeeping (e.g. a crash mid-attach).
        for name in list_netns():
            if name.startswith(f"{NETNS_PREFIX}{self.run_id}-"):
                _kill_and_delete_netns(name)
        hostnet.ip("link", "delete", self.bridge, check=False)
        self._state_path.unlink(missing_ok=True)
