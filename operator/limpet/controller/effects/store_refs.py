"""Are the Secrets that ``spec.sessionStore`` names there, with their keys?

Data flow: :class:`StoreRefs` runs as one of the reconciler's tasks. Every
``CHECK_INTERVAL`` seconds (and at once after :meth:`StoreRefs.recheck`, on a spec
change) it reads the spec through a callable, asks :func:`check_store_refs`, and keeps
the answer in :attr:`StoreRefs.problem` (``None``: all there), calling ``on_change`` when
it changed. Status shows a problem as ``Degraded`` with reason
``SessionStoreSecretMissing`` (:mod:`~limpet.controller.model.sharing`). It is never a
crash and never stops the plan: proxies without the store place sessions from their
local tables.

The operator reads a Secret only to see that the key is present; it keeps no value.
Its ClusterRole already grants ``get`` on Secrets (for its own ``<name>-limpet``
Secret), so this check needs no new permission. A CA in a ConfigMap is not checked
(that would need ``get`` on ConfigMaps, which the operator has no other use for): a
missing one keeps new managed proxy pods from starting, which status shows as
``ProxiesMissing``. A ``403`` is reported as such rather than as "missing".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aiohttp

from limpet.controller.kube.client import SECRETS, ApiError, KubeClient
from limpet.controller.model.spec import KeyRef, SessionStoreSpec, StickySpec

log = logging.getLogger(__name__)

CHECK_INTERVAL = 10.0


async def _check(client: KubeClient, namespace: str, ref: KeyRef, what: str) -> str | None:
    try:
        secret = await client.get(SECRETS.path(namespace, ref.name))
    except ApiError as exc:
        if exc.status == 403:
            return f"{what}: the operator may not read Secret {namespace}/{ref.name} (403)"
        raise
    if secret is None:
        return f"{what}: Secret {namespace}/{ref.name} does not exist"
    data = {**(secret.get("data") or {}), **(secret.get("stringData") or {})}
    if ref.key not in data:
        have = ", ".join(sorted(data)) or "no keys"
        return f"{what}: Secret {namespace}/{ref.name} has no key {ref.key!r} (it has {have})"
    return None


async def check_store_refs(
    client: KubeClient, namespace: str, store: SessionStoreSpec
) -> str | None:
    """What is missing: the first Secret (or key) the store configuration names."""
    refs = [(store.password, "sessionStore.passwordSecretRef")]
    if store.tls.enabled:
        refs.append((store.tls.ca_secret, "sessionStore.tls.caSecretRef"))
    for ref, what in refs:
        if ref is None:
            continue
        message = await _check(client, namespace, ref, what)
        if message is not None:
            return (
                f"{message}; new managed proxy pods cannot start, and proxies without the "
                "password place sessions from their local tables"
            )
    return None


class StoreRefs:
    """The latest answer of :func:`check_store_refs` for one StickyService."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        *,
        spec: Callable[[], StickySpec | None],
        on_change: Callable[[], None],
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._spec = spec
        self._on_change = on_change
        self._wake = asyncio.Event()
        self.problem: str | None = None

    def recheck(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            spec = self._spec()
            store = spec.session_store if spec is not None else None
            try:
                problem = (
                    None
                    if store is None
                    else await check_store_refs(self._client, self._namespace, store)
                )
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("%s: session store Secret check failed: %s", self._namespace, exc)
                problem = self.problem
            if problem != self.problem:
                self.problem = problem
                self._on_change()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=CHECK_INTERVAL)
            self._wake.clear()
