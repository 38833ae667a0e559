"""Learned keys in the shared store, without sockets: the entry codec (round trip,
hostile values), the merge of a local copy with the store's entry, TTLs, and when a
local copy may be trusted without a store round-trip."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from limpet.affinity import BackendId, BackendState
from limpet.proxy.session.shared_keys import (
    RETRY_AFTER,
    SETTLE_GRACE,
    SharedKeys,
    StoredEntry,
    backend_prefix,
    decode_entry,
    encode_entry,
    entry_ttl_ms,
    member_of,
    merge,
    unannounced_move,
)

T = 1_800_000_000.0
A, B = BackendId("pod-a"), BackendId("pod-b")

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,62}", fullmatch=True).map(BackendId)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@given(ids, times, st.floats(min_value=0, max_value=1e6), st.booleans())
def test_entries_round_trip_without_overstating_idleness_or_age(
    bid: BackendId, created: float, idle: float, restored: bool
) -> None:
    e = StoredEntry(bid, created, created + idle, restored)
    raw = encode_entry(e)
    assert raw.startswith(backend_prefix(bid))
    got = decode_entry(raw)
    assert got is not None
    assert (got.backend, got.restored) == (bid, restored)
    assert got.created <= created + 1e-6  # age rounds up, by less than a tick
    assert created - got.created < 0.1 + 1e-6
    assert got.last_seen >= e.last_seen - 1e-6  # idleness rounds down, never up
    assert got.last_seen - e.last_seen < 0.1 + 1e-6


@given(st.binary(max_size=80))
def test_any_bytes_decode_to_an_entry_or_none(raw: bytes) -> None:
    got = decode_entry(raw)
    if got is not None:
        assert got.last_seen >= got.created >= 0
        assert decode_entry(encode_entry(got)) == got


def test_malformed_values_are_not_entries() -> None:
    for raw in (
        b"",
        b"pod-a",
        b"pod-a 10",
        b"pod-a 10 5",  # last seen before created
        b"pod-a -1 5",
        b"pod-a x 5",
        b"pod-a 1 2 3",
        b"pod-a 1 2 r r",
        b" 1 2",
        b"\xff\xfe 1 2",
        b"a" * 64 + b" 1 2",
        b"pod-a +1 2",
        b"pod-a 1_0 20",
        b"pod-a \t1 2",
        b"pod-a 1 " + b"9" * 16,
        b"pod-a " + b"9" * 400 + b" " + b"9" * 400,  # overflowed a float
    ):
        assert decode_entry(raw) is None, raw
    assert decode_entry(None) is None
    assert decode_entry(b"pod-a 1 2 r") == StoredEntry(A, 0.1, 0.2, True)


def test_member_is_the_table_code_and_the_64_bit_key() -> None:
    assert member_of(ord("H"), 1) == b"H" + (1).to_bytes(8, "little")
    assert member_of(ord("Q"), -1) == b"Q" + b"\xff" * 8
    assert len(member_of(ord("I"), 1 << 70)) == 9


def test_the_store_backend_wins_and_the_later_last_seen_counts() -> None:
    local = StoredEntry(A, T, T + 50)
    assert merge(local, None) == local
    assert merge(None, local) == local
    # Same backend: the store's creation time, the later of the two last-seen times.
    assert merge(local, StoredEntry(A, T - 5, T + 20)) == StoredEntry(A, T - 5, T + 50)
    assert merge(local, StoredEntry(A, T, T + 80)) == StoredEntry(A, T, T + 80)
    # Another replica moved it: the store's entry, whatever this replica saw.
    moved = StoredEntry(B, T, T + 10)
    assert merge(local, moved) == moved


def test_only_an_unannounced_move_is_announced() -> None:
    local = StoredEntry(A, T, T + 50)
    # This replica sent the session's latest request to A, and the store names B: B has
    # not seen that request, however the entry got there. Moved by another replica's
    # compare-and-set before this one routed alone (its call timed out):
    assert unannounced_move(local, StoredEntry(B, T, T + 40))
    # Restored elsewhere from another replica's older copy after the store lost it:
    assert unannounced_move(local, StoredEntry(B, T, T + 40, restored=True))
    # Placed afresh elsewhere after the store lost it:
    assert unannounced_move(local, StoredEntry(B, T + 30, T + 40))
    # The session has lived on the other backend since this replica last saw it (moved
    # and announced by whoever moved it), or it never left this backend, or it is new here.
    assert not unannounced_move(local, StoredEntry(B, T, T + 60, restored=True))
    assert not unannounced_move(local, StoredEntry(B, T, T + 50))
    assert not unannounced_move(None, StoredEntry(B, T, T + 60, restored=True))
    assert not unannounced_move(local, StoredEntry(A, T + 30, T + 40, restored=True))


def test_ttl_follows_idle_and_absolute_timeouts() -> None:
    e = StoredEntry(A, T, T + 100)
    now = T + 100
    kw = {"slack": 60.0}
    assert entry_ttl_ms(e, now, idle_timeout=1800, absolute_timeout=None, **kw) == 1_860_000
    # The absolute timeout ends it earlier: created + 300 + slack.
    assert entry_ttl_ms(e, now, idle_timeout=1800, absolute_timeout=300, **kw) == 260_000
    assert entry_ttl_ms(e, now, idle_timeout=None, absolute_timeout=None, **kw) == 86_460_000
    assert entry_ttl_ms(e, T + 10_000, idle_timeout=None, absolute_timeout=300, **kw) == 1000


def test_copies_are_trusted_only_once_checked_after_their_backend_settled() -> None:
    keys = SharedKeys(T)
    active = {0: BackendState.ACTIVE, 1: BackendState.ACTIVE}
    keys.adopt_plan(active, schedule=False, wall=T, backends=2)
    assert not keys.trusted(0, T - 1)  # made before the store was attached
    assert keys.trusted(0, T)
    assert not keys.trusted(5, T + 100)  # a backend the plan does not know
    # A rebalance: nothing is trusted, every request asks the store.
    keys.adopt_plan(active, schedule=True, wall=T + 10, backends=2)
    assert keys.settled == [math.inf, math.inf]
    # Quiet again, 1 draining: the others settle after the grace, 1 never does.
    keys.adopt_plan(
        {0: BackendState.ACTIVE, 1: BackendState.DRAINING}, schedule=False, wall=T + 20, backends=2
    )
    assert keys.settled == [T + 20 + SETTLE_GRACE, math.inf]
    assert not keys.trusted(0, T + 20)
    assert keys.trusted(0, T + 20 + SETTLE_GRACE)
    # An outage: a request may try the store again after a while; once it is back,
    # every copy checked before is checked once more (replicas decided alone meanwhile).
    keys.failed(T + 100)
    assert not keys.up
    assert not keys.usable(T + 100 + RETRY_AFTER / 2)
    assert keys.usable(T + 100 + RETRY_AFTER)
    assert keys.settled == [T + 100 + RETRY_AFTER, math.inf]
    assert not keys.trusted(0, T + 100)
    keys.failed(T + 200)
    keys.answered(T + 201)  # a write-back succeeded
    assert keys.usable(T + 201)
    assert keys.settled == [T + 201, math.inf]
    keys.answered(T + 300)  # no outage in between: nothing changes
    assert keys.settled == [T + 201, math.inf]
    assert keys.counters["failures"] == 2
