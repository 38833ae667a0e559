"""Grammar-aware HTTP/1.1 message generation and an in-memory harness for the engine,
shared by the seeded fuzz test (``tests/proxy/conformance/test_fuzz.py``) and the
benchmark-style run (``python -m bench.http_fuzz``).

- :func:`request` and :func:`response` build one message from a ``random.Random``:
  mostly valid (RFC 9112 grammar), with the framing and field tricks of
  request-smuggling research (CL.TE, TE.CL, obfuscated Transfer-Encoding, chunk-size
  overflow, chunk extensions, bare CR/LF, whitespace before the colon, obs-fold,
  duplicate Host, Connection listing framing fields), then sometimes mutated byte-wise.
  Hypothesis drives them through ``st.randoms()``, the benchmark through a seeded
  ``random.Random``.
- :class:`Harness` runs the real engine (``ClientConnection``, ``UpstreamConnection``,
  the pool and the session router) without sockets: transports are in-memory objects
  that record what the engine writes. For each client message it feeds the bytes, lets
  the h11 oracle read what went to the backend, answers each backend message, ends the
  client connection, and classifies the outcome (:class:`Outcome`).

No event loop runs: the pool always holds an idle backend connection, so the engine
never dials, and :class:`Turns` stands in for the loop's ``call_soon`` that ends a turn
of the engine's write batch (``engine/write_batch.py``): by default each write leaves
when it is made; ``Harness(held=True)`` holds them until the test calls
``harness.turns.end()``. Everything is single-threaded.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from limpet.proxy.engine.client import ClientConnection
from limpet.proxy.engine.pool import UpstreamPool
from limpet.proxy.engine.server import Server
from limpet.proxy.engine.upstream import UpstreamConnection
from limpet.proxy.engine.write_batch import WriteBatch
from limpet.proxy.process.standalone import standalone_plan
from limpet.proxy.session.routing import RouterSettings, SessionRouter
from limpet.proxy.settings import ProxySettings

from .oracle import (
    MAX_EVENT,
    ClientResult,
    Intended,
    check_exchange,
    check_response,
    expected_message,
)
from .oracle import (
    Received as BackendMessage,
)

# -- generation -------------------------------------------------------------------------------

METHODS = [b"GET", b"GET", b"GET", b"POST", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS"]
ODD_METHODS = [b"PATCH", b"PURGE", b"FOO", b"get", b"G\x00T", b"GET\t", b""]
TOKENS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~"
TRICKY = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b",", b";", b"#", b"@", b"\x7f"]
CONNECTION_TOKENS = [
    b"close",
    b"keep-alive",
    b"upgrade",
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"cookie",
    b"x-forwarded-for",
    b"x-a",
    b"te",
]
TE_VALUES = [
    b"chunked",
    b"chunked",
    b"Chunked",
    b"gzip, chunked",
    b"chunked, gzip",
    b"xchunked",
    b" chunked",
    b"chunked ",
    b"\tchunked",
    b'"chunked"',
    b"chunked, chunked",
    b"identity",
    b", chunked",
    b"chunked;q=1",
]


def _token(rnd: random.Random, lo: int = 1, hi: int = 8) -> bytes:
    return bytes(rnd.choice(TOKENS) for _ in range(rnd.randint(lo, hi)))


def _target(rnd: random.Random) -> bytes:
    roll = rnd.random()
    path = b"/" + b"/".join(_token(rnd) for _ in range(rnd.randint(0, 3)))
    if rnd.random() < 0.3:
        path += b"?" + _token(rnd) + b"=" + _token(rnd)
    if roll < 0.85:
        return path
    if roll < 0.93:
        return rnd.choice([b"http://", b"https://"]) + _host(rnd) + path
    return rnd.choice([b"*", path + b"#f", b"http://u@h" + path, path + b" x", b"ftp://h/"])


def _host(rnd: random.Random) -> bytes:
    host = _token(rnd, 1, 10).replace(b"~", b"")
    if rnd.random() < 0.2:
        host += b":%d" % rnd.randint(1, 65535)
    return host or b"h"


def _chunked_body(rnd: random.Random, body: bytes) -> bytes:
    out = []
    pos = 0
    while pos < len(body):
        n = rnd.randint(1, max(1, len(body) - pos))
        ext = b";e=" + _token(rnd) if rnd.random() < 0.1 else b""
        size = b"%x" % n if rnd.random() < 0.9 else b"%X" % n
        out.append(size + ext + b"\r\n" + body[pos : pos + n] + b"\r\n")
        pos += n
    if rnd.random() < 0.05:
        out.append(rnd.choice([b"1ffffffffffffffff\r\nab\r\n", b"-1\r\n", b"0x2\r\nab\r\n"]))
    trailers = b""
    if rnd.random() < 0.15:
        trailers = b"".join(
            rnd.choice([b"X-T", b"Host", b"Cookie", b"X-Forwarded-For", b"Content-Length"])
            + b": "
            + _token(rnd)
            + b"\r\n"
            for _ in range(rnd.randint(1, 3))
        )
    return b"".join(out) + b"0\r\n" + trailers + b"\r\n"


def _framing(rnd: random.Random, version: bytes) -> tuple[list[bytes], bytes]:
    """Framing fields and the body bytes that follow the head."""
    body = _token(rnd, 0, 40) if rnd.random() < 0.9 else b"GET /s HTTP/1.1\r\nHost: s\r\n\r\n"
    roll = rnd.random()
    if roll < 0.35:
        return [], b""
    if roll < 0.65:
        n = len(body) if rnd.random() < 0.9 else len(body) + rnd.choice([-1, 1, 100])
        value = b"%d" % max(n, 0)
        if rnd.random() < 0.1:
            value = rnd.choice([b"+" + value, value + b", " + value, b"0x1", b"", b"-1", value])
        fields = [b"Content-Length: " + value]
        if rnd.random() < 0.05:
            fields.append(b"Content-Length: %d" % (len(body) + 1))
        return fields, body
    te = rnd.choice(TE_VALUES)
    fields = [b"Transfer-Encoding: " + te]
    if rnd.random() < 0.1:
        fields.append(b"Content-Length: %d" % len(body))
    if rnd.random() < 0.05:
        fields.append(b"Transfer-Encoding: chunked")
    return fields, _chunked_body(rnd, body)


def _fields(rnd: random.Random, version: bytes) -> list[bytes]:
    fields = []
    hosts = rnd.choices([0, 1, 2], weights=[5, 90, 5])[0] if version == b"HTTP/1.1" else 0
    for _ in range(hosts):
        host = _host(rnd) if rnd.random() < 0.95 else rnd.choice([b"a b", b"u@h", b"h/p", b""])
        fields.append(b"Host: " + host)
    for _ in range(rnd.randint(0, 4)):
        roll = rnd.random()
        if roll < 0.15:
            tokens = rnd.sample(CONNECTION_TOKENS, rnd.randint(1, 3))
            fields.append(b"Connection: " + b", ".join(tokens))
        elif roll < 0.25:
            fields.append(b"Cookie: " + _token(rnd) + b"=" + _token(rnd))
        elif roll < 0.3:
            fields.append(b"X-Forwarded-For: 6.6.6.6")
        elif roll < 0.35:
            fields.append(b"Upgrade: websocket")
        elif roll < 0.4:
            fields.append(b"Expect: 100-continue")
        elif roll < 0.45:
            fields.append(rnd.choice([b"Keep-Alive: 5", b"TE: trailers", b"Proxy-X: 1"]))
        else:
            fields.append(b"X-" + _token(rnd) + b": " + _token(rnd, 0, 12))
    return fields


def request(rnd: random.Random) -> bytes:
    """One request: grammar-built, then mutated in about one case in five."""
    method = rnd.choice(METHODS) if rnd.random() < 0.95 else rnd.choice(ODD_METHODS)
    version = rnd.choices([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0"], weights=[85, 13, 2])[0]
    fields = _fields(rnd, version)
    framing, body = _framing(rnd, version) if method != b"HEAD" else ([], b"")
    fields += framing
    rnd.shuffle(fields)
    head = method + b" " + _target(rnd) + b" " + version + b"\r\n"
    data = head + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body
    return mutate(rnd, data) if rnd.random() < 0.2 else data


def response(rnd: random.Random) -> bytes:
    """One backend answer: grammar-built, sometimes mutated."""
    status = rnd.choice([200, 200, 200, 201, 204, 304, 404, 500, 103, 100])
    head = b"HTTP/1.1 %d X\r\n" % status
    if status < 200:
        head = head + b"\r\n" + b"HTTP/1.1 200 OK\r\n"
        status = 200
    fields = [b"X-" + _token(rnd) + b": " + _token(rnd, 0, 8) for _ in range(rnd.randint(0, 3))]
    if rnd.random() < 0.1:
        fields.append(b"Connection: " + b", ".join(rnd.sample(CONNECTION_TOKENS, 2)))
    if rnd.random() < 0.1:
        fields.append(b"Set-Cookie: a=" + _token(rnd))
    body = _token(rnd, 0, 30)
    if status in (204, 304):
        body = b""
        framing: list[bytes] = []
    elif rnd.random() < 0.6:
        framing = [b"Content-Length: %d" % len(body)]
    else:
        framing = [b"Transfer-Encoding: " + rnd.choice(TE_VALUES[:3])]
        body = _chunked_body(rnd, body)
    fields += framing
    rnd.shuffle(fields)
    data = head + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body
    return mutate(rnd, data) if rnd.random() < 0.2 else data


def mutate(rnd: random.Random, data: bytes) -> bytes:
    """One to three byte-level mutations aimed at the places parsers disagree on."""
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 3)):
        if not buf:
            break
        i = rnd.randrange(len(buf))
        kind = rnd.random()
        if kind < 0.3:
            buf[i : i + 1] = rnd.choice(TRICKY)
        elif kind < 0.5:
            del buf[i]
        elif kind < 0.65:
            buf[i:i] = rnd.choice(TRICKY)
        elif kind < 0.8:
            j = buf.find(b"\r\n", i)
            if j >= 0:
                buf[j : j + 2] = rnd.choice([b"\n", b"\r", b"\r\n \r\n", b" \r\n"])
        else:
            buf[i] = rnd.randrange(256)
    return bytes(buf)


# -- the in-memory harness ------------------------------------------------------------------------


class MemoryTransport(asyncio.Transport):
    """A transport that records writes; closing is only noted."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.aborted = False
        self._peer = peer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:
            self.out += data

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default


