"""Properties of both sans-I/O parts: how the peer's bytes are cut into reads changes
nothing a peer can see. The client's side of each answer is checked with h11, a strict
parser the engine does not use."""

from __future__ import annotations

import itertools

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.proxy.engine.h1 import response
from limpet.proxy.engine.h1.request import RequestReader

from .test_h1_request import Recorder
from .test_h1_response import Facts, expect, machine_and_route


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` in reads, cut at ``points`` (any order, repeats allowed)."""
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def answer_bytes(body: bytes, framing: str, chunk_sizes: list[int]) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nX-App: 1\r\n"
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    if framing == "close":
        return head + b"\r\n" + body
    out = [head + b"Transfer-Encoding: chunked\r\n\r\n"]
    rest = body
    for size in chunk_sizes:
        piece, rest = rest[: size + 1], rest[size + 1 :]
        if piece:
            out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    if rest:
        out.append(b"%x\r\n%s\r\n" % (len(rest), rest))
    out.append(b"0\r\nX-Sum: 1\r\n\r\n")
    return b"".join(out)


def client_view(data: bytes) -> tuple[int, bytes, bool]:
    """What an h11 client reads from the machine's bytes: status, body, complete."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    status, body, complete = 0, b"", False
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            complete = True
        else:
            return status, body, complete


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=300),
    framing=st.sampled_from(["length", "chunked", "close"]),
    chunk_sizes=st.lists(st.integers(0, 50), max_size=8),
    points=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_an_answer_reads_the_same_however_it_is_cut(
    body: bytes, framing: str, chunk_sizes: list[int], points: list[int]
) -> None:
    machine, route = machine_and_route()
    expect(machine, Facts(route=route))
    out = []
    events = []
    for read in cut(answer_bytes(body, framing, chunk_sizes), points):
        events.append(machine.feed(read))
        out += machine.out
        machine.out.clear()
    if framing == "close":
        assert machine.closed()
        out += machine.out
    else:
        assert events[-1] == response.DONE
        assert machine.keep
    assert set(events[:-1]) <= {response.MORE}
    assert client_view(b"".join(out)) == (200, body, True)


REQUESTS = (
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nab\r\n1;e=1\r\nc\r\n0\r\nX-T: 1\r\n\r\n",
)


def read_all(reads: list[bytes]) -> tuple[list[tuple[object, ...]], bytes]:
    """The requests a reader reports for ``reads``, with body pieces joined."""
    sink = Recorder()
    reader = RequestReader(
        sink, max_request_line=200, max_header_bytes=400, max_headers=10, head_guard=800
    )
    for read in reads:
        assert reader.feed(read) == 0
    shape = [e for e in sink.events if e[0] != "body"]
    body = b"".join(e[1] for e in sink.events if e[0] == "body" and isinstance(e[1], bytes))
    return shape, body


@settings(max_examples=150, deadline=None)
@given(
    order=st.lists(st.sampled_from(range(len(REQUESTS))), min_size=1, max_size=4),
    points=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_pipelined_requests_read_the_same_however_they_are_cut(
    order: list[int], points: list[int]
) -> None:
    data = b"".join(REQUESTS[i] for i in order)
    assert read_all(cut(data, points)) == read_all([data])
