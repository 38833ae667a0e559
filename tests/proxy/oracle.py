"""An independent oracle for the proxy's HTTP/1.1 handling, built on h11 (not llhttp).

- :class:`RecordingBackend` is a real-socket backend (a thread on loopback) that parses
  everything the proxy sends with h11 and records each complete message
  (:class:`Received`), with the backend connection it came on. Bytes that h11 rejects are
  recorded in ``errors``: the proxy sent something that is not HTTP/1.1. It answers
  ``200`` with a short body, or, for a target registered with :meth:`respond_raw`, the
  registered bytes exactly (the response-path vectors).
- :func:`send_raw` sends raw bytes to the proxy on a fresh connection and reads the answer
  with h11 in the client role (:class:`ClientResult`).
- :func:`expected_message` parses what a client sent with h11 in the server role and
  derives what the backend must receive if the proxy forwards it;
  :func:`check_exchange` asserts the oracle's rule for one client message: it became
  exactly one backend message with the same method, target, body and end-to-end fields,
  or the client got an error and nothing reached the backend.

Concurrency: the backend's threads append to lists under one lock; tests read them with
:meth:`RecordingBackend.take`, which waits until the backend has been quiet briefly.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import h11

MAX_EVENT = 1 << 20
# Hop-by-hop fields (RFC 9110 7.6.1) and the forwarding fields that the proxy writes itself
# (the test client is never a trusted peer).
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
PROXY_WRITTEN = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)
PROTECTED = frozenset({b"content-length", b"transfer-encoding", b"host", b"cookie", *PROXY_WRITTEN})
# Names a CGI/WSGI gateway would read as one of the fields above (or as Proxy-*) when
# spelled with "_" for "-": the proxy drops them, as nginx does. And Proxy (httpoxy).
OWNED = HOP_BY_HOP | PROTECTED | {b"set-cookie", b"expect"}


def _gateway_alias(name: bytes) -> bool:
    if name == b"proxy":
        return True
    dashed = name.replace(b"_", b"-")
    return dashed != name and (dashed in OWNED or dashed.startswith(b"proxy-"))


Fields = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Received:
    """One complete message as the backend's h11 parsed it."""

    conn: int
    method: bytes
    target: bytes
    headers: Fields  # lower-cased names, as h11 reports them
    body: bytes
    trailers: Fields

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