@dataclass
class Outcome:
    """One client message through the engine."""

    kind: str  # "ok", "refused", "lenient" or "disagreement"
    detail: str = ""
    forwarded: list[BackendMessage] = field(default_factory=list)


class Turns:
    """The event loop's ``call_soon`` for the write batch: with ``held`` False each
    callback runs at once (a write leaves when it is made); with ``held`` True they wait
    for :meth:`end`, as a real loop runs them once the turn's reads are handled."""

    def __init__(self, *, held: bool = False) -> None:
        self.held = held
        self.ready: list[Callable[[], object]] = []

    def call_soon(self, callback: Callable[[], object], /) -> None:
        if self.held:
            self.ready.append(callback)
        else:
            callback()

    def end(self) -> None:
        while self.ready:
            ready, self.ready = self.ready, []
            for callback in ready:
                callback()


class Harness:
    """The real engine on in-memory transports (see the module docstring)."""

    BACKEND = ("s1", "127.0.0.1", 9)

    def __init__(self, *, held: bool = False) -> None:
        settings = ProxySettings()
        router = SessionRouter(settings=RouterSettings())
        # client-ip affinity: one session for the one peer, so memory growth over a run
        # is the engine's, not a session table filling up.
        router.load_plan(standalone_plan([self.BACKEND], "client-ip"))
        self.server = Server(settings=settings, router=router)
        self.loop = asyncio.new_event_loop()  # never run: the engine must not dial here
        self.turns = Turns(held=held)
        self.batch = WriteBatch(self.turns)
        self.pool = UpstreamPool(
            settings=settings,
            router=router,
            clock=self.server.clock,
            stats=self.server.stats,
            classes=self.server.classes,
            loop=self.loop,
            batch=self.batch,
        )
        self.server._pool = self.pool

    def close(self) -> None:
        self.pool.close()
        self.loop.close()

    def idle_backend(self) -> tuple[UpstreamConnection, MemoryTransport]:
        bid, host, port = self.BACKEND
        backend = self.pool._backend(bid, host, port)
        for conn in backend.idle:
            conn.abort()
        backend.idle.clear()
        self.pool.live.clear()
        up = UpstreamConnection(self.pool, backend)
        transport = MemoryTransport()
        up.connection_made(transport)
        self.pool.release(up)
        return up, transport

    def client(self) -> tuple[ClientConnection, MemoryTransport]:
        """A client connection, just made, and the transport that records its bytes."""
        client = ClientConnection(self.server)
        transport = MemoryTransport()
        client.connection_made(transport)
        return client, transport

    def run_request(self, data: bytes, reply: bytes | None = None) -> Outcome:
        """Feed one client message (split into two reads at a random-free fixed point),
        answer every backend message with ``reply``, end the client connection and apply
        the oracle's rule."""
        up, up_transport = self.idle_backend()
        client = ClientConnection(self.server)
        ct = MemoryTransport()
        client.connection_made(ct)
        forwarded: list[BackendMessage] = []
        backend = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_EVENT)
        fed = 0
        answer = reply or b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        if data.lstrip(b"\r\n").startswith(b"HEAD "):
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
        half = len(data) // 2
        for part in (data[:half], data[half:]):
            if part and not ct.closed:
                client.data_received(part)
                self.turns.end()
            fed = self._drain_backend(up, up_transport, backend, fed, forwarded, answer)
        complete_before_eof = self._answered(ct.out, data)
        if not ct.closed:
            if not client.eof_received():
                client.connection_lost(None)
        else:
            client.connection_lost(None)
        self.turns.end()
        if up_transport.out[fed:]:
            self._drain_backend(up, up_transport, backend, fed, forwarded, answer)
        result = _client_result(ct.out, data, closed=ct.closed)
        if backend_error := getattr(backend, "_limpet_error", None):
            return Outcome("disagreement", f"backend h11: {backend_error}", forwarded)
        problem = check_exchange(data, result, forwarded)
        intended = expected_message(data)
        if problem is None:
            if intended is not None and not complete_before_eof and result.status is None:
                return Outcome("disagreement", "hang: a complete message got no answer")
            kind = "refused" if result.status is None or result.status >= 400 else "ok"
            return Outcome(kind, "", forwarded)
        if intended is None and len(forwarded) == 1 and _lenient(data, forwarded[0]):
            return Outcome("lenient", problem, forwarded)
        return Outcome("disagreement", problem, forwarded)

    def run_response(self, raw: bytes) -> Outcome:
        """One backend answer to a plain GET: the oracle's rule for answers."""
        data = b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n"
        up, up_transport = self.idle_backend()
        client = ClientConnection(self.server)
        ct = MemoryTransport()
        client.connection_made(ct)
        client.data_received(data)
        self.turns.end()
        if up_transport.out and not up.transport.is_closing():  # type: ignore[union-attr]
            up.data_received(raw)
            self.turns.end()
            if up.state != 4 and up.client is not None:  # CLOSED; the backend then closes
                up.connection_lost(None)
                self.turns.end()
        client.connection_lost(None)  # asyncio always reports the end, closed or not
        self.turns.end()
        result = _client_result(ct.out, data, closed=True)
        problem = check_response(raw, result)
        if problem is None:
            return Outcome("ok")
        # Empty lines before a status line: llhttp skips them (RFC 9112 2.2 allows it),
        # h11 refuses them. The client must then get what the cleaned answer means.
        fixed = _BLANK_BEFORE_STATUS.sub(b"\r\n\r\nHTTP/", raw.lstrip(b"\r\n"))
        if fixed != raw and check_response(fixed, result) is None:
            return Outcome("lenient", problem)
        return Outcome("disagreement", problem)

    def _drain_backend(
        self,
        up: UpstreamConnection,
        transport: MemoryTransport,
        backend: h11.Connection,
        fed: int,
        forwarded: list[BackendMessage],
        answer: bytes,
    ) -> int:
        new = bytes(transport.out[fed:])
        if not new:
            return fed
        backend.receive_data(new)
        # The message being parsed survives between calls (a message spans reads).
        request: Any = getattr(backend, "_limpet_request", None)
        body: list[bytes] = getattr(backend, "_limpet_body", [])
        while True:
            try:
                event = backend.next_event()
            except h11.RemoteProtocolError as exc:
                backend._limpet_error = str(exc)  # type: ignore[attr-defined]
                break
            if event is h11.NEED_DATA or event is h11.PAUSED:
                backend._limpet_request = request  # type: ignore[attr-defined]
                backend._limpet_body = body  # type: ignore[attr-defined]
                break
            if isinstance(event, h11.Request):
                request, body = event, []
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                forwarded.append(
                    BackendMessage(
                        conn=1,
                        method=bytes(request.method),
                        target=bytes(request.target),
                        headers=tuple((bytes(k), bytes(v)) for k, v in request.headers),
                        body=b"".join(body),
                        trailers=tuple((bytes(k), bytes(v)) for k, v in event.headers),
                    )
                )
                request = None
                if up.client is not None:
                    up.data_received(answer)
                    self.turns.end()
                if backend.our_state is h11.SEND_RESPONSE:
                    # Only to move h11 on to the next request; the bytes are not used.
                    backend.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
                    backend.send(h11.EndOfMessage())
                if backend.our_state is h11.DONE and backend.their_state is h11.DONE:
                    backend.start_next_cycle()
        return len(transport.out)

    @staticmethod
    def _answered(out: bytearray, data: bytes) -> bool:
        return _client_result(out, data, closed=False).status is not None


