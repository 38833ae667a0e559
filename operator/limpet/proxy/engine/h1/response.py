"""The backend side's HTTP/1.1 state machine: a backend's bytes in, the client's bytes
and one event code out. No I/O.

Data flow: the shell (:class:`~limpet.proxy.engine.upstream.UpstreamConnection`) calls
:meth:`ResponseMachine.expect` when it sends a request on its connection, then
:meth:`ResponseMachine.feed` with each read of the backend. The machine parses with
httptools; its callbacks rewrite the head (``response_head.build_response_head``: hop-by-hop
stripped, the router's Set-Cookie added, the body re-framed), re-chunk the body and
filter trailers, appending the bytes for the client to :attr:`ResponseMachine.out`. The
shell writes ``out`` with one ``writelines`` per read (head and body share a syscall),
clears it, and acts on the returned code:

- ``MORE``: the answer goes on;
- ``DONE``: the answer is complete; ``keep`` says whether the connection may be pooled
  (what :func:`~limpet.proxy.engine.h1.actions.after_answer` decided from the exchange's
  facts: request sent whole, length known, keep-alive, no upgrade, nothing beyond);
- ``TUNNEL``: a 101 switched protocols (``actions.after_interim`` decides what a 1xx
  head is: relayed, dropped, the switch, or a broken answer); ``rest`` holds bytes that
  followed its head;
- ``BROKEN``: not HTTP (or not an answer to this request): the shell answers 502, or cuts
  the client short if the exchange's state says the head already left;
- ``STRAY``: the first bytes after a pooled HEAD answer are not an answer: the backend
  sent a body for HEAD, late. The connection is out of step; the exchange may retry.

When the backend closes, :meth:`ResponseMachine.closed` says whether that ended a
close-delimited body (then ``out`` holds the last chunk, if the client gets chunks).

Transitions: ``IDLE`` (nothing expected) -> ``expect`` -> ``WAITING`` -> head ->
``BODY`` -> ``DONE`` (or ``TUNNEL``, ``BROKEN``); a 1xx head goes back to ``WAITING``. The
machine reads the exchange's request facts and records the answer's status on it through
:class:`ExchangeFacts`. One object per backend connection, reused for every answer;
``feed`` allocates nothing beyond the bytes it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

import httptools

from limpet.proxy.engine import fields, framing, response_head
from limpet.proxy.engine.h1 import actions
from limpet.proxy.engine.h1.actions import (
    INTERIM_BROKEN,
    INTERIM_RELAY,
    INTERIM_SWITCH,
    REUSE_POOL,
)
from limpet.proxy.engine.h1.connection import (
    AFTER_ANSWER,
    ANSWER,
    ANSWER_UNSENT,
    REQUEST_DONE,
    failure_behind,
    invalid,
    raise_if_invalid,
    step,
)
from limpet.proxy.engine.port import Route, RouterPort

# Events returned by feed().
MORE: Final = 0
DONE: Final = 1
TUNNEL: Final = 2
BROKEN: Final = 3
STRAY: Final = 4

# Machine states.
IDLE: Final = 0  # no request outstanding (pooled, or not yet used)
WAITING: Final = 1  # a request was sent: its answer's head is due
BODY: Final = 2  # the final head is out: body, trailers
FINISHED: Final = 3  # the answer is complete (feed returned DONE)
SWITCHED: Final = 4  # a 101 turned the connection into a tunnel
FAILED: Final = 5  # BROKEN or STRAY was returned: the connection is unusable


class ExchangeFacts(Protocol):
    """What the machine reads of the request being answered, and records about its answer
    (the client connection's :class:`~limpet.proxy.engine.exchange.Exchange`)."""

    keep_alive: bool
    state: int  # the client connection's (h1.connection.State): the machine fires ANSWER*
    status: int


class _Stop(Exception):
    """Raised from a parser callback to stop httptools: a HEAD answer's head is parsed, or
    bytes follow a complete answer."""


class _TooLarge(Exception):
    """Raised from a parser callback when a trailer section passes the limits."""


# What a parse error may stand for besides a bug behind the machine (failure_behind).
_EXPECTED: Final = (httptools.HttpParserError, _Stop, _TooLarge)


class ResponseMachine:
    """Parses one backend connection's answers and produces the client's bytes."""

    __slots__ = (
        "_after_head",
        "_expect_eof",
        "_facts",
        "_framing",
        "_head_keep_alive",
        "_head_request",
        "_head_request_done",
        "_head_tail",
        "_head_unsent",
        "_http11",
        "_informational",
        "_reason",
        "_route",
        "_scan",
        "_trailer_bytes",
        "_trailers",
        "_upgrade",
        "classes",
        "failure",
        "feed_data",
        "get_status_code",
        "got_response",
        "keep",
        "max_header_bytes",
        "max_headers",
        "out",
        "parser",
        "rest",
        "router",
        "should_keep_alive",
        "state",
    )

    def __init__(
        self,
        *,
        router: RouterPort,
        classes: fields.HeaderClasses,
        max_headers: int,
        max_header_bytes: int,
    ) -> None:
        self.router = router
        self.classes = classes
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        # An exception a bug behind the machine raised while it parsed (failure_behind): the
        # answer fails as a broken one would, and the shell logs this.
        self.failure: Exception | None = None
        # The parser, and its methods called for every answer bound once per parser (a
        # method call on a non-native object looks the method up by name each time).
        self.parser = httptools.HttpResponseParser(self)
        self.feed_data: Callable[[bytes], None] = self.parser.feed_data
        self.get_status_code: Callable[[], int] = self.parser.get_status_code
        self.should_keep_alive: Callable[[], bool] = self.parser.should_keep_alive
        self.state = IDLE
        self.out: list[bytes] = []  # the client's bytes from the last feed
        self.keep = False  # after DONE: the connection may be pooled
        self.rest = b""  # after TUNNEL: bytes that followed the 101 head
        self.got_response = False  # any byte of the current answer arrived
        self._facts: ExchangeFacts | None = None
        # The request's facts that stay put while it is answered, passed to expect():
        # read from the exchange (a Protocol to compiled code), each would be a generic
        # attribute lookup for every answer.
        self._route: Route | None = None
        self._http11 = True
        self._head_request = False
        self._upgrade = False
        # The head being parsed, scanned field by field as httptools reports them
        # (on_header): no list of pairs, no second pass. Reused for every head.
        self._scan = response_head.ResponseScan(kept=[])
        self._reason = b""
        self._informational = False
        self._framing = response_head.FRAME_NONE
        self._expect_eof = False
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._trailer_bytes = 0
        # Answering HEAD: the last bytes fed (a head's end may straddle two reads), or
        # None for any other request. See _feed_head.
        self._head_tail: bytes | None = None
        # The HEAD answer's facts for actions.after_answer, read at its head.
        self._head_request_done = False
        self._head_keep_alive = False
        self._head_unsent = False  # the final head waits in ``out`` (see _fail)
        # Pooled after a HEAD answer, and no head parsed since: garbage now means the
        # backend sent a body for HEAD after all (STRAY).
        self._after_head = False

    # -- transitions -----------------------------------------------------------------------

    def expect(
        self,
        facts: ExchangeFacts,
        *,
        route: Route,
        http11: bool,
        head_request: bool,
        upgrade: bool,
    ) -> None:
        """A request went out on this connection: its answer comes next. The request's
        facts that stay put while it is answered come as values (read through the
        Protocol, each would be a generic attribute lookup)."""
        self._facts = facts
        self._route = route
        self._http11 = http11
        self._head_request = head_request
        self._upgrade = upgrade
        self.state = WAITING
        self.got_response = False
        self._framing = response_head.FRAME_NONE
        self._expect_eof = False
        self._head_tail = b"" if head_request else None
        self._head_unsent = False

    def feed(self, data: bytes) -> int:
        """One read of the backend; returns the event (the module lists them)."""
        self.got_response = True
        if self._head_tail is not None:
            return self._feed_head(data)
        try:
            self.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            return self._switched(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            raise_if_invalid(exc)
            self.failure = failure_behind(exc, _EXPECTED)
            if self.state == FINISHED:
                # Bytes beyond the answer: the connection is out of step (after_answer's
                # in_step), so it is closed whatever else the answer said.
                self.keep = False
            elif self._after_head:
                return self._fail(STRAY)
            else:
                return self._fail(BROKEN)
        if self.state == FINISHED:
            self._facts = None
            return DONE
        self._head_unsent = False
        return MORE

    def closed(self) -> bool:
        """The backend closed the connection: True if that ended a close-delimited body
        (``out`` then holds what completes the client's answer)."""
        if self.state != BODY or not self._expect_eof:
            return False
        if self._framing == response_head.FRAME_CHUNKED:
            self.out.append(framing.LAST_CHUNK)
        self._done()
        return True

    def _new_parser(self) -> None:
        """A fresh parser after a HEAD answer (see _feed_head), its methods bound."""
        parser = self.parser = httptools.HttpResponseParser(self)
        self.feed_data = parser.feed_data
        self.get_status_code = parser.get_status_code
        self.should_keep_alive = parser.should_keep_alive

    def _done(self) -> None:
        self.state = FINISHED
        self._facts = None

    def _fail(self, event: int) -> int:
        facts = self._facts
        if self._head_unsent and facts is not None:
            facts.state = step(facts.state, ANSWER_UNSENT)  # a 502 can still go out
        self._head_unsent = False
        self.out.clear()
        self.state = FAILED
        return event

    def _switched(self, rest: bytes) -> int:
        if self.state != SWITCHED:
            return self._fail(BROKEN)
        self.rest = rest
        self._facts = None
        self._head_unsent = False
        return TUNNEL

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.state != WAITING:
            raise _Stop  # an answer nobody asked for
        response_head.begin_response_scan(self._scan)
        self._trailers = None
        self._reason = b""
        self._framing = response_head.FRAME_NONE
        self._expect_eof = False

    def on_status(self, reason: bytes) -> None:
        # llhttp reports a reason phrase split across reads in parts.
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._framing == response_head.FRAME_NONE or self._informational:
            response_head.scan_response_field(self._scan, self.classes.get(name), name, value)
            return
        trailers = self._trailers
        if trailers is None:
            trailers = self._trailers = []
            self._trailer_bytes = 0
        trailers.append((name, value))
        self._trailer_bytes += len(name) + len(value) + 4
        if self._trailer_bytes > self.max_header_bytes or len(trailers) > self.max_headers:
            raise _TooLarge

    def on_headers_complete(self) -> None:
        facts = self._facts
        assert facts is not None
        self._after_head = False
        status = self.get_status_code()
        if status < 100:
            # llhttp takes any three digits and frames a 0xx answer's body as a final
            # one's, where this machine would relay the head as interim and its body raw:
            # RFC 9110 15 has no such status, so the answer is broken (502), as HAProxy's.
            raise httptools.HttpParserError("status below 100")
        scan = self._scan
        response_head.end_response_scan(scan)
        if status < 200:
            self._interim_head(facts, status, scan)
            return
        te = scan.transfer_encoding
        if te is not None and not response_head.response_coding_clean(te):
            raise httptools.HttpParserError("ambiguous Transfer-Encoding")
        facts.status = status
        route = self._route
        assert route is not None
        if scan.set_cookies is not None:
            route = self.router.on_response(route, scan.set_cookies)
        frame = response_head.response_framing(
            status, head_request=self._head_request, scan=scan, http11=self._http11
        )
        self._framing = frame
        before = facts.state  # read once: through the Protocol, each read is a lookup
        keep_alive = facts.keep_alive and REQUEST_DONE[before] and not self._upgrade
        if not keep_alive or frame == response_head.FRAME_CLOSE:
            facts.keep_alive = False
        self._head_unsent = True
        self.out.append(
            response_head.build_response_head(
                status,
                self._reason,
                scan,
                framing=frame,
                set_cookie=route.set_cookie,
                keep_alive=keep_alive,
                http11=self._http11,
            )
        )
        state = AFTER_ANSWER[before]  # step(before, ANSWER), inline
        if state < 0:
            invalid(before, ANSWER)
        facts.state = state
        self.state = BODY
        # A close-delimited upstream body: neither length nor chunking, body expected.
        self._expect_eof = (
            frame != response_head.FRAME_NONE
            and (te is None or not response_head.ends_chunked(te))
            and scan.content_length < 0
        )
        if self._head_request:
            # httptools cannot be told that a HEAD answer has no body: stop it here, and
            # _feed_head finishes the answer and starts a fresh parser.
            self._head_request_done = REQUEST_DONE[state]
            self._head_keep_alive = response_head.response_keeps_alive(
                self.parser.get_http_version(), scan
            )
            self.state = FINISHED
            raise _Stop

    def _interim_head(
        self, facts: ExchangeFacts, status: int, scan: response_head.ResponseScan
    ) -> None:
        """A 1xx head: 101 switches protocols (only after an upgrade request), any other
        is relayed to HTTP/1.1 clients and the final head follows."""
        action = actions.after_interim(status, upgrade=self._upgrade, http11=self._http11)
        if action == INTERIM_SWITCH:
            self.out.append(response_head.build_switching_head(status, self._reason, scan))
            facts.status = status  # the shell fires SWITCH on the TUNNEL event
            self.state = SWITCHED
            return
        if action == INTERIM_BROKEN:
            raise httptools.HttpParserError("unexpected 101")
        self._informational = True
        if action == INTERIM_RELAY:
            self.out.append(response_head.build_informational_head(status, self._reason, scan))

    def on_body(self, body: bytes) -> None:
        if self._framing == response_head.FRAME_CHUNKED:
            if body:  # an empty chunk would read as the last one
                self.out += framing.chunk(body)
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.state != BODY:
            return  # after a 101, httptools reports the upgrade instead
        if self._framing == response_head.FRAME_CHUNKED:
            self.out.append(framing.last_chunk(self._trailers, self.classes))
        facts = self._facts
        assert facts is not None
        self.keep = (
            actions.after_answer(
                request_done=REQUEST_DONE[facts.state],
                framed=not self._expect_eof,
                keep_alive=self.should_keep_alive(),
                upgrade=self._upgrade,
                in_step=True,
            )
            == REUSE_POOL
        )
        self.state = FINISHED

    # -- answers to HEAD -------------------------------------------------------------------

    def _feed_head(self, data: bytes) -> int:
        """Bytes of the answer to a HEAD request: one or more heads (1xx, then the final
        one) and nothing else.

        The parser gets the bytes as they come, but never past the empty line that ends a
        head, so the end of the final head is known exactly. There the answer is complete
        and the connection may be pooled with a fresh parser (the old one would wait for
        the body the head describes), unless bytes follow the head, which would put it
        out of step.
        """
        tail = self._head_tail
        buf = tail + data if tail else data
        fed = len(tail) if tail else 0
        pos = 0
        parser = self.parser
        while True:
            i = buf.find(b"\r\n\r\n", pos)
            end = len(buf) if i < 0 else i + 4
            try:
                parser.feed_data(buf[fed:end])
            except httptools.HttpParserUpgrade:
                self._head_tail = None
                return self._switched(buf[end:])
            except httptools.HttpParserError as exc:
                raise_if_invalid(exc)
                self.failure = failure_behind(exc, _EXPECTED)
                if not (self.state == FINISHED and isinstance(exc.__context__, _Stop)):
                    self._head_tail = None
                    return self._fail(STRAY if self._after_head else BROKEN)
            if self.state == FINISHED:
                keep = (
                    actions.after_answer(
                        request_done=self._head_request_done,
                        framed=True,  # an answer to HEAD has no body
                        keep_alive=self._head_keep_alive,
                        upgrade=self._upgrade,
                        in_step=end == len(buf),  # no byte follows its head
                    )
                    == REUSE_POOL
                )
                self._head_tail = None
                self._after_head = keep
                self.keep = keep
                self._new_parser()
                self._done()
                return DONE
            if i < 0:
                self._head_tail = buf[max(pos, len(buf) - 3) :]
                break
            fed = pos = end  # a 1xx head, relayed; the final head follows
        self._head_unsent = False
        return MORE
