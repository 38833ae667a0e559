"""Socket-free engine tests: feed bytes to the real client and backend connections on
in-memory transports (``tests/proxy/fuzzing.py``) and assert the exact bytes the
engine sends each way. They sit beside the real-socket functional tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from limpet.proxy.engine.client import ClientConnection
from limpet.proxy.engine.upstream import CLOSED, UpstreamConnection

from ..fuzzing import Harness, MemoryTransport

FORWARDED = b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: x\r\n"


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def connect(
    h: Harness,
) -> tuple[ClientConnection, MemoryTransport, UpstreamConnection, MemoryTransport]:
    up, up_out = h.idle_backend()
    client = ClientConnection(h.server)
    out = MemoryTransport()
    client.connection_made(out)
    return client, out, up, up_out


def test_get_is_rewritten_and_the_answer_relayed(harness: Harness) -> None:
    client, out, up, up_out = connect(harness)
    client.data_received(b"GET /a?b HTTP/1.1\r\nHost: x\r\nKeep-Alive: 5\r\nX-A: 1\r\n\r\n")
    assert bytes(up_out.out) == b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n" + FORWARDED + b"\r\n"
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: 1\r\n\r\nok")
    assert bytes(out.out) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert harness.pool.idle_count() == 1  # back in the pool


def test_chunked_body_is_reframed_without_extensions_and_trailers_filtered(
    harness: Harness,
) -> None:
    client, _, _, up_out = connect(harness)
    client.data_received(
        b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nX-Sum: 1\r\nHost: evil\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    )
    assert bytes(up_out.out) == (
        b"POST /p HTTP/1.1\r\nHost: x\r\n" + FORWARDED + b"Transfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"
    )


def test_connection_listing_content_length_keeps_it(harness: Harness) -> None:
    client, _, _, up_out = connect(harness)
    client.data_received(
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: content-length\r\n\r\nabc"
    )
    assert bytes(up_out.out) == (
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n" + FORWARDED + b"\r\nabc"
    )


def test_refused_request_sends_nothing_upstream(harness: Harness) -> None:
    client, out, _, up_out = connect(harness)
    client.data_received(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert bytes(up_out.out) == b""
    assert out.out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert out.closed


def test_upgrade_answered_without_101_is_not_pooled(harness: Harness) -> None:
    client, out, up, up_out = connect(harness)
    client.data_received(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert up_out.out.endswith(b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
    assert out.out.endswith(b"\r\n\r\nno")
    assert up.state == CLOSED
    assert harness.pool.idle_count() == 0
    assert out.closed


def test_pipelined_requests_are_answered_in_order(harness: Harness) -> None:
    client, out, up, up_out = connect(harness)
    client.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert up_out.out.count(b"GET ") == 1  # the second waits for the first answer
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    assert up_out.out.count(b"GET ") == 2
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    assert out.out.endswith(b"\r\n\r\n1HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")


class CountingTransport(MemoryTransport):
    """A memory transport that also counts write calls (each one a send system call on a
    real socket)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.calls += 1
        super().write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.calls += 1
        for data in list_of_data:
            super().write(data)


def counted_backend(up: UpstreamConnection) -> CountingTransport:
    transport = CountingTransport()
    up.connection_made(transport)
    return transport


def test_a_request_read_at_once_leaves_in_one_write(harness: Harness) -> None:
    client, _, up, _ = connect(harness)
    backend = counted_backend(up)
    client.data_received(
        b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert bytes(backend.out) == (
        b"POST /p HTTP/1.1\r\nHost: x\r\n" + FORWARDED + b"Transfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert backend.calls == 1


def test_body_bytes_leave_once_per_client_read(harness: Harness) -> None:
    client, _, up, _ = connect(harness)
    backend = counted_backend(up)
    client.data_received(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na")
    assert backend.calls == 1
    client.data_received(b"\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n")
    assert backend.calls == 2
    assert bytes(backend.out).endswith(b"\r\n\r\n1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n")
