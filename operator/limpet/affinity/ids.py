"""Typed identifiers shared by the proxy and the operator.

``BackendId`` is the stable opaque id of a backend (never its IP or pod name: it is
carried in cookies). ``KeyHash`` is the 64-bit stable hash of a session key, from which
both the slot and the release fraction are derived. Pure values, no state.
"""

from __future__ import annotations

from typing import NewType

BackendId = NewType("BackendId", str)
"""Stable, opaque backend id (``[A-Za-z0-9][A-Za-z0-9._~-]{0,62}``), safe inside a cookie."""

KeyHash = NewType("KeyHash", int)
"""Unsigned 64-bit stable hash of a session key (see :func:`limpet.affinity.key_hash`)."""

NO_BACKENDS: frozenset[BackendId] = frozenset()
"""The empty exclusion set: the default of every ``exclude`` argument (all members eligible)."""
