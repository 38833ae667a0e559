"""The session store over the Redis protocol (Redis 7 or Valkey), with redis-py's asyncio
client and its hiredis parser: the process layer's implementation of
:class:`limpet.proxy.session.store.SessionStore`.

Data model: one sorted set per backend, ``<keyPrefix>live:<backend id>``, whose members
are sessions (a mode byte and the session's 64-bit key) scored by their last-seen time.
A flush is a few pipelined round-trips (one per ``CHUNK`` sessions, so that a big batch
never holds the event loop for long, and one for the counts): ``ZADD ... GT`` for every
session seen (a replica with an older last-seen never rewinds a newer one), ``ZREM``
from the backend a session moved away from, then per backend ``ZREMRANGEBYSCORE`` of
sessions idle past ``idleTimeout``, ``ZCARD`` (the distinct live sessions, whichever
replicas saw them) and ``EXPIRE`` (a set nobody writes any more disappears ``idleTimeout
+ ttlSlack`` later).

Learned keys (``limpet.proxy.session.shared_keys``) are plain strings,
``<keyPrefix>k:<member>``, one per session, with a TTL. The slow path of the router reads
one with ``GET``, places one with ``SET NX GET`` (both coalesced with the other calls
of the same loop turn into one pipeline, ``coalesce.py``) (the first writer wins, the others get
its entry back) and moves one with :data:`MOVE` (a compare-and-set on the backend it
leaves). A flush also runs :data:`TOUCH` for each learned key seen: it raises the stored
last-seen time, re-creates an entry the store lost, and leaves an entry that another
replica moved alone. Both are Lua scripts run by the server (``EVALSHA``), so each is
atomic; redis-py loads them once per connection pool. Values of a foreign type, which
only someone with write access to the store can put there, never stop the sharing: a
learned key's entry that is not a string reads as a value that is no entry (the router
counts it corrupt and replaces it, and both scripts remove it first), and a backend's
set that is not a sorted set is removed by the write-back, which then runs again.
Each call is one round-trip
(:attr:`RedisStore.round_trips` counts them), tried once more at once on a connection
that fails (a pooled connection the store's restart left dead), and ends within
``sessionStore.timeout``.
The password is read from ``passwordFile`` on every new connection (a
:class:`FilePassword` credential provider), so a rotated Secret is picked up and a file
that is missing for a while fails only the calls made meanwhile (the caller counts a
fallback and tries again), never the client itself. TLS uses the system trust store or
``caFile``. Concurrency: used from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import stat
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from limpet.affinity import SessionStoreSettings
from limpet.affinity.plan.model import split_address
from limpet.proxy.process.coalesce import Coalescer
from limpet.proxy.session.store import Batch

log = logging.getLogger("limpet.proxy.store")


class FilePassword(CredentialProvider):
    """The password in ``path`` (and ``username``), read afresh for each connection."""

    def __init__(self, path: str, username: str | None) -> None:
        self._path = Path(path)
        self._username = username

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        try:
            password = read_secret(self._path).strip()
        except (OSError, ValueError) as exc:
            raise AuthenticationError(f"sessionStore.passwordFile: {exc}") from exc
        if not password:
            raise AuthenticationError(f"sessionStore.passwordFile {self._path} is empty")
        return (password,) if self._username is None else (self._username, password)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()


MAX_SECRET = 4096
"""The longest password file read (a Redis password is far shorter)."""


def read_secret(path: Path) -> str:
    """A small regular file's text. Anything else is refused without blocking: this runs
    on the event loop, where ``/dev/zero`` would be read without end, and a FIFO would
    wait for a writer on open. Raises :class:`OSError` or :class:`ValueError`."""
    fd = regular_file(path)
    try:
        data = os.read(fd, MAX_SECRET + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET:
        raise ValueError(f"{path} is larger than {MAX_SECRET} bytes")
    return data.decode()


def regular_file(path: str | Path) -> int:
    """An open descriptor of ``path`` if it is a regular file (opened without waiting
    for a FIFO's writer); :class:`ValueError` otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file")
    return fd


NOT_A_STRING = """
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'string' and t ~= 'none' then redis.call('DEL', KEYS[1]) end
"""
"""The scripts' first step: a learned key's entry of another type (a hash, a list: only
someone with write access to the store puts one there) is removed, so the script goes
on as for a lost entry instead of failing on WRONGTYPE forever."""

MOVE = (
    NOT_A_STRING
    + """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) ~= ARGV[1] then return v end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return ARGV[2]
"""
)
"""Replace an entry still on the backend ``ARGV[1]`` (or absent); answer the entry."""

TOUCH = (
    NOT_A_STRING
    + """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[2] .. ' r', 'PX', ARGV[3])
  return 1
end
local b, c, last, r = string.match(v, '^(%S+) (%d+) (%d+)( ?r?)$')
if not b then
  redis.call('SET', KEYS[1], ARGV[2] .. ' r', 'PX', ARGV[3])
  return 1
end
local mine = tonumber(ARGV[4])
if string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  if mine > tonumber(last) then
    redis.call('SET', KEYS[1], b .. ' ' .. c .. ' ' .. ARGV[4] .. r, 'PX', ARGV[3])
    return 1
  end
elseif r == ' r' and mine > tonumber(last) then
  redis.call('SET', KEYS[1], ARGV[2] .. ' r', 'PX', ARGV[3])
  return 1
end
return 0
"""
)
"""A write-back of one key (``ARGV``: backend prefix, entry, TTL in ms, last seen):
raise the last-seen time of an entry still on this backend; restore a lost entry, or a
value that is not an entry (marked `` r``); between restored entries that disagree, the
later last-seen wins (the backend the session's latest request went to). An entry
another replica placed or moved (unmarked) on another backend is left alone."""


NOT_AN_ENTRY = b""
"""What :meth:`RedisStore.get_key` and :meth:`RedisStore.claim_key` answer for a key of
another type than a string: a value that is no entry, which the router counts as corrupt
and replaces (through :data:`MOVE`, which removes the foreign value first)."""

POOL_SIZE = 64
"""Connections per proxy process; calls beyond it queue for one."""

CHUNK = 512
"""Sessions per write-back pipeline."""

FAILURE_LOG_EVERY = 10.0
"""Seconds: by default, at most one learned-key call failure is logged per this interval."""


class RedisStore:
    """:class:`~limpet.proxy.session.store.SessionStore` over one Redis connection pool."""

    def __init__(
        self, settings: SessionStoreSettings, *, failure_log_every: float = FAILURE_LOG_EVERY
    ) -> None:
        host, port = split_address("sessionStore.address", settings.address)
        creds = None
        if settings.password_file is not None:
            creds = FilePassword(settings.password_file, settings.username)
        tls: dict[str, object] = {}
        if settings.ca_file is not None:  # the TLS handshake would open it on the loop
            os.close(regular_file(settings.ca_file))
        if settings.tls:
            tls = {
                "connection_class": aioredis.SSLConnection,
                "ssl_ca_certs": settings.ca_file,
                "ssl_cert_reqs": ssl.CERT_REQUIRED,
                "ssl_check_hostname": settings.tls_server_name is None,
            }
        self._prefix = settings.key_prefix.encode()
        self._address = settings.address
        self._timeout = settings.timeout
        self._answering = True  # the last learned-key call answered (see _call)
        self._log_every = failure_log_every
        self._log_after = 0.0  # monotonic time before which _call logs no failure
        # A bounded pool that makes a burst of concurrent calls wait for a connection
        # (within the call's own timeout) rather than fail or open one each.
        self._pool = aioredis.BlockingConnectionPool(
            max_connections=POOL_SIZE,
            timeout=settings.timeout,
            host=host,
            port=port,
            db=settings.database,
            username=None if creds is not None else settings.username,
            credential_provider=creds,
            # Each call is bounded by its caller (sessionStore.timeout on the request path,
            # one step for a write-back), not per socket read.
            socket_timeout=None,
            socket_connect_timeout=settings.timeout,
            # One retry, at once and only for a connection that fails: after a restart of
            # the store every pooled connection is dead, and redis-py's check at checkout
            # misses some, so without it a burst of calls failed (and routed alone) on
            # them. Otherwise the caller falls back at once and the next interval (or
            # request) is the retry; a dead store is refused twice, a silent one is cut by
            # the call's own timeout.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            **tls,  # type: ignore[arg-type]
        )
        self._redis = aioredis.Redis(connection_pool=self._pool)
        self._move = self._redis.register_script(MOVE)
        self._touch = self._redis.register_script(TOUCH)
        self.round_trips = 0
        self.repaired = 0
        """Backend sets of a foreign type removed by :meth:`flush`."""
        self._batch = Coalescer(self._redis, on_round_trip=self._count_round_trip)

    def _count_round_trip(self) -> None:
        self.round_trips += 1

    def _key(self, backend: str) -> bytes:
        return self._prefix + b"live:" + backend.encode()

    def _entry(self, member: bytes) -> bytes:
        return self._prefix + b"k:" + member

    @contextlib.asynccontextmanager
    async def _call(self, what: str) -> AsyncIterator[None]:
        """One learned-key call, bounded by ``sessionStore.timeout``. The first failure
        after an answer is logged with the time it took (the router counts every one
        and routes that request from its local tables), so that a fallback the
        counters show has its reason in the log; the next answer re-arms the log, at
        most once per ``failure_log_every`` (calls that alternate between failing and
        answering would otherwise log every other one)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except Exception as exc:
            if isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc):
                raise  # a value of another type, which the caller reads as no entry
            if self._answering and started >= self._log_after:
                self._log_after = started + self._log_every
                log.warning(
                    "session store %s: %s failed after %.3f s, routing from local tables: %s: %s",
                    self._address,
                    what,
                    time.monotonic() - started,
                    type(exc).__name__,
                    exc,
                )
            self._answering = False
            raise
        self._answering = True

    async def get_key(self, member: bytes) -> bytes | None:
        try:
            async with self._call("GET"):
                got = await self._batch.call("GET", self._entry(member))
        except ResponseError as exc:
            return _not_an_entry(exc)
        return None if got is None else bytes(got)

    async def claim_key(self, member: bytes, value: bytes, ttl_ms: int) -> bytes | None:
        key = self._entry(member)
        try:
            async with self._call("SET NX"):
                got = await self._batch.call("SET", key, value, "PX", ttl_ms, "NX", "GET", get=True)
        except ResponseError as exc:
            return _not_an_entry(exc)
        return None if got is None else bytes(got)

    async def move_key(self, member: bytes, expect: bytes, value: bytes, ttl_ms: int) -> bytes:
        self.round_trips += 1
        async with self._call("MOVE"):
            got = await self._move(keys=[self._entry(member)], args=[expect, value, ttl_ms])
        return bytes(got)

    async def flush(self, batch: Batch) -> Mapping[str, int]:
        """The batch in pipelines of at most ``CHUNK`` sessions each (so that packing a
        big batch never holds the event loop for long), then the counts in one more.

        A backend's set that is not a sorted set (someone with write access to the store
        put another type there) would fail every write-back with WRONGTYPE, and so keep
        every replica on its own counts for good: it is removed (counted in
        :attr:`repaired`) and the write-back tried once more."""
        try:
            return await self._flush(batch)
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc) or not await self._repair(batch):
                raise
        return await self._flush(batch)

    async def _repair(self, batch: Batch) -> int:
        """Remove the batch's backend sets that are not sorted sets; how many there were."""
        names = {self._key(b) for b in batch.backends}
        names.update(self._key(t.moved_from) for t in batch.touches if t.moved_from)
        names.update(self._key(t.backend) for t in batch.touches)
        ordered = sorted(names)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in ordered:
                pipe.type(name)
            kinds = await pipe.execute()
        foreign = [n for n, k in zip(ordered, kinds, strict=True) if k not in (b"zset", b"none")]
        if foreign:
            await self._redis.delete(*foreign)
            self.repaired += len(foreign)
            log.warning("session store: removed %d backend set(s) of a foreign type", len(foreign))
        self.round_trips += 1 + bool(foreign)
        return len(foreign)

    async def _flush(self, batch: Batch) -> Mapping[str, int]:
        keys, touches = batch.keys, batch.touches
        for start in range(0, max(len(keys), len(touches)), CHUNK):
            async with self._redis.pipeline(transaction=False) as pipe:  # reset on any exit
                for entry in keys[start : start + CHUNK]:
                    last = entry.value.rsplit(b" ", 1)[1]
                    args = (entry.backend_prefix, entry.value, entry.ttl_ms, last)
                    await self._touch(keys=[self._entry(entry.member)], args=args, client=pipe)
                for t in touches[start : start + CHUNK]:
                    pipe.zadd(self._key(t.backend), {t.member: t.last_seen}, gt=True)
                    if t.moved_from is not None:
                        pipe.zrem(self._key(t.moved_from), t.member)
                await pipe.execute()
            self.round_trips += 1
        async with self._redis.pipeline(transaction=False) as pipe:
            for b in batch.backends:
                k = self._key(b)
                if batch.live_since is not None:
                    pipe.zremrangebyscore(k, "-inf", f"({batch.live_since}")
                pipe.zcard(k)
                pipe.expire(k, batch.ttl)
            results = await pipe.execute()
        self.round_trips += 1
        per = 3 if batch.live_since is not None else 2
        return {b: int(results[i * per + per - 2]) for i, b in enumerate(batch.backends)}

    async def close(self) -> None:
        await self._batch.close()
        await self._redis.aclose()
        await self._pool.aclose()


def _not_an_entry(exc: ResponseError) -> bytes:
    """A WRONGTYPE reply as :data:`NOT_AN_ENTRY`; any other error is the store failing."""
    if "WRONGTYPE" in str(exc):
        return NOT_AN_ENTRY
    raise exc
