"""A learned table's index: its 60-bit folded key hash -> its entry number.

Data flow: :class:`~.learned.LearnedTable` asks :meth:`KeyIndex.get` on every look-up,
:meth:`KeyIndex.set` on every insert, :meth:`KeyIndex.pop` on every removal and
:meth:`KeyIndex.drop` once for a batch of evictions or expiries. :func:`new_key_index`
returns the C index of ``native_index.c`` (keyed open addressing, about 34 bytes an
entry; its docstring says why) when it was built, else :class:`DictIndex`, the same map
in 256 dicts. Both answer alike; ``tests/proxy/session/test_key_index.py`` runs one
model-based property against both.

Concurrency: event loop only, like the tables.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

import numpy as np

from .c_types import c_type

Keys = np.ndarray[Any, np.dtype[np.uint64]]
"""Keys for :meth:`KeyIndex.drop`: a contiguous array of them."""

SHARD_SHIFT: Final = 52
""":class:`DictIndex` picks a key's dict by its top 8 (of 60) bits. Not its low bits: a
dict places a key by them, and a dict of keys that all share them would crowd into a
few of its slots."""


class KeyIndex(Protocol):
    """A map from a 60-bit key to an entry number below ``2**32 - 1``."""

    def get(self, key: int, /) -> int:
        """The key's entry number, or -1."""
        ...

    def set(self, key: int, entry: int, /) -> None:
        """Add ``key``, or point it at ``entry`` instead."""
        ...

    def pop(self, key: int, /) -> int:
        """Remove ``key``: its entry number, or -1 when it was not there."""
        ...

    def drop(self, keys: Keys, /) -> int:
        """Remove each of ``keys`` (a contiguous uint64 array); how many were there."""
        ...

    def __len__(self) -> int: ...


class DictIndex:
    """:class:`KeyIndex` in 256 dicts, for where ``native_index`` was not built.

    256, not one: a dict rebuilds itself now and then as keys come and go, and one dict
    of a million keys stalled the loop for 36 to 80 ms doing it, a shard for a 256th of
    that."""

    __slots__ = ("_shards",)

    def __init__(self) -> None:
        self._shards: list[dict[int, int]] = [{} for _ in range(1 << (60 - SHARD_SHIFT))]

    def get(self, key: int, /) -> int:
        return self._shards[key >> SHARD_SHIFT].get(key, -1)

    def set(self, key: int, entry: int, /) -> None:
        self._shards[key >> SHARD_SHIFT][key] = entry

    def pop(self, key: int, /) -> int:
        return self._shards[key >> SHARD_SHIFT].pop(key, -1)

    def drop(self, keys: Keys, /) -> int:
        shards = self._shards
        dropped = 0
        for k in keys.tolist():
            dropped += shards[k >> SHARD_SHIFT].pop(k, -1) >= 0
        return dropped

    def __len__(self) -> int:
        return sum(len(s) for s in self._shards)


def native_key_index() -> Callable[[bytes], KeyIndex] | None:
    """The C index's constructor (it takes its 16-byte hash secret), or ``None`` where it
    was not built (no C compiler: ``tools/native/build.py``)."""
    found = c_type("limpet.proxy.session.native_index", "KeyIndex")
    return cast("Callable[[bytes], KeyIndex] | None", found)


def new_key_index(*, secret: bytes | None = None) -> KeyIndex:
    """A new index: the C one when built (keyed with ``secret``, else 16 random bytes),
    else a :class:`DictIndex`."""
    factory = native_key_index()
    if factory is None:
        return DictIndex()
    return factory(os.urandom(16) if secret is None else secret)
