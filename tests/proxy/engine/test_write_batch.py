"""The write batch (``engine/write_batch.py``): alone, then under the real engine on
in-memory transports with writes held until the test ends the loop's turn."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from limpet.proxy.engine.write_batch import WriteBatch

from ..fuzzing import Harness, MemoryTransport, Turns

FORWARDED = b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: x\r\n"


class Broken(MemoryTransport):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        raise OSError("broken pipe")


@pytest.fixture
def turns() -> Turns:
    return Turns(held=True)


def test_writes_wait_for_the_end_of_the_turn_and_keep_their_order(turns: Turns) -> None:
    batch = WriteBatch(turns)
    a, b = MemoryTransport(), MemoryTransport()
    batch.write(a, b"1")
    batch.write(b, [b"x", b"y"])
    batch.write(a, [b"2", b"3"])
    assert (bytes(a.out), bytes(b.out)) == (b"", b"")
    assert len(turns.ready) == 1  # one flush a turn, however many writes
    turns.end()
    assert (bytes(a.out), bytes(b.out)) == (b"123", b"xy")
    assert batch.held() == 0
    batch.write(b, b"z")  # the next turn schedules its own flush
    assert len(turns.ready) == 1
    turns.end()
    assert bytes(b.out) == b"xyz"


def test_flush_to_sends_one_transports_bytes_and_keeps_the_rest(turns: Turns) -> None:
    batch = WriteBatch(turns)
    a, b = MemoryTransport(), MemoryTransport()
    batch.write(a, b"1")
    batch.write(b, b"x")
    batch.write(a, b"2")
    batch.flush_to(a)
    assert (bytes(a.out), bytes(b.out)) == (b"12", b"")
    assert batch.held() == 1
    turns.end()
    assert (bytes(a.out), bytes(b.out)) == (b"12", b"x")


def test_a_closing_transport_gets_nothing(turns: Turns) -> None:
    batch = WriteBatch(turns)
    a = MemoryTransport()
    batch.write(a, b"late")
    a.close()
    turns.end()
    assert a.out == b""


def test_a_failing_write_drops_its_connection_not_the_others(
    turns: Turns, caplog: pytest.LogCaptureFixture
) -> None:
    batch = WriteBatch(turns)
    bad, good = Broken(), MemoryTransport()
    batch.write(bad, b"1")
    batch.write(good, b"2")
    with caplog.at_level(logging.ERROR, logger="limpet.proxy.engine.write_batch"):
        turns.end()
    assert bad.aborted
    assert bytes(good.out) == b"2"
    assert "a held write failed" in caplog.text


def test_a_write_made_while_flushing_leaves_in_the_next_turn(turns: Turns) -> None:
    batch = WriteBatch(turns)
    a, b = MemoryTransport(), MemoryTransport()

    class Echo(MemoryTransport):
        def write(self, data: bytes | bytearray | memoryview) -> None:
            super().write(data)
            batch.write(b, b"echo")  # as a pause_writing callback might

    echo = Echo()
    batch.write(echo, b"x")
    batch.write(a, b"1")
    turns.ready.pop()()  # this turn's flush only
    assert (bytes(echo.out), bytes(a.out), bytes(b.out)) == (b"x", b"1", b"")
    assert batch.held() == 1
    assert len(turns.ready) == 1
    turns.end()
    assert bytes(b.out) == b"echo"


def test_flush_to_keeps_a_write_made_meanwhile_after_the_held_ones(turns: Turns) -> None:
    batch = WriteBatch(turns)
    b = MemoryTransport()

    class Echo(MemoryTransport):
        def write(self, data: bytes | bytearray | memoryview) -> None:
            super().write(data)
            batch.write(b, b"2")

    echo = Echo()
    batch.write(b, b"1")
    batch.write(echo, b"x")
    batch.flush_to(echo)
    assert bytes(echo.out) == b"x"
    turns.end()
    assert bytes(b.out) == b"12"


# -- the engine with held writes ----------------------------------------------------------


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness(held=True)
    yield h
    h.close()


def test_an_exchange_leaves_at_the_ends_of_turns(harness: Harness) -> None:
    up, up_out = harness.idle_backend()
    client, out = harness.client()
    client.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert up_out.out == b""
    harness.turns.end()
    assert bytes(up_out.out) == b"GET /a HTTP/1.1\r\nHost: x\r\n" + FORWARDED + b"\r\n"
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert out.out == b""
    harness.turns.end()
    assert bytes(out.out) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_pipelined_answers_leave_in_order(harness: Harness) -> None:
    up, _ = harness.idle_backend()
    client, out = harness.client()
    client.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    harness.turns.end()
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    harness.turns.end()
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    harness.turns.end()
    assert bytes(out.out).count(b"HTTP/1.1 200 OK") == 2
    assert bytes(out.out).endswith(b"\r\n\r\n1HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")


def test_an_answer_before_a_close_reaches_the_client_first(harness: Harness) -> None:
    """``Connection: close``: the client's transport closes in the same turn as the
    answer is relayed; the held answer must leave before the close (a closed transport
    takes nothing)."""
    up, _ = harness.idle_backend()
    client, out = harness.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    harness.turns.end()
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
    assert out.closed
    assert bytes(out.out).startswith(b"HTTP/1.1 200 OK\r\n")
    assert bytes(out.out).endswith(b"\r\n\r\nbody")


def test_a_refusal_reaches_the_client_before_the_close(harness: Harness) -> None:
    harness.idle_backend()
    client, out = harness.client()
    client.data_received(
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    harness.turns.end()
    assert out.closed
    assert bytes(out.out).startswith(b"HTTP/1.1 400 ")
