"""Stable hashing: pinned values (so a change across versions fails loudly) and ranges."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.affinity import (
    DEFAULT_SIZE,
    MAX_SIZE,
    AffinityError,
    BackendId,
    key_hash,
    release_fraction,
    slot_of,
    slot_of_hash,
    table,
)
from limpet.affinity.hashing import backend_seed, slot_hash, slot_hashes


def test_pinned_values_never_change() -> None:
    # Proxies of different versions must agree: these values are part of the contract.
    assert key_hash(b"") == 13020603013274838756
    assert key_hash(b"abc") == 6455300059550759896
    assert slot_of(b"abc") == 24418
    assert slot_of(b"abc", 1_000_003) == 678772
    assert backend_seed(BackendId("a")) == 2230622476
    assert slot_hash(7) == 2438488908
    assert table({"a": 1, "b": 1, "c": 1})[:8] == ("c", "b", "b", "a", "a", "b", "a", "a")


def test_key_hash_is_blake2b_64_little_endian() -> None:
    digest = hashlib.blake2b(b"session", digest_size=8).digest()
    assert key_hash(b"session") == int.from_bytes(digest, "little")


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=MAX_SIZE))
def test_slot_in_range_and_consistent(key: bytes, size: int) -> None:
    slot = slot_of(key, size)
    assert 0 <= slot < size
    assert slot == slot_of_hash(key_hash(key), size)


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_release_fraction_in_unit_interval(h: int) -> None:
    assert 0.0 <= release_fraction(h) < 1.0


def test_release_fraction_is_uniform_and_independent_of_slot() -> None:
    hashes = [key_hash(str(i).encode()) for i in range(20000)]
    fractions = [release_fraction(h) for h in hashes]
    assert abs(sum(fractions) / len(fractions) - 0.5) < 0.01
    # Keys of the lowest decile of fractions land in every slot region evenly.
    low = [h for h, f in zip(hashes, fractions, strict=True) if f < 0.1]
    regions = [0] * 10
    for h in low:
        regions[slot_of_hash(h, DEFAULT_SIZE) * 10 // DEFAULT_SIZE] += 1
    assert max(regions) < 1.3 * len(low) / 10


def test_scalar_slot_hash_matches_vector() -> None:
    vector = slot_hashes(1000)
    assert all(slot_hash(i) == int(vector[i]) for i in range(1000))


@pytest.mark.parametrize("size", [0, -1, MAX_SIZE + 1, True, 2.5])
def test_bad_sizes(size: object) -> None:
    with pytest.raises(AffinityError, match="slot table size"):
        slot_of(b"k", size)


def test_key_must_be_bytes() -> None:
    with pytest.raises(AffinityError, match="bytes"):
        slot_of("text")
