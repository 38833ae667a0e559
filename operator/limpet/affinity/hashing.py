"""Stable hashing: session keys to 64-bit hashes, hashes to slots and release fractions.

Everything here is a pure function of its bytes, identical across processes, machines and
Python versions (BLAKE2b and a fixed SplitMix64 finaliser; never the salted ``hash()``).

Data flow: ``key bytes --key_hash--> KeyHash --slot_of_hash--> slot``. The release
fraction used by gradual rebalancing is a *second*, independent mix of the same hash, so
the sessions released first are spread evenly over all slots. The per-request functions
(:func:`key_hash`, :func:`slot_of_hash`) allocate nothing beyond their result.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

from .errors import AffinityError
from .ids import BackendId, KeyHash

DEFAULT_SIZE = 65537
"""Default slot-table size: a prime of about 64 Ki slots."""

LARGE_SIZE = 1_000_003
"""The largest supported slot-table size (a prime), recommended above a few hundred backends."""

MAX_SIZE = LARGE_SIZE

_MASK64 = (1 << 64) - 1
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_RELEASE_SALT = 0x5851F42D4C957F2D
_INV_2_64 = 1.0 / float(1 << 64)

_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes


def check_size(size: int) -> int:
    """Validate a slot-table size (an ``int`` in ``1..MAX_SIZE``) and return it."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise AffinityError(f"slot table size must be an int, got {type(size).__name__}")
    if not 1 <= size <= MAX_SIZE:
        raise AffinityError(f"slot table size must be in 1..{MAX_SIZE}, got {size}")
    return size


def key_hash(key: bytes) -> KeyHash:
    """The stable unsigned 64-bit hash of a session key (BLAKE2b-64, little-endian)."""
    return KeyHash(_from_bytes(_blake2b(key, digest_size=8).digest(), "little"))


def slot_of_hash(h: int, size: int = DEFAULT_SIZE) -> int:
    """The slot of a key hash in a table of ``size`` slots (hot path: no validation)."""
    return h % size


def slot_of(key: bytes, size: int = DEFAULT_SIZE) -> int:
    """The slot of a session key in a table of ``size`` slots."""
    if not isinstance(key, bytes | bytearray | memoryview):
        raise AffinityError(f"session key must be bytes, got {type(key).__name__}")
    check_size(size)
    return _from_bytes(_blake2b(key, digest_size=8).digest(), "little") % size


def mix64(x: int) -> int:
    """SplitMix64's finaliser: a fixed bijective 64-bit mix (pure Python, for scalars)."""
    x &= _MASK64
    x ^= x >> 30
    x = (x * _M1) & _MASK64
    x ^= x >> 27
    x = (x * _M2) & _MASK64
    return x ^ (x >> 31)


def release_fraction(h: int) -> float:
    """Where a key hash falls in the release order of gradual rebalancing, in ``[0, 1)``.

    Independent of the slot (a second mix), so releasing the lowest fraction first spreads
    the moves over every slot and backend.
    """
    return mix64(h ^ _RELEASE_SALT) * _INV_2_64


def backend_seed(backend: BackendId) -> int:
    """The stable 64-bit seed of a backend id, used for its rendezvous scores."""
    digest = _blake2b(backend.encode("utf-8"), digest_size=8, person=b"limpet-backend").digest()
    return _from_bytes(digest, "little")


def mix64_array(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finaliser over a uint64 array, in place (returns ``x``)."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(_M1)
    x ^= x >> np.uint64(27)
    x *= np.uint64(_M2)
    x ^= x >> np.uint64(31)
    return x


_GOLDEN = 0x9E3779B97F4A7C15


def slot_hashes(size: int) -> npt.NDArray[np.uint64]:
    """The per-slot 64-bit hashes that rendezvous scores combine with backend seeds."""
    return mix64_array(np.arange(size, dtype=np.uint64) * np.uint64(_GOLDEN))


def slot_hash(slot: int) -> int:
    """One slot's hash, equal to ``slot_hashes(n)[slot]``."""
    return mix64(slot * _GOLDEN)
