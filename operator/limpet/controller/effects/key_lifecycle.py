"""One StickyService's keys through their life: load, rotate, prune, save, and their Events.

Data flow: the reconciler calls :meth:`KeyLifecycle.apply` with each new body of the
StickyService, and :meth:`KeyLifecycle.current` before each plan:

- load: the first ``apply`` reads the StickyService's Secret into
  :class:`~limpet.controller.model.keys.KeyMaterial`, creating it when it is missing or
  unreadable (Event ``KeysCreated``), and adopts one of the same name (a re-created
  StickyService's old cookies stay valid);
- rotate: an ``apply`` whose ``limpet.dev/rotate-keys`` annotation differs from the last
  request seen puts a fresh signing key first, retires the older ones an absolute
  timeout later, saves the Secret and posts ``KeysRotated``;
- prune: ``current`` drops retired keys and saves the Secret when it did;
- :meth:`KeyLifecycle.next_retirement` is the next instant ``current`` prunes.

The Secret is the single source of truth (a restarted or a second replica signs with
the same keys). The last rotation request seen comes from status
(``status.keys.rotationRequest``), so a restart does not rotate again.

Concurrency: used by the reconciler's loop only (one caller at a time).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from limpet.controller.effects.proxies import secret_manifest
from limpet.controller.effects.reporter import EventSink
from limpet.controller.kube.client import SECRETS, KubeClient
from limpet.controller.model.keys import (
    KeyMaterial,
    from_secret_data,
    new_material,
    next_retirement,
    prune,
    rotate,
    to_secret_data,
)
from limpet.controller.model.names import secret_name
from limpet.controller.model.spec import StickySpec

ROTATE_ANNOTATION = "limpet.dev/rotate-keys"


class KeyLifecycle:
    def __init__(
        self,
        *,
        client: KubeClient,
        events: EventSink,
        owner_ref: Mapping[str, Any],
        key_retention_default: float,
        recovered: Mapping[str, Any] | None,
    ) -> None:
        self._client = client
        self._events = events
        self._owner_ref = owner_ref
        self._retention_default = key_retention_default
        self.material: KeyMaterial | None = None
        self.rotated_at: float | None = None
        """When this process last rotated (None: not since it started)."""
        self.rotation_request: str | None = ((recovered or {}).get("keys") or {}).get(
            "rotationRequest"
        )
        """The last ``limpet.dev/rotate-keys`` value acted on."""

    async def apply(self, body: Mapping[str, Any], spec: StickySpec, *, now: float) -> KeyMaterial:
        """Load the keys on first sight, and rotate them when the body asks for it."""
        if self.material is None:
            self.material = await self._load(body, now=now)
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        request = annotations.get(ROTATE_ANNOTATION)
        if request and request != self.rotation_request:
            retention = spec.affinity.absolute_timeout or self._retention_default
            self.material = rotate(self.material, now=now, retention=retention)
            await self._save(body, self.material)
            self.rotation_request = request
            self.rotated_at = now
            self._event(
                "KeysRotated",
                f"new cookie signing key {self.material.active_key_id}; older keys stay "
                f"valid for {retention:g}s",
            )
        return self.material

    async def current(self, body: Mapping[str, Any], *, now: float) -> KeyMaterial:
        """The keys to plan with: retired ones pruned (and the Secret saved if any was)."""
        assert self.material is not None, "apply() loads the keys first"
        pruned = prune(self.material, now=now)
        if pruned is not self.material:
            self.material = pruned
            await self._save(body, pruned)
        return pruned

    def next_retirement(self) -> float | None:
        return None if self.material is None else next_retirement(self.material)

    async def _load(self, owner: Mapping[str, Any], *, now: float) -> KeyMaterial:
        """The key material from the Secret, creating the Secret if needed.

        A Secret of that name that does not parse is replaced (its keys were unusable
        anyway); a parseable one is adopted (and given our ownerReference).
        """
        existing = await self._client.get(_secret_path(owner))
        material = from_secret_data((existing or {}).get("data"))
        if material is not None:
            refs = (existing or {}).get("metadata", {}).get("ownerReferences") or []
            if not any(r.get("uid") == owner["metadata"].get("uid") for r in refs):
                await self._save(owner, material)
            return material
        material = new_material(now)
        await self._save(owner, material)
        self._event("KeysCreated", "admin token and cookie signing key created")
        return material

    async def _save(self, owner: Mapping[str, Any], material: KeyMaterial) -> None:
        await self._client.apply(
            _secret_path(owner), secret_manifest(owner, to_secret_data(material))
        )

    def _event(self, reason: str, message: str) -> None:
        self._events.post(self._owner_ref, type="Normal", reason=reason, message=message)


def _secret_path(owner: Mapping[str, Any]) -> str:
    return SECRETS.path(owner["metadata"]["namespace"], secret_name(owner["metadata"]["name"]))
