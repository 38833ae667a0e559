"""A small asyncio Kubernetes API client for what the operator does besides kopf's watch.

Data flow: JSON objects in and out over one aiohttp session per :class:`KubeClient`.
Requests: get, list (paged), create, server-side apply, merge patch (optionally of the
``status`` subresource), delete, and :meth:`KubeClient.watch`, an async iterator of watch
events. Errors from the API server become :class:`ApiError` with its HTTP status and the
server's message; 404 on get/delete is a value (``None``/``False``), not an exception.

Why not kopf's client: kopf's is private API. Why not the official library: it is
blocking. Everything here is a plain aiohttp request, so one client serves hundreds of
concurrent watches (one connection each, in their own unbounded pool) while ordinary requests
share a small bounded pool.

Concurrency: one event loop; a client may be used by many tasks at once.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote

import aiohttp

from limpet.controller.kube.config import ClusterConfig

JsonObj = dict[str, Any]
FIELD_MANAGER: Final = "limpet-operator"


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, message: str, *, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Resource:
    """An API resource: group ('' for core), version and plural."""

    group: str
    version: str
    plural: str

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if namespace is not None:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
        return base

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


STICKYSERVICES: Final = Resource("limpet.dev", "v1alpha1", "stickyservices")
ENDPOINTSLICES: Final = Resource("discovery.k8s.io", "v1", "endpointslices")
SERVICES: Final = Resource("", "v1", "services")
SECRETS: Final = Resource("", "v1", "secrets")
DEPLOYMENTS: Final = Resource("apps", "v1", "deployments")
EVENTS: Final = Resource("", "v1", "events")


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
    object: JsonObj


class WatchExpired(Exception):
    """The resourceVersion is too old (410 Gone): list again."""


class KubeClient:
    """Async JSON client bound to one :class:`ClusterConfig`."""

    def __init__(
        self, config: ClusterConfig, *, timeout: float = 30.0, max_connections: int = 16
    ) -> None:
        self._config = config
        self._timeout = timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self._session = self._watch_session = None

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = self._config.ssl_context()
        return self._ssl

    def _http(self) -> aiohttp.ClientSession:
        """Requests: a bounded pool. Each TLS connection costs ~0.3 MiB (asyncio's TLS read
        buffer is 256 KiB), so a burst of hundreds of requests at start-up queues for a
        few connections instead of opening hundreds."""
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl_context(), limit=self._max_connections)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _watch_http(self) -> aiohttp.ClientSession:
        """Watches: one long-lived connection each, never queued behind one another."""
        if self._watch_session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl_context(), limit=0)
            self._watch_session = aiohttp.ClientSession(connector=connector)
        return self._watch_session

    def _headers(
        self, content_type: str | None = None, accept: str = "application/json"
    ) -> dict[str, str]:
        headers = {"Accept": accept}
        auth = self._config.authorization()
        if auth:
            headers["Authorization"] = auth
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> JsonObj:
        data = None if body is None else json.dumps(body).encode()
        async with self._http().request(
            method,
            self._config.server + path,
            params=params,
            data=data,
            headers=self._headers(content_type if data is not None else None, accept),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
        ) as resp:
            payload = await resp.read()
            if resp.status >= 400:
                raise _error(resp.status, payload)
            return json.loads(payload) if payload else {}

    async def get(self, path: str) -> JsonObj | None:
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 500,
    ) -> tuple[list[JsonObj], str]:
        """All items (paged) and the list's resourceVersion, to watch from."""
        items: list[JsonObj] = []
        params: dict[str, str] = {"limit": str(limit)}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        while True:
            page = await self.request("GET", path, params=params)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion", ""))
            params["continue"] = token

    async def create(self, path: str, obj: JsonObj) -> JsonObj:
        return await self.request("POST", path, body=obj, params={"fieldManager": FIELD_MANAGER})

    async def apply(self, path: str, obj: JsonObj, *, force: bool = True) -> JsonObj:
        """Server-side apply ``obj`` at ``path`` (the object's own URL) as our field manager."""
        return await self.request(
            "PATCH",
            path,
            body=obj,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"},
        )

    async def merge_patch(self, path: str, patch: JsonObj) -> JsonObj:
        return await self.request(
            "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )

    async def delete(self, path: str, *, propagation: str = "Background") -> bool:
        try:
            await self.request(
                "DELETE",
                path,
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": propagation,
                },
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def watch(
        self,
        path: str,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        """Events after ``resource_version`` until the server closes the stream.

        Raises :class:`WatchExpired` on 410 so the caller lists again.
        """
        params = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        async with self._watch_http().get(
            self._config.server + path,
            params=params,
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
        ) as resp:
            if resp.status == 410:
                raise WatchExpired(path)
            if resp.status >= 400:
                raise _error(resp.status, await resp.read())
            async for line in _lines(resp.content):
                event = json.loads(line)
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchExpired(path)
                    raise ApiError(int(obj.get("code") or 500), str(obj.get("message")))
                yield WatchEvent(kind, obj)


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Newline-delimited JSON of any length (readline() caps line size)."""
    buf = bytearray()
    async for chunk in stream.iter_any():
        buf.extend(chunk)
        while True:
            cut = buf.find(b"\n")
            if cut < 0:
                break
            line = bytes(buf[:cut])
            del buf[: cut + 1]
            if line.strip():
                yield line
    if buf.strip():
        yield bytes(buf)


def _error(status: int, payload: bytes) -> ApiError:
    try:
        data = json.loads(payload)
        return ApiError(status, str(data.get("message", "")), reason=str(data.get("reason", "")))
    except (ValueError, AttributeError):
        return ApiError(status, payload[:300].decode(errors="replace"))
