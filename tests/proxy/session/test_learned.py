"""Bounded learned tables: lookups, counts, capacity eviction, one-sweeper idle expiry."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.proxy.session.key_index import DictIndex, KeyIndex, new_key_index
from limpet.proxy.session.learned import EVICT_FRACTION, EVICT_WINDOW, KEY_MASK, Entry, LearnedTable

T0 = 1_800_000_000.0


INDEXES = ("built", "python")


def table(
    capacity: int = 100,
    idle: float | None = 60.0,
    absolute: float | None = None,
    *,
    index: str = "built",
) -> LearnedTable:
    """A table over the index the build has (the C one under ``make test``), or over
    :class:`DictIndex`, the fallback without it."""
    ix: KeyIndex = new_key_index() if index == "built" else DictIndex()
    return LearnedTable(
        name="t",
        capacity=capacity,
        idle_timeout=idle,
        absolute_timeout=absolute,
        epoch=T0 - 1,
        index=ix,
    )


def test_insert_find_touch_move() -> None:
    t = table()
    assert t.find(42) == -1
    i = t.insert(42, 3, T0)
    assert t.find(42) == i
    assert t.get(42) == Entry(3, T0, T0)
    t.touch(i, T0 + 5.05)
    e = t.get(42)
    assert e is not None
    assert abs(e.last_seen - (T0 + 5.0)) < 0.11
    assert t.sessions(3) == 1
    t.move(i, 1, T0 + 6)
    assert t.backend(i) == 1
    assert (t.sessions(3), t.sessions(1)) == (0, 1)
    assert t.get(42) is not None
    assert t.remove(42)
    assert not t.remove(42)
    assert t.sessions(1) == 0
    assert len(t) == 0


def test_key_hash_is_folded_to_60_bits() -> None:
    t = table()
    h = (1 << 63) | 12345
    t.insert(h, 0, T0)
    assert t.find(h) == t.find(h & KEY_MASK) >= 0


def test_reinsert_repins() -> None:
    t = table()
    a = t.insert(7, 0, T0)
    b = t.insert(7, 2, T0 + 1)
    assert a == b
    assert len(t) == 1
    assert (t.sessions(0), t.sessions(2)) == (0, 1)


def test_idle_expiry_by_sweep() -> None:
    t = table(idle=60)
    t.insert(1, 0, T0)
    t.insert(2, 0, T0)
    t.touch(t.find(2), T0 + 50)
    assert t.sweep(T0 + 59) == 0
    assert t.sweep(T0 + 61) == 1
    assert t.find(1) == -1
    assert t.find(2) >= 0
    assert t.sessions(0) == 1
    assert t.sweep(T0 + 111) == 1
    assert len(t) == 0
    assert t.expired == 2


def test_absolute_expiry() -> None:
    t = table(idle=None, absolute=100)
    i = t.insert(1, 0, T0)
    t.touch(i, T0 + 99)
    assert t.sweep(T0 + 99) == 0
    assert t.sweep(T0 + 101) == 1


def test_sweep_is_incremental_and_wraps() -> None:
    t = table(capacity=1000, idle=10)
    for k in range(300):
        t.insert(k, k % 3, T0)
    removed = [t.sweep(T0 + 20, budget=128) for _ in range(3)]
    assert removed == [128, 128, 44]
    assert len(t) == 0
    assert sum(t.counts) == 0


def test_free_slots_are_reused_and_columns_stay_bounded() -> None:
    t = table(capacity=10, idle=10)
    for round_ in range(20):
        base = round_ * 100
        for k in range(10):
            t.insert(base + k, 0, T0 + round_ * 20)
        t.sweep(T0 + round_ * 20 + 15, budget=1000)
    assert len(t._keys) <= 10


def test_columns_grow_in_steps_and_fill_from_the_front() -> None:
    """Inserts take the lowest free entry; the columns grow by a step of free entries
    (an eighth, at least 64), never past the capacity, and the free tail is no entry."""
    t = table(capacity=1000, idle=None)
    assert [t.insert(k, 1, T0) for k in (7, 8, 9)] == [0, 1, 2]
    assert len(t._keys) == 64
    assert len(t) == 3
    assert t.sessions(1) == 3
    assert t.seen_after(T0 - 1).tolist() == [0, 3]
    assert {b: v.tolist() for b, v in t.smallest_keys(10).items()} == {1: [7, 8, 9]}
    for k in range(100, 100 + 61):
        t.insert(k, 0, T0)
    assert len(t._keys) == 64
    t.insert(5000, 0, T0)  # the 65th entry: one more step
    assert len(t._keys) == 128
    assert t.find(5000) == 64
    small = table(capacity=10, idle=None)
    for k in range(10):
        small.insert(k, 0, T0)
    assert len(small._keys) == 10


def test_a_removed_entry_is_reused_before_a_never_used_one() -> None:
    t = table(capacity=1000, idle=None)
    assert [t.insert(k, 0, T0) for k in (1, 2, 3, 4)] == [0, 1, 2, 3]
    assert t.remove(2)
    assert t.remove(3)
    # The entry removed last first, then the other, then the columns' next fresh one.
    assert [t.insert(k, 1, T0) for k in (5, 6, 7)] == [2, 1, 4]
    assert len(t) == 5
    assert (t.sessions(0), t.sessions(1)) == (2, 3)
    assert [t.find(k) for k in (1, 4, 5, 6, 7)] == [0, 3, 2, 1, 4]


def test_capacity_evicts_least_recently_seen() -> None:
    t = table(capacity=128, idle=None)
    for k in range(128):
        t.insert(k, 0, T0 + k)
    t.touch(t.find(0), T0 + 1000)  # the oldest is recently seen, so it survives
    t.insert(999, 1, T0 + 1001)
    assert len(t) == 128 - 2 + 1  # 128 // 64 == 2 evicted
    assert t.find(0) >= 0
    assert t.find(1) == -1
    assert t.find(2) == -1
    assert t.find(999) >= 0
    assert t.evicted == 2
    assert t.sessions(0) == 126


def test_a_large_full_table_evicts_one_window_at_a_time() -> None:
    """An insert into a full table drops the least recently seen 1/64 of the next window
    of entries, not of the whole table (a bounded stall), and the next full insert takes
    the window after it."""
    per_call = EVICT_WINDOW // EVICT_FRACTION
    t = table(capacity=3 * EVICT_WINDOW, idle=None)
    for k in range(3 * EVICT_WINDOW):
        t.insert(k, 0, T0 + k)  # whole seconds apart: no ties
    # The oldest entries sit in the first window; two of them were seen since.
    later = T0 + 4 * EVICT_WINDOW
    t.touch(t.find(0), later)
    t.touch(t.find(5), later)
    t.insert(10**9, 1, later)
    gone = [k for k in range(3 * EVICT_WINDOW) if t.find(k) < 0]
    assert gone == [k for k in range(per_call + 2) if k not in (0, 5)]
    assert t.evicted == per_call
    # The room made is used before anything else goes.
    for k in range(per_call - 1):
        t.insert(10**9 + 1 + k, 1, later)
    assert t.evicted == per_call
    assert len(t) == t.capacity
    t.insert(2 * 10**9, 1, later)
    assert t.evicted == 2 * per_call
    # From the second window, its own least recently seen 1/64.
    second = [k for k in range(EVICT_WINDOW, 2 * EVICT_WINDOW) if t.find(k) < 0]
    assert second == list(range(EVICT_WINDOW, EVICT_WINDOW + per_call))
    assert t.sessions(0) + t.sessions(1) == len(t) == t.capacity - per_call + 1


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), extra=st.integers(EVICT_WINDOW, 2 * EVICT_WINDOW))
def test_eviction_never_keeps_an_older_entry_of_its_window(seed: int, extra: int) -> None:
    """Whatever the last-seen times, one eviction takes exactly 1/64 of one window of
    indices, and none of them was seen more recently than an entry of that window that
    stays."""
    rng = random.Random(seed)
    size = EVICT_WINDOW + extra
    t = table(capacity=size, idle=None)
    seen = {k: T0 + rng.randrange(100_000) / 10 for k in range(size)}
    for k in range(size):
        t.insert(k, k % 3, seen[k])
    index = {k: t.find(k) for k in range(size)}
    t.insert(size, 0, T0 + 20_000)
    gone = {k for k in range(size) if t.find(k) < 0}
    assert len(gone) == EVICT_WINDOW // EVICT_FRACTION
    assert all(index[k] < EVICT_WINDOW for k in gone)
    kept = [seen[k] for k in range(size) if k not in gone and index[k] < EVICT_WINDOW]
    assert max(seen[k] for k in gone) <= min(kept) + 0.1  # last seen rounds up a tick
    assert sum(t.counts) == len(t) == size - len(gone) + 1


def test_the_last_window_takes_the_rest_of_the_table() -> None:
    """A window is never a sliver: in a table of one window and 10 entries the second
    full insert chooses from all the rest (8 Ki + 10 entries), and in a table smaller
    than two windows every full insert chooses from the whole table (exact LRU)."""
    per_call = EVICT_WINDOW // EVICT_FRACTION
    size = 2 * EVICT_WINDOW + 10
    t = table(capacity=size, idle=None)
    for k in range(size):
        # The last 10 entries are the oldest of all.
        t.insert(k, 0, T0 + (k if k < 2 * EVICT_WINDOW else k - size))
    later = T0 + 2 * size
    t.insert(-1, 0, later)
    assert [k for k in range(size) if t.find(k) < 0] == list(range(per_call))
    for k in range(per_call):
        t.insert(10**9 + k, 0, later)
    # The rest is 8 Ki + 10 entries: 1/64 of it, its oldest: the 10 at the very end,
    # then the second window's head.
    rest = (size - EVICT_WINDOW) // EVICT_FRACTION
    assert t.evicted == per_call + rest
    gone = [k for k in range(EVICT_WINDOW, size) if t.find(k) < 0]
    assert gone == list(range(EVICT_WINDOW, EVICT_WINDOW + rest - 10)) + list(
        range(2 * EVICT_WINDOW, size)
    )
    small = table(capacity=EVICT_WINDOW + 10, idle=None)
    for k in range(EVICT_WINDOW + 10):
        small.insert(k, 0, T0 + (EVICT_WINDOW + 10 - k))  # the newest first
    small.insert(-1, 0, later)
    oldest = range(EVICT_WINDOW + 10 - small.evicted, EVICT_WINDOW + 10)
    assert small.evicted == (EVICT_WINDOW + 10) // EVICT_FRACTION
    assert all(small.find(k) < 0 for k in oldest)


@settings(max_examples=60, deadline=None)
@pytest.mark.parametrize("index", INDEXES)
@given(
    ops=st.lists(
        st.tuples(
            st.one_of(
                st.integers(0, 2**64 - 1),
                # the same low bits, top bits apart (other shards), and 60-bit folds
                st.integers(0, 15).map(lambda top: (top << 60) | 12345),
                st.integers(0, 255).map(lambda top: (top << 52) | 777),
            ),
            st.booleans(),
        ),
        max_size=200,
    )
)
def test_keys_anywhere_in_64_bits_against_a_model(index: str, ops: list[tuple[int, bool]]) -> None:
    """Keys over the whole hash range (DictIndex splits them by their top bits): find,
    remove and len agree with a dict of the folded keys."""
    t = table(capacity=1000, idle=None, index=index)
    model: dict[int, int] = {}
    for step, (key, remove) in enumerate(ops):
        folded = key & KEY_MASK
        if remove:
            assert t.remove(key) == (model.pop(folded, None) is not None)
        else:
            t.insert(key, step % 4, T0 + step)
            model[folded] = step % 4
        assert len(t) == len(model)
    for folded, b in model.items():
        assert t.backend(t.find(folded)) == b
        assert t.find(folded | (1 << 63)) == t.find(folded)
    assert sum(t.counts) == len(model)


@pytest.mark.parametrize("index", INDEXES)
@settings(max_examples=50, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 3), st.booleans()), max_size=300))
def test_model(index: str, ops: list[tuple[int, int, bool]]) -> None:
    """Against a plain dict model: counts always match, capacity always holds."""
    t = table(capacity=16, idle=None, index=index)
    model: dict[int, int] = {}
    for step, (key, backend, remove) in enumerate(ops):
        if remove:
            assert t.remove(key) == (model.pop(key, None) is not None)
        else:
            if key not in model and len(model) >= 16:
                # eviction picks the least recently seen; mirror it from the table
                model = {k: b for k, b in model.items() if t.find(k) >= 0 or k == key}
            t.insert(key, backend, T0 + step)
            model = {k: b for k, b in model.items() if t.find(k) >= 0}
            model[key] = backend
        assert len(t) == len(model) <= 16
        for k, b in model.items():
            assert t.backend(t.find(k)) == b
        for b in range(4):
            assert t.sessions(b) == sum(1 for v in model.values() if v == b)


@pytest.mark.parametrize("index", INDEXES)
def test_many_random_keys(index: str) -> None:
    rng = random.Random(1)
    t = table(capacity=5000, idle=30, index=index)
    keys = [rng.getrandbits(64) for _ in range(20000)]
    for n, k in enumerate(keys):
        t.insert(k, n % 5, T0 + n / 1000)
    assert len(t) <= 5000
    assert sum(t.counts) == len(t)
    while t.sweep(T0 + 100, budget=1000):
        pass
    t.sweep(T0 + 100, budget=10_000)
    assert len(t) == 0


def test_sweep_bounds_removals_per_call_and_resumes() -> None:
    t = table(capacity=1000, idle=10)
    for k in range(500):
        t.insert(k, 0, T0)
    t.insert(10_000, 0, T0 + 19)  # still fresh at T0 + 20
    assert t.sweep(T0 + 20, budget=1000, max_remove=200) == 200
    assert t.sweep(T0 + 20, budget=1000, max_remove=200) == 200
    assert t.sweep(T0 + 20, budget=1000, max_remove=200) == 100
    assert len(t) == 1
    assert t.find(10_000) >= 0


@settings(max_examples=60, deadline=None)
@given(
    entries=st.dictionaries(
        st.integers(0, KEY_MASK), st.tuples(st.integers(0, 3), st.integers(0, 600)), max_size=400
    ),
    removed=st.sets(st.integers(0, 399), max_size=60),
    k=st.integers(3, 40),
)
def test_read_time_figures_match_a_plain_model(
    entries: dict[int, tuple[int, int]], removed: set[int], k: int
) -> None:
    """``smallest_keys`` and ``seen_after`` against sorting and counting a dict (free
    slots, reused slots and every backend size around ``k`` included)."""
    t = table(capacity=1000, idle=None)
    for key, (backend, tick) in entries.items():
        t.insert(key, backend, T0 + tick / 10)
    keys = list(entries)
    for n in removed:
        if n < len(keys):
            t.remove(keys[n])
    model = {key: v for n, (key, v) in enumerate(entries.items()) if n not in removed}
    got = {b: v.tolist() for b, v in t.smallest_keys(k).items()}
    want: dict[int, list[int]] = {}
    for key, (backend, _) in sorted(model.items()):
        want.setdefault(backend, []).append(key)
    assert got == {b: v[:k] for b, v in want.items()}
    cut = T0 + 30
    recent = t.seen_after(cut).tolist()
    for b in range(4):
        n = sum(1 for bk, tick in model.values() if bk == b and T0 + tick / 10 > cut)
        assert (recent[b] if b < len(recent) else 0) == n


def test_smallest_keys_is_exact_when_a_backend_has_many_entries() -> None:
    """The thresholded first pass must still find every backend's true k smallest."""
    rng = random.Random(7)
    t = table(capacity=30_000, idle=None)
    keys = [rng.getrandbits(64) for _ in range(25_000)]
    for n, key in enumerate(keys):
        t.insert(key, 0 if n % 50 else 1, T0)  # backend 0 big, backend 1 small
    got = t.smallest_keys(256)
    for b in (0, 1):
        mine = sorted(key & KEY_MASK for n, key in enumerate(keys) if (0 if n % 50 else 1) == b)
        assert got[b].tolist() == mine[:256]


