"""The batched CSPRNG id source: every os.urandom byte handed out once, in order; a
forked child never repeats its parent's ids."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.proxy.session.random_ids import RandomIds


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 32), batch=st.integers(1, 8), takes=st.integers(0, 40))
def test_ids_are_the_urandom_bytes_in_order(size: int, batch: int, takes: int) -> None:
    drawn: list[bytes] = []
    real = os.urandom

    def recording(n: int) -> bytes:
        out = real(n)
        drawn.append(out)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "urandom", recording)
        ids = RandomIds(size=size, batch=batch)
        got = [ids.take() for _ in range(takes)]
    assert all(len(i) == size for i in got)
    assert all(len(d) == size * batch for d in drawn)
    assert len(drawn) == -(-takes // batch)  # a batch is read only when it is needed
    assert b"".join(got) == b"".join(drawn)[: size * takes]


def test_ids_do_not_repeat() -> None:
    ids = RandomIds(size=12, batch=16)
    seen = {ids.take() for _ in range(10_000)}
    assert len(seen) == 10_000


def test_discard_drops_the_unused_bytes() -> None:
    ids = RandomIds(size=12, batch=16)
    first = ids.take()
    ids.discard()
    following = {ids.take() for _ in range(15)}
    assert first not in following
    assert len(following) == 15


def test_a_forked_child_does_not_hand_out_its_parents_ids() -> None:
    ids = RandomIds(size=12, batch=64)
    ids.take()  # the parent now holds 63 unused ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id, then leave at once
        try:
            os.write(write, ids.take())
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 64)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert len(child) == 12
    parents = {ids.take() for _ in range(63)}
    assert child not in parents


@pytest.mark.parametrize(("size", "batch"), [(0, 1), (12, 0), (-1, 4)])
def test_bad_sizes(size: int, batch: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        RandomIds(size=size, batch=batch)
