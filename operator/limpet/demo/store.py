"""The shared session store of the demo's second StickyService, as the report shows it.

Data flow: :meth:`StoreWatch.sample` (a worker thread, once a second during the run)
GETs ``/v1/stats`` from each of that service's proxies (their admin port, with the
admin token from the operator's Secret) and keeps each proxy's ``sessionStore`` figures
and migrations; a sample counts as "up" when every proxy reports the store reachable.
:meth:`StoreWatch.finish` adds the StickyService's ``ReplicasAgree`` condition and
what ``redis-server`` itself holds under the service's key prefix (redis-py with the
password: learned-key entries and per-backend live-session sets). The result is a
:class:`StoreState`, for the report and ``summary.json``.

Synchronous (``urllib`` and redis-py's blocking client, bounded by short timeouts);
called from one worker thread at a time. Traffic goes to the proxies' checked pod IPs
and the Redis pod's checked IP only.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from limpet.devcluster.redis import RedisEndpoint

KEY_FIGURES = (
    "keyReads",
    "keyClaims",
    "keyMoves",
    "keyConfirms",
    "keyAdopted",
    "keyLost",
    "keyFailures",
    "keyCorrupt",
    "keyForeign",
)
"""The per-replica learned-key counters of ``/v1/stats`` (docs/affinity.md)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreState:
    address: str
    proxies: int
    samples: int
    """Times every proxy's stats were read during the run."""
    samples_up: int
    """Of those, the times every proxy reported the store reachable (``up`` 1)."""
    fallbacks: int
    """Write-backs or key calls that failed over to local tables, summed over proxies."""
    keys: Mapping[str, int]
    """The learned-key counters (:data:`KEY_FIGURES`), summed over the proxies."""
    proxy_moves: Mapping[str, int]
    """The proxies' own migration counters by reason, summed (each move is counted by
    the replica that made it)."""
    replicas_agree: str
    """The StickyService's ``ReplicasAgree`` condition: ``True (SessionStore)``."""
    learned_keys: int
    """Learned-key entries in ``redis-server`` under the service's prefix at the end."""
    live_sets: int
    """Per-backend live-session sets there."""
    errors: Sequence[str] = ()

    @property
    def up(self) -> bool:
        return self.samples > 0 and self.samples_up == self.samples and self.fallbacks == 0


@dataclass(slots=True)
class StoreWatch:
    endpoint: RedisEndpoint
    key_prefix: str
    admin_urls: Sequence[str]
    """``http://<pod IP>:<admin port>`` of each proxy of the service."""
    token: str = field(repr=False)
    samples: int = 0
    samples_up: int = 0
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def sample(self) -> None:
        ups = []
        for url in self.admin_urls:
            try:
                stats = self._stats(url)
            except (OSError, ValueError) as exc:
                self._error(f"{url}: {exc}")
                ups.append(0)
                continue
            self.last[url] = stats
            ups.append(int((stats.get("sessionStore") or {}).get("up", 0)))
        self.samples += 1
        self.samples_up += int(all(ups) and len(ups) > 0)

    def _stats(self, url: str) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{url}/v1/stats", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=2) as resp:
            doc = json.loads(resp.read())
        if not isinstance(doc, dict):
            raise ValueError("not a stats object")
        return doc

    def _error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text[:200])

    def _in_store(self) -> tuple[int, int]:
        client = redis.Redis(
            host=self.endpoint.host,
            port=self.endpoint.port,
            password=self.endpoint.password,
            socket_timeout=3,
            socket_connect_timeout=3,
        )
        try:
            learned = sum(1 for _ in client.scan_iter(match=f"{self.key_prefix}k:*", count=500))
            live = sum(1 for _ in client.scan_iter(match=f"{self.key_prefix}live:*", count=500))
        finally:
            client.close()
        return learned, live

    def finish(self, conditions: Sequence[Mapping[str, Any]]) -> StoreState:
        agree = next((c for c in conditions if c.get("type") == "ReplicasAgree"), {})
        try:
            learned, live = self._in_store()
        except redis.RedisError as exc:
            self._error(f"redis-server: {exc}")
            learned = live = -1
        stores = [s.get("sessionStore") or {} for s in self.last.values()]
        keys: Counter[str] = Counter()
        moves: Counter[str] = Counter()
        for stats in self.last.values():
            moves.update({k: int(v) for k, v in (stats.get("migrations") or {}).items()})
        for store in stores:
            keys.update({k: int(store.get(k, 0)) for k in KEY_FIGURES})
        return StoreState(
            address=self.endpoint.address,
            proxies=len(self.admin_urls),
            samples=self.samples,
            samples_up=self.samples_up,
            fallbacks=sum(int(s.get("fallbacks", 0)) for s in stores),
            keys=dict(keys),
            proxy_moves={k: v for k, v in moves.items() if v},
            replicas_agree=f"{agree.get('status', '?')} ({agree.get('reason', '-')})",
            learned_keys=learned,
            live_sets=live,
            errors=tuple(self.errors),
        )