def _client_result(out: bytearray | bytes, data: bytes, *, closed: bool) -> ClientResult:
    method = data.lstrip(b"\r\n").partition(b" ")[0]
    client = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_EVENT)
    client.send(
        h11.Request(
            method=b"HEAD" if method == b"HEAD" else b"GET", target=b"/", headers=[(b"host", b"x")]
        )
    )
    client.send(h11.EndOfMessage())
    client.receive_data(bytes(out))
    if closed:
        client.receive_data(b"")
    status: int | None = None
    headers: Any = ()
    body = []
    error = None
    try:
        while True:
            event = client.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = tuple((bytes(k), bytes(v)) for k, v in event.headers)
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                if status is not None:
                    error = "answer cut short"
                break
            elif isinstance(event, h11.InformationalResponse):
                continue
    except h11.RemoteProtocolError as exc:
        error = str(exc)
    return ClientResult(status, headers, b"".join(body), closed, error, bytes(out))


_EMPTY_TE_ELEMENTS = re.compile(rb"Transfer-Encoding:[ \t]*(?:,[ \t]*)+chunked", re.IGNORECASE)
_BLANK_BEFORE_STATUS = re.compile(rb"\r\n\r\n[\r\n]+HTTP/")


def _lenient(data: bytes, forwarded: BackendMessage) -> bool:
    """Input h11 refuses but RFC 9112 lets a server accept, forwarded canonical: leading
    empty lines (2.2), runs of spaces in the request line (3), empty list elements in
    Transfer-Encoding (RFC 9110 5.6.1). The canonical form must mean the same to h11."""
    head, sep, rest = data.lstrip(b"\r\n").partition(b"\r\n")
    head = b" ".join(p for p in head.split(b" ") if p)
    fixed = head + sep + rest
    fixed = _EMPTY_TE_ELEMENTS.sub(b"Transfer-Encoding: chunked", fixed)
    intended: Intended | None = expected_message(fixed)
    if intended is None:
        return False
    result = ClientResult(200, (), b"", False)
    return check_exchange(fixed, result, [forwarded]) is None


def summary_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


__all__ = ["Harness", "Outcome", "mutate", "request", "response", "summary_line"]