@dataclass
class RecordingBackend:
    """A loopback backend that records what h11 parses (see the module docstring)."""

    messages: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    partial: int = 0  # connections that ended inside a message
    resets: int = 0  # connections the proxy reset (unread bytes may have been lost)
    raw: dict[bytes, tuple[bytes, bool]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last: float = 0.0
    _taken: int = 0
    _conns: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def respond_raw(self, target: bytes, data: bytes, *, keep: bool = False) -> None:
        """Answer requests for ``target`` with exactly ``data``; then close, or go on
        reading the connection (``keep``) with a fresh parser."""
        self.raw[target] = (data, keep)

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for s in list(self._open):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)

    def take(self, settle: float = 0.15, timeout: float = 5.0) -> list[Received]:
        """The messages recorded since the last call, once the backend has seen no new
        bytes for ``settle`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                quiet = time.monotonic() - self._last
            if quiet >= settle:
                break
            time.sleep(settle / 3)
        with self._lock:
            out = self.messages[self._taken :]
            self._taken = len(self.messages)
        return out

    # -- the server side -----------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns += 1
                n = self._conns
            self._open.add(sock)
            t = threading.Thread(target=self._serve, args=(sock, n), daemon=True)
            t.start()
            self._threads.append(t)

    def _touch(self) -> None:
        with self._lock:
            self._last = time.monotonic()

    def _serve(self, sock: socket.socket, n: int) -> None:
        try:
            self._serve_conn(sock, n)
        except ConnectionResetError:
            with self._lock:
                self.resets += 1
        except (OSError, h11.LocalProtocolError):
            pass
        finally:
            self._open.discard(sock)
            sock.close()

    def _serve_conn(self, sock: socket.socket, n: int) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_EVENT)
        request: h11.Request | None = None
        body: list[bytes] = []
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._touch()
                with self._lock:
                    self.errors.append(f"conn {n}: {exc}")
                return
            if event is h11.NEED_DATA:
                data = sock.recv(1 << 16)
                self._touch()
                if not data and request is not None:
                    with self._lock:
                        self.partial += 1  # the proxy gave up on a message midway
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request, body = event, []
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                msg = Received(
                    conn=n,
                    method=bytes(request.method),
                    target=bytes(request.target),
                    headers=tuple((bytes(k), bytes(v)) for k, v in request.headers),
                    body=b"".join(body),
                    trailers=tuple((bytes(k), bytes(v)) for k, v in event.headers),
                )
                with self._lock:
                    self.messages.append(msg)
                    self._last = time.monotonic()
                request = None
                if conn.their_state is h11.MUST_CLOSE or conn.our_state is h11.SWITCHED_PROTOCOL:
                    return
                raw = self.raw.get(msg.target)
                if raw is not None:
                    sock.sendall(raw[0])
                    if not raw[1]:
                        return
                    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_EVENT)
                    continue
                # An upgrade request is answered without upgrading, and the connection
                # stays open, as HTTP/1.1 allows: the proxy must still not reuse it.
                reply = b"seen %d" % len(self.messages)
                out = conn.send(
                    h11.Response(status_code=200, headers=[(b"content-length", b"%d" % len(reply))])
                )
                if msg.method != b"HEAD":
                    out += conn.send(h11.Data(data=reply))
                sock.sendall(out + conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return


# -- the client side -----------------------------------------------------------------------


@dataclass
class ClientResult:
    """What a client got for one message: the final answer as h11 parsed it (or None if
    the connection closed without one), and whether the proxy then closed."""

    status: int | None
    headers: Fields
    body: bytes
    closed: bool
    error: str | None = None
    raw: bytes = b""

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


def send_raw(
    address: tuple[str, int],
    data: bytes,
    *,
    method: bytes = b"GET",
    timeout: float = 5.0,
    chunks: Iterable[bytes] | None = None,
) -> ClientResult:
    """Send ``data`` (or ``chunks``, one write each) on a fresh connection; read the
    answer with h11 (``method`` tells it whether a body follows) and wait briefly for
    the proxy to close if the answer says it will."""
    client = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_EVENT)
    # Put h11 in the state "request sent" without sending its bytes: the real request
    # is ``data``, which h11 may well consider invalid.
    client.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
    client.send(h11.EndOfMessage())
    received = bytearray()
    with socket.create_connection(address, timeout=timeout) as sock:
        for part in [data] if chunks is None else chunks:
            with contextlib.suppress(OSError):
                sock.sendall(part)
        status: int | None = None
        headers: Fields = ()
        body: list[bytes] = []
        error: str | None = None
        done = False
        closed = False
        deadline = time.monotonic() + timeout
        while not done and time.monotonic() < deadline:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError as exc:
                error = str(exc)
                break
            if event is h11.NEED_DATA:
                try:
                    chunk = sock.recv(1 << 16)
                except (ConnectionResetError, TimeoutError):
                    chunk = b""
                received += chunk
                closed = not chunk
                client.receive_data(chunk)
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = tuple((bytes(k), bytes(v)) for k, v in event.headers)
                if status == 101:
                    done = True
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                done = isinstance(event, h11.EndOfMessage)
                break
        if done and not closed and client.their_state is h11.MUST_CLOSE:
            closed = _wait_close(sock, 2.0)
    if status is not None and not done and error is None:
        error = "answer cut short"
    return ClientResult(status, headers, b"".join(body), closed, error, bytes(received))


def _wait_close(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 16):
            pass
    except (ConnectionResetError, TimeoutError):
        return False
    return True


# -- the rule ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intended:
    """What the client's bytes mean to h11: one request, with its end-to-end fields."""

    method: bytes
    target: bytes
    fields: Fields
    body: bytes
    complete: bool


def expected_message(data: bytes) -> Intended | None:
    """Parse a client's bytes with h11 in the server role. None if h11 rejects them or
    they are not exactly one complete request."""
    server = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_EVENT)
    server.receive_data(data)
    server.receive_data(b"")
    request: h11.Request | None = None
    body: list[bytes] = []
    try:
        while True:
            event = server.next_event()
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return None
            elif event is h11.PAUSED:
                break
    except h11.RemoteProtocolError:
        return None
    if request is None:
        return None
    return Intended(
        method=bytes(request.method),
        target=bytes(request.target),
        fields=end_to_end(tuple((bytes(k), bytes(v)) for k, v in request.headers)),
        body=b"".join(body),
        complete=True,
    )