def test_a_reused_entry_is_never_checked_against_the_store() -> None:
    """A removed entry's store check is not inherited by the key that reuses its index."""
    t = table(capacity=10, idle=10)
    i = t.insert(1, 0, T0)
    t.check(i, T0 + 1)
    assert t.checked(i) > T0
    assert t.remove(1)
    assert t.insert(2, 0, T0 + 2) == i
    assert t.checked(i) == T0 - 1  # the epoch: never checked
    j = t.insert(3, 0, T0 + 2)
    t.check(j, T0 + 3)
    t.sweep(T0 + 20, budget=100)  # both idle: expired
    assert t.insert(4, 0, T0 + 21) in (i, j)
    assert t.checked(t.find(4)) == T0 - 1


def test_an_evicted_entry_is_never_checked_against_the_store() -> None:
    """The same for the entries a full table evicts (vectorised, not entry by entry)."""
    t = table(capacity=4, idle=None)
    for k in range(4):
        t.check(t.insert(k + 1, k % 2, T0 + k), T0 + k)
    i = t.insert(9, 1, T0 + 10)  # full: the least recently seen (key 1) goes
    assert t.find(1) < 0
    assert t.find(9) == i
    assert t.checked(i) == T0 - 1
    assert (t.sessions(0), t.sessions(1), len(t)) == (1, 3, 4)
