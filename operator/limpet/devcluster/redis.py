"""A real ``redis-server`` (Debian's) as a Pod on the pod runner: a session store to test with.

Data flow: :meth:`RedisPod.start` creates a Secret holding a fresh password (key
``password``, the key ``spec.sessionStore.passwordSecretRef`` reads by default) and the
server's whole configuration (key ``redis.conf``: ``requirepass``, port, no
persistence), then a Pod whose one container runs ``redis-server
/etc/limpet-redis/redis.conf`` from the ``busybox`` image (the host's ``PATH``, where
Debian's package installed it), as user 65532, with the Secret mounted read-only, so the
password is never on a command line. The scheduler binds the Pod to one of the pod
runner's Nodes; the runner runs it in a network namespace it created on its pod bridge,
the same bridge as every other Pod, so the proxies' pods reach it. Once the Pod is Ready
(a TCP readiness probe), its IP is accepted only if it lies in its Node's pod CIDR
(:func:`~limpet.devcluster.workloads.node_pod_ip`), and :func:`check_auth` proves at
the socket level that the server answers and refuses a client without the password.
The result is a :class:`RedisEndpoint`: ``host:port`` for ``sessionStore.address``
(the dev cluster has no cluster DNS or Service proxy, so a Pod IP is what pods can
dial; it is stable for the Pod's life, container restarts included) and the Secret's
name for ``passwordSecretRef``.

:meth:`RedisPod.stop` deletes the Pod and waits until the API server no longer has it
(the runner has then stopped the server and deleted its namespace), then the Secret.

Synchronous (the kubernetes client and plain sockets); one owner thread. Traffic goes
only to the Pod's checked IP.
"""

from __future__ import annotations

import functools
import secrets
import socket
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s

from limpet.devcluster.client import gone, request, wait_until
from limpet.devcluster.errors import DevClusterError
from limpet.devcluster.workloads import is_ready, node_pod_ip

CONF_DIR = "/etc/limpet-redis"
PASSWORD_KEY = "password"
CONF_KEY = "redis.conf"
USER = 65532


