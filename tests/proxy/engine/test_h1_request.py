"""The client side's sans-I/O request reader (``engine/h1/request.py``): feed a client's
bytes, assert the requests it reports and the result of each read, with no socket and no
event loop. The sink records what it is told, as the client connection would act on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from limpet.proxy.engine.h1 import request
from limpet.proxy.engine.h1.connection import Event, InvalidTransition, State, step
from limpet.proxy.engine.h1.request import RequestReader


@dataclass
class Recorder:
    """A RequestSink that records the events; ``accept`` False refuses new requests, and
    ``fault``, when set, runs at each head (a bug behind the sink)."""

    accept: bool = True
    events: list[tuple[object, ...]] = field(default_factory=list)
    fault: Callable[[], object] | None = None

    def begin(self) -> bool:
        self.events.append(("begin",))
        return self.accept

    def head(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        version: str,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        if self.fault is not None:
            self.fault()
        self.events.append(("head", method, target, tuple(headers), version, keep_alive, upgrade))

    def body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def complete(self) -> None:
        self.events.append(("complete",))


def reader(sink: Recorder, **limits: int) -> RequestReader:
    options = {
        "max_request_line": 64,
        "max_header_bytes": 100,
        "max_headers": 4,
        "head_guard": 300,
    }
    options.update(limits)
    return RequestReader(sink, **options)


HEADERS = ((b"Host", b"x"), (b"Content-Length", b"3"))


def test_a_request_with_a_body_is_reported_in_order() -> None:
    sink = Recorder()
    r = reader(sink)
    data = b"POST /a?b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    assert r.feed(data) == request.MORE
    assert sink.events == [
        ("begin",),
        (
            "head",
            b"POST",
            b"/a?b",
            ((b"Host", b"x"), (b"Content-Length", b"3")),
            "1.1",
            True,
            False,
        ),
        ("body", b"abc"),
        ("complete",),
    ]
    assert (r.phase, r.requests) == (request.IDLE, 1)


def test_phases_follow_the_bytes_across_reads() -> None:
    sink = Recorder()
    r = reader(sink)
    assert r.feed(b"POST / HTTP/1.1\r\nHost: x\r\n") == request.MORE
    assert r.phase == request.HEAD
    assert r.feed(b"Content-Length: 4\r\n\r\nab") == request.MORE
    assert r.phase == request.BODY
    assert r.feed(b"cd") == request.MORE
    assert r.phase == request.IDLE
    assert [e for e in sink.events if e[0] == "body"] == [("body", b"ab"), ("body", b"cd")]


def test_pipelined_requests_in_one_read_are_all_reported() -> None:
    sink = Recorder()
    r = reader(sink)
    data = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
    assert r.feed(data) == request.MORE
    targets = [e[2] for e in sink.events if e[0] == "head"]
    assert targets == [b"/1", b"/2"]
    assert r.requests == 2


def test_chunked_bodies_and_their_trailers() -> None:
    sink = Recorder()
    r = reader(sink)
    data = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"
    )
    assert r.feed(data) == request.MORE
    assert ("body", b"abc") in sink.events
    assert sink.events[-1] == ("complete",)
    assert r.trailers == [(b"X-Sum", b"1")]


def test_trailers_are_bounded_like_headers() -> None:
    r = reader(Recorder())
    data = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(5))
        + b"\r\n"
    )
    assert r.feed(data) == request.INVALID
    assert r.status == 431


def test_an_upgrade_request_ends_http_with_the_bytes_that_follow() -> None:
    sink = Recorder()
    r = reader(sink)
    head = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert r.feed(head + b"\x81\x00") == request.UPGRADE
    assert r.rest == b"\x81\x00"
    assert sink.events[1][-1] is True  # the head says upgrade


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /" + b"a" * 80 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"y" * 120 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 5 + b"\r\n", 431),
        (b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"get / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\nX: 1\r\n\r\n", 400),
    ],
)
def test_what_is_not_a_request_is_refused_with_its_status(data: bytes, status: int) -> None:
    sink = Recorder()
    r = reader(sink)
    assert r.feed(data) == request.INVALID
    assert r.status == status
    assert not [e for e in sink.events if e[0] == "head"]


def test_a_head_that_never_ends_is_cut_at_the_guard() -> None:
    r = reader(Recorder(), max_header_bytes=10_000, head_guard=200)
    assert r.feed(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ") == request.MORE
    assert r.feed(b"z" * 250) == request.INVALID
    assert r.status == 431


def test_a_request_line_that_never_ends_is_cut_at_the_guard() -> None:
    r = reader(Recorder(), max_request_line=10_000, head_guard=200)
    assert r.feed(b"GET /") == request.MORE
    assert r.feed(b"a" * 250) == request.INVALID
    assert r.status == 414


def test_a_refusing_sink_stops_the_read_without_an_error() -> None:
    sink = Recorder(accept=False)
    r = reader(sink)
    assert r.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == request.MORE
    assert sink.events == [("begin",)]
    assert r.status == 0


def test_an_invalid_transition_in_a_callback_surfaces_instead_of_a_400() -> None:
    # The exchange is in a state that cannot take a new request (a bug).
    r = reader(Recorder(fault=lambda: step(State.TUNNEL, Event.REQUEST)))
    with pytest.raises(InvalidTransition, match="REQUEST in state TUNNEL"):
        r.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 0  # not refused as the client's fault


def _router_bug() -> None:
    raise ValueError("a bug behind the sink")


def test_an_exception_behind_the_sink_is_a_500_kept_for_the_log_not_a_400() -> None:
    r = reader(Recorder(fault=_router_bug))
    assert r.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == request.INVALID
    assert r.status == 500
    assert isinstance(r.failure, ValueError)
    # Bytes that are the client's fault stay a 400, with nothing to log.
    r = reader(Recorder())
    assert r.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\0\r\n\r\n") == request.INVALID
    assert r.status == 400
    assert r.failure is None


_LINES = st.tuples(
    st.sampled_from([b"GET", b"POST", b"OPTIONS"]),
    st.sampled_from([b"/", b"/a?b=HTTP/1.1", b"http://x/HTTP/1.1%0D%0A", b"/HTTP/1.1"]),
    st.sampled_from(["1.0", "1.1"]),
    st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]),  # empty lines before the request line
)


@settings(max_examples=300, deadline=None)
@example(lines=[(b"GET", b"/", "1.1", b""), (b"GET", b"/", "1.0", b"")], cuts=[])
@example(lines=[(b"GET", b"/", "1.0", b"\r\n")], cuts=[])
@given(
    st.lists(_LINES, min_size=1, max_size=4),
    st.lists(st.integers(min_value=1, max_value=400), max_size=6),
)
def test_each_request_is_reported_with_the_version_of_its_own_line(
    lines: list[tuple[bytes, bytes, str, bytes]], cuts: list[int]
) -> None:
    # The reader reads "1.1" off the request line where it can (RequestReader._version):
    # whatever the reads' boundaries, pipelining and empty lines, each request must get
    # the version its line carries, as httptools itself reports it.
    # (HTTP/1.0 asks for keep-alive, or llhttp would take nothing after the first.)
    stream = b"".join(
        lead + method + b" " + target + b" HTTP/" + version.encode() + b"\r\nHost: x\r\n"
        b"Connection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        for method, target, version, lead in lines
    )
    sink = Recorder()
    r = reader(sink, max_header_bytes=1000, max_headers=10, head_guard=10_000)
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        if start < cut <= len(stream):
            assert r.feed(stream[start:cut]) == request.MORE
            start = cut
    heads = [e for e in sink.events if e[0] == "head"]
    assert [h[4] for h in heads] == [version for _, _, version, _ in lines]
    assert [h[2] for h in heads] == [target for _, target, _, _ in lines]


def test_the_version_of_a_line_split_across_reads() -> None:
    for version in (b"1.0", b"1.1"):
        sink = Recorder()
        r = reader(sink)
        data = b"GET /v HTTP/" + version + b"\r\nHost: x\r\n\r\n"
        for i in range(len(data)):  # one byte a read
            assert r.feed(data[i : i + 1]) == request.MORE
        (head,) = [e for e in sink.events if e[0] == "head"]
        assert head[4] == version.decode()
