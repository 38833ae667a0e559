"""OperatorSettings: every knob of ``limpet operator``, as one frozen value.

Data flow: :mod:`limpet.controller.command` builds it from the command line; the
runtime hands it to each per-StickyService reconciler, the planner, the pusher and the
proxy manager. Nothing reads globals or the environment after start-up. Immutable, so
sharing it between tasks is safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_PROXY_IMAGE = "ghcr.io/limpet-dev/limpet:0.1.0"


@dataclass(frozen=True, slots=True, kw_only=True)
class DebounceSettings:
    """How EndpointSlice bursts become plans (see :mod:`limpet.controller.debounce`).

    A change that arrives when the last plan is older than the current interval is
    planned ``settle`` seconds later (one pod change makes several watch events). A change
    that arrives sooner waits for the interval to pass, and the interval doubles, up to
    ``max_interval``; once changes stop for two intervals it falls back to
    ``min_interval``. A rollout of 50 pods thus gives a handful of plans, and a lone change
    is pushed within milliseconds.
    """

    settle: float = 0.005
    min_interval: float = 0.05
    max_interval: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffSettings:
    """Retry pacing (see :mod:`limpet.controller.model.backoff`): ``initial`` seconds after
    the first failure, doubling up to ``maximum``, each delay jittered by ±50 %."""

    initial: float = 0.1
    maximum: float = 10.0


RETRY = BackoffSettings()
"""Watches and API calls: 0.1 s doubling to 10 s."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PushSettings:
    """Talking to the proxies' admin APIs (see :mod:`limpet.controller.effects.pusher`)."""

    timeout: float = 2.0
    backoff: BackoffSettings = BackoffSettings(initial=0.05, maximum=5.0)
    """A proxy is on the data path: retry it sooner than the API server."""
    stats_interval: float = 2.0
    """How often each proxy's stats are read: sessions for status, and a check that it
    still runs our plan version (a proxy that restarted with an older one gets a re-push)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()
    """Namespaces to serve; empty means cluster-wide."""
    standalone: bool = False
    """No kopf peering (a single operator replica)."""
    peering_name: str = "limpet"
    priority: int = 0
    proxy_image: str = DEFAULT_PROXY_IMAGE
    proxy_replicas: int = 2
    """Managed proxies when spec.proxy.replicas is unset."""
    liveness_endpoint: str | None = None
    debounce: DebounceSettings = field(default_factory=DebounceSettings)
    push: PushSettings = field(default_factory=PushSettings)
    retry: BackoffSettings = RETRY
    """Watches and API calls that failed (a 410 Gone re-lists at once, without it)."""
    restart: BackoffSettings = BackoffSettings(initial=1.0, maximum=60.0)
    """A reconciler that crashed is started again by kopf after this backoff."""
    status_interval: float = 1.0
    """Minimum seconds between routine status writes (those that carry no recovery state)."""
    gone_after: float = 30.0
    """A backend absent from the EndpointSlices stays Failed this long, then Gone."""
    forget_after: float = 3600.0
    """A Gone backend stays in the plan (old cookies fail over, not 'unknown') this long."""
    key_retention_default: float = 86400.0
    """How long an old cookie key stays valid after rotation when absoluteTimeout is unset."""
    admin_address_overrides: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """TEST-ONLY SEAM: proxy pod IP -> ``host:port`` of its admin API. Tests run proxy
    processes on loopback while their EndpointSlices must carry non-loopback pod IPs.
    Empty in production; set only by ``--admin-address-override`` (documented as test-only)."""
