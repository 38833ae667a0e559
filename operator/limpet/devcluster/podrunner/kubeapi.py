"""A small asyncio Kubernetes API client for the pod runner (aiohttp, client certificates).

Data flow: a kubeconfig (the runner's node identity) in; :class:`KubeApi` sends JSON
requests (``get``, ``create``, ``patch``, ``delete``) and streams watch events
(:meth:`list_watch`: a list, then a watch from its resourceVersion, re-listing on 410
Gone). Certificates embedded in the kubeconfig are written to a private folder because
``ssl`` loads client certificates from files only.

One event loop owns a client; close it with :meth:`close`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml

JsonObj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:400]}")
        self.status = status


def _ssl_context(kubeconfig: Path, secrets_dir: Path) -> tuple[str, ssl.SSLContext]:
    config = yaml.safe_load(kubeconfig.read_text())
    contexts = {c["name"]: c["context"] for c in config["contexts"]}
    context = contexts[config["current-context"]]
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = secrets_dir / "ca.crt"
    cert = secrets_dir / "client.crt"
    key = secrets_dir / "client.key"
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
    key.touch(mode=0o600)
    key.write_bytes(base64.b64decode(user["client-key-data"]))
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return str(cluster["server"]).rstrip("/"), ctx


class KubeApi:
    def __init__(self, kubeconfig: Path, *, secrets_dir: Path) -> None:
        self.server, self._ssl = _ssl_context(kubeconfig, secrets_dir)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=16)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: object | None = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        seconds: float = 15.0,
    ) -> JsonObj:
        data = None if body is None else json.dumps(body)
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        async with self._http().request(
            method,
            self.server + path,
            data=data,
            params=dict(query or {}),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise ApiError(resp.status, method, path, text)
            return json.loads(text) if text else {}

    async def get(self, path: str) -> JsonObj | None:
        """The object, or None if it does not exist."""
        try:
            return await self.request("GET", path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def create(self, path: str, body: JsonObj) -> JsonObj:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, body: JsonObj) -> JsonObj:
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def delete(self, path: str, body: JsonObj | None = None) -> bool:
        """Whether the object was there to delete."""
        try:
            await self.request("DELETE", path, body=body)
        except ApiError as e:
            if e.status in (404, 409):
                return False
            raise
        return True

    async def list_watch(
        self, path: str, *, field_selector: str = ""
    ) -> AsyncIterator[tuple[str, JsonObj]]:
        """``("SYNC", list)`` after each (re-)list, then ``(ADDED|MODIFIED|DELETED, obj)``.

        Runs until cancelled; a broken or expired watch is re-listed after a short pause.
        """
        query = {"fieldSelector": field_selector} if field_selector else {}
        while True:
            try:
                listed = await self.request("GET", path, query=query)
                yield "SYNC", listed
                version = listed["metadata"]["resourceVersion"]
                async for kind, obj in self._watch(path, query, version):
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    yield kind, obj
            except (TimeoutError, aiohttp.ClientError, ApiError, ValueError):
                await asyncio.sleep(0.5)

    async def _watch(
        self, path: str, query: Mapping[str, str], version: str
    ) -> AsyncIterator[tuple[str, JsonObj]]:
        params = {
            **query,
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
        }
        async with self._http().get(
            self.server + path,
            params=params,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=330),
        ) as resp:
            if resp.status >= 300:
                raise ApiError(resp.status, "WATCH", path, await resp.text())
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind = event.get("type", "")
                if kind == "ERROR":
                    return  # 410 Gone and friends: re-list
                if kind == "BOOKMARK":
                    continue
                yield kind, event["object"]
