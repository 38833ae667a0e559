"""The session store over the Redis protocol (Redis 7 or Valkey), with redis-py's asyncio
client and its hiredis parser: the process layer's implementation of
:class:`limpet.proxy.session.store.SessionStore`.

Data model: one sorted set per backend, ``<keyPrefix>live:<backend id>``, whose members
are sessions (a mode byte and the session's 64-bit key) scored by their last-seen time.
A flush is one pipelined round-trip: ``ZADD ... GT`` for every session seen (a replica
with an older last-seen never rewinds a newer one), ``ZREM`` from the backend a session
moved away from, then per backend ``ZREMRANGEBYSCORE`` of sessions idle past
``idleTimeout``, ``ZCARD`` (the distinct live sessions, whichever replicas saw them) and
``EXPIRE`` (a set nobody writes any more disappears ``idleTimeout + ttlSlack`` later).
The password is read from ``passwordFile`` on every new connection (a
:class:`FilePassword` credential provider), so a rotated Secret is picked up and a file
that is missing for a while fails only the calls made meanwhile (the caller counts a
fallback and tries again), never the client itself. TLS uses the system trust store or
``caFile``. Concurrency: used from one event loop.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider
from redis.exceptions import AuthenticationError

from limpet.affinity import SessionStoreSettings
from limpet.affinity.plan.model import split_address
from limpet.proxy.session.store import Batch


class FilePassword(CredentialProvider):
    """The password in ``path`` (and ``username``), read afresh for each connection."""

    def __init__(self, path: str, username: str | None) -> None:
        self._path = Path(path)
        self._username = username

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        try:
            password = self._path.read_text().strip()
        except OSError as exc:
            raise AuthenticationError(f"sessionStore.passwordFile: {exc}") from exc
        if not password:
            raise AuthenticationError(f"sessionStore.passwordFile {self._path} is empty")
        return (password,) if self._username is None else (self._username, password)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()


class RedisStore:
    """:class:`~limpet.proxy.session.store.SessionStore` over one Redis connection pool."""

    def __init__(self, settings: SessionStoreSettings) -> None:
        host, port = split_address("sessionStore.address", settings.address)
        creds = None
        if settings.password_file is not None:
            creds = FilePassword(settings.password_file, settings.username)
        tls: dict[str, object] = {}
        if settings.tls:
            tls = {
                "ssl": True,
                "ssl_ca_certs": settings.ca_file,
                "ssl_cert_reqs": ssl.CERT_REQUIRED,
                "ssl_check_hostname": settings.tls_server_name is None,
            }
        self._prefix = settings.key_prefix.encode()
        self._redis = aioredis.Redis(
            host=host,
            port=port,
            db=settings.database,
            username=None if creds is not None else settings.username,
            credential_provider=creds,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            # No retries inside a call: the caller falls back at once and the next
            # interval (or request) is the retry, so a dead store never stalls anything.
            retry=Retry(NoBackoff(), 0),
            **tls,  # type: ignore[arg-type]
        )
        self.round_trips = 0

    def _key(self, backend: str) -> bytes:
        return self._prefix + b"live:" + backend.encode()

    async def flush(self, batch: Batch) -> Mapping[str, int]:
        pipe = self._redis.pipeline(transaction=False)
        for t in batch.touches:
            pipe.zadd(self._key(t.backend), {t.member: t.last_seen}, gt=True)
            if t.moved_from is not None:
                pipe.zrem(self._key(t.moved_from), t.member)
        for b in batch.backends:
            k = self._key(b)
            if batch.live_since is not None:
                pipe.zremrangebyscore(k, "-inf", f"({batch.live_since}")
            pipe.zcard(k)
            pipe.expire(k, batch.ttl)
        results = await pipe.execute()
        self.round_trips += 1
        per = 3 if batch.live_since is not None else 2
        tail = results[len(results) - per * len(batch.backends) :]
        return {b: int(tail[i * per + per - 2]) for i, b in enumerate(batch.backends)}

    async def close(self) -> None:
        await self._redis.aclose()
