"""The client side's HTTP/1.1 request reader: a client's bytes in, request events out to
a sink, and one result code per read. No I/O.

Data flow: the shell (:class:`~limpet.proxy.engine.client.ClientConnection`) calls
:meth:`RequestReader.feed` with each read of the client. The reader parses with httptools
and enforces the size limits (request line: 414; header bytes and count, for the head and
for trailers alike: 431; an unbounded head that never ends: 414 or 431); it reports each
request to its :class:`RequestSink` as it is parsed (``begin``, ``head``, ``body``,
``complete``), so that a body streams through without being held, and returns:

- ``MORE``: the read is parsed;
- ``UPGRADE``: an upgrade request's head ended the HTTP/1.1 part of the connection;
  ``rest`` holds the bytes that followed it (the shell holds them until the 101);
- ``INVALID``: the bytes are not a request the proxy serves; ``status`` is the answer
  (400; 414 or 431 past a limit; 501 for a well-formed method token llhttp does not know,
  RFC 9110 9.1). Nothing more is parsed on this connection.

Transitions (``phase``): ``IDLE`` -> first byte -> ``HEAD`` -> end of head -> ``BODY``
-> end of message -> ``IDLE``. The sink may refuse a new request (``begin`` returns
False: the connection is closing), which stops the read without an error. One reader per
connection, reused for every request; ``feed`` allocates nothing beyond the parsed
fields themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

import httptools

from limpet.proxy.engine import fields
from limpet.proxy.engine.h1.connection import failure_behind, raise_if_invalid

# Results of feed().
MORE: Final = 0
UPGRADE: Final = 1
INVALID: Final = 2

# Parse phases.
IDLE: Final = 0  # between requests
HEAD: Final = 1  # inside a request head
BODY: Final = 2  # inside a request body (or its trailers)


class RequestSink(Protocol):
    """Where a reader reports the requests it parses (the client connection)."""

    def begin(self) -> bool: ...

    def head(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        version: str,
        keep_alive: bool,
        upgrade: bool,
    ) -> None: ...

    def body(self, data: bytes) -> None: ...
    def complete(self) -> None: ...


class _Limit(Exception):
    """Raised from a parser callback when a request passes a size limit."""


class _Refused(Exception):
    """Raised from a parser callback when the sink takes no further request."""


# What a parse error may stand for besides a bug behind the sink (failure_behind).
_EXPECTED: Final = (httptools.HttpParserError, _Limit, _Refused)


class RequestReader:
    """Parses one client connection's requests (see the module)."""

    __slots__ = (
        "_begin",
        "_complete",
        "_head",
        "_head_bytes",
        "_header_bytes",
        "_headers",
        "_line",
        "_url",
        "failure",
        "feed_data",
        "get_method",
        "head_guard",
        "max_header_bytes",
        "max_headers",
        "max_request_line",
        "on_body",
        "parser",
        "phase",
        "requests",
        "rest",
        "should_keep_alive",
        "should_upgrade",
        "sink",
        "status",
        "trailers",
    )

    def __init__(
        self,
        sink: RequestSink,
        *,
        max_request_line: int,
        max_header_bytes: int,
        max_headers: int,
        head_guard: int,
    ) -> None:
        self.sink = sink
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        # httptools buffers one header internally until it is complete; this bounds it.
        self.head_guard = head_guard
        # Body bytes go from the parser straight to the sink: httptools looks its
        # callbacks up once, when the parser is made, so this costs no extra call.
        self.on_body: Callable[[bytes], None] = sink.body
        # The sink's other events, bound once too: called through the RequestSink
        # Protocol, each call would look the method up by name first.
        self._begin: Callable[[], bool] = sink.begin
        self._head: Callable[[bytes, bytes, list[tuple[bytes, bytes]], str, bool, bool], None] = (
            sink.head
        )
        self._complete: Callable[[], None] = sink.complete
        self.parser = httptools.HttpRequestParser(self)
        # Bound once: a method call on a non-native object looks the method up each time.
        self.feed_data: Callable[[bytes], None] = self.parser.feed_data
        self.get_method: Callable[[], bytes] = self.parser.get_method
        self.should_keep_alive: Callable[[], bool] = self.parser.should_keep_alive
        self.should_upgrade: Callable[[], bool] = self.parser.should_upgrade
        self.phase = IDLE
        # An exception the sink raised (a bug behind it, such as the router's): the
        # request is answered 500 and the shell logs this.
        self.failure: BaseException | None = None
        self.requests = 0  # heads parsed so far
        self.status = 0  # after INVALID: the answer
        self.rest = b""  # after UPGRADE: the bytes that followed the head
        # The trailer fields of the last request, or None.
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._header_bytes = 0
        # The read that started the request being parsed, while its head is: the
        # request line's version is read there (_version).
        self._line: bytes | None = None

    def feed(self, data: bytes) -> int:
        """One read of the client; returns MORE, UPGRADE or INVALID (see the module)."""
        phase = self.phase
        if phase != BODY:
            self._head_bytes += len(data)
            if phase == IDLE:
                self._line = data
        try:
            self.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.rest = data[exc.args[0] :]
            return UPGRADE
        except httptools.HttpParserInvalidMethodError:
            return self._invalid(501 if phase == IDLE and _unknown_method(data) else 400)
        except httptools.HttpParserError as exc:
            raise_if_invalid(exc)
            if isinstance(exc.__context__, _Refused):
                return MORE
            if self.status:
                return INVALID  # a limit, set by the callback
            self.failure = failure_behind(exc, _EXPECTED)
            # A bug behind the sink is not the client's fault: a 500, not a 400.
            return self._invalid(400 if self.failure is None else 500)
        if self.phase == HEAD and self._head_bytes > self.head_guard:
            return self._invalid(431 if self._headers else 414)
        return MORE

    def _invalid(self, status: int) -> int:
        self.status = status
        return INVALID

    def _limit(self, status: int) -> None:
        self.status = status
        raise _Limit

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._begin():
            raise _Refused
        self.phase = HEAD
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self.trailers = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.max_request_line:
            self._limit(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase == BODY:
            trailers = self.trailers
            if trailers is None:
                trailers = self.trailers = []
            into = trailers
        else:
            into = self._headers
        # Trailers are counted afresh: _header_bytes is reset at the end of the head.
        into.append((name, value))
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.max_header_bytes or len(into) > self.max_headers:
            self._limit(431)

    def on_headers_complete(self) -> None:
        self.phase = BODY
        self._header_bytes = 0
        self.requests += 1
        method = self.get_method()
        self._head(
            method,
            self._url,
            self._headers,
            self._version(method),
            self.should_keep_alive(),
            self.should_upgrade(),
        )

    def _version(self, method: bytes) -> str:
        """The version of the request whose head just ended. httptools formats it as a
        new str for every request (``get_http_version``: 3 % of a proxied GET's
        instructions), so the usual case is read from the request line instead: a read
        that starts with ``method SP target SP HTTP/1.1 CRLF``. The parser accepted that
        line already, and only where the line starts at the read's first byte does its
        CRLF fall there (a request line holds no CR), so the test cannot mistake another
        version for 1.1. Anything else (a line split across reads, empty lines before it,
        a second request in the same read, HTTP/1.0) asks httptools."""
        line = self._line
        self._line = None
        if line is not None:
            at = len(method) + len(self._url) + 2
            if line[at : at + 10] == b"HTTP/1.1\r\n":
                return "1.1"
        return self.parser.get_http_version()

    def on_message_complete(self) -> None:
        self.phase = IDLE
        self._head_bytes = 0
        self._complete()


def _unknown_method(data: bytes) -> bool:
    """Whether a read that starts a request opens with a well-formed method token that
    llhttp does not know (``get``, ``FOO``): RFC 9110 9.1 says 501, not 400. Only the
    error path calls this."""
    method, space, _ = data.lstrip(b"\r\n").partition(b" ")
    if not space or not fields.is_token(method):
        return False
    try:
        httptools.HttpRequestParser(_Ignore()).feed_data(method + b" / HTTP/1.1\r\n")
    except httptools.HttpParserInvalidMethodError:
        return True
    except httptools.HttpParserError:
        return False
    return False


class _Ignore:
    """Parser callbacks that do nothing (the probe in :func:`_unknown_method`)."""
