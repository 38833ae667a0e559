"""The backend side's sans-I/O machine (``engine/h1/response.py``): feed a backend's bytes,
assert the client's bytes and the event, with no socket and no event loop. The router is
the real session router on a standalone plan; the exchange facts are a plain record of
what the client connection would hold."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from limpet.proxy.engine import fields, framing
from limpet.proxy.engine.h1 import response
from limpet.proxy.engine.h1.connection import ANSWER_STARTED, InvalidTransition, State
from limpet.proxy.engine.h1.response import ResponseMachine
from limpet.proxy.engine.port import RequestView, Route
from limpet.proxy.process.standalone import standalone_plan
from limpet.proxy.session.routing import RouterSettings, SessionRouter


@dataclass
class Facts:
    """The request facts a client connection holds while its request is answered."""

    route: Route | None
    keep_alive: bool = True
    state: int = State.WAITING  # the request is complete, its answer due
    http11: bool = True
    head_request: bool = False
    upgrade_requested: bool = False
    status: int = 0

    @property
    def response_started(self) -> bool:
        return ANSWER_STARTED[self.state]


def machine_and_route(affinity: str = "client-ip") -> tuple[ResponseMachine, Route]:
    router = SessionRouter(settings=RouterSettings())
    router.load_plan(standalone_plan([("s1", "127.0.0.1", 9)], affinity))
    route = router.dispatch(RequestView(b"GET", b"/", [], "127.0.0.1"))
    assert isinstance(route, Route)
    machine = ResponseMachine(
        router=router, classes=fields.HeaderClasses(), max_headers=10, max_header_bytes=200
    )
    return machine, route


def start(**facts: bool | State) -> tuple[ResponseMachine, Facts]:
    machine, route = machine_and_route()
    f = Facts(route=route, **facts)  # type: ignore[arg-type]
    expect(machine, f)
    return machine, f


def expect(machine: ResponseMachine, f: Facts) -> None:
    """Tell the machine a request went out, as the upstream connection does."""
    assert f.route is not None
    machine.expect(
        f,
        route=f.route,
        http11=f.http11,
        head_request=f.head_request,
        upgrade=f.upgrade_requested,
    )


def feed(machine: ResponseMachine, data: bytes) -> tuple[int, bytes]:
    """One read: the event and the bytes for the client (taken, as the shell does)."""
    event = machine.feed(data)
    out = b"".join(machine.out)
    machine.out.clear()
    return event, out


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_a_length_framed_answer_in_one_read_is_done_and_keeps_the_connection() -> None:
    machine, facts = start()
    event, out = feed(machine, OK)
    assert (event, out) == (response.DONE, OK)
    assert machine.keep
    assert facts.status == 200
    assert facts.response_started


@pytest.mark.parametrize("cut", [10, 13, 14, 15])
def test_a_reason_phrase_split_across_reads_is_kept_whole(cut: int) -> None:
    machine, _ = start()
    answer = b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\n\r\nok"
    _, first = feed(machine, answer[:cut])
    event, rest = feed(machine, answer[cut:])
    assert event == response.DONE
    assert (first + rest).startswith(b"HTTP/1.1 200 Fine Thanks\r\n")


def test_head_and_body_in_separate_reads() -> None:
    machine, _ = start()
    assert feed(machine, OK[:-1]) == (response.MORE, OK[:-1])
    assert feed(machine, OK[-1:]) == (response.DONE, b"k")


def test_hop_by_hop_fields_are_stripped_from_the_head() -> None:
    machine, _ = start()
    event, out = feed(
        machine,
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
    )
    assert (event, out) == (response.DONE, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def test_chunks_are_reframed_and_trailers_filtered() -> None:
    machine, _ = start()
    event, out = feed(
        machine,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nX-Sum: 9\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
    )
    assert event == response.DONE
    assert out == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 9\r\n\r\n"
    )


def test_trailers_past_the_limits_break_the_answer() -> None:
    machine, _ = start()
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
    event, _ = feed(machine, head + b"X-Big: " + b"y" * 300 + b"\r\n\r\n")
    assert event == response.BROKEN


def test_a_close_delimited_body_is_chunked_for_http11_and_ended_by_the_close() -> None:
    machine, facts = start()
    assert feed(machine, b"HTTP/1.1 200 OK\r\n\r\nsome") == (
        response.MORE,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsome\r\n",
    )
    assert machine.closed()
    assert b"".join(machine.out) == framing.LAST_CHUNK
    assert facts.keep_alive


def test_a_close_delimited_body_closes_an_http10_client() -> None:
    machine, facts = start(http11=False)
    event, out = feed(machine, b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert event == response.MORE
    assert out == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome"
    assert not facts.keep_alive
    assert machine.closed()
    assert machine.out == []


def test_a_close_before_the_length_is_reached_is_not_an_end() -> None:
    machine, _ = start()
    feed(machine, OK[:-1])
    assert not machine.closed()


def test_head_answers_end_at_the_head_even_across_reads() -> None:
    machine, facts = start(head_request=True)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r"
    assert feed(machine, head) == (response.MORE, b"")
    assert feed(machine, b"\n") == (response.DONE, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    assert machine.keep
    # Pooled: the next exchange's answer parses with a fresh parser.
    expect(machine, Facts(route=facts.route))
    assert feed(machine, OK)[0] == response.DONE


def test_a_late_body_for_head_is_a_stray_on_the_next_exchange() -> None:
    machine, facts = start(head_request=True)
    assert feed(machine, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")[0] == response.DONE
    expect(machine, Facts(route=facts.route))
    assert feed(machine, b"hello") == (response.STRAY, b"")


def test_bytes_after_a_head_answer_make_it_not_reusable() -> None:
    machine, _ = start(head_request=True)
    event, _ = feed(machine, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert event == response.DONE
    assert not machine.keep


def test_bytes_beyond_a_complete_answer_make_it_not_reusable() -> None:
    machine, _ = start()
    event, out = feed(machine, OK + b"HTTP/1.1 200 OK\r\n")
    assert (event, out) == (response.DONE, OK)
    assert not machine.keep


def test_interim_answers_are_relayed_before_the_final_one() -> None:
    machine, facts = start()
    event, out = feed(machine, b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    assert (event, out) == (response.DONE, b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    assert facts.status == 200


def test_interim_answers_are_not_relayed_to_http10_clients() -> None:
    machine, _ = start(http11=False)
    event, out = feed(machine, b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)
    assert event == response.DONE
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


def test_101_after_an_upgrade_request_switches_with_the_bytes_that_follow() -> None:
    machine, facts = start(upgrade_requested=True, state=State.SWITCHING)
    event, out = feed(
        machine,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x81\x00",
    )
    assert event == response.TUNNEL
    assert out == (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert machine.rest == b"\x81\x00"
    assert facts.status == 101


def test_an_upgrade_request_answered_otherwise_is_never_pooled() -> None:
    machine, facts = start(upgrade_requested=True, state=State.SWITCHING)
    event, out = feed(machine, OK)
    assert event == response.DONE
    assert not machine.keep
    assert b"Connection: close" in out
    assert not facts.keep_alive


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",  # not asked for
        b"SSH-2.0-OpenSSH\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n",  # framed two ways
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 099 x\r\nContent-Length: 3\r\n\r\nabc",  # no status below 100
        b"HTTP/1.1 000 x\r\n\r\n",
    ],
)
def test_what_is_not_an_answer_breaks_with_nothing_for_the_client(answer: bytes) -> None:
    machine, facts = start()
    assert feed(machine, answer) == (response.BROKEN, b"")
    assert not facts.response_started


def test_a_head_parsed_in_the_failing_read_is_held_back_for_a_502() -> None:
    machine, facts = start()
    bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    assert feed(machine, bad) == (response.BROKEN, b"")
    assert not facts.response_started


def test_a_failure_after_the_head_left_leaves_the_answer_started() -> None:
    machine, facts = start()
    feed(machine, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert feed(machine, b"zz\r\n") == (response.BROKEN, b"")
    assert facts.response_started


def test_an_answer_before_the_request_is_whole_closes_the_client() -> None:
    machine, facts = start(state=State.RECEIVING)
    event, out = feed(machine, OK)
    assert event == response.DONE
    assert not machine.keep
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    assert not facts.keep_alive


def test_an_answer_nobody_asked_for_is_broken() -> None:
    machine, _ = machine_and_route()
    assert feed(machine, OK) == (response.BROKEN, b"")


def test_the_routers_set_cookie_is_added() -> None:
    machine, route = machine_and_route("cookie")
    assert route.set_cookie is not None
    expect(machine, Facts(route=route))
    event, out = feed(machine, OK)
    assert event == response.DONE
    assert b"\r\nSet-Cookie: " + route.set_cookie + b"\r\n" in out


def test_an_answer_to_an_exchange_that_cannot_take_one_is_a_bug_not_a_502() -> None:
    # The client connection is already closed: the machine's ANSWER event is invalid
    # there, and the error surfaces instead of being read as a backend's garbage.
    machine, _ = start(state=State.CLOSED)
    with pytest.raises(InvalidTransition, match="ANSWER in state CLOSED"):
        feed(machine, OK)


# -- a head scanned field by field (2accc1e): nothing of one head in the next -------------


def _head(out: bytes) -> list[bytes]:
    return out.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]


def test_a_second_answer_on_the_connection_keeps_nothing_of_the_first() -> None:
    machine, route = machine_and_route()
    first = Facts(route=route)
    expect(machine, first)
    event, out = feed(
        machine,
        b"HTTP/1.1 200 OK\r\nConnection: X-A\r\nX-A: 1\r\nSet-Cookie: app=1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-Sum: 1\r\n\r\n",
    )
    assert event == response.DONE
    assert machine.keep
    assert b"Set-Cookie: app=1" in _head(out)
    second = Facts(route=route)
    expect(machine, second)
    plain = b"HTTP/1.1 200 OK\r\nX-A: 2\r\nContent-Length: 2\r\n\r\nok"
    assert feed(machine, plain) == (response.DONE, plain)
    assert machine.keep


def test_a_second_answer_after_a_head_answer_keeps_nothing_of_it() -> None:
    machine, route = machine_and_route()
    expect(machine, Facts(route=route, head_request=True))
    event, out = feed(
        machine,
        b"HTTP/1.1 200 OK\r\nConnection: X-A\r\nX-A: 1\r\nSet-Cookie: app=1\r\n"
        b"Content-Length: 9\r\n\r\n",
    )
    assert event == response.DONE
    assert machine.keep
    expect(machine, Facts(route=route))
    event, out = feed(machine, b"HTTP/1.1 200 OK\r\nX-A: 2\r\n\r\nok")
    assert event == response.MORE  # close-delimited: the 9 of the HEAD answer is gone
    assert _head(out) == [b"X-A: 2", b"Transfer-Encoding: chunked"]
    assert machine.closed()  # ended by the close: the shell never pools it (keep unread)


def test_a_final_head_keeps_nothing_of_the_1xx_before_it() -> None:
    machine, facts = start()
    event, out = feed(
        machine,
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nConnection: X-A\r\nSet-Cookie: early=1\r\n"
        b"Content-Length: 5\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nX-A: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    assert event == response.DONE
    interim, _, final = out.partition(b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 103 Early Hints\r\n")
    assert b"Link: </a>" in _head(interim + b"\r\n\r\n")
    assert final.startswith(b"HTTP/1.1 200 OK\r\n")
    assert _head(final) == [b"X-A: 2", b"Transfer-Encoding: chunked"]
    assert final.endswith(b"\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert facts.status == 200
    assert machine.keep


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nTRANSFER-ENCODING: chunked\r\n\r\n0\r\n\r\n",
    ],
)
def test_an_answer_framed_two_ways_in_any_spelling_is_broken(answer: bytes) -> None:
    machine, facts = start()
    event, out = feed(machine, answer)
    assert (event, out) == (response.BROKEN, b"")
    assert not facts.response_started


@pytest.mark.parametrize(
    "listed",
    [b"Content-Length", b"content-length", b"CONTENT-LENGTH, keep-alive", b"Transfer-Encoding"],
)
def test_connection_cannot_unframe_an_answer(listed: bytes) -> None:
    machine, _ = start()
    event, out = feed(
        machine, b"HTTP/1.1 200 OK\r\nConnection: " + listed + b"\r\nContent-Length: 2\r\n\r\nok"
    )
    assert event == response.DONE
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert machine.keep


def test_a_set_cookie_that_connection_lists_is_not_forwarded() -> None:
    machine, _ = start()
    event, out = feed(
        machine,
        b"HTTP/1.1 200 OK\r\nConnection: set-cookie\r\nSet-Cookie: app=1\r\n"
        b"Content-Length: 2\r\n\r\nok",
    )
    assert (event, out) == (response.DONE, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.mark.parametrize(
    ("codings", "sent"),
    [
        (b"Transfer-Encoding: gzip, identity", b"gzip, identity, chunked"),
        (b"Transfer-Encoding: gzip\r\nTransfer-Encoding: br", b"gzip, br, chunked"),
        (b"transfer-encoding: gzip\r\nContent-Length: 3", None),  # two ways: broken
        # chunked, then another coding: chunked again towards the client (RFC 9112 6.1)
        (b"Transfer-Encoding: chunked, identity", None),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip", None),
        (b"Transfer-Encoding: CHUNKED, chunked", None),
    ],
)
def test_codings_that_do_not_end_in_chunked_are_read_to_the_close(
    codings: bytes, sent: bytes | None
) -> None:
    # RFC 9112 6.3 (4): the answer's length is the close; the client gets it re-chunked
    # with the codings kept, and the backend connection is not reused.
    machine, facts = start()
    event, out = feed(machine, b"HTTP/1.1 200 OK\r\n" + codings + b"\r\n\r\nxyz")
    if sent is None:
        assert (event, out) == (response.BROKEN, b"")
        return
    assert event == response.MORE
    assert _head(out) == [b"Transfer-Encoding: " + sent]
    assert out.endswith(b"\r\n\r\n3\r\nxyz\r\n")
    assert machine.closed()
    assert machine.out == [framing.LAST_CHUNK]
    assert facts.status == 200


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\n\r\nhello",
        b"HTTP/1.1 200 OK\nContent-Length: 5\n\n",
    ],
)
@pytest.mark.parametrize("head_request", [True, False])
def test_a_head_ended_by_a_bare_lf_is_broken_not_pooled(answer: bytes, head_request: bool) -> None:
    # An answer to HEAD is cut at the first CRLF CRLF (_feed_head): a head that ends
    # otherwise must not let the bytes after it pass as the end of the answer.
    machine, facts = start(head_request=head_request)
    assert feed(machine, answer) == (response.BROKEN, b"")
    assert not machine.keep
    assert not facts.response_started


def test_an_app_cookie_that_connection_lists_is_neither_forwarded_nor_learned() -> None:
    machine, route = machine_and_route("app-cookie:JSESSIONID")
    expect(machine, Facts(route=route))
    event, out = feed(
        machine,
        b"HTTP/1.1 200 OK\r\nConnection: set-cookie\r\nSet-Cookie: JSESSIONID=abc\r\n"
        b"Content-Length: 2\r\n\r\nok",
    )
    assert event == response.DONE
    assert b"JSESSIONID" not in out
    assert b"Set-Cookie" not in out  # no companion for a cookie the client never got


class _RaisingRouter:
    """A router whose ``on_response`` raises, as a bug behind the machine would."""

    def on_response(self, route: Route, set_cookies: object) -> Route:
        raise RuntimeError("a bug in on_response")


def test_an_exception_behind_the_machine_fails_the_answer_and_is_kept_for_the_log() -> None:
    _, route = machine_and_route()
    machine = ResponseMachine(
        router=_RaisingRouter(),  # type: ignore[arg-type]
        classes=fields.HeaderClasses(),
        max_headers=10,
        max_header_bytes=200,
    )
    expect(machine, Facts(route=route))
    answer = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nContent-Length: 0\r\n\r\n"
    event, out = feed(machine, answer)
    assert (event, out) == (response.BROKEN, b"")
    assert isinstance(machine.failure, RuntimeError)
    # A backend's garbage is broken too, with nothing to log.
    machine, _ = start()
    assert feed(machine, b"NOT HTTP\r\n\r\n")[0] == response.BROKEN
    assert machine.failure is None
