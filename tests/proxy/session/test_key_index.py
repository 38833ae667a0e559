"""The learned tables' index, both kinds (the C one and :class:`DictIndex`), against a
dict: model-based properties, runs of colliding slots, keys aimed at one shard, and the
C index's refusals."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.proxy.session.key_index import (
    SHARD_SHIFT,
    DictIndex,
    KeyIndex,
    native_key_index,
    new_key_index,
)
from limpet.proxy.session.learned import KEY_MASK

KINDS = ("python", "native")
SECRET = bytes(range(16))


def index(kind: str, secret: bytes = SECRET) -> KeyIndex:
    if kind == "python":
        return DictIndex()
    factory = native_key_index()
    if factory is None:
        pytest.skip("the C index is not built (tools/native/build.py; make test builds it)")
    return factory(secret)


def agree(ix: KeyIndex, model: dict[int, int], absent: list[int]) -> None:
    assert len(ix) == len(model)
    for k, v in model.items():
        assert ix.get(k) == v
    for k in absent:
        if k not in model:
            assert ix.get(k) == -1


OPS = st.lists(
    st.tuples(
        st.sampled_from(["set", "get", "pop", "drop"]),
        st.one_of(
            st.integers(0, 63),  # a few keys, over and over
            st.integers(0, KEY_MASK),
            st.integers(0, 255).map(lambda top: (top << SHARD_SHIFT) | 777),
        ),
        st.integers(0, 2**32 - 2),
    ),
    max_size=400,
)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=200, deadline=None)
@given(ops=OPS)
def test_the_index_answers_as_a_dict_does(kind: str, ops: list[tuple[str, int, int]]) -> None:
    ix = index(kind)
    model: dict[int, int] = {}
    seen: list[int] = []
    for op, key, entry in ops:
        seen.append(key)
        if op == "set":
            ix.set(key, entry)
            model[key] = entry
        elif op == "get":
            assert ix.get(key) == model.get(key, -1)
        elif op == "pop":
            assert ix.pop(key) == model.pop(key, -1)
        else:  # drop this key and two others, present or not
            batch = [key, *seen[-3:-1]]
            expected = sum(model.pop(k, None) is not None for k in set(batch))
            assert ix.drop(np.array(sorted(set(batch)), dtype=np.uint64)) == expected
        assert len(ix) == len(model)
    agree(ix, model, seen)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_keys_come_and_go_by_the_hundred_thousand(kind: str, seed: int) -> None:
    """Growth of every shard, then removals deep in long runs of occupied slots (the C
    index shifts later keys of a run back into each gap): nothing is lost or found
    that should not be."""
    rng = random.Random(seed)
    ix = index(kind)
    model: dict[int, int] = {}
    keys = [rng.getrandbits(60) for _ in range(100_000)]
    for i, k in enumerate(keys):
        ix.set(k, i)
        model[k] = i
    for k in rng.sample(keys, 30_000):
        assert ix.pop(k) == model.pop(k)
    batch = rng.sample(sorted(model), 20_000)
    assert ix.drop(np.array(batch, dtype=np.uint64)) == 20_000
    for k in batch:
        del model[k]
    for k in rng.sample(keys, 10_000):  # back again, some at new entries
        ix.set(k, 7)
        model[k] = 7
    agree(ix, model, keys[:1000])


def test_keys_aimed_at_one_shard_and_one_slot_do_not_pile_up() -> None:
    """A client chooses what it hashes, so it can grind keys that share their top bits
    (one of DictIndex's shards) and their low bits (a dict's slot): 100 000 such keys
    still spread over the C index's shards and slots, since both come from a keyed
    hash of the whole key."""
    ix = index("native")
    aimed = [(5 << SHARD_SHIFT) | (i << 20) | 0x777 for i in range(100_000)]
    assert len({k >> SHARD_SHIFT for k in aimed}) == 1
    assert len({k & 0xFFFFF for k in aimed}) == 1
    for i, k in enumerate(aimed):
        ix.set(k, i)
    longest = ix.longest_run()  # type: ignore[attr-defined]
    # At most half full, a shard's longest run of random keys is a few dozen slots;
    # keys that collided would make one run of up to 100 000.
    assert longest < 100, longest
    assert all(ix.get(k) == i for i, k in enumerate(aimed))


def test_two_secrets_place_keys_apart() -> None:
    """The layout depends on the secret: the same keys, set in the same order, leave
    different runs under another one (the C index's answers stay the same)."""
    rng = random.Random(9)
    keys = [rng.getrandbits(60) for _ in range(50_000)]
    runs = set()
    for secret in (SECRET, bytes(16), b"\xff" * 16):
        ix = index("native", secret)
        for i, k in enumerate(keys):
            ix.set(k, i)
        assert all(ix.get(k) == i for i, k in enumerate(keys[:2000]))
        runs.add((ix.longest_run(), ix.nbytes))  # type: ignore[attr-defined]
    assert len(runs) > 1


def test_the_c_index_refuses_bad_arguments_with_clear_errors() -> None:
    ix = index("native")
    factory = native_key_index()
    assert factory is not None
    with pytest.raises(ValueError, match="16 bytes"):
        factory(b"short")
    with pytest.raises(OverflowError):
        ix.set(-1, 0)
    with pytest.raises(OverflowError):
        ix.set(1, 2**32 - 1)  # the free-slot mark
    with pytest.raises(TypeError):
        ix.get("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="8 bytes"):
        ix.drop(np.zeros(3, dtype=np.uint8))
    assert len(ix) == 0
    ix.set(2**64 - 1, 3)  # any 64-bit key is a key (the tables fold theirs to 60)
    assert ix.get(2**64 - 1) == 3
    assert ix.pop(2**64 - 1) == 3
    assert len(ix) == 0


def test_new_key_index_is_the_c_one_when_built() -> None:
    factory = native_key_index()
    expected = DictIndex if factory is None else factory
    assert type(new_key_index()) is expected