class RedisPodError(DevClusterError):
    """The Redis Pod did not start, answered wrongly, or did not go away."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisSettings:
    name: str = "limpet-redis"
    """The Pod's and the Secret's name (and the Pod's ``app`` label)."""
    port: int = 6379
    image: str = "busybox"
    ready_timeout: float = 90.0
    stop_timeout: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisEndpoint:
    """Where a running Redis Pod is, and how to authenticate to it."""

    host: str
    port: int
    password: str = field(repr=False)
    secret: str
    """The Secret in the Pod's namespace whose key ``password`` holds the password."""
    pod: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def session_store(self, **options: Any) -> dict[str, Any]:
        """A StickyService ``spec.sessionStore`` for this server (``options`` added)."""
        return {
            "address": self.address,
            "passwordSecretRef": {"name": self.secret, "key": PASSWORD_KEY},
            **options,
        }


def redis_conf(password: str, port: int) -> str:
    # Bound to every address of the Pod's own namespace (its eth0 and loopback only);
    # no snapshot or AOF: the store holds sessions that outlive nothing.
    return (
        f"port {port}\nbind * -::*\nrequirepass {password}\n"
        'save ""\nappendonly no\ndaemonize no\nlogfile ""\ndir /tmp\n'
    )


def manifests(
    namespace: str, settings: RedisSettings, password: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Secret and the Pod (pure)."""
    name = settings.name
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "stringData": {PASSWORD_KEY: password, CONF_KEY: redis_conf(password, settings.port)},
    }
    container = {
        "name": "redis",
        "image": settings.image,
        "command": ["redis-server", f"{CONF_DIR}/{CONF_KEY}"],
        "ports": [{"name": "redis", "containerPort": settings.port}],
        "readinessProbe": {
            "tcpSocket": {"port": settings.port},
            "periodSeconds": 1,
            "timeoutSeconds": 1,
        },
        "volumeMounts": [{"name": "conf", "mountPath": CONF_DIR, "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 5,
            "securityContext": {
                "runAsUser": USER,
                "runAsGroup": USER,
                "runAsNonRoot": True,
                "fsGroup": USER,
            },
            "containers": [container],
            "volumes": [
                {"name": "conf", "secret": {"secretName": name, "defaultMode": 0o440}},
            ],
        },
    }
    return secret, pod


def _command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        raw = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


def _reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise RedisPodError(f"the server closed the connection (got {data!r})")
        data += chunk
    return data.rstrip(b"\r\n")


def check_auth(host: str, port: int, password: str, *, timeout: float = 3.0) -> None:
    """Prove, over a raw socket, that the server is up and password-protected.

    Without the password ``PING`` must be refused with ``NOAUTH``; a wrong password must
    be refused; with it, ``PING`` must answer ``PONG``. Raises :class:`RedisPodError`.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        steps = (
            (("PING",), b"-NOAUTH"),
            (("AUTH", "not-" + password), b"-WRONGPASS"),
            (("AUTH", password), b"+OK"),
            (("PING",), b"+PONG"),
        )
        for args, expected in steps:
            sock.sendall(_command(*args))
            got = _reply(sock)
            if not got.startswith(expected):
                raise RedisPodError(f"{host}:{port}: {args[0]} answered {got!r}, not {expected!r}")


class RedisPod:
    """One Redis Pod and its Secret in ``namespace``; a context manager."""

    def __init__(
        self,
        api: k8s.ApiClient,
        namespace: str,
        *,
        runner_nodes: Collection[str],
        settings: RedisSettings | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.runner_nodes = tuple(runner_nodes)
        self.settings = settings or RedisSettings()
        self.endpoint: RedisEndpoint | None = None
        self._created = False

    def _path(self, kind: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/{kind}/{self.settings.name}"

    def start(self) -> RedisEndpoint:
        s = self.settings
        password = secrets.token_urlsafe(24)
        secret, pod = manifests(self.namespace, s, password)
        self._created = True  # from here on, stop() has something to remove
        base = f"/api/v1/namespaces/{self.namespace}"
        request(self.api, "POST", f"{base}/secrets", body=secret)
        # The ServiceAccount admission plugin refuses a Pod until the namespace's "default"
        # account exists, which the serviceaccount controller makes a moment after the
        # namespace.
        wait_until(
            lambda: not gone(self.api, f"{base}/serviceaccounts/default"),
            s.ready_timeout,
            f"ServiceAccount default in {self.namespace}",
            error=RedisPodError,
        )
        request(self.api, "POST", f"{base}/pods", body=pod)
        try:
            what = f"Redis pod {s.name} to be Ready"
            ready = wait_until(self._ready_pod, s.ready_timeout, what, error=RedisPodError)
        except RedisPodError as exc:
            raise RedisPodError(f"{exc}; its containers: {self._container_states()}") from exc
        try:
            host = node_pod_ip(self.api, ready, self.runner_nodes)
        except DevClusterError as exc:
            raise RedisPodError(str(exc)) from exc
        check_auth(host, s.port, password)
        self.endpoint = RedisEndpoint(
            host=host, port=s.port, password=password, secret=s.name, pod=s.name
        )
        return self.endpoint

    def _ready_pod(self) -> dict[str, Any] | None:
        pod: dict[str, Any] = request(self.api, "GET", self._path("pods"))
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Failed", "Succeeded"):
            raise RedisPodError(f"Redis pod {self.settings.name} ended: {pod.get('status')}")
        return pod if is_ready(pod) else None

    def _container_states(self) -> str:
        pod: dict[str, Any] = request(self.api, "GET", self._path("pods"))
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        return "; ".join(f"{c.get('name')}: {c.get('state')}" for c in statuses) or "none yet"

    def _gone(self, kind: str) -> bool:
        return gone(self.api, self._path(kind))

    def stop(self) -> None:
        """Delete the Pod, wait until it is gone, then delete the Secret; idempotent."""
        if not self._created:
            return
        for kind in ("pods", "secrets"):
            try:
                request(self.api, "DELETE", self._path(kind))
            except k8s.ApiException as e:
                if e.status != 404:
                    raise
            what = f"Redis {kind[:-1]} {self.settings.name} to be deleted"
            wait_until(
                functools.partial(self._gone, kind),
                self.settings.stop_timeout,
                what,
                error=RedisPodError,
            )
        self._created = False
        self.endpoint = None

    def __enter__(self) -> RedisEndpoint:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
