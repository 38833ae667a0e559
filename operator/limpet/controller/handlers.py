"""kopf wiring: which events call what, built into a registry (nothing at import time).

Data flow: :func:`build_registry` binds handlers to a :class:`Runtime` (the shared API
client, HTTP session for the proxies, settings, and the live reconcilers by UID):

- ``@kopf.on.login``: credentials from our :class:`~.kube.config.ClusterConfig`, so kopf
  and our own client always talk to the same cluster as the same user.
- ``@kopf.daemon`` on StickyServices: runs one :class:`~.reconciler.Reconciler` per
  object for as long as it exists and this operator is active (kopf stops daemons when
  the object is deleted, when the operator exits, and when peering pauses it in favour
  of a higher-priority replica). A reconciler that crashes raises ``kopf.TemporaryError``
  with a delay from ``settings.restart`` (:mod:`.model.backoff`), and kopf's daemon
  machinery calls the daemon again after it.
- ``@kopf.on.create`` / ``on.update`` / ``on.resume``: hand the new body (spec and
  annotations, e.g. the key-rotation request) to the object's reconciler.
- ``@kopf.on.delete``: remove what the operator created for the object (Deployment,
  Service, Secret; also garbage-collected through ownerReferences in a real cluster).

EndpointSlices are *not* watched through kopf: kopf watches a resource cluster-wide (or
per namespace) and filters labels client-side, so every EndpointSlice in the cluster
would flow through the operator. Each reconciler instead runs its own watches with a
server-side label selector (see :mod:`.kube.informer` and docs/operator.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf

from limpet.controller.effects.metrics import OperatorMetrics
from limpet.controller.effects.proxies import delete_owned
from limpet.controller.effects.reporter import EventSink
from limpet.controller.kube.client import KubeClient
from limpet.controller.kube.config import ClusterConfig
from limpet.controller.kube.watchhub import WatchHub
from limpet.controller.model import backoff
from limpet.controller.model.settings import OperatorSettings
from limpet.controller.reconciler import Reconciler

GROUP, VERSION, PLURAL = "limpet.dev", "v1alpha1", "stickyservices"
KOPF_PREFIX = "kopf.limpet.dev"
log = logging.getLogger(__name__)


class KopfEvents:
    """Events through kopf's poster (queued, posted in the background, with retries)."""

    def post(self, owner: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        body = kopf.Body(plain(owner))
        kopf.event(body, type=type, reason=reason, message=message[:1000])


@dataclass(slots=True)
class Runtime:
    config: ClusterConfig
    client: KubeClient
    hub: WatchHub
    http: aiohttp.ClientSession
    settings: OperatorSettings
    events: EventSink = field(default_factory=KopfEvents)
    reconcilers: dict[str, Reconciler] = field(default_factory=dict)
    metrics: OperatorMetrics | None = None


def plain(value: Any) -> Any:
    """A deep copy of a kopf body (mapping views) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def connection_info(config: ClusterConfig) -> kopf.ConnectionInfo:
    token = None
    expiration = None
    auth = config.authorization()
    if auth is not None:
        token = auth.split(" ", 1)[1]
        if config.token_refresh is not None:
            # Projected tokens rotate: make kopf log in again (re-reading it) every few minutes.
            expiration = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    return kopf.ConnectionInfo(
        server=config.server,
        ca_path=config.ca_file,
        insecure=not config.verify,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        token=token,
        default_namespace=config.default_namespace,
        expiration=expiration,
    )


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(runtime.config)

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def changed(body: kopf.Body, uid: str, **_: Any) -> None:
        reconciler = runtime.reconcilers.get(uid)
        if reconciler is not None:
            reconciler.update(plain(body))

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def deleted(
        body: kopf.Body, uid: str, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
    ) -> None:
        runtime.reconcilers.pop(uid, None)
        removed = await delete_owned(runtime.client, plain(body))
        if removed:
            logger.info("deleted %s", ", ".join(removed))

    @kopf.daemon(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        cancellation_timeout=10.0,
        errors=kopf.ErrorsMode.TEMPORARY,
    )
    async def reconcile(
        body: kopf.Body, uid: str, stopped: kopf.DaemonStopped, retry: int, **_: Any
    ) -> None:
        reconciler = Reconciler(
            client=runtime.client,
            hub=runtime.hub,
            http=runtime.http,
            settings=runtime.settings,
            events=runtime.events,
            body=plain(body),
            metrics=runtime.metrics,
        )
        runtime.reconcilers[uid] = reconciler
        try:
            await run_until_stopped(reconciler, stopped)
        except Exception as exc:
            # kopf calls the daemon again after the delay (its retry count grows), with
            # the object's newest body: a fresh reconciler recovers from status.
            wait = backoff.delay(runtime.settings.restart, retry)
            log.error("reconciler of %s crashed; restarting in %.1fs", uid, wait, exc_info=exc)
            raise kopf.TemporaryError(f"reconciler crashed: {exc!r}", delay=wait) from exc
        finally:
            if stopped and runtime.reconcilers.get(uid) is reconciler:
                runtime.reconcilers.pop(uid, None)

    return registry


async def run_until_stopped(reconciler: Reconciler, stopped: kopf.DaemonStopped) -> None:
    """Run ``reconciler`` until it returns (its object is gone) or kopf stops the daemon
    (deletion, operator exit, peering pause): then it is cancelled and awaited."""

    async def until_stopped() -> None:
        await stopped.wait()

    task = asyncio.create_task(reconciler.run(), name=f"reconcile:{reconciler.uid}")
    stop = asyncio.create_task(until_stopped())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stop):
            if not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
    if not task.cancelled():
        task.result()  # raises what the reconciler raised


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    ks = kopf.OperatorSettings()
    # The CRD must exist when the operator starts; no cluster-wide CRD/namespace watching.
    ks.scanning.disabled = True
    # kopf ignores changes of annotations under its own storage prefix, so that prefix must
    # differ from ours (limpet.dev/rotate-keys has to trigger on.update).
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    ks.posting.level = logging.INFO
    ks.peering.name = settings.peering_name
    ks.peering.priority = settings.priority
    ks.peering.standalone = settings.standalone
    ks.peering.mandatory = not settings.standalone
    ks.peering.clusterwide = not settings.namespaces
    ks.watching.server_timeout = 300
    ks.watching.client_timeout = 330
    # A stopped reconciler cancels its tasks and closes its watches, which takes a few
    # awaits more than kopf's ten zero-time cycles; without a wait kopf re-checks the
    # daemon only after its cancellation timeout, so every deletion took 10 s.
    ks.background.instant_exit_timeout = 2.0
    return ks
