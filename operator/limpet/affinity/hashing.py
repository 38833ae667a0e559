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
from .limits import DEFAULT_SIZE, MAX_SIZE

_MASK64 = (1 << 64) - 1
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_RELEASE_SALT = 0x5851F42D4C957F2D
_INV_2_64 = 1.0 / float(1 << 64)

_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes


def check_size(size: object) -> int:
    """Validate a slot-table size (an ``int`` in ``1..MAX_SIZE``) and return it.

    ``size`` is typed ``object`` because this checks untyped input: compiled (mypyc),
    an ``int`` parameter would raise ``TypeError`` on a float before this check ran."""
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


def slot_of(key: object, size: object = DEFAULT_SIZE) -> int:
    """The slot of a session key (bytes) in a table of ``size`` slots; checks both
    (typed ``object`` for that, as :func:`check_size` is)."""
    if not isinstance(key, bytes | bytearray | memoryview):
        raise AffinityError(f"session key must be bytes, got {type(key).__name__}")
    n = check_size(size)
    return _from_bytes(_blake2b(key, digest_size=8).digest(), "little") % n


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
    """The stable 32-bit rendezvous seed of a backend id."""
    digest = _blake2b(backend.encode("utf-8"), digest_size=4, person=b"limpet-backend").digest()
    return _from_bytes(digest, "little")


def backend_dither(backend: BackendId) -> float:
    """A stable per-backend offset in ``[0, 1)`` that staggers the rounding of slot bounds."""
    digest = _blake2b(backend.encode("utf-8"), digest_size=4, person=b"limpet-dither").digest()
    return _from_bytes(digest, "little") / 4294967296.0


_F1 = 0x85EBCA6B
_F2 = 0xC2B2AE35
_GOLDEN32 = 0x9E3779B1


def fmix32(x: int) -> int:
    """MurmurHash3's 32-bit finaliser (pure Python, for scalars)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * _F1) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * _F2) & 0xFFFFFFFF
    return x ^ (x >> 16)


def fmix32_array(x: npt.NDArray[np.uint32], tmp: npt.NDArray[np.uint32]) -> None:
    """MurmurHash3's 32-bit finaliser over a uint32 array, in place (``tmp``: scratch)."""
    np.right_shift(x, 16, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, np.uint32(_F1), out=x)
    np.right_shift(x, 13, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, np.uint32(_F2), out=x)
    np.right_shift(x, 16, out=tmp)
    np.bitwise_xor(x, tmp, out=x)


def slot_hashes(size: int) -> npt.NDArray[np.uint32]:
    """The per-slot 32-bit hashes that rendezvous scores combine with backend seeds."""
    x = np.arange(size, dtype=np.uint32)
    np.multiply(x, np.uint32(_GOLDEN32), out=x)
    fmix32_array(x, np.empty_like(x))
    return x


def slot_hash(slot: int) -> int:
    """One slot's hash, equal to ``slot_hashes(n)[slot]``."""
    return fmix32(slot * _GOLDEN32)
