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
The password is read from ``passwordFile`` when the client is built; TLS uses the
system trust store or ``caFile``. Concurrency: used from one event loop.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

import redis.asyncio as aioredis

from limpet.affinity import SessionStoreSettings
from limpet.affinity.plan.model import split_address
from limpet.proxy.session.store import Batch


class RedisStore:
    """:class:`~limpet.proxy.session.store.SessionStore` over one Redis connection pool."""

    def __init__(self, settings: SessionStoreSettings) -> None:
        host, port = split_address("sessionStore.address", settings.address)
        password = None
        if settings.password_file is not None:
            password = Path(settings.password_file).read_text().strip() or None
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
            username=settings.username,
            password=password,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            retry_on_timeout=False,
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
