"""The session book: backend numbers, live-session counts shared by every table, sweeps."""

from __future__ import annotations

from limpet.affinity import AffinitySettings, AffinityType, BackendId
from limpet.proxy.session.sessions import TABLE_NAMES, SessionBook, sid_hash

COOKIE = AffinityType.COOKIE

T0 = 1_800_000_000.0
A, B = BackendId("a"), BackendId("b")


def test_numbers_are_stable_and_counts_follow_the_tables() -> None:
    book = SessionBook(capacity=100, epoch=T0 - 1)
    aff = AffinitySettings(idle_timeout=60, absolute_timeout=None)
    assert book.index(A) == 0
    assert book.index(B) == 1
    assert book.index(A) == 0
    assert book.ids == [A, B]
    assert book.track(COOKIE, sid_hash(b"s1-random-id"), A, T0, aff) == 0
    book.track(COOKIE, sid_hash(b"s2-random-id"), A, T0, aff)
    header = book.table(AffinityType.HEADER, aff)
    header.insert(12345, book.index(B), T0)
    assert dict(book.loads) == {A: 2, B: 1}
    assert book.loads.get(BackendId("unknown")) == 0
    # A cookie session seen on another backend moves its count; seen again, it is touched.
    book.track(COOKIE, sid_hash(b"s1-random-id"), B, T0 + 5, aff)
    assert (book.count(0), book.count(1)) == (1, 2)
    table, slot = book.entry(COOKIE, sid_hash(b"s1-random-id"), B, aff)
    assert table is book.table(COOKIE, aff)
    assert slot >= 0
    assert table.last_seen(slot) == T0 + 5
    assert book.entry(COOKIE, sid_hash(b"s1-random-id"), A, aff)[1] == -1  # on B, not A
    assert book.entry(COOKIE, sid_hash(b"never-seen-id"), A, aff)[1] == -1
    # Idle past idleTimeout: swept, uncounted. s1 was seen later, so it stays a while.
    assert book.sweep(T0 + 61, budget=1000) == 2
    assert (book.count(0), book.count(1)) == (0, 1)
    assert book.sweep(T0 + 66, budget=1000) == 1
    assert dict(book.loads) == {A: 0, B: 0}
    stats = book.table_stats()
    assert stats["cookie"]["expired"] == 2
    assert stats["header"] == {"entries": 0, "capacity": 100, "evicted": 0, "expired": 1}


def test_adopt_numbers_backends_and_applies_new_timeouts() -> None:
    book = SessionBook(capacity=100, epoch=T0 - 1)
    aff = AffinitySettings(idle_timeout=600, absolute_timeout=None)
    t = book.table(AffinityType.QUERY, aff)
    t.insert(1, book.index(A), T0)
    book.adopt([B, A], AffinitySettings(idle_timeout=10, absolute_timeout=None))
    assert book.ids == [A, B]
    assert book.sweep(T0 + 11, budget=1000) == 1  # the plan's shorter idleTimeout applies


def test_sketches_unite_every_table_as_64_bit_hashes() -> None:
    """A backend's sketch holds the sessions of every table, each under its table key
    shifted up to 64 bits (a cookie session: its random id's first 8 bytes)."""
    book = SessionBook(capacity=100, epoch=T0 - 1)
    aff = AffinitySettings(idle_timeout=60, absolute_timeout=None)
    sid = b"\xff" * 8 + b"rest"
    book.track(COOKIE, sid_hash(sid), A, T0, aff)
    book.track(AffinityType.HEADER, 5, A, T0, aff)
    book.track(AffinityType.HEADER, 6, B, T0, aff)
    got = book.sketches(k=3)
    assert got == {0: [5 << 4, (sid_hash(sid) << 4) % (1 << 64)], 1: [6 << 4]}
    for h in range(10, 20):
        book.track(AffinityType.QUERY, h, B, T0, aff)
    assert book.sketches(k=3)[1] == [6 << 4, 10 << 4, 11 << 4]


def test_drain_live_widens_the_window_of_cookie_tables_by_their_step() -> None:
    book = SessionBook(capacity=100, epoch=T0 - 1)
    aff = AffinitySettings(idle_timeout=600, absolute_timeout=None)
    book.track(COOKIE, 1, A, T0, aff)
    book.track(AffinityType.APP_COOKIE, 2, A, T0, aff)
    book.track(AffinityType.HEADER, 3, A, T0, aff)
    book.track(AffinityType.HEADER, 4, B, T0 + 9, aff)
    live = book.drain_live(T0 + 10, min_idle=5, cookie_step=2, companion_step=None)
    assert live == [0, 1]
    live = book.drain_live(T0 + 6, min_idle=5, cookie_step=2, companion_step=None)
    assert live == [1, 1]  # only the cookie session: seen at T0, idle from T0 + 2
    live = book.drain_live(T0 + 6, min_idle=5, cookie_step=2, companion_step=3)
    assert live == [2, 1]


def test_each_mode_keeps_its_own_table_whatever_the_order_of_asking() -> None:
    """The book answers a repeated mode from its last answer; alternating modes must
    still each get their own table, created once."""
    aff = AffinitySettings(idle_timeout=60, absolute_timeout=None)
    book = SessionBook(capacity=10, epoch=T0 - 1)
    modes = [COOKIE, AffinityType.HEADER, AffinityType.HEADER, COOKIE, AffinityType.QUERY]
    got = [book.table(m, aff) for m in modes * 2]
    assert len({id(t) for t in got}) == 3
    for m, t in zip(modes * 2, got, strict=True):
        assert t is book.tables[m]
        assert t.name == TABLE_NAMES[m]