def end_to_end(headers: Fields) -> Fields:
    """The fields a proxy forwards unchanged: without hop-by-hop fields, the fields that
    ``Connection`` lists (except those it may not remove) and the forwarding fields the
    proxy writes itself; Cookie fields joined; sorted by name, same names in order."""
    listed = {
        token.strip().lower()
        for k, v in headers
        if k == b"connection"
        for token in v.split(b",")
        if token.strip()
    } - PROTECTED
    kept = [
        (k, v)
        for k, v in headers
        if k not in HOP_BY_HOP
        and k not in PROXY_WRITTEN
        and k not in listed
        and not k.startswith(b"proxy-")
        and not _gateway_alias(k)
        and k != b"cookie"
    ]
    cookies = [v for k, v in headers if k == b"cookie"]
    if cookies:
        kept.append((b"cookie", b"; ".join(cookies)))
    return tuple(sorted(kept, key=lambda kv: kv[0]))


def origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """An absolute-form target as (origin-form, authority); others unchanged."""
    lower = target[:8].lower()
    if not lower.startswith((b"http://", b"https://")):
        return target, None
    rest = target.partition(b"://")[2]
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    path = rest[cut:]
    if path[:1] == b"?":
        path = b"/" + path
    return path or b"/", rest[:cut]


def forwarded_fields(msg: Received) -> Fields:
    """The end-to-end fields of what the backend got (the proxy's own additions out)."""
    return end_to_end(tuple((k, v) for k, v in msg.headers if k != b"limpet-session-moved"))


def check_exchange(data: bytes, client: ClientResult, received: list[Received]) -> str | None:
    """The oracle's rule for one client message; None if it holds, else why not."""
    status = client.status
    if status is None or status >= 400:
        if received:
            return f"client got {status} but the backend got {len(received)} message(s)"
        return None
    if status == 101:
        return None if len(received) == 1 else f"101 after {len(received)} messages"
    intended = expected_message(data)
    if intended is None:
        return f"proxy answered {status} to bytes h11 rejects: {received!r}"
    if len(received) != 1:
        return f"one client message became {len(received)} backend messages: {received!r}"
    msg = received[0]
    target, authority = origin_form(intended.target)
    fields = intended.fields
    hosts = [v for k, v in fields if k == b"host"]
    if authority is not None or not hosts:
        # RFC 9112 3.2.2: an absolute-form target's authority is the Host; an HTTP/1.0
        # request without Host goes on as HTTP/1.1 with an empty one (3.2).
        host = b"" if authority is None else authority
        others = [(k, v) for k, v in fields if k != b"host"]
        fields = tuple(sorted([*others, (b"host", host)], key=lambda kv: kv[0]))
    problems = []
    if msg.method != intended.method:
        problems.append(f"method {msg.method!r} != {intended.method!r}")
    if msg.target != target:
        problems.append(f"target {msg.target!r} != {target!r}")
    if msg.body != intended.body:
        problems.append(f"body {msg.body[:60]!r} != {intended.body[:60]!r}")
    got = forwarded_fields(msg)
    if got != fields:
        problems.append(f"fields {got!r} != {fields!r}")
    return "; ".join(problems) or None


def expected_response(raw: bytes, method: bytes = b"GET") -> tuple[int, Fields, bytes] | None:
    """A backend's raw answer as h11 reads it (status, end-to-end fields, body), or None
    if h11 rejects it."""
    client = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_EVENT)
    client.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(raw)
    client.receive_data(b"")
    status, fields, body = 0, (), []  # type: tuple[int, Fields, list[bytes]]
    try:
        while True:
            event = client.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
                fields = response_fields(tuple((bytes(k), bytes(v)) for k, v in event.headers))
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, fields, b"".join(body)
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return None
    except h11.RemoteProtocolError:
        return None


def response_fields(headers: Fields) -> Fields:
    """End-to-end fields of an answer, framing aside (the proxy may re-frame a body) and
    without the proxy's own LB cookie."""
    return tuple(
        (k, v)
        for k, v in end_to_end(headers)
        if k != b"content-length" and not (k == b"set-cookie" and v.startswith(b"LIMPET="))
    )


def check_response(raw: bytes, client: ClientResult, method: bytes = b"GET") -> str | None:
    """The oracle's rule for one backend answer: the client gets the same status, body
    and end-to-end fields, or a 502 or a cut connection when h11 rejects the answer."""
    if client.status == 502 and client.header(b"set-cookie") == []:
        return None  # the proxy's own answer: refusing is always allowed
    expected = expected_response(raw, method)
    if expected is None:
        if client.status is None or client.error is not None:
            return None
        return f"h11 rejects the backend's answer, the client got {client.status}"
    status, fields, body = expected
    got = (client.status, response_fields(client.headers), client.body)
    return None if got == (status, fields, body) else f"{got!r} != {expected!r}"
