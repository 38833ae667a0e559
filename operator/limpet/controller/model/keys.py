"""Per-StickyService secrets: the proxies' admin token, the backend-id key, cookie keys.

Data flow: the reconciler reads the StickyService's Secret, :func:`from_secret_data`
turns it into :class:`KeyMaterial` (or ``None`` if absent or unreadable, then
:func:`new_material` makes one), :func:`rotate` prepends a fresh cookie key and gives the
older ones a retirement time one absolute timeout away, :func:`prune` drops retired keys,
and :func:`to_secret_data` writes it back. :meth:`KeyMaterial.plan_keys` gives the plan's
``cookieKeys`` (newest first: it signs; the rest only verify).

The Secret is the single source of truth, so a restarted or a second operator replica
signs with the same keys and derives the same backend ids. Pure functions; the
randomness comes from :mod:`secrets`.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace

from limpet.affinity.plan.model import CookieKey

ADMIN_TOKEN = "admin-token"
ID_KEY = "id-key"
COOKIE_KEYS = "cookie-keys"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredKey:
    id: str
    secret: bytes
    created: float
    retire_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyMaterial:
    admin_token: str
    id_key: bytes
    cookie_keys: tuple[StoredKey, ...]

    def plan_keys(self) -> tuple[CookieKey, ...]:
        return tuple(CookieKey(id=k.id, secret=k.secret) for k in self.cookie_keys)

    @property
    def active_key_id(self) -> str:
        return self.cookie_keys[0].id


def _new_key(now: float) -> StoredKey:
    return StoredKey(
        id="k" + base64.b32encode(secrets.token_bytes(5)).decode().lower(),
        secret=secrets.token_bytes(32),
        created=now,
    )


def new_material(now: float) -> KeyMaterial:
    return KeyMaterial(
        admin_token=secrets.token_urlsafe(32),
        id_key=secrets.token_bytes(32),
        cookie_keys=(_new_key(now),),
    )


def rotate(material: KeyMaterial, *, now: float, retention: float) -> KeyMaterial:
    """A fresh signing key first; every older key retires ``retention`` s from now."""
    older = tuple(
        replace(
            k,
            retire_at=now + retention if k.retire_at is None else min(k.retire_at, now + retention),
        )
        for k in material.cookie_keys
    )
    return replace(material, cookie_keys=(_new_key(now), *older))


def prune(material: KeyMaterial, *, now: float) -> KeyMaterial:
    kept = tuple(k for k in material.cookie_keys if k.retire_at is None or k.retire_at > now)
    return (
        material if len(kept) == len(material.cookie_keys) else replace(material, cookie_keys=kept)
    )


def next_retirement(material: KeyMaterial) -> float | None:
    times = [k.retire_at for k in material.cookie_keys if k.retire_at is not None]
    return min(times) if times else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def to_secret_data(material: KeyMaterial) -> dict[str, str]:
    """The Secret's ``data`` (each value base64, as the API wants)."""
    keys = [
        {
            "id": k.id,
            "secret": _b64(k.secret),
            "created": k.created,
            **({"retireAt": k.retire_at} if k.retire_at is not None else {}),
        }
        for k in material.cookie_keys
    ]
    return {
        ADMIN_TOKEN: _b64(material.admin_token.encode()),
        ID_KEY: _b64(material.id_key),
        COOKIE_KEYS: _b64(json.dumps(keys, sort_keys=True).encode()),
    }


def from_secret_data(data: Mapping[str, str] | None) -> KeyMaterial | None:
    """Parse a Secret's ``data``; ``None`` when a field is missing or malformed."""
    if not data:
        return None
    try:
        token = base64.b64decode(data[ADMIN_TOKEN]).decode()
        id_key = base64.b64decode(data[ID_KEY])
        raw = json.loads(base64.b64decode(data[COOKIE_KEYS]))
        keys = tuple(
            StoredKey(
                id=str(k["id"]),
                secret=base64.b64decode(k["secret"]),
                created=float(k["created"]),
                retire_at=float(k["retireAt"]) if k.get("retireAt") is not None else None,
            )
            for k in raw
        )
    except (KeyError, ValueError, TypeError):
        return None
    if not token or len(id_key) < 16 or not keys:
        return None
    return KeyMaterial(admin_token=token, id_key=id_key, cookie_keys=keys)
